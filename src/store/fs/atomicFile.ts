import {
  closeSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { ErrorCode, FlowLoomError } from '../../core/errors.ts';

let tmpCounter = 0;

/** A temp-file name in the same directory (rename is only atomic within one filesystem). */
export function tempPathFor(path: string): string {
  tmpCounter = (tmpCounter + 1) % 1_000_000_000;
  return join(dirname(path), `.tmp-${process.pid}-${tmpCounter}-${Math.random().toString(36).slice(2, 8)}`);
}

/** Writes `data` to a new temp file next to `path`, fsynced when `durable`; returns the temp path. */
export function writeTemp(path: string, data: string, durable: boolean): string {
  const tmp = tempPathFor(path);
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    writeSync(fd, data);
    if (durable) fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return tmp;
}

/**
 * Replaces `path` with `data` atomically: readers see the old or the new content, never a mix
 * (temp file + fsync + rename).
 */
export function writeFileAtomic(path: string, data: string, durable = true): void {
  const tmp = writeTemp(path, data, durable);
  try {
    renameSync(tmp, path);
  } catch (e) {
    safeUnlink(tmp);
    throw e;
  }
}

/**
 * Creates `path` with `data` only if it does not exist yet, atomically and whole: the content is
 * written to a temp file first and then hard-linked into place (link fails with EEXIST).
 * Returns false when the path already existed.
 */
export function createFileExclusive(path: string, data: string, durable = true): boolean {
  const tmp = writeTemp(path, data, durable);
  try {
    linkSync(tmp, path);
    return true;
  } catch (e) {
    if (errno(e) === 'EEXIST') return false;
    throw e;
  } finally {
    safeUnlink(tmp);
  }
}

/** Reads a file as UTF-8; undefined when it does not exist. */
export function readIfExists(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    if (errno(e) === 'ENOENT') return undefined;
    throw e;
  }
}

/** Unlinks, ignoring a file that is already gone. */
export function safeUnlink(path: string): void {
  try {
    unlinkSync(path);
  } catch (e) {
    if (errno(e) !== 'ENOENT') throw e;
  }
}

/** Renames; false when the source is gone (someone else moved it first). */
export function tryRename(from: string, to: string): boolean {
  try {
    renameSync(from, to);
    return true;
  } catch (e) {
    if (errno(e) === 'ENOENT') return false;
    throw e;
  }
}

export function ensureDir(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
}

/** The errno code of a Node fs error, or undefined. */
export function errno(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && 'code' in e
    ? String((e as { code: unknown }).code)
    : undefined;
}

/** Turns an fs error into a FlowLoomError that says what the user can do; other errors pass through. */
export function mapFsError(e: unknown, where: string): unknown {
  const code = errno(e);
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return new FlowLoomError(
      ErrorCode.STORE_READ_ONLY,
      `cannot write to the state directory ${where} (${code})`,
      {
        hint: 'make it writable by this user, or point FLOWLOOM_DIR / --dir at a writable directory',
        cause: e,
      },
    );
  }
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new FlowLoomError(ErrorCode.STORE_READ_ONLY, `the disk holding ${where} is full (${code})`, {
      hint: 'free some space; nothing was changed by this command',
      cause: e,
    });
  }
  return e;
}
