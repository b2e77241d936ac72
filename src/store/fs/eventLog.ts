/**
 * The append-only event log of the file backend: `<state>/events/00000001.jsonl`, `00000002.jsonl`, ...
 *
 * Each line is one event as JSON (`at`, `type`, `session`, `task`, `text`, `data`). A cursor is
 * `<segment>:<byte offset just past a line>`; it is computed while reading, never stored.
 *
 * Concurrency model (many writer processes, many followers, no lock):
 * - Every line is written with ONE write() on an fd opened with O_APPEND. On Linux local filesystems the
 *   inode lock serialises such writes, so lines from different processes never interleave. A reader can
 *   still see the last line half-copied (multi-page writes update the size page by page): a trailing
 *   line without its newline is never returned and the cursor never moves past it.
 * - Writers always append to the highest-numbered segment. A writer fstat()s its segment before every
 *   append and moves on once it is full, so once any writer rotated away from a full segment, every other
 *   writer leaves it too on its next append. The only late write into an older segment is a writer caught
 *   between its fstat() and its write() while another process rotates (a few microseconds); a follower
 *   that already moved on misses that line, a read from an older cursor still sees it.
 * - Several processes may rotate at once: they all open the same next name with O_APPEND|O_CREAT, so they
 *   agree on it. Old segments beyond `maxSegments` are deleted by whoever rotated; ENOENT races are fine.
 */
import {
  closeSync,
  existsSync,
  fstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { basename, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as z from 'zod/mini';
import type { Clock } from '../../core/clock.ts';
import { ErrorCode, FlowLoomError, invalidInput } from '../../core/errors.ts';
import type { EventInput, EventType, StoredEvent } from '../../core/types.ts';
import type { StoreProblem } from '../store.ts';

const DEFAULT_MAX_SEGMENT_BYTES = 4 * 1024 * 1024;
const DEFAULT_MAX_SEGMENTS = 8;
/** Longest line (newline included) an append writes; bigger events lose their `data`. */
export const MAX_EVENT_LINE_BYTES = 64 * 1024;
const TRUNCATED_TEXT_CHARS = 1000;
const READ_CHUNK_BYTES = 64 * 1024;
/** Foreign lines longer than this are skipped without being buffered, so a damaged file cannot exhaust memory. */
const MAX_BUFFERED_LINE_BYTES = 1024 * 1024;
/** How often a writer looks for a newer segment created by a process with other settings. */
const RECHECK_EVERY_APPENDS = 100;
const RECHECK_EVERY_MS = 200;
/** A trailing partial line in a segment that is no longer the newest and untouched this long is crash debris. */
const STALE_PARTIAL_MS = 2000;
const MAX_ROTATIONS_PER_APPEND = 8;
const NEWLINE = 0x0a;
const EMPTY: Buffer = Buffer.alloc(0);
const CURSOR_RE = /^(\d{1,12}):(\d{1,15})$/;
const SEGMENT_RE = /^(\d{8,12})\.jsonl$/;

/** One line as read back from disk. `type` is any string so events from newer versions are kept. */
const eventLine = z.object({
  at: z.number(),
  type: z.string().check(z.minLength(1)),
  text: z.string(),
  session: z.optional(z.nullable(z.string())),
  task: z.optional(z.nullable(z.string())),
  data: z.optional(z.record(z.string(), z.unknown())),
});

export interface EventLogOptions {
  /** A writer moves to a new segment once its segment reached this size (default 4 MiB). */
  maxSegmentBytes?: number;
  /** Segments kept; older ones are deleted after a rotation (default 8). */
  maxSegments?: number;
  /** Told about damaged lines that were skipped and about events lost to rotation. */
  onProblem?: (p: StoreProblem) => void;
}

interface Position {
  seg: number;
  off: number;
}

interface SegmentScan {
  /** Offset just past the last line consumed (returned or skipped as damaged). */
  end: number;
  consumed: boolean;
  /** Bytes after `end` that do not end with a newline yet. */
  partial: boolean;
  /** The segment vanished (rotated away) before it could be opened. */
  missing: boolean;
}

/** Zero-padded segment file name, e.g. `00000003.jsonl`. */
export function segmentFileName(seg: number): string {
  return `${String(seg).padStart(8, '0')}.jsonl`;
}

/** Parses a cursor; throws INVALID_INPUT for anything a read did not print. */
export function parseEventCursor(cursor: string): { seg: number; off: number } {
  const m = typeof cursor === 'string' ? CURSOR_RE.exec(cursor) : null;
  const seg = m ? Number(m[1]) : 0;
  if (!m || seg < 1) {
    throw invalidInput(
      `cursor "${String(cursor)}" is not a FlowLoom event cursor: pass the cursor printed by a previous read`,
    );
  }
  return { seg, off: Number(m[2]) };
}

function formatCursor(seg: number, off: number): string {
  return `${seg}:${off}`;
}

function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String(err.code) : undefined;
}

function storeError(err: unknown, action: string): FlowLoomError {
  const code = errnoCode(err);
  const readOnly =
    code === 'EROFS' || code === 'EACCES' || code === 'EPERM' || code === 'ENOSPC' || code === 'EDQUOT';
  const why = err instanceof Error ? err.message : String(err);
  return new FlowLoomError(
    readOnly ? ErrorCode.STORE_READ_ONLY : ErrorCode.STORE_UNAVAILABLE,
    `cannot ${action}: ${why}`,
    {
      hint: readOnly
        ? 'check permissions and free space of the state directory'
        : 'check the state directory',
      cause: err,
    },
  );
}

/** Cuts a string to `max` UTF-16 units without splitting a surrogate pair. */
function cutText(s: string, max: number): string {
  if (s.length <= max) return s;
  const code = s.charCodeAt(max - 1);
  return s.slice(0, code >= 0xd800 && code <= 0xdbff ? max - 1 : max);
}

/**
 * Append-only, rotated JSONL event log shared by many processes. Appends and reads are synchronous:
 * they are short and keep each line's write a single system call.
 */
export class EventLog {
  private readonly dir: string;
  private readonly label: string;
  private readonly clock: Clock;
  private readonly maxSegmentBytes: number;
  private readonly maxSegments: number;
  private readonly onProblem: ((p: StoreProblem) => void) | undefined;
  private fd: number | null = null;
  private seg = 0;
  private appendsSinceCheck = 0;
  private lastCheckMs = 0;
  /** Damaged lines already reported by this process: status views call last() over and over. */
  private readonly reported = new Set<string>();

  /** `dir` is the events directory itself (`<state>/events`); it is created if missing. */
  constructor(dir: string, clock: Clock, opts: EventLogOptions = {}) {
    this.dir = dir;
    this.label = basename(dir);
    this.clock = clock;
    this.maxSegmentBytes = Math.max(1, opts.maxSegmentBytes ?? DEFAULT_MAX_SEGMENT_BYTES);
    this.maxSegments = Math.max(1, opts.maxSegments ?? DEFAULT_MAX_SEGMENTS);
    this.onProblem = opts.onProblem;
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw storeError(err, `create the event directory ${dir}`);
    }
  }

  /** Appends one event as one line with a single O_APPEND write. */
  append(e: EventInput): void {
    const line = this.encode(e);
    try {
      const fd = this.fdForAppend();
      let written = 0;
      // A regular-file write is whole unless the disk fills up; finishing the line then is the best we can do.
      while (written < line.length) written += writeSync(fd, line, written, line.length - written);
    } catch (err) {
      throw err instanceof FlowLoomError ? err : storeError(err, `append an event to ${this.dir}`);
    }
  }

  /**
   * Up to `limit` events after `cursor` (null: from the oldest retained segment), oldest first, and the
   * cursor to pass next time.
   */
  read(cursor: string | null, limit: number): { events: StoredEvent[]; cursor: string | null } {
    const from = cursor === null ? null : parseEventCursor(cursor);
    if (!Number.isInteger(limit) || limit < 0) {
      throw invalidInput(`limit ${limit} is not a valid number of events: pass a whole number >= 0`);
    }
    const segs = this.listSegments();
    const events: StoredEvent[] = [];
    if (limit === 0 || segs.length === 0) return { events, cursor };
    const start = this.startPosition(from, segs);
    let next = start.moved ? formatCursor(start.pos.seg, start.pos.off) : cursor;
    for (let i = segs.indexOf(start.pos.seg); i < segs.length && events.length < limit; i++) {
      const seg = segs[i]!;
      const scan = this.scanForward(seg, seg === start.pos.seg ? start.pos.off : 0, limit, events);
      if (scan.consumed) next = formatCursor(seg, scan.end);
      if (events.length >= limit) break;
      const later = segs[i + 1];
      if (later === undefined) break;
      if (scan.missing) {
        this.report(
          `${this.label}/${segmentFileName(seg)}`,
          'events were lost: the segment was rotated away while reading',
        );
        next = formatCursor(later, 0);
        continue;
      }
      if (scan.partial) {
        // A writer may be mid-append; only old debris (a crashed writer) in a segment everyone left is skipped.
        if (!this.isStale(seg)) break;
        this.report(`${this.label}/${segmentFileName(seg)}:${scan.end}`, 'unterminated line skipped');
        next = formatCursor(later, 0);
      }
    }
    return { events, cursor: next };
  }

  /** The cursor just past the newest complete event; null when nothing was logged yet. */
  tail(): string | null {
    const segs = this.listSegments();
    const newest = segs.at(-1);
    if (newest === undefined) return null;
    const end = this.withSegment(newest, (fd) => this.completeEnd(fd, fstatSync(fd).size)) ?? 0;
    if (end === 0 && segs.length === 1) return null;
    return formatCursor(newest, end);
  }

  /** The newest `n` events, oldest first; reads backwards from the end, so small `n` stays cheap. */
  last(n: number): StoredEvent[] {
    if (!Number.isInteger(n) || n <= 0) return [];
    const segs = this.listSegments();
    const parts: StoredEvent[][] = [];
    let need = n;
    for (let i = segs.length - 1; i >= 0 && need > 0; i--) {
      const seg = segs[i]!;
      const found = this.withSegment(seg, (fd) => this.scanBackward(fd, seg, need)) ?? [];
      parts.push(found);
      need -= found.length;
    }
    return parts.reverse().flat();
  }

  /** Closes the open segment; idempotent. A later append reopens the newest segment. */
  close(): void {
    if (this.fd !== null) {
      const fd = this.fd;
      this.fd = null;
      try {
        closeSync(fd);
      } catch {
        // already closed: nothing left to release
      }
    }
  }

  // ---- writing ----

  private encode(e: EventInput): Buffer {
    const record: Record<string, unknown> = {
      at: this.clock.now(),
      type: e.type,
      session: e.session,
      task: e.task,
      text: e.text,
      data: e.data,
    };
    let json: string;
    try {
      json = JSON.stringify(record);
    } catch (err) {
      // Circular or BigInt data must not stop the state change this event records.
      record.data = { unserializable: true, reason: err instanceof Error ? err.message : String(err) };
      json = JSON.stringify(record);
    }
    const bytes = Buffer.byteLength(json) + 1;
    if (bytes > MAX_EVENT_LINE_BYTES) {
      record.data = { truncated: true, bytes };
      record.text = cutText(e.text, TRUNCATED_TEXT_CHARS);
      json = JSON.stringify(record);
      if (Buffer.byteLength(json) + 1 > MAX_EVENT_LINE_BYTES) {
        if (typeof e.session === 'string') record.session = cutText(e.session, TRUNCATED_TEXT_CHARS);
        if (typeof e.task === 'string') record.task = cutText(e.task, TRUNCATED_TEXT_CHARS);
        json = JSON.stringify(record);
      }
    }
    return Buffer.from(`${json}\n`, 'utf8');
  }

  private fdForAppend(): number {
    let fd: number;
    if (this.fd === null) {
      fd = this.switchToNewest();
    } else {
      fd = this.fd;
      // Cheap probe for a newer segment; fstat below already catches the usual case (our segment is full).
      this.appendsSinceCheck++;
      const now = performance.now();
      if (this.appendsSinceCheck >= RECHECK_EVERY_APPENDS || now - this.lastCheckMs >= RECHECK_EVERY_MS) {
        this.appendsSinceCheck = 0;
        this.lastCheckMs = now;
        if (existsSync(this.segmentPath(this.seg + 1))) fd = this.switchToNewest();
      }
    }
    for (let i = 0; i < MAX_ROTATIONS_PER_APPEND; i++) {
      const st = fstatSync(fd);
      if (st.nlink > 0 && st.size < this.maxSegmentBytes) return fd;
      // nlink 0: our segment was deleted (pruned or wiped); writes to it would vanish.
      fd = st.nlink === 0 ? this.switchToNewest() : this.rotate();
    }
    // Endless rotation races are not worth more loops: a slightly oversized segment is harmless.
    return fd;
  }

  /** Opens the highest existing segment (segment 1 when there is none). */
  private switchToNewest(): number {
    const newest = this.listSegments().at(-1) ?? 1;
    if (this.fd !== null && newest === this.seg && fstatSync(this.fd).nlink > 0) return this.fd;
    return this.openForAppend(newest);
  }

  /** Moves past a full segment: to a newer one someone else made, or to a new one, then prunes. */
  private rotate(): number {
    const newest = this.listSegments().at(-1) ?? 0;
    if (newest > this.seg) return this.openForAppend(newest);
    const fd = this.openForAppend(this.seg + 1);
    this.prune();
    return fd;
  }

  private openForAppend(seg: number): number {
    let fd: number;
    try {
      fd = openSync(this.segmentPath(seg), 'a', 0o600);
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT') throw err;
      // The directory itself was removed: recreate it rather than failing every later append.
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      fd = openSync(this.segmentPath(seg), 'a', 0o600);
    }
    this.close();
    this.fd = fd;
    this.seg = seg;
    this.appendsSinceCheck = 0;
    this.lastCheckMs = performance.now();
    return fd;
  }

  private prune(): void {
    const segs = this.listSegments();
    const keepFrom = (segs.at(-1) ?? 0) - this.maxSegments + 1;
    for (const seg of segs) {
      if (seg >= keepFrom) break;
      try {
        unlinkSync(this.segmentPath(seg));
      } catch (err) {
        // Another process rotating at the same time deleted it first.
        if (errnoCode(err) !== 'ENOENT') throw err;
      }
    }
  }

  // ---- reading ----

  private startPosition(from: Position | null, segs: number[]): { pos: Position; moved: boolean } {
    const oldest = segs[0]!;
    const newest = segs.at(-1)!;
    if (from === null) return { pos: { seg: oldest, off: 0 }, moved: false };
    if (from.seg > newest) {
      this.report(
        `${this.label}/${segmentFileName(from.seg)}`,
        `cursor ${formatCursor(from.seg, from.off)} is past the newest segment (the log was reset?): reading from the oldest event`,
      );
      return { pos: { seg: oldest, off: 0 }, moved: true };
    }
    const size = segs.includes(from.seg) ? this.segmentSize(from.seg) : null;
    if (size === null) {
      // Deleted between listing and stat (the log was wiped) when nothing newer exists.
      const next = segs.find((s) => s > from.seg) ?? oldest;
      this.report(
        `${this.label}/${segmentFileName(from.seg)}`,
        `events after cursor ${formatCursor(from.seg, from.off)} were lost to rotation: continuing from ${segmentFileName(next)}`,
      );
      return { pos: { seg: next, off: 0 }, moved: true };
    }
    if (from.off > size) {
      // The segment was replaced: reading it again repeats events, which beats silently losing them.
      this.report(
        `${this.label}/${segmentFileName(from.seg)}`,
        `cursor ${formatCursor(from.seg, from.off)} is past the end of the segment (${size} bytes): reading it from the start`,
      );
      return { pos: { seg: from.seg, off: 0 }, moved: true };
    }
    return { pos: from, moved: false };
  }

  /** Reads complete lines of one segment from `off` in chunks, appending events to `out` up to `limit`. */
  private scanForward(seg: number, off: number, limit: number, out: StoredEvent[]): SegmentScan {
    const scan: SegmentScan = { end: off, consumed: false, partial: false, missing: false };
    const found = this.withSegment(seg, (fd) => {
      let readAt = off;
      let pending: Buffer = EMPTY; // bytes of the line starting at scan.end read so far
      let overlong = false; // the line at scan.end is too long to buffer: skipping to its newline
      for (;;) {
        const chunk = Buffer.allocUnsafe(READ_CHUNK_BYTES);
        const n = readSync(fd, chunk, 0, READ_CHUNK_BYTES, readAt);
        if (n === 0) break;
        const dataStart = overlong ? readAt : scan.end;
        readAt += n;
        const data =
          pending.length > 0 ? Buffer.concat([pending, chunk.subarray(0, n)]) : chunk.subarray(0, n);
        let lineStart = 0;
        for (let nl = data.indexOf(NEWLINE); nl !== -1; nl = data.indexOf(NEWLINE, lineStart)) {
          if (overlong) {
            this.reportLine(seg, scan.end, `line longer than ${MAX_BUFFERED_LINE_BYTES} bytes skipped`);
            overlong = false;
          } else {
            this.collect(out, seg, data.subarray(lineStart, nl), scan.end, dataStart + nl + 1);
          }
          scan.end = dataStart + nl + 1;
          scan.consumed = true;
          lineStart = nl + 1;
          if (out.length >= limit) return true;
        }
        pending = overlong ? EMPTY : data.subarray(lineStart);
        if (pending.length > MAX_BUFFERED_LINE_BYTES) {
          pending = EMPTY;
          overlong = true;
        }
      }
      scan.partial = overlong || pending.length > 0;
      return true;
    });
    if (found === null) scan.missing = true;
    return scan;
  }

  /** Up to `max` newest complete events of one segment, oldest first, reading backwards in chunks. */
  private scanBackward(fd: number, seg: number, max: number): StoredEvent[] {
    const found: StoredEvent[] = []; // newest first
    let readEnd = fstatSync(fd).size;
    let carry: Buffer = EMPTY; // bytes from readEnd on that belong to a line whose start is not read yet
    let sawNewline = false; // bytes after the last newline are a line still being written: never returned
    let overlong = false; // carry was dropped: the current line is too long to buffer
    while (readEnd > 0 && found.length < max) {
      const start = Math.max(0, readEnd - READ_CHUNK_BYTES);
      const chunk = this.readAt(fd, start, readEnd - start);
      readEnd = start;
      const data = carry.length > 0 ? Buffer.concat([chunk, carry]) : chunk;
      let end = data.length;
      if (overlong || !sawNewline) {
        const nl = data.lastIndexOf(NEWLINE);
        if (nl === -1) {
          carry = overlong || data.length > MAX_BUFFERED_LINE_BYTES ? EMPTY : data;
          overlong = carry.length === 0;
          continue;
        }
        if (overlong && sawNewline) {
          this.reportLine(seg, start + nl + 1, `line longer than ${MAX_BUFFERED_LINE_BYTES} bytes skipped`);
        }
        overlong = false;
        sawNewline = true;
        end = nl + 1;
      }
      // data[0, end) ends with a newline; peel complete lines off its end.
      while (end > 0 && found.length < max) {
        const prev = end >= 2 ? data.lastIndexOf(NEWLINE, end - 2) : -1;
        if (prev === -1 && start > 0) break; // this line starts in an earlier chunk
        this.collect(found, seg, data.subarray(prev + 1, end - 1), start + prev + 1, start + end);
        end = prev + 1;
      }
      carry = data.subarray(0, end);
      if (carry.length > MAX_BUFFERED_LINE_BYTES) {
        carry = EMPTY;
        overlong = true;
      }
    }
    if (overlong && sawNewline && readEnd === 0 && found.length < max) {
      this.reportLine(seg, 0, `line longer than ${MAX_BUFFERED_LINE_BYTES} bytes skipped`);
    }
    return found.reverse();
  }

  /** Offset just past the last newline of a segment of `size` bytes (0 when it has none). */
  private completeEnd(fd: number, size: number): number {
    let readEnd = size;
    while (readEnd > 0) {
      const start = Math.max(0, readEnd - READ_CHUNK_BYTES);
      const nl = this.readAt(fd, start, readEnd - start).lastIndexOf(NEWLINE);
      if (nl !== -1) return start + nl + 1;
      readEnd = start;
    }
    return 0;
  }

  /** Parses one line; damaged lines are reported and skipped, never thrown. */
  private collect(out: StoredEvent[], seg: number, line: Buffer, lineOff: number, endOff: number): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(line.toString('utf8'));
    } catch {
      this.reportLine(seg, lineOff, 'not valid JSON');
      return;
    }
    const r = eventLine.safeParse(parsed);
    if (!r.success) {
      this.reportLine(seg, lineOff, 'not a FlowLoom event (needs type, at and text)');
      return;
    }
    const v = r.data;
    const event: StoredEvent = {
      type: v.type as EventType,
      text: v.text,
      at: v.at,
      cursor: formatCursor(seg, endOff),
    };
    if (v.session !== undefined) event.session = v.session;
    if (v.task !== undefined) event.task = v.task;
    if (v.data !== undefined) event.data = v.data;
    out.push(event);
  }

  private reportLine(seg: number, off: number, reason: string): void {
    const what = `${this.label}/${segmentFileName(seg)}:${off}`;
    const key = `${what} ${reason}`;
    if (this.reported.has(key)) return;
    // Bounded: a badly damaged log must not grow this set without limit.
    if (this.reported.size >= 10_000) this.reported.clear();
    this.reported.add(key);
    this.report(what, reason);
  }

  private report(what: string, reason: string): void {
    this.onProblem?.({ what, reason, movedTo: null });
  }

  // ---- files ----

  private segmentPath(seg: number): string {
    return join(this.dir, segmentFileName(seg));
  }

  /** Segment numbers, ascending; foreign files are ignored. */
  private listSegments(): number[] {
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return [];
      throw storeError(err, `list ${this.dir}`);
    }
    const segs: number[] = [];
    for (const name of names) {
      const m = SEGMENT_RE.exec(name);
      if (m && segmentFileName(Number(m[1])) === name && Number(m[1]) > 0) segs.push(Number(m[1]));
    }
    return segs.sort((a, b) => a - b);
  }

  private segmentSize(seg: number): number | null {
    try {
      return statSync(this.segmentPath(seg)).size;
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return null;
      throw storeError(err, `read ${this.segmentPath(seg)}`);
    }
  }

  private isStale(seg: number): boolean {
    try {
      // File times are wall-clock times, so this compares with the real clock, not the injected one.
      return statSync(this.segmentPath(seg)).mtimeMs < Date.now() - STALE_PARTIAL_MS;
    } catch {
      return true;
    }
  }

  /** Runs `fn` on a read-only fd of a segment; null when the segment no longer exists. */
  private withSegment<T>(seg: number, fn: (fd: number) => T): T | null {
    let fd: number;
    try {
      fd = openSync(this.segmentPath(seg), 'r');
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return null;
      throw storeError(err, `read ${this.segmentPath(seg)}`);
    }
    try {
      return fn(fd);
    } finally {
      closeSync(fd);
    }
  }

  private readAt(fd: number, position: number, length: number): Buffer {
    const buf = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const n = readSync(fd, buf, got, length - got, position + got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got);
  }
}
