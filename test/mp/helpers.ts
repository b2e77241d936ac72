/**
 * Shared helpers for the multi-process tests: a private copy of dist/, temp state directories, child
 * processes that are always killed, JSON-line readers, and `waitFor` (poll a condition with a deadline).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const FIXTURES = join(ROOT, 'test', 'mp', 'fixtures');

/** Short leases for every child (see src/cli/context.ts). */
export const SHORT_LEASES = { FLOWLOOM_SESSION_TTL: '1s', FLOWLOOM_TASK_LEASE: '2s', FLOWLOOM_POLL: '100ms' };

const tempDirs: string[] = [];

/** A fresh temporary directory, removed by `cleanup()`. */
export function tempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), `flowloom-mp-${prefix}-`));
  tempDirs.push(d);
  return d;
}

/**
 * Copies dist/ into a private directory so that a rebuild running at the same time (which deletes
 * dist/) cannot pull chunks away from under the spawned processes. Retries until the copy is whole:
 * every chunk a bundle file names exists in the copy.
 */
export async function snapshotDist(): Promise<{ cli: string; index: string }> {
  const src = join(ROOT, 'dist');
  const deadline = Date.now() + 30_000;
  for (;;) {
    const dst = join(tempDir('dist'), 'dist');
    try {
      cpSync(src, dst, { recursive: true, filter: (p) => !p.endsWith('.map') });
      if (distIsWhole(dst)) return { cli: join(dst, 'cli.js'), index: join(dst, 'index.js') };
    } catch {
      // dist/ vanished mid-copy (a rebuild): try again.
    }
    if (Date.now() > deadline)
      throw new Error(`${src} is missing or incomplete: run \`node scripts/build.mjs\``);
    await delay(200);
  }
}

function distIsWhole(dir: string): boolean {
  if (!existsSync(join(dir, 'cli.js')) || !existsSync(join(dir, 'index.js'))) return false;
  const files = [
    join(dir, 'cli.js'),
    join(dir, 'index.js'),
    ...readdirSync(join(dir, 'chunks')).map((n) => join(dir, 'chunks', n)),
  ];
  const have = new Set(readdirSync(join(dir, 'chunks')));
  for (const f of files) {
    for (const m of readFileSync(f, 'utf8').matchAll(/chunk-[A-Za-z0-9_-]+\.js/g)) {
      if (!have.has(m[0])) return false;
    }
  }
  return true;
}

/** Resolves after `ms`; only for pacing (never to wait for a condition). */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `cond` every 20 ms until it returns a value other than false/null/undefined; throws at the deadline. */
export async function waitFor<T>(
  cond: () => T | false | null | undefined | Promise<T | false | null | undefined>,
  timeoutMs: number,
  what = 'a condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v !== false && v !== null && v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await delay(20);
  }
}

/** A child process with its stdout split into lines (JSON lines parsed when possible). */
export interface Child {
  proc: ChildProcess;
  pid: number;
  lines: string[];
  json: Record<string, unknown>[];
  stderr: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  done: boolean;
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Tracks every child a test file starts, so an `after` hook can kill them all. */
export class Children {
  readonly all: Child[] = [];

  spawn(args: string[], env: Record<string, string>, opts: { cwd?: string } = {}): Child {
    const proc = spawn(process.execPath, args, {
      cwd: opts.cwd ?? ROOT,
      env: childEnv(env),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    if (proc.pid === undefined) throw new Error(`could not start ${args.join(' ')}`);
    const c: Child = {
      proc,
      pid: proc.pid,
      lines: [],
      json: [],
      stderr: [],
      exited: Promise.resolve({ code: null, signal: null }),
      done: false,
      code: null,
      signal: null,
    };
    c.exited = new Promise((res) => {
      proc.on('close', (code, signal) => {
        c.done = true;
        c.code = code;
        c.signal = signal;
        res({ code, signal });
      });
    });
    splitLines(proc.stdout, (line) => {
      c.lines.push(line);
      try {
        const v: unknown = JSON.parse(line);
        if (v && typeof v === 'object') c.json.push(v as Record<string, unknown>);
      } catch {
        // not JSON: kept in lines only
      }
    });
    splitLines(proc.stderr, (line) => c.stderr.push(line));
    this.all.push(c);
    return c;
  }

  /** SIGKILLs every child still running (SIGCONT first, so stopped ones die too) and waits for them. */
  async killAll(): Promise<void> {
    const running = this.all.filter((c) => !c.done);
    for (const c of running) {
      try {
        c.proc.kill('SIGCONT');
        c.proc.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    await Promise.all(running.map((c) => c.exited));
  }
}

function splitLines(stream: NodeJS.ReadableStream | null, onLine: (line: string) => void): void {
  if (!stream) return;
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buf += chunk;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line.trim()) onLine(line);
    }
  });
  stream.on('end', () => {
    if (buf.trim()) onLine(buf);
    buf = '';
  });
}

/** The environment of a child: ours without any FLOWLOOM_* variable, plus `env`. */
export function childEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('FLOWLOOM_')) out[k] = v;
  return { ...out, ...env };
}

/** Runs the CLI to completion. */
export async function runCli(
  children: Children,
  cli: string,
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string; json: Record<string, unknown> | null }> {
  const c = children.spawn([cli, ...args], env);
  const { code } = await c.exited;
  const stdout = c.lines.join('\n');
  let json: Record<string, unknown> | null = null;
  const last = c.lines.at(-1);
  if (last !== undefined) {
    try {
      json = JSON.parse(last) as Record<string, unknown>;
    } catch {
      json = null;
    }
  }
  return { code, stdout, stderr: c.stderr.join('\n'), json };
}

/** Removes every temp directory made by `tempDir`. */
export function cleanup(): void {
  for (const d of tempDirs.splice(0)) rmSync(d, { recursive: true, force: true });
}
