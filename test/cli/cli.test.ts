/**
 * The CLI contract, tested through the real binary (dist/cli.js) as a subprocess: every command with
 * --json prints exactly one JSON document, exit codes 0/1/2/3, one-line errors without stack traces,
 * and bad input (flags, ids, damaged or foreign files, read-only or network state dirs) loses nothing.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const TMP = mkdtempSync(join(tmpdir(), 'flowloom-cli-'));
/** A private copy of the freshly built dist/: another build of the shared dist/ must not pull it away mid-run. */
const CLI = join(TMP, 'dist', 'cli.js');
let dirCounter = 0;

before(() => {
  for (let attempt = 1; ; attempt++) {
    const r = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: ROOT, encoding: 'utf8' });
    assert.equal(r.status, 0, `build failed: ${r.stderr}`);
    try {
      rmSync(join(TMP, 'dist'), { recursive: true, force: true });
      cpSync(join(ROOT, 'dist'), join(TMP, 'dist'), { recursive: true });
      writeFileSync(join(TMP, 'dist', 'package.json'), '{"type":"module"}\n');
      // Loads the command, store and coordinator chunks: a copy missing one would fail here, not mid-suite.
      const v = spawnSync(process.execPath, [CLI, 'doctor', '--dir', join(TMP, 'none'), '--json'], {
        encoding: 'utf8',
      });
      if (v.stdout.includes('NOT_INITIALIZED')) return;
    } catch (e) {
      if (attempt >= 3) throw e;
    }
    assert.ok(attempt < 3, 'could not copy a complete build of dist/');
  }
});
after(() => rmSync(TMP, { recursive: true, force: true }));

/** No FLOWLOOM_* or developer settings leak in: each run sees only what the test gives it. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: TMP, LANG: 'C', ...extra };
}

/** A fresh, not yet created state directory path. */
function newDir(): string {
  dirCounter++;
  return join(TMP, `case-${dirCounter}`, '.flowloom-coordination');
}

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

interface RunOptions {
  env?: Record<string, string>;
  /** Prefix to run the CLI through, e.g. a command that drops privileges. */
  wrap?: string[];
}

function run(args: string[], opts: RunOptions = {}): Promise<Result> {
  const argv = [CLI, ...args];
  const [cmd, cmdArgs] = opts.wrap
    ? [opts.wrap[0] as string, [...opts.wrap.slice(1), process.execPath, ...argv]]
    : [process.execPath, argv];
  return new Promise((resolve) => {
    execFile(
      cmd,
      cmdArgs,
      { env: cleanEnv(opts.env), cwd: TMP, timeout: 30_000, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** ARGS with `--dir DIR --json` put before any `--` (after it they would belong to the child command). */
function withFlags(args: string[], dir: string): string[] {
  const split = args.indexOf('--');
  const flags = ['--dir', dir, '--json'];
  return split < 0 ? [...args, ...flags] : [...args.slice(0, split), ...flags, ...args.slice(split)];
}

/** Runs `flowloom ARGS --dir DIR --json`, checks the exit code and that stdout is one JSON document. */
async function cli<T = Record<string, unknown>>(
  dir: string,
  args: string[],
  expectCode = 0,
  opts: RunOptions = {},
): Promise<T & { _r: Result }> {
  const r = await run(withFlags(args, dir), opts);
  assert.equal(
    r.code,
    expectCode,
    `flowloom ${args.join(' ')}: exit ${r.code}, expected ${expectCode}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`,
  );
  let doc: T;
  try {
    doc = JSON.parse(r.stdout) as T;
  } catch (e) {
    assert.fail(
      `flowloom ${args.join(' ')}: stdout is not one JSON document (${(e as Error).message}): ${r.stdout}`,
    );
  }
  assert.equal(typeof doc, 'object');
  return Object.assign(doc as object, { _r: r }) as T & { _r: Result };
}

/** Asserts the shape of a user error: exit code, JSON `{error:{code}}`, ONE stderr line, no stack. */
function assertUserError(
  r: Result,
  exit: number,
  code: string,
  label: string,
): { message: string; hint: string | null } {
  const ctx = `${label}\nexit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
  assert.equal(r.code, exit, ctx);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, `expected one stderr line: ${ctx}`);
  assert.match(lines[0] as string, /^flowloom: /, ctx);
  assert.doesNotMatch(r.stderr, /\n\s+at /, ctx);
  const doc = JSON.parse(r.stdout) as { error: { code: string; message: string; hint: string | null } };
  assert.equal(doc.error.code, code, ctx);
  assert.equal(typeof doc.error.message, 'string');
  return doc.error;
}

interface Task {
  id: string;
  title: string;
  needs: string[];
  priority: number;
  after: string[];
  resources: string[];
  maxAttempts: number;
  timeoutMs: number | null;
  to: string | null;
  attempts: { session: string; outcome: string; reason: string }[];
  result: { summary: string; data?: Record<string, unknown> } | null;
  finalReason: string | null;
}

/** Every task file in the state directory, by state: what "nothing lost" compares. */
function taskFiles(dir: string): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const st of ['pending', 'active', 'completed', 'failed', 'cancelled']) {
    out[st] = readdirSync(join(dir, 'tasks', st)).sort();
  }
  return out;
}

/** init, join `a` (master) and add one task: a small state for bad-input tests. */
async function seeded(): Promise<{ dir: string; taskId: string }> {
  const dir = newDir();
  await cli(dir, ['init']);
  await cli(dir, ['join', '--session', 'a']);
  const added = await cli<{ task: Task }>(dir, ['task', 'add', 'keep me', '--session', 'a']);
  return { dir, taskId: added.task.id };
}

/** A long-running CLI process whose stdout is read line by line. */
function spawnCli(args: string[]): {
  child: ChildProcess;
  next: (timeoutMs: number) => Promise<string>;
  stderr: () => string;
} {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: cleanEnv(),
    cwd: TMP,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  let waiter: (() => void) | null = null;
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (l) => {
    lines.push(l);
    waiter?.();
  });
  const next = (timeoutMs: number) =>
    new Promise<string>((resolve, reject) => {
      const take = () => {
        clearTimeout(timer);
        waiter = null;
        resolve(lines.shift() as string);
      };
      const timer = setTimeout(() => {
        waiter = null;
        reject(new Error(`no line within ${timeoutMs} ms; stderr: ${err}`));
      }, timeoutMs);
      if (lines.length) take();
      else waiter = take;
    });
  return { child, next, stderr: () => err };
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

// ====================================================================== happy path

describe('happy path through the CLI', () => {
  const dir = newDir();
  const ids: Record<string, string> = {};

  test('init creates the state directory', async () => {
    const r = await cli<{ dir: string; created: boolean }>(dir, ['init', '--session-ttl', '10m']);
    assert.equal(r.dir, dir);
    assert.equal(r.created, true);
    assert.ok(existsSync(join(dir, 'tasks', 'pending')));
  });

  test('join: the last auto session to join is master; mode master takes it back', async () => {
    const a = await cli<{ session: string; role: string; epoch: number; master: string }>(dir, [
      'join',
      '--session',
      'a',
    ]);
    assert.deepEqual([a.session, a.role, a.epoch, a.master], ['a', 'master', 1, 'a']);
    const b = await cli<{ role: string; epoch: number; master: string }>(dir, [
      'join',
      '--session',
      'b',
      '--capabilities',
      'rust,test',
    ]);
    assert.deepEqual([b.role, b.epoch, b.master], ['master', 2, 'b']);
    const m = await cli<{ role: string; master: string; epoch: number }>(dir, [
      'mode',
      'master',
      '--session',
      'a',
    ]);
    assert.equal(m.role, 'master');
    assert.equal(m.master, 'a');
    assert.equal(m.epoch, 3);
    // A later auto join does not take over from an explicit master.
    const c = await cli<{ role: string; master: string }>(dir, ['join', '--session', 'c']);
    assert.deepEqual([c.role, c.master], ['agent', 'a']);
  });

  test('status: master, sessions, "All agents idle", and status/current.json', async () => {
    const s = await cli<{
      master: { sessionId: string; epoch: number };
      sessions: { id: string; role: string }[];
      queue: { counts: Record<string, number> };
      lines: string[];
    }>(dir, ['status']);
    assert.equal(s.master.sessionId, 'a');
    assert.equal(s.master.epoch, 3);
    assert.deepEqual(s.sessions.map((x) => x.id).sort(), ['a', 'b', 'c']);
    assert.equal(s.sessions.find((x) => x.id === 'a')?.role, 'master');
    assert.deepEqual(s.queue.counts, { pending: 0, active: 0, completed: 0, failed: 0, cancelled: 0 });
    assert.ok(
      s.lines.some((l) => l.includes('All agents idle')),
      s.lines.join('\n'),
    );
    const saved = JSON.parse(readFileSync(join(dir, 'status', 'current.json'), 'utf8')) as {
      master: { sessionId: string };
    };
    assert.equal(saved.master.sessionId, 'a');
  });

  test('task add with every option', async () => {
    const t1 = await cli<{ task: Task; state: string }>(dir, [
      'task',
      'add',
      'build the parser',
      '--needs',
      'rust',
      '--priority',
      'high',
      '--resources',
      'file:src/parser/**',
      '--max-attempts',
      '2',
      '--timeout',
      '10m',
      '--session',
      'a',
    ]);
    assert.equal(t1.state, 'pending');
    assert.deepEqual(t1.task.needs, ['rust']);
    assert.equal(t1.task.priority, 100);
    assert.deepEqual(t1.task.resources, ['file:src/parser/**']);
    assert.equal(t1.task.maxAttempts, 2);
    assert.equal(t1.task.timeoutMs, 600_000);
    ids.parser = t1.task.id;
    const t2 = await cli<{ task: Task }>(dir, [
      'task',
      'add',
      'document the parser',
      '--after',
      ids.parser,
      '--to',
      'c',
      '--priority',
      '5',
      '--session',
      'a',
    ]);
    assert.deepEqual(t2.task.after, [ids.parser]);
    assert.equal(t2.task.to, 'c');
    assert.equal(t2.task.priority, 5);
    ids.docs = t2.task.id;
  });

  test('task claim: a session without the capability gets nothing (exit 3); one with it gets the task', async () => {
    const none = await run(['task', 'claim', '--session', 'c', '--dir', dir, '--json']);
    assertUserError(none, 3, 'NOTHING_AVAILABLE', 'claim without capability');
    const got = await cli<{ task: Task; lease: { session: string; token: string } }>(dir, [
      'task',
      'claim',
      '--session',
      'b',
    ]);
    assert.equal(got.task.id, ids.parser);
    assert.equal(got.lease.session, 'b');
    assert.equal(typeof got.lease.token, 'string');
    // Its resources are locked for the task.
    const locks = await cli<{ locks: { resource: string; session: string; taskId: string }[] }>(dir, [
      'lock',
      'list',
    ]);
    assert.deepEqual(
      locks.locks.map((l) => [l.resource, l.session, l.taskId]),
      [['file:src/parser/**', 'b', ids.parser]],
    );
  });

  test('task progress shows up in status as "<id> reports: <text>"', async () => {
    const p = await cli<{ task: string; progress: string; fraction: number }>(dir, [
      'task',
      'progress',
      ids.parser as string,
      '3 tests failing in auth module',
      '--fraction',
      '0.5',
      '--session',
      'b',
    ]);
    assert.equal(p.task, ids.parser);
    assert.equal(p.fraction, 0.5);
    const s = await cli<{ lines: string[]; queue: { counts: Record<string, number> } }>(dir, ['status']);
    assert.ok(
      s.lines.includes('b reports: 3 tests failing in auth module'),
      `lines: ${JSON.stringify(s.lines)}`,
    );
    assert.equal(s.queue.counts.active, 1);
    const saved = JSON.parse(readFileSync(join(dir, 'status', 'current.json'), 'utf8')) as {
      lines: string[];
    };
    assert.ok(saved.lines.includes('b reports: 3 tests failing in auth module'));
  });

  test('task done with --result and --data; the dependent task becomes claimable', async () => {
    const d = await cli<{ task: Task; state: string }>(dir, [
      'task',
      'done',
      ids.parser as string,
      '--result',
      'parser built',
      '--data',
      '{"passed":12}',
      '--session',
      'b',
    ]);
    assert.equal(d.state, 'completed');
    assert.equal(d.task.result?.summary, 'parser built');
    assert.deepEqual(d.task.result?.data, { passed: 12 });
    const show = await cli<{ state: string; task: Task }>(dir, ['task', 'show', ids.parser as string]);
    assert.equal(show.state, 'completed');
    assert.equal(show.task.attempts.length, 1);
    const locks = await cli<{ locks: unknown[] }>(dir, ['lock', 'list']);
    assert.deepEqual(locks.locks, [], 'the task locks are released on completion');
    // Addressed to c: b does not get it, c does.
    assertUserError(
      await run(['task', 'claim', '--session', 'b', '--dir', dir, '--json']),
      3,
      'NOTHING_AVAILABLE',
      'to c',
    );
    const c = await cli<{ task: Task }>(dir, ['task', 'claim', '--session', 'c']);
    assert.equal(c.task.id, ids.docs);
    await cli(dir, ['task', 'done', ids.docs as string, '--session', 'c']);
  });

  test('task fail retries, then dead-letters after max attempts with every reason kept', async () => {
    await cli(dir, ['task', 'add', 'flaky job', '--id', 'flaky-1', '--max-attempts', '2', '--session', 'a']);
    await cli(dir, ['task', 'claim', '--session', 'b']);
    const f1 = await cli<{ task: Task; state: string }>(dir, [
      'task',
      'fail',
      'flaky-1',
      '--reason',
      'boom one',
      '--session',
      'b',
    ]);
    assert.equal(f1.state, 'pending');
    const shown1 = await cli<{ state: string; task: Task }>(dir, ['task', 'show', 'flaky-1']);
    assert.equal(shown1.state, 'pending');
    assert.deepEqual(
      shown1.task.attempts.map((a) => [a.session, a.outcome, a.reason]),
      [['b', 'failed', 'boom one']],
    );
    await cli(dir, ['task', 'claim', '--session', 'c']);
    const f2 = await cli<{ state: string }>(dir, [
      'task',
      'fail',
      'flaky-1',
      '--reason',
      'boom two',
      '--session',
      'c',
    ]);
    assert.equal(f2.state, 'failed');
    const shown2 = await cli<{ state: string; task: Task }>(dir, ['task', 'show', 'flaky-1']);
    assert.equal(shown2.state, 'failed');
    assert.deepEqual(
      shown2.task.attempts.map((a) => a.reason),
      ['boom one', 'boom two'],
    );
    assert.equal(shown2.task.finalReason, 'boom two');
  });

  test('task cancel and task list --state', async () => {
    const added = await cli<{ task: Task }>(dir, ['task', 'add', 'obsolete', '--session', 'a']);
    const c = await cli<{ state: string; task: Task }>(dir, [
      'task',
      'cancel',
      added.task.id,
      '--session',
      'a',
    ]);
    assert.equal(c.state, 'cancelled');
    const byState = async (st: string) =>
      (await cli<{ tasks: { id: string; state: string }[] }>(dir, ['task', 'list', '--state', st])).tasks
        .map((t) => t.id)
        .sort();
    assert.deepEqual(await byState('completed'), [ids.parser, ids.docs].sort());
    assert.deepEqual(await byState('failed'), ['flaky-1']);
    assert.deepEqual(await byState('cancelled'), [added.task.id]);
    assert.deepEqual(await byState('pending'), []);
    const all = await cli<{ tasks: { state: string }[] }>(dir, ['task', 'list']);
    assert.equal(all.tasks.length, 4);
    const s = await cli<{ queue: { counts: Record<string, number> } }>(dir, ['status']);
    assert.deepEqual(s.queue.counts, { pending: 0, active: 0, completed: 2, failed: 1, cancelled: 1 });
  });

  test('task claim on an empty queue exits 3', async () => {
    assertUserError(
      await run(['task', 'claim', '--session', 'a', '--dir', dir, '--json']),
      3,
      'NOTHING_AVAILABLE',
      'empty queue',
    );
  });

  test('events --json lists what happened', async () => {
    const e = await cli<{ events: { type: string; task?: string | null }[]; cursor: string }>(dir, [
      'events',
      '--limit',
      '500',
    ]);
    const types = new Set(e.events.map((x) => x.type));
    for (const t of [
      'session.joined',
      'master.changed',
      'task.added',
      'task.claimed',
      'task.progress',
      'task.completed',
      'task.retry',
      'task.failed',
      'task.cancelled',
    ]) {
      assert.ok(types.has(t), `missing event ${t} in ${[...types].join(', ')}`);
    }
    assert.equal(typeof e.cursor, 'string');
  });

  test('events --follow --json streams one JSON object per line', async () => {
    const { cursor } = await cli<{ cursor: string }>(dir, ['events']);
    const f = spawnCli(['events', '--follow', '--json', '--since', cursor, '--dir', dir]);
    try {
      const first = await cli<{ task: Task }>(dir, [
        'task',
        'add',
        'followed one',
        '--to',
        'nobody',
        '--session',
        'a',
      ]);
      const l1 = JSON.parse(await f.next(10_000)) as { type: string; task: string };
      assert.deepEqual([l1.type, l1.task], ['task.added', first.task.id]);
      // The follower is now in its wait loop: a new event must wake it.
      const second = await cli<{ task: Task }>(dir, [
        'task',
        'add',
        'followed two',
        '--to',
        'nobody',
        '--session',
        'a',
      ]);
      const l2 = JSON.parse(await f.next(10_000)) as { type: string; task: string };
      assert.deepEqual([l2.type, l2.task], ['task.added', second.task.id]);
    } finally {
      f.child.kill('SIGTERM');
      await exited(f.child);
    }
    assert.equal(f.stderr(), '');
  });

  test('locks: acquire, conflict names the holder (exit 3), wrong token refused, list, release', async () => {
    const got = await cli<{ locks: { resource: string; token: number }[] }>(dir, [
      'lock',
      'acquire',
      'file:src/auth/**',
      '--session',
      'a',
    ]);
    assert.equal(got.locks.length, 1);
    const token = got.locks[0]?.token as number;
    const busy = await run([
      'lock',
      'acquire',
      'file:src/auth/login.ts',
      '--session',
      'b',
      '--dir',
      dir,
      '--json',
    ]);
    const err = assertUserError(busy, 3, 'LOCK_HELD', 'conflicting lock');
    assert.match(busy.stderr, /held by a\b/);
    assert.equal((err as unknown as { holder: string }).holder, 'a');
    const wrong = await run([
      'lock',
      'release',
      'file:src/auth/**',
      '--token',
      String(token + 100),
      '--session',
      'a',
      '--dir',
      dir,
      '--json',
    ]);
    assertUserError(wrong, 1, 'LEASE_EXPIRED', 'wrong token');
    const list = await cli<{ locks: { resource: string; session: string; token: number }[] }>(dir, [
      'lock',
      'list',
    ]);
    assert.deepEqual(
      list.locks.map((l) => [l.resource, l.session, l.token]),
      [['file:src/auth/**', 'a', token]],
    );
    const rel = await cli<{ released: { resource: string }[] }>(dir, [
      'lock',
      'release',
      'file:src/auth/**',
      '--token',
      String(token),
      '--session',
      'a',
    ]);
    assert.deepEqual(
      rel.released.map((l) => l.resource),
      ['file:src/auth/**'],
    );
    assert.deepEqual((await cli<{ locks: unknown[] }>(dir, ['lock', 'list'])).locks, []);
  });

  test('lock run passes the exit code through and releases the lock', async () => {
    const r = await cli<{ exitCode: number; locks: { resource: string }[] }>(
      dir,
      ['lock', 'run', 'git', '--session', 'b', '--', process.execPath, '-e', 'process.exit(3)'],
      3,
    );
    assert.equal(r.exitCode, 3);
    assert.deepEqual(
      r.locks.map((l) => l.resource),
      ['git'],
    );
    assert.deepEqual((await cli<{ locks: unknown[] }>(dir, ['lock', 'list'])).locks, []);
  });

  test('handoff --to, heartbeat, leave by the master hands off, doctor is healthy', async () => {
    const h = await cli<{ from: string; to: string; epoch: number; handoff: { note: string } }>(dir, [
      'handoff',
      '--to',
      'b',
      '--note',
      'parser done, docs next',
      '--session',
      'a',
    ]);
    assert.deepEqual([h.from, h.to, h.epoch], ['a', 'b', 4]);
    assert.equal(h.handoff.note, 'parser done, docs next');
    const hb = await cli<{ role: string; master: string; lostTasks: string[] }>(dir, [
      'heartbeat',
      '--session',
      'c',
    ]);
    assert.deepEqual([hb.role, hb.master, hb.lostTasks], ['agent', 'b', []]);
    const left = await cli<{ left: boolean; master: string; epoch: number }>(dir, [
      'leave',
      '--session',
      'b',
    ]);
    assert.equal(left.left, true);
    assert.ok(left.master === 'a' || left.master === 'c', `new master ${left.master}`);
    assert.equal(left.epoch, 5);
    const s = await cli<{ master: { sessionId: string }; sessions: { id: string }[] }>(dir, ['status']);
    assert.equal(s.master.sessionId, left.master);
    assert.deepEqual(s.sessions.map((x) => x.id).sort(), ['a', 'c']);
    const doc = await cli<{ healthy: boolean; findings: unknown[]; quarantined: string[] }>(dir, ['doctor']);
    assert.equal(doc.healthy, true, JSON.stringify(doc.findings));
    assert.deepEqual(doc.quarantined, []);
  });
});

// ====================================================================== waiting

test('task claim --wait is woken by a task added from another process', async () => {
  const dir = newDir();
  await cli(dir, ['init']);
  await cli(dir, ['join', '--session', 'w']);
  const started = Date.now();
  const claim = run(['task', 'claim', '--wait', '5s', '--session', 'w', '--dir', dir, '--json']);
  const added = await cli<{ task: Task }>(dir, ['task', 'add', 'wake up', '--session', 'w']);
  const addedAt = Date.now();
  const r = await claim;
  const latency = Date.now() - addedAt;
  assert.equal(r.code, 0, r.stderr);
  assert.equal((JSON.parse(r.stdout) as { task: Task }).task.id, added.task.id);
  console.log(
    `# claim --wait returned ${latency} ms after the add finished (${Date.now() - started} ms in all)`,
  );
});

// ====================================================================== one JSON document

describe('every command with --json prints exactly one JSON document', () => {
  test('errors from every command are one JSON document with an error code', async () => {
    const missing = newDir();
    const cases: string[][] = [
      ['init', '--max-attempts', '0'],
      ['join', '--mode', 'bogus'],
      ['leave', '--session', 'a'],
      ['heartbeat', '--session', 'a'],
      ['mode', 'master', '--session', 'a'],
      ['handoff', '--session', 'a'],
      ['status'],
      ['events'],
      ['task', 'add', 'x'],
      ['task', 'claim', '--session', 'a'],
      ['task', 'done', 't-1', '--session', 'a'],
      ['task', 'fail', 't-1', '--reason', 'r', '--session', 'a'],
      ['task', 'progress', 't-1', 'text', '--session', 'a'],
      ['task', 'cancel', 't-1'],
      ['task', 'list'],
      ['task', 'show', 't-1'],
      ['lock', 'acquire', 'git', '--session', 'a'],
      ['lock', 'release', 'git', '--session', 'a'],
      ['lock', 'list'],
      ['lock', 'run', 'git', '--session', 'a', '--', 'true'],
      ['doctor'],
      ['task'],
      ['nonsense'],
    ];
    const results = await Promise.all(cases.map((c) => run(withFlags(c, missing))));
    for (const [i, r] of results.entries()) {
      const label = (cases[i] as string[]).join(' ');
      assert.notEqual(r.code, 0, label);
      const doc = JSON.parse(r.stdout) as { error: { code: string } };
      assert.equal(typeof doc.error.code, 'string', label);
      assert.equal(r.stderr.trim().split('\n').length, 1, `${label}: ${r.stderr}`);
    }
    assert.equal(existsSync(missing), false, 'failed commands must not create the state directory');
  });

  test('global options may come before the command', async () => {
    const dir = newDir();
    assert.equal((await run(['--dir', dir, '--json', 'init'])).code, 0);
    const r = await run(['--dir', dir, '--session', 'a', '--json', 'join']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { session: string }).session, 'a');
    const t = await run(['--session', 'a', 'task', '--dir', dir, 'add', '--json', 'first']);
    assert.equal(t.code, 0, t.stderr);
    assert.equal((JSON.parse(t.stdout) as { task: Task }).task.title, 'first');
  });
});

// ====================================================================== bad input

describe('bad input: one-line errors, right exit codes, nothing lost', { concurrency: true }, () => {
  test('flags, ids and arguments', async () => {
    const { dir, taskId } = await seeded();
    const before = taskFiles(dir);
    const cases: { args: string[]; exit: number; code: string; env?: Record<string, string> }[] = [
      { args: ['frobnicate'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['task', 'add', 'x', '--bogus'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['task', 'add'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['task', 'add', 'x', '--priority', 'banana'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['task', 'add', 'x', '--timeout', '5x'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['task', 'add', 'x', '--needs', 'Bad Cap!'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['task', 'add', 'x', '--max-attempts', 'lots'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['task', 'add', 'x', '--after', 'no-such-task'], exit: 1, code: 'TASK_NOT_FOUND' },
      { args: ['task', 'claim', '--session', 'a/b'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['task', 'claim', '--session', '..'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['join', '--session', '../escape'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['task', 'claim'], exit: 2, code: 'INVALID_INPUT', env: { FLOWLOOM_SESSION: 'x/../y' } },
      { args: ['task', 'show', '../../etc/passwd'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['task', 'done', 't-nope', '--session', 'a'], exit: 1, code: 'TASK_NOT_FOUND' },
      { args: ['task', 'claim'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['task', 'list', '--state', 'sleeping'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['task', 'done', taskId, '--data', '[1,2]', '--session', 'a'], exit: 2, code: 'INVALID_INPUT' },
      { args: ['status', '--', 'extra'], exit: 2, code: 'INVALID_INPUT' },
    ];
    const results = await Promise.all(
      cases.map((c) => run([...c.args, '--dir', dir, '--json'], c.env ? { env: c.env } : {})),
    );
    for (const [i, r] of results.entries()) {
      const c = cases[i] as (typeof cases)[number];
      const e = assertUserError(r, c.exit, c.code, c.args.join(' '));
      if (c.args.join(' ') === 'task claim' && !c.env) assert.match(`${e.message} ${e.hint}`, /--session/);
    }
    assert.equal(results[0]?.stderr.includes('frobnicate'), true);
    assert.match(results[3]?.stderr ?? '', /"banana".*low\|normal\|high\|urgent/);
    assert.match(results[4]?.stderr ?? '', /5x/);
    assert.match(results[5]?.stderr ?? '', /Bad Cap!/);
    assert.deepEqual(taskFiles(dir), before, 'bad input must not change the tasks');
    assert.deepEqual(readdirSync(join(dir, 'agents')), ['a.json'], 'no session created from a bad id');
    assert.equal(existsSync(join(TMP, 'escape.json')), false);
  });

  test('task done by a session that does not hold the task', async () => {
    const { dir, taskId } = await seeded();
    await cli(dir, ['join', '--session', 'b']);
    await cli(dir, ['task', 'claim', '--session', 'a']);
    const before = taskFiles(dir);
    const r = await run(['task', 'done', taskId, '--session', 'b', '--dir', dir, '--json']);
    const e = assertUserError(r, 1, 'LEASE_EXPIRED', 'done by non-holder');
    assert.match(e.message, /held by a/);
    assert.deepEqual(taskFiles(dir), before);
    const shown = await cli<{ state: string; lease: { session: string } }>(dir, ['task', 'show', taskId]);
    assert.deepEqual([shown.state, shown.lease.session], ['active', 'a']);
  });

  test('missing state directory: NOT_INITIALIZED, says to run flowloom init, creates nothing', async () => {
    const dir = newDir();
    const r = await run(['status', '--dir', dir, '--json']);
    const e = assertUserError(r, 1, 'NOT_INITIALIZED', 'status without init');
    assert.match(`${e.message}; ${e.hint}`, /flowloom init/);
    assert.match(r.stderr, /flowloom init/);
    assert.equal(existsSync(dir), false);
  });

  test('damaged files are set aside in quarantine/, named in a warning, listed by doctor', async () => {
    const { dir, taskId } = await seeded();
    const damaged = {
      'agents/x.json': '{"id": "x", "mode": ',
      'tasks/pending/0500-0mwsp5cfg0001abcd-t-corrupt.json': '{not json',
      'master.lock/000000000099.json': '{"value": {"epoch": "ninety-nine"',
    };
    for (const [rel, text] of Object.entries(damaged)) writeFileSync(join(dir, rel), text);
    writeFileSync(join(dir, 'tasks', 'pending', 'README'), 'notes someone left here\n');
    const s = await cli<{ master: { sessionId: string; epoch: number } }>(dir, ['status']);
    assert.deepEqual([s.master.sessionId, s.master.epoch], ['a', 1]);
    const warnings = s._r.stderr.split('\n').filter(Boolean);
    for (const w of warnings) assert.match(w, /^flowloom: warning: /);
    for (const rel of [...Object.keys(damaged), 'tasks/pending/README']) {
      assert.ok(
        warnings.some((w) => w.includes(rel)),
        `no warning names ${rel}: ${s._r.stderr}`,
      );
      assert.equal(existsSync(join(dir, rel)), false, `${rel} still in place`);
    }
    // Kept, not deleted: every byte is in quarantine/.
    const q = readdirSync(join(dir, 'quarantine'));
    assert.equal(q.length, 4, q.join(', '));
    const kept = q.map((n) => readFileSync(join(dir, 'quarantine', n), 'utf8')).sort();
    assert.deepEqual(kept, [...Object.values(damaged), 'notes someone left here\n'].sort());
    // Everything still works, and writes go on from the last good version.
    const list = await cli<{ tasks: { id: string }[] }>(dir, ['task', 'list']);
    assert.deepEqual(
      list.tasks.map((t) => t.id),
      [taskId],
    );
    const b = await cli<{ master: string; epoch: number }>(dir, ['join', '--session', 'b']);
    assert.deepEqual([b.master, b.epoch], ['b', 2]);
    const claimed = await cli<{ task: Task }>(dir, ['task', 'claim', '--session', 'a']);
    assert.equal(claimed.task.id, taskId);
    const doc = await cli<{ quarantined: string[] }>(dir, ['doctor']);
    for (const rel of [...Object.keys(damaged), 'tasks/pending/README']) {
      const flat = rel.replace(/\//g, '__');
      assert.ok(
        doc.quarantined.some((n) => n.endsWith(flat)),
        `doctor does not list ${rel}: ${doc.quarantined}`,
      );
    }
  });

  test('doctor run first reports the damaged files as findings', async () => {
    const { dir } = await seeded();
    writeFileSync(join(dir, 'agents', 'x.json'), 'garbage');
    writeFileSync(join(dir, 'tasks', 'pending', 'README'), 'hello');
    const doc = await cli<{ healthy: boolean; findings: { what: string }[]; quarantined: string[] }>(dir, [
      'doctor',
    ]);
    assert.equal(doc.healthy, false);
    const what = doc.findings.map((f) => f.what);
    assert.ok(what.includes('agents/x.json'), what.join(', '));
    assert.ok(what.includes('tasks/pending/README'), what.join(', '));
    assert.equal(doc.quarantined.length, 2);
  });

  test('read-only state directory: STORE_READ_ONLY in one line, nothing changed', async (t) => {
    if (process.getuid?.() !== 0) {
      t.skip('needs root to run the CLI as another user');
      return;
    }
    const dropper = ['setpriv', 'runuser'].find(
      (c) => spawnSync('sh', ['-c', `command -v ${c}`]).status === 0,
    );
    if (!dropper) {
      t.skip('neither setpriv nor runuser is installed');
      return;
    }
    const wrap =
      dropper === 'setpriv'
        ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']
        : ['runuser', '-u', 'nobody', '--'];
    const { dir, taskId } = await seeded();
    // Readable by everyone (0755 directories, 0644 files), writable only by root.
    const open = (p: string) => {
      const st = statSync(p);
      chmodSync(p, st.isDirectory() ? 0o755 : 0o644);
      if (st.isDirectory()) for (const n of readdirSync(p)) open(join(p, n));
    };
    chmodSync(TMP, 0o755);
    chmodSync(dirname(dir), 0o755);
    open(dir);
    const before = taskFiles(dir);
    const r = await run(['task', 'add', 'not allowed', '--dir', dir, '--json'], { wrap });
    const e = assertUserError(r, 1, 'STORE_READ_ONLY', 'task add on a read-only dir');
    assert.match(e.message, /cannot write/);
    assert.deepEqual(taskFiles(dir), before);
    assert.deepEqual(
      readdirSync(join(dir, 'tasks', 'pending')).filter((n) => n.startsWith('.tmp-')),
      [],
    );
    // Reading still works for that user.
    const list = await run(['task', 'list', '--dir', dir, '--json'], { wrap });
    assert.equal(list.code, 0, list.stderr);
    assert.deepEqual(
      (JSON.parse(list.stdout) as { tasks: { id: string }[] }).tasks.map((x) => x.id),
      [taskId],
    );
    // A damaged file it cannot move is reported and left in place; reading goes past it (no endless retry).
    const damaged = join(dir, 'master.lock', '000000000099.json');
    writeFileSync(damaged, '{broken', { mode: 0o644 });
    const doc = await run(['doctor', '--dir', dir, '--json'], { wrap });
    assert.equal(doc.code, 0, doc.stderr);
    const findings = (JSON.parse(doc.stdout) as { findings: { what: string; action: string }[] }).findings;
    assert.deepEqual(
      findings.map((f) => [f.what, f.action]),
      [['master.lock/000000000099.json', 'reported']],
    );
    assert.match(doc.stderr, /^flowloom: warning: master\.lock\/000000000099\.json: not JSON/);
    assert.equal(readFileSync(damaged, 'utf8'), '{broken');
  });

  test('a directory where a record file belongs is set aside, not a crash', async () => {
    const { dir, taskId } = await seeded();
    const rels = ['agents/b.json', 'tasks/pending/0500-0abc-t-dir.json', 'master.lock/000000000100.json'];
    for (const rel of rels) mkdirSync(join(dir, rel));
    const s = await cli<{ master: { sessionId: string } }>(dir, ['status']);
    assert.equal(s.master.sessionId, 'a');
    for (const rel of rels) {
      assert.ok(s._r.stderr.includes(rel), `no warning names ${rel}: ${s._r.stderr}`);
      assert.equal(existsSync(join(dir, rel)), false);
    }
    assert.equal(readdirSync(join(dir, 'quarantine')).length, 3);
    const list = await cli<{ tasks: { id: string }[] }>(dir, ['task', 'list']);
    assert.deepEqual(
      list.tasks.map((t) => t.id),
      [taskId],
    );
  });

  test('--dir naming a file (or a path under one) is a usage error', async () => {
    const file = join(TMP, `plain-file-${++dirCounter}`);
    writeFileSync(file, 'not a directory\n');
    const [r1, r2] = await Promise.all([
      run(['status', '--dir', file, '--json']),
      run(['init', '--dir', join(file, 'sub'), '--json']),
    ]);
    for (const r of [r1, r2])
      assert.match(assertUserError(r, 2, 'INVALID_INPUT', '--dir file').message, /is not a directory/);
    assert.equal(readFileSync(file, 'utf8'), 'not a directory\n');
  });

  test('network filesystem: refused, pointing to the PostgreSQL backend', async () => {
    const { dir } = await seeded();
    const before = taskFiles(dir);
    const env = { FLOWLOOM_FS_TYPE: 'nfs' };
    const [add, status] = await Promise.all([
      run(['task', 'add', 'x', '--dir', dir, '--json'], { env }),
      run(['status', '--dir', dir, '--json'], { env }),
    ]);
    for (const r of [add, status]) {
      const e = assertUserError(r, 1, 'STORE_UNAVAILABLE', 'nfs');
      assert.match(`${e.message} ${e.hint}`, /PostgreSQL/);
    }
    assert.match(add.stderr, /PostgreSQL/);
    assert.deepEqual(taskFiles(dir), before);
    const fresh = newDir();
    assertUserError(
      await run(['init', '--dir', fresh, '--json'], { env }),
      1,
      'STORE_UNAVAILABLE',
      'init on nfs',
    );
    assert.equal(existsSync(fresh), false);
  });

  test('config.json with garbage: a clear error naming the file', async () => {
    const { dir } = await seeded();
    const before = taskFiles(dir);
    writeFileSync(join(dir, 'config.json'), 'garbage\n{');
    const r = await run(['task', 'add', 'x', '--dir', dir, '--json']);
    const e = assertUserError(r, 2, 'INVALID_INPUT', 'garbage config');
    assert.match(e.message, /config\.json/);
    writeFileSync(join(dir, 'config.json'), '{"sessionTtlMs": "soon"}');
    const r2 = await run(['status', '--dir', dir, '--json']);
    const e2 = assertUserError(r2, 2, 'INVALID_INPUT', 'bad config value');
    assert.match(e2.message, /sessionTtlMs/);
    assert.deepEqual(taskFiles(dir), before);
    assert.equal(readFileSync(join(dir, 'config.json'), 'utf8'), '{"sessionTtlMs": "soon"}');
  });

  test('the state directory is created private (0700)', async () => {
    const byInit = newDir();
    const byJoin = newDir();
    await Promise.all([cli(byInit, ['init']), cli(byJoin, ['join', '--session', 'a'])]);
    for (const d of [byInit, byJoin]) {
      assert.equal(statSync(d).mode & 0o777, 0o700, d);
      assert.equal(statSync(join(d, 'tasks')).mode & 0o777, 0o700);
    }
    assert.equal(statSync(join(byInit, 'config.json')).mode & 0o077, 0);
  });
});
