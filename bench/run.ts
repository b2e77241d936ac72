/**
 * FlowLoom benchmarks (file backend). Speed targets live here, never in tests.
 *
 *   npm run bench                 full run (a few minutes), writes docs/benchmarks.md
 *   npm run bench -- --quick      short run, prints the table only (add --write to write the docs anyway)
 *   npm run bench -- --only=1,4   only some metrics (numbers as in the table), prints only
 *   npm run bench -- --wait-idle  first wait (up to 10 min) for the 1-minute load average to drop below 1
 *   npm run bench -- --keep       keep the temp dir (state directories and the dist/ snapshot) for a post-mortem
 *
 * Every process under test uses one snapshot of dist/ copied into the temp dir at start (other engineers
 * rebuild dist/ concurrently; the snapshot keeps the whole run on one build).
 *
 * Every figure is a median or a percentile over repeated runs made in this same run. Processes under test
 * are real: `node dist/cli.js ...` for the CLI figures, and fixture scripts (bench/fixtures/*.mjs) that
 * import dist/index.js for the library figures. Times across processes use performance.timeOrigin +
 * performance.now() on both sides (the same wall clock, sub-millisecond resolution).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  fsyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statfsSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import os from 'node:os';
import { dirname, join, normalize, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';

type Lib = typeof import('../src/index.ts');
type Coordinator = InstanceType<Lib['Coordinator']>;
type MasterRecord = import('../src/index.ts').MasterRecord;
type TaskRecord = import('../src/index.ts').TaskRecord;

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const FIXTURES = join(ROOT, 'bench', 'fixtures');
const DOC = join(ROOT, 'docs', 'benchmarks.md');

const argv = process.argv.slice(2);
const QUICK = argv.includes('--quick');
const ONLY = new Set(
  (argv.find((a) => a.startsWith('--only='))?.slice('--only='.length) ?? '')
    .split(',')
    .filter(Boolean)
    .map(Number),
);
const KEEP = argv.includes('--keep');
const WRITE_DOC = argv.includes('--write') || (!QUICK && ONLY.size === 0);
/** --wait-idle[=LOAD]: before starting, wait (at most 10 min) until the 1-minute load average is below LOAD. */
const WAIT_IDLE = (() => {
  const a = argv.find((x) => x === '--wait-idle' || x.startsWith('--wait-idle='));
  if (a === undefined) return null;
  const v = Number(a.split('=')[1] ?? '1');
  return Number.isFinite(v) && v > 0 ? v : 1;
})();

// Set in main(): the temp root, and a snapshot of dist/ inside it (see snapshotDist).
let TMP = '';
let CLI = '';
let DIST_INDEX = '';
let BUILD_ID = '';
let LOAD_START: number[] = [];
let lib: Lib;

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes. */
const now = () => performance.timeOrigin + performance.now();

// ---------------------------------------------------------------------------------------------- results

interface Row {
  metric: string;
  measured: string;
  target: string;
  /** null: informational, no target. */
  ok: boolean | null;
}

interface Section {
  n: number;
  title: string;
  method: string;
  rows: Row[];
  notes: string[];
}

const sections: Section[] = [];

function section(n: number, title: string, method: string): Section {
  const s: Section = { n, title, method, rows: [], notes: [] };
  sections.push(s);
  return s;
}

function pct(xs: number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i] as number;
}

const median = (xs: number[]) => pct(xs, 50);
const max = (xs: number[]) => xs.reduce((a, b) => Math.max(a, b), Number.NEGATIVE_INFINITY);

function ms(x: number): string {
  if (!Number.isFinite(x)) return 'n/a';
  if (x < 10) return `${x.toFixed(2)} ms`;
  if (x < 100) return `${x.toFixed(1)} ms`;
  return `${Math.round(x).toLocaleString('en-US')} ms`;
}

function num(x: number): string {
  return Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : 'n/a';
}

function log(text: string): void {
  process.stderr.write(`${text}\n`);
}

// ---------------------------------------------------------------------------------------------- processes

type Msg = Record<string, unknown> & { at: number };

const children = new Set<Child>();

/** A child process speaking one JSON object per stdout line; every line is stamped when it arrives. */
class Child {
  readonly proc: ChildProcess;
  readonly msgs: Msg[] = [];
  stderr = '';
  exited = false;
  private wakers: (() => void)[] = [];

  constructor(
    readonly name: string,
    args: string[],
    opts: { env: NodeJS.ProcessEnv; cwd: string; stdin: boolean },
  ) {
    this.proc = spawn(process.execPath, args, {
      cwd: opts.cwd,
      env: opts.env,
      stdio: [opts.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    children.add(this);
    let buf = '';
    this.proc.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      const at = now();
      buf += chunk;
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        let obj: Record<string, unknown>;
        try {
          obj = JSON.parse(line) as Record<string, unknown>;
        } catch {
          obj = { text: line };
        }
        this.msgs.push({ ...obj, at });
        if (obj.ev === 'error') log(`  [${this.name}] ${String(obj.message)}`);
      }
      this.notify();
    });
    this.proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      if (this.stderr.length < 20_000) this.stderr += chunk;
    });
    this.proc.stdin?.on('error', () => undefined);
    this.proc.on('exit', () => {
      this.exited = true;
      children.delete(this);
      this.notify();
    });
  }

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  mark(): number {
    return this.msgs.length;
  }

  private notify(): void {
    const w = this.wakers;
    this.wakers = [];
    for (const f of w) f();
  }

  /** The first message at index >= since matching `pred`, waiting for it up to `timeoutMs`. */
  async waitFor(pred: (m: Msg) => boolean, timeoutMs: number, since = 0): Promise<Msg> {
    const end = now() + timeoutMs;
    let i = since;
    for (;;) {
      for (; i < this.msgs.length; i++) {
        const m = this.msgs[i] as Msg;
        if (pred(m)) return m;
      }
      const left = end - now();
      if (this.exited || left <= 0) {
        throw new Error(
          `${this.name}: ${this.exited ? 'exited' : 'timed out'} waiting; stderr: ${this.stderr.slice(-800) || '(none)'}`,
        );
      }
      await new Promise<void>((res) => {
        const t = setTimeout(res, left);
        this.wakers.push(() => {
          clearTimeout(t);
          res();
        });
      });
    }
  }

  waitEv(ev: string, timeoutMs = 15_000, since = 0): Promise<Msg> {
    return this.waitFor((m) => m.ev === ev, timeoutMs, since);
  }

  send(line: string): void {
    this.proc.stdin?.write(`${line}\n`);
  }

  kill(sig: NodeJS.Signals): void {
    if (this.exited) return;
    try {
      process.kill(this.pid, sig);
    } catch {
      // already gone
    }
  }

  async exit(timeoutMs = 3000): Promise<void> {
    if (this.exited) return;
    await new Promise<void>((res) => {
      const t = setTimeout(res, timeoutMs);
      this.proc.once('exit', () => {
        clearTimeout(t);
        res();
      });
    });
  }

  /** SIGTERM (a holding session leaves), then SIGKILL if it lingers. */
  async stop(): Promise<void> {
    if (this.exited) return;
    this.kill('SIGCONT');
    this.kill('SIGTERM');
    this.proc.stdin?.end();
    await this.exit(3000);
    if (!this.exited) {
      this.kill('SIGKILL');
      await this.exit(3000);
    }
  }
}

function killAllChildren(): void {
  for (const c of children) c.kill('SIGKILL');
}
process.on('exit', killAllChildren);
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    killAllChildren();
    process.exit(130);
  });
}

/** The environment without any FLOWLOOM_* setting of the caller, plus `extra`. */
function envWith(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('FLOWLOOM_')) env[k] = v;
  return { ...env, ...extra };
}

/**
 * Copies dist/cli.js, dist/index.js and every chunk they import (statically or lazily) into `into`.
 * Other engineers rebuild dist/ while the bench runs; a snapshot keeps every process of this run on one
 * build. Chunk names carry a content hash, so following the imports of the entry files read first gives
 * a consistent set.
 */
function snapshotDist(into: string): { cli: string; index: string; id: string } {
  const from = join(ROOT, 'dist');
  const hash = createHash('sha256');
  const seen = new Set<string>();
  const copy = (rel: string): void => {
    if (seen.has(rel)) return;
    seen.add(rel);
    const text = readFileSync(join(from, rel), 'utf8');
    mkdirSync(dirname(join(into, rel)), { recursive: true });
    writeFileSync(join(into, rel), text);
    hash.update(rel).update(text);
    for (const m of text.matchAll(/["'`](\.\.?\/[\w./-]+?\.js)["'`]/g))
      copy(normalize(join(dirname(rel), m[1] as string)));
  };
  copy('cli.js');
  copy('index.js');
  writeFileSync(join(into, 'package.json'), '{ "type": "module" }\n');
  chmodSync(join(into, 'cli.js'), 0o755);
  return { cli: join(into, 'cli.js'), index: join(into, 'index.js'), id: hash.digest('hex').slice(0, 12) };
}

function newDir(name: string): { root: string; state: string } {
  const root = join(TMP, name);
  mkdirSync(root, { recursive: true });
  return { root, state: join(root, 'state') };
}

function fixture(name: string, file: string, args: Record<string, unknown>, cwd: string): Child {
  return new Child(name, [join(FIXTURES, file), JSON.stringify({ lib: DIST_INDEX, ...args })], {
    env: envWith({}),
    cwd,
    stdin: true,
  });
}

async function startFixture(
  name: string,
  file: string,
  args: Record<string, unknown>,
  cwd: string,
): Promise<Child> {
  const c = fixture(name, file, args, cwd);
  await c.waitEv('ready', 20_000);
  return c;
}

async function openLib(state: string, config: Record<string, number> = {}): Promise<Coordinator> {
  const store = new lib.FsStore(state);
  await store.open({ create: true });
  return new lib.Coordinator(store, { config, probe: lib.probeProcess });
}

/** Polls the master register (every 2 ms, sooner on a file event) until `pred` holds. */
async function waitMaster(
  coord: Coordinator,
  pred: (m: MasterRecord) => boolean,
  timeoutMs: number,
): Promise<{ at: number; m: MasterRecord }> {
  const end = now() + timeoutMs;
  for (;;) {
    const m = await coord.master();
    const at = now();
    if (pred(m)) return { at, m };
    if (at > end)
      throw new Error(`master register did not change within ${timeoutMs} ms (still ${m.sessionId})`);
    await coord.waitForChange('master', 2);
  }
}

function runCli(
  args: string[],
  env: NodeJS.ProcessEnv,
  cwd: string,
): { ms: number; code: number | null; out: string } {
  const t = now();
  const r = spawnSync(process.execPath, [CLI, ...args], { env, cwd, encoding: 'utf8' });
  const dt = now() - t;
  return { ms: dt, code: r.status, out: r.stdout };
}

// ---------------------------------------------------------------------------------------------- 0: baseline

async function benchBaseline(): Promise<void> {
  const n = QUICK ? 100 : 300;
  const s = section(
    0,
    'Baseline: the machine itself',
    `Floors the other figures stand on, measured in the bench process: ${n} times create + write 200 bytes + fsync + ` +
      'close of a new file in the temp dir (every durable write of the file backend pays at least this: a task ' +
      'add, a completion, a register version), and the same without fsync.',
  );
  const { root } = newDir('baseline');
  const data = 'x'.repeat(200);
  const durable: number[] = [];
  const plain: number[] = [];
  for (let i = 0; i < n; i++) {
    for (const sync of [true, false]) {
      const t = now();
      const fd = openSync(join(root, `${sync ? 'd' : 'p'}${i}`), 'wx');
      writeSync(fd, data);
      if (sync) fsyncSync(fd);
      closeSync(fd);
      (sync ? durable : plain).push(now() - t);
    }
  }
  s.rows.push({
    metric: `Create + write + fsync a small file: p50 / p99 (n=${n})`,
    measured: `${ms(median(durable))} / ${ms(pct(durable, 99))}`,
    target: '\u2014',
    ok: null,
  });
  s.rows.push({
    metric: `Create + write a small file, no fsync: p50 / p99 (n=${n})`,
    measured: `${ms(median(plain))} / ${ms(pct(plain, 99))}`,
    target: '\u2014',
    ok: null,
  });
}

// ---------------------------------------------------------------------------------------------- 1 + 2: master failover

async function startHold(id: string, env: NodeJS.ProcessEnv, cwd: string, pool: Child[]): Promise<Child> {
  const c = new Child(id, [CLI, 'join', '--session', id, '--hold', '--json'], { env, cwd, stdin: false });
  await c.waitFor((m) => m.session === id && m.event === undefined && typeof m.role === 'string', 20_000);
  pool.push(c);
  return c;
}

async function benchFailoverKill(): Promise<void> {
  const TTL = 2000;
  const trials = QUICK ? 20 : 40;
  const s = section(
    1,
    'Master failover after SIGKILL',
    `${trials} trials. Three \`node dist/cli.js join --session hN --hold --json\` processes share a temp state directory ` +
      `with FLOWLOOM_SESSION_TTL=${TTL / 1000}s, so a failover faster than ${TTL / 1000} s can only come from provable death ` +
      '(pid + start time in /proc). The bench SIGKILLs the master (normally the last joiner) and measures (a) the time until the ' +
      'master register names another session (the bench polls it through the library every 2 ms, and on file events) and ' +
      '(b) the time until the first surviving hold process prints a role line naming the new master (stamped when the ' +
      'line reaches the bench). A fresh hold process then joins (and becomes master) for the next trial, after a random ' +
      '50-200 ms pause so that the kill falls at a random point of the holders\u2019 100 ms check period.',
  );
  const { root, state } = newDir('failover-kill');
  const env = envWith({ FLOWLOOM_DIR: state, FLOWLOOM_SESSION_TTL: `${TTL}ms` });
  const pool: Child[] = [];
  let seq = 0;
  for (let i = 0; i < 3; i++) await startHold(`h${++seq}`, env, root, pool);
  const coord = await openLib(state);
  const reg: number[] = [];
  const line: number[] = [];
  const reasons = new Map<string, number>();
  for (let t = 0; t < trials; t++) {
    const cur = await waitMaster(coord, (m) => pool.some((c) => c.name === m.sessionId), 5000);
    const victim = pool.find((c) => c.name === cur.m.sessionId) as Child;
    await sleep(50 + Math.random() * 150);
    const survivors = pool.filter((c) => c !== victim);
    const marks = survivors.map((c) => c.mark());
    const t0 = now();
    victim.kill('SIGKILL');
    const regP = waitMaster(coord, (m) => m.sessionId !== null && m.sessionId !== victim.name, 10_000);
    const lineP = Promise.any(
      survivors.map((c, i) =>
        c.waitFor(
          (m) => m.event === 'role' && typeof m.master === 'string' && m.master !== victim.name,
          10_000,
          marks[i],
        ),
      ),
    );
    const [r, l] = await Promise.all([regP, lineP]);
    reg.push(r.at - t0);
    line.push(l.at - t0);
    reasons.set(r.m.reason, (reasons.get(r.m.reason) ?? 0) + 1);
    pool.splice(pool.indexOf(victim), 1);
    await victim.exit();
    await startHold(`h${++seq}`, env, root, pool);
  }
  await Promise.all(pool.map((c) => c.stop()));
  await coord.store.close();
  const target = 250;
  s.rows.push({
    metric: `Failover after SIGKILL, register changed: p50 / p99 (n=${trials})`,
    measured: `${ms(median(reg))} / ${ms(pct(reg, 99))}`,
    target: `p99 \u2264 ${target} ms`,
    ok: pct(reg, 99) <= target,
  });
  s.rows.push({
    metric: `Failover after SIGKILL, first hold process prints the new master: p50 / p99 (n=${trials})`,
    measured: `${ms(median(line))} / ${ms(pct(line, 99))}`,
    target: `p99 \u2264 ${target} ms`,
    ok: pct(line, 99) <= target,
  });
  s.notes.push(
    `Max ${ms(max(reg))} (register), ${ms(max(line))} (printed); session TTL ${TTL} ms; reasons recorded in the new master records: ${[...reasons].map(([k, v]) => `${k} \u00d7${v}`).join(', ')}.`,
  );
}

async function benchFailoverStop(): Promise<void> {
  const TTL = 2000;
  const TICK = Math.min(100, Math.max(50, Math.floor(TTL / 3)));
  const trials = QUICK ? 3 : 8;
  const s = section(
    2,
    'Hung master (SIGSTOP) replaced',
    `${trials} trials, FLOWLOOM_SESSION_TTL=${TTL / 1000}s, three hold processes as in 1. The bench SIGSTOPs the master ` +
      '(its process still exists, so only the heartbeat TTL can reveal it) and measures the time until the master ' +
      'register names another session. It also reads the stopped master\u2019s last heartbeat (the mtime of its ' +
      'session file) just before the stop, and reports how long after that heartbeat\u2019s TTL ran out the replacement ' +
      `happened. Target: at most TTL + one poll period of a holding session (${TICK} ms: \`join --hold\` checks the master ` +
      'every min(100 ms, TTL/3)). The stopped process is then SIGKILLed and a fresh hold process joins.',
  );
  const { root, state } = newDir('failover-stop');
  const env = envWith({ FLOWLOOM_DIR: state, FLOWLOOM_SESSION_TTL: `${TTL}ms` });
  const pool: Child[] = [];
  let seq = 0;
  for (let i = 0; i < 3; i++) await startHold(`g${++seq}`, env, root, pool);
  const coord = await openLib(state);
  const replaced: number[] = [];
  const lag: number[] = [];
  for (let t = 0; t < trials; t++) {
    const cur = await waitMaster(coord, (m) => pool.some((c) => c.name === m.sessionId), 5000);
    const victim = pool.find((c) => c.name === cur.m.sessionId) as Child;
    await sleep(100 + Math.random() * 600);
    const hb = (await coord.store.getSession(victim.name))?.heartbeatAt ?? Number.NaN;
    const t0 = now();
    victim.kill('SIGSTOP');
    const r = await waitMaster(
      coord,
      (m) => m.sessionId !== null && m.sessionId !== victim.name,
      TTL + 10_000,
    );
    replaced.push(r.at - t0);
    lag.push(r.at - (hb + TTL));
    victim.kill('SIGKILL');
    pool.splice(pool.indexOf(victim), 1);
    await victim.exit();
    await startHold(`g${++seq}`, env, root, pool);
  }
  await Promise.all(pool.map((c) => c.stop()));
  await coord.store.close();
  s.rows.push({
    metric: `Hung master replaced after SIGSTOP (TTL ${TTL} ms): p50 / max (n=${trials})`,
    measured: `${ms(median(replaced))} / ${ms(max(replaced))}`,
    target: `max \u2264 TTL + ${TICK} ms = ${TTL + TICK} ms`,
    ok: max(replaced) <= TTL + TICK,
  });
  s.rows.push({
    metric: 'Hung master: replacement after its heartbeat TTL ran out: p50 / max',
    measured: `${ms(median(lag))} / ${ms(max(lag))}`,
    target: `max \u2264 ${TICK} ms`,
    ok: max(lag) <= TICK,
  });
}

// ---------------------------------------------------------------------------------------------- 3: dead agent's task

async function benchDeadAgentTask(): Promise<void> {
  const pollMs = lib.DEFAULT_CONFIG.pollMs;
  const killTrials = QUICK ? 20 : 25;
  const stopTrials = QUICK ? 3 : 6;
  const LEASE = 2000;
  const s = section(
    3,
    'Dead agent\u2019s task claimable again',
    `A holder fixture (library, session tied to its process) claims a task and heartbeats; a claimer fixture is blocked ` +
      `in \`claimTask(id, { waitMs })\` with the default poll period (${pollMs} ms). After a random pause of up to one poll ` +
      'period (so the kill lands at a random phase of the claimer\u2019s poll), the bench kills the holder and measures ' +
      'the time until the claimer holds the task (stamped inside the claimer right after claimTask returns). ' +
      `SIGKILL: ${killTrials} trials with a 30 s lease, so only provable death (reap: pid + start time) can free it in time. ` +
      `SIGSTOP: ${stopTrials} trials with a ${LEASE / 1000} s lease renewed every ${Math.round(LEASE / 3)} ms; a stopped ` +
      'process is alive to /proc, so only the lapsed lease frees the task (the claimer starts waiting at a random ' +
      'offset from the holder\u2019s renewal schedule). Target for SIGSTOP: lease + one poll period.',
  );
  const { root, state } = newDir('dead-agent');
  const coord = await openLib(state);
  const claimer = await startFixture('claimer', 'claimer.mjs', { dir: state, id: 'claimer' }, root);
  const run = async (i: number, sig: 'SIGKILL' | 'SIGSTOP', leaseMs: number) => {
    const holder = await startFixture(
      `holder${i}`,
      'holder.mjs',
      { dir: state, id: `holder-${i}`, leaseMs, beatMs: Math.round(leaseMs / 3) },
      root,
    );
    await coord.addTask({ title: `held task ${i}` });
    const hm = holder.mark();
    holder.send('claim');
    const claimed = await holder.waitEv('claimed', 10_000, hm);
    if (claimed.task === null) throw new Error('holder could not claim its task');
    // The holder renews on a fixed grid from its claim; shift the claimer's poll grid against it by a random
    // amount, or a lapsed lease would always be noticed at the same phase of the claimer's poll.
    if (sig === 'SIGSTOP') await sleep(Math.random() * pollMs);
    const cm = claimer.mark();
    claimer.send('claim');
    await claimer.waitEv('waiting', 10_000, cm);
    await sleep(30 + Math.random() * pollMs);
    const lease = (await coord.store.listActive()).find((a) => a.task.id === claimed.task)?.lease;
    const t0 = now();
    holder.kill(sig);
    const got = await claimer.waitEv('claimed', leaseMs + 20_000, cm);
    if (got.task !== claimed.task)
      throw new Error(`claimer got ${String(got.task)}, expected ${String(claimed.task)}`);
    await claimer.waitEv('completed', 10_000, cm);
    holder.kill('SIGKILL');
    await holder.exit();
    const t = Number(got.t);
    return { latency: t - t0, afterExpiry: lease ? t - (lease.renewedAt + lease.leaseMs) : Number.NaN };
  };
  const kill: number[] = [];
  for (let i = 0; i < killTrials; i++) kill.push((await run(i, 'SIGKILL', 30_000)).latency);
  const stop: number[] = [];
  const stopLag: number[] = [];
  for (let i = 0; i < stopTrials; i++) {
    const r = await run(killTrials + i, 'SIGSTOP', LEASE);
    stop.push(r.latency);
    stopLag.push(r.afterExpiry);
  }
  await claimer.stop();
  await coord.store.close();
  s.rows.push({
    metric: `Task claimable again after holder SIGKILL: p50 / p99 (n=${killTrials})`,
    measured: `${ms(median(kill))} / ${ms(pct(kill, 99))}`,
    target: 'p99 \u2264 1,000 ms',
    ok: pct(kill, 99) <= 1000,
  });
  s.rows.push({
    metric: `Task claimable again after holder SIGSTOP (lease ${LEASE} ms): p50 / max (n=${stopTrials})`,
    measured: `${ms(median(stop))} / ${ms(max(stop))}`,
    target: `max \u2264 lease + poll = ${LEASE + pollMs} ms`,
    ok: max(stop) <= LEASE + pollMs,
  });
  s.notes.push(
    `SIGSTOP: the claim came ${ms(median(stopLag))} (median) / ${ms(max(stopLag))} (max) after the lease expired.`,
  );
}

// ---------------------------------------------------------------------------------------------- 4: enqueue -> claim

async function benchEnqueueToClaim(): Promise<void> {
  const samples = QUICK ? 200 : 400;
  const warm = 20;
  const s = section(
    4,
    'Enqueue-to-claim latency with an agent waiting',
    `${samples} samples after ${warm} warm-up ones. A claimer fixture loops \`claimTask(id, { waitMs: 60000 })\` \u2192 ` +
      'completeTask, so between tasks it waits on file events (poll period 500 ms as a safety net). An enqueuer fixture, ' +
      'another process, stamps the time just before `addTask` on each command from the bench; the claimer stamps the ' +
      'time right after claimTask returns. The bench sends the next command 3-13 ms after the claimer said it is ' +
      'waiting again, one task at a time.',
  );
  const { root, state } = newDir('enqueue-claim');
  const claimer = await startFixture('claimer', 'claimer.mjs', { dir: state, id: 'claimer' }, root);
  const enq = await startFixture('enqueuer', 'enqueuer.mjs', { dir: state }, root);
  const lat: number[] = [];
  const addMs: number[] = [];
  let cm = claimer.mark();
  claimer.send('loop');
  for (let i = 0; i < warm + samples; i++) {
    await claimer.waitEv('waiting', 10_000, cm);
    await sleep(3 + Math.random() * 10);
    cm = claimer.mark();
    const em = enq.mark();
    enq.send('add');
    const added = await enq.waitEv('added', 10_000, em);
    const got = await claimer.waitEv('claimed', 10_000, cm);
    cm = claimer.msgs.indexOf(got) + 1;
    if (got.task !== added.task) throw new Error(`claimed ${String(got.task)}, added ${String(added.task)}`);
    if (i >= warm) {
      lat.push(Number(got.t) - Number(added.t0));
      addMs.push(Number(added.t1) - Number(added.t0));
    }
  }
  await Promise.all([claimer.stop(), enq.stop()]);
  s.rows.push({
    metric: `Enqueue\u2192claim, agent waiting: p50 (n=${samples})`,
    measured: ms(median(lat)),
    target: 'p50 \u2264 5 ms',
    ok: median(lat) <= 5,
  });
  s.rows.push({
    metric: 'Enqueue\u2192claim, agent waiting: p99',
    measured: ms(pct(lat, 99)),
    target: 'p99 \u2264 20 ms',
    ok: pct(lat, 99) <= 20,
  });
  s.notes.push(
    `addTask alone (inside the enqueuer): p50 ${ms(median(addMs))}, p99 ${ms(pct(addMs, 99))}. ` +
      `Latency max ${ms(max(lat))}; samples over 100 ms: ${lat.filter((x) => x > 100).length}.`,
  );
}

// ---------------------------------------------------------------------------------------------- 5: throughput

async function benchThroughput(): Promise<void> {
  const N = QUICK ? 1000 : 2000;
  const deadlineMs = QUICK ? 10_000 : 15_000;
  const counts = [1, 2, 8];
  const s = section(
    5,
    'Enqueue + claim + complete throughput',
    `For each worker count, a fresh state directory gets ${N.toLocaleString('en-US')} tasks enqueued through the library ` +
      'by the bench process (one `addTask` after another: the enqueue rate). Then the worker fixtures (one process each, ' +
      'joined as sessions) get a start signal and loop claimTask(waitMs 0) \u2192 completeTask until the queue is empty ' +
      `(or ${deadlineMs / 1000} s passed). Throughput = tasks completed / (last completion \u2212 start signal). ` +
      'Each worker also sums the time it spent inside claimTask and inside completeTask.',
  );
  const enqRates: number[] = [];
  const breakdown: string[] = [];
  for (const w of counts) {
    const { root, state } = newDir(`throughput-${w}`);
    const coord = await openLib(state);
    const t = now();
    for (let i = 0; i < N; i++) await coord.addTask({ title: `task ${i}` });
    enqRates.push((N / (now() - t)) * 1000);
    await coord.store.close();
    const workers = await Promise.all(
      Array.from({ length: w }, (_, i) =>
        startFixture(`w${i}`, 'worker.mjs', { dir: state, id: `w${i}`, deadlineMs }, root),
      ),
    );
    const marks = workers.map((c) => c.mark());
    const tGo = now();
    for (const c of workers) c.send('go');
    const done = await Promise.all(workers.map((c, i) => c.waitEv('done', deadlineMs + 30_000, marks[i])));
    const total = done.reduce((a, d) => a + Number(d.n), 0);
    const wall = max(done.map((d) => Number(d.tEnd))) - tGo;
    const rate = (total / wall) * 1000;
    const claimMs = done.reduce((a, d) => a + Number(d.claimMs), 0);
    const completeMs = done.reduce((a, d) => a + Number(d.completeMs), 0);
    const timedOut = done.some((d) => d.timedOut === true);
    await Promise.all(workers.map((c) => c.stop()));
    breakdown.push(
      `${w} worker${w > 1 ? 's' : ''}: ${num(total)} tasks in ${ms(wall)}${timedOut ? ' (deadline hit)' : ''}; per task ` +
        `${ms(claimMs / total)} in claimTask, ${ms(completeMs / total)} in completeTask (summed over workers)`,
    );
    s.rows.push({
      metric: `Claim + complete throughput, ${w} worker process${w > 1 ? 'es' : ''} (${num(N)} queued)`,
      measured: `${num(rate)} tasks/s`,
      target: w === 8 ? '\u2265 2,000 tasks/s' : '\u2014',
      ok: w === 8 ? rate >= 2000 : null,
    });
  }
  s.rows.push({
    metric: `Enqueue rate, one process, sequential addTask: median of ${enqRates.length} runs of ${num(N)}`,
    measured: `${num(median(enqRates))} tasks/s`,
    target: '\u2014',
    ok: null,
  });
  s.notes.push(...breakdown);
}

// ---------------------------------------------------------------------------------------------- 6: one CLI invocation

async function benchCli(): Promise<void> {
  const runs = QUICK ? 20 : 25;
  const s = section(
    6,
    'One CLI invocation',
    `${runs} runs of each command (after one warm-up round), interleaved round-robin so that drift hits all alike; each ` +
      'timed from spawn to exit with spawnSync in an initialised directory with one joined session and an empty queue. ' +
      '`node -e 0` is the floor: starting Node itself.',
  );
  const { root, state } = newDir('cli');
  const env = envWith({ FLOWLOOM_DIR: state });
  const init = runCli(['init', '--json'], env, root);
  if (init.code !== 0) throw new Error(`init failed: ${init.out}`);
  const join_ = runCli(['join', '--session', 'b1', '--json'], env, root);
  if (join_.code !== 0) throw new Error(`join failed: ${join_.out}`);
  const cmds: { name: string; args: string[]; code: number; t: number[] }[] = [
    { name: '`node -e 0`', args: [], code: 0, t: [] },
    { name: '`--version` (loads only dist/cli.js)', args: ['--version'], code: 0, t: [] },
    { name: '`status --json`', args: ['status', '--json'], code: 0, t: [] },
    {
      name: '`task claim --json` (empty queue, exit 3)',
      args: ['task', 'claim', '--session', 'b1', '--json'],
      code: 3,
      t: [],
    },
    { name: '`heartbeat --json`', args: ['heartbeat', '--session', 'b1', '--json'], code: 0, t: [] },
  ];
  for (let r = -1; r < runs; r++) {
    for (const c of cmds) {
      let res: { ms: number; code: number | null };
      if (c.args.length === 0) {
        const t = now();
        const x = spawnSync(process.execPath, ['-e', '0'], { env, cwd: root });
        res = { ms: now() - t, code: x.status };
      } else res = runCli(c.args, env, root);
      if (res.code !== c.code) throw new Error(`${c.name} exited ${res.code}, expected ${c.code}`);
      if (r >= 0) c.t.push(res.ms);
    }
  }
  const base = median(cmds[0]?.t ?? []);
  for (const c of cmds) {
    const p50 = median(c.t);
    const ratio = p50 / base;
    const isStatus = c.args[0] === 'status';
    s.rows.push({
      metric: `${c.name}: p50 (n=${runs})${c.args.length ? ', ratio to `node -e 0`' : ''}`,
      measured: c.args.length ? `${ms(p50)} (\u00d7${ratio.toFixed(2)})` : ms(p50),
      target: isStatus ? 'ratio \u2264 1.5' : '\u2014',
      ok: isStatus ? ratio <= 1.5 : null,
    });
  }
  s.notes.push(`p90 of each, in the order above: ${cmds.map((c) => ms(pct(c.t, 90))).join(', ')}.`);
}

// ---------------------------------------------------------------------------------------------- 7: status vs history

function completedTask(i: number, at: number): TaskRecord {
  const id = `h-${i.toString(36).padStart(6, '0')}`;
  return {
    id,
    title: `finished task ${i}`,
    prompt: '',
    needs: [],
    priority: 0,
    after: [],
    command: null,
    resources: [],
    maxAttempts: 3,
    timeoutMs: null,
    to: null,
    createdAt: at - 1000,
    createdBy: null,
    orderKey: `${(at - 1000).toString(36).padStart(9, '0')}${(i % 1_679_616).toString(36).padStart(4, '0')}bnch`,
    attempts: [
      {
        session: 'b1',
        token: 'benchtoken',
        claimedAt: at - 500,
        endedAt: at,
        outcome: 'completed',
        reason: 'ok',
      },
    ],
    result: { summary: 'ok' },
    progress: null,
    finalReason: null,
    finishedAt: at,
  };
}

async function benchStatusHistory(): Promise<void> {
  const sizes = QUICK ? [10_000] : [0, 10_000, 100_000];
  const runs = QUICK ? 10 : 15;
  const keep = lib.DEFAULT_CONFIG.keepFinished;
  const s = section(
    7,
    '`status` cost as history grows',
    `For each size, a fresh directory (init + one joined session) gets that many completed task files written directly ` +
      'into tasks/completed/ (the JSON shape the store writes). The first `status --json` runs compaction ' +
      `(reap \u2192 store.compact, keeping ${keep.toLocaleString('en-US')} finished files and archiving the rest); it is ` +
      `timed on its own, then ${runs} more runs give the steady-state p50. The bench counts tasks/completed/ after the ` +
      'first call and checks that the reported completed count still includes the archived tasks.',
  );
  for (const n of sizes) {
    const { root, state } = newDir(`history-${n}`);
    const env = envWith({ FLOWLOOM_DIR: state });
    runCli(['init', '--json'], env, root);
    runCli(['join', '--session', 'b1', '--json'], env, root);
    const dir = join(state, 'tasks', 'completed');
    const base = Date.now() - n - 60_000;
    for (let i = 0; i < n; i++) {
      const t = completedTask(i, base + i);
      writeFileSync(join(dir, `${t.id}.json`), JSON.stringify(t), { mode: 0o600 });
    }
    const first = runCli(['status', '--json'], env, root);
    if (first.code !== 0) throw new Error(`status failed: ${first.out.slice(0, 500)}`);
    const files = readdirSync(dir).filter((f) => f.endsWith('.json')).length;
    const reported = (JSON.parse(first.out) as { queue: { counts: { completed: number } } }).queue.counts
      .completed;
    const t: number[] = [];
    for (let r = 0; r < runs; r++) {
      const x = runCli(['status', '--json'], env, root);
      if (x.code !== 0) throw new Error('status failed');
      t.push(x.ms);
    }
    s.rows.push({
      metric: `\`status --json\` with ${num(n)} finished tasks: first call / p50 after (n=${runs})`,
      measured: `${ms(first.ms)} / ${ms(median(t))}`,
      target: '\u2014',
      ok: null,
    });
    if (n > 0) {
      s.rows.push({
        metric: `Files in tasks/completed after that first status (${num(n)} finished)`,
        measured: `${num(files)} (status reports ${num(reported)} completed)`,
        target: `\u2264 keepFinished = ${num(keep)}`,
        ok: files <= keep && reported === n,
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------- 8: locks

async function benchLocks(): Promise<void> {
  const rounds = QUICK ? 200 : 500;
  const contendMs = QUICK ? 3000 : 6000;
  const s = section(
    8,
    'Resource locks',
    `Uncontended: one fixture process does ${rounds} rounds of acquireLocks + releaseLocks on one resource nobody else ` +
      `wants. Contended: 8 fixture processes loop acquire (waitMs 60 s: fair queue with tickets, woken by file events) ` +
      `\u2192 release on the same resource for ${contendMs / 1000} s, holding it for no time at all (the worst case for ` +
      `the cost of a handoff); acquisitions/s = total acquisitions / wall time, ` +
      'and the wait is the duration of each acquireLocks call.',
  );
  const { root, state } = newDir('locks');
  const solo = await startFixture(
    'solo',
    'locker.mjs',
    { dir: state, id: 'solo', resource: 'file:solo.txt' },
    root,
  );
  const m = solo.mark();
  solo.send(`uncontended ${rounds}`);
  const r = (await solo.waitEv('done', 120_000, m)).rounds as number[];
  await solo.stop();
  const lockers = await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      startFixture(`l${i}`, 'locker.mjs', { dir: state, id: `l${i}`, resource: 'git' }, root),
    ),
  );
  const marks = lockers.map((c) => c.mark());
  for (const c of lockers) c.send(`contend ${contendMs}`);
  const done = await Promise.all(lockers.map((c, i) => c.waitEv('done', contendMs + 60_000, marks[i])));
  await Promise.all(lockers.map((c) => c.stop()));
  const waits = done.flatMap((d) => d.waits as number[]);
  const wall = max(done.map((d) => Number(d.tEnd))) - Math.min(...done.map((d) => Number(d.start)));
  const perProc = done.map((d) => Number(d.n));
  s.rows.push({
    metric: `Lock acquire + release, uncontended: p50 / p99 (n=${rounds})`,
    measured: `${ms(median(r))} / ${ms(pct(r, 99))}`,
    target: '\u2014',
    ok: null,
  });
  s.rows.push({
    metric: '8 processes contending for one lock: acquisitions/s',
    measured: `${num((waits.length / wall) * 1000)} /s`,
    target: '\u2014',
    ok: null,
  });
  s.rows.push({
    metric: `8 processes contending: wait per acquire p50 / p99 (n=${waits.length})`,
    measured: `${ms(median(waits))} / ${ms(pct(waits, 99))}`,
    target: '\u2014',
    ok: null,
  });
  s.notes.push(`Acquisitions per process: ${perProc.join(', ')} (fairness).`);
}

// ---------------------------------------------------------------------------------------------- report

function fsTypeOf(path: string): string {
  try {
    const mounts = readFileSync('/proc/mounts', 'utf8')
      .split('\n')
      .map((l) => l.split(' '))
      .filter((p) => p.length >= 3)
      .map((p) => ({ at: (p[1] as string).replace(/\\040/g, ' '), type: p[2] as string }));
    let best = { at: '', type: 'unknown' };
    for (const m of mounts) {
      const inside = path === m.at || path.startsWith(m.at.endsWith('/') ? m.at : `${m.at}/`);
      if (inside && m.at.length >= best.at.length) best = m;
    }
    if (best.type !== 'unknown') return best.type;
  } catch {
    // no /proc/mounts: fall back to the magic number
  }
  try {
    return `f_type 0x${Number(statfsSync(path).type).toString(16)}`;
  } catch {
    return 'unknown';
  }
}

function machine(): string[] {
  const cpus = os.cpus();
  return [
    `- CPU: ${cpus[0]?.model.trim() ?? 'unknown'} \u00d7 ${cpus.length}`,
    `- Memory: ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
    `- OS: ${os.type()} ${os.release()} (${os.arch()})`,
    `- Node: ${process.version}`,
    `- Temp dir: ${os.tmpdir()} on ${fsTypeOf(os.tmpdir())}`,
    `- Load average (1/5/15 min) at start: ${LOAD_START.map((x) => x.toFixed(2)).join(' / ')}; at end: ${os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' / ')} (other work on the machine inflates every figure)`,
    `- Build: snapshot of dist/ (cli.js, index.js and their chunks), content hash ${BUILD_ID}`,
  ];
}

function table(): string[] {
  const out = ['| # | Metric | Measured | Target | OK? |', '|---|---|---|---|---|'];
  for (const s of ordered()) {
    for (const r of s.rows) {
      const ok = r.ok === null ? 'info' : r.ok ? 'yes' : '**NO**';
      out.push(`| ${s.n} | ${r.metric} | ${r.measured} | ${r.target} | ${ok} |`);
    }
  }
  return out;
}

/** Sections in metric order (they run in another order, see BENCHES). */
function ordered(): Section[] {
  return [...sections].sort((a, b) => a.n - b.n);
}

function printTable(): void {
  const rows = ordered().flatMap((s) => s.rows.map((r) => ({ n: String(s.n), ...r })));
  const ok = (r: Row) => (r.ok === null ? 'info' : r.ok ? 'yes' : 'NO');
  const w = [
    1,
    Math.max(6, ...rows.map((r) => r.metric.length)),
    Math.max(8, ...rows.map((r) => r.measured.length)),
    Math.max(6, ...rows.map((r) => r.target.length)),
    4,
  ];
  const line = (c: string[]) => c.map((x, i) => x.padEnd(w[i] ?? 0)).join(' | ');
  console.log(line(['#', 'metric', 'measured', 'target', 'ok?']));
  console.log(w.map((x) => '-'.repeat(x)).join('-|-'));
  for (const r of rows) console.log(line([r.n, r.metric, r.measured, r.target, ok(r)]));
  for (const s of ordered()) for (const n of s.notes) console.log(`  ${s.n}. ${n}`);
}

function writeDoc(started: Date, elapsedS: number): void {
  const lines = [
    '# Benchmarks',
    '',
    '<!-- Generated by `npm run bench` (bench/run.ts); do not edit by hand. Targets live in bench/run.ts only. -->',
    '',
    `Run on ${started.toISOString().slice(0, 10)} (${started.toISOString()}), ${QUICK ? 'quick' : 'full'} run, ${Math.round(elapsedS)} s. ` +
      'File backend; every figure is a median or percentile over repeated runs made in this run. Sections run one ' +
      'at a time in the order 0-6, 8, 7 (7 last: its 100,000-file writeback would slow later fsyncs), with `sync` and ' +
      'a 1 s pause between them. Run it again with `npm run bench` (`--quick` for a short run).',
    '',
    '## Machine',
    '',
    ...machine(),
    '',
    '## Results',
    '',
    ...table(),
    '',
    '## Method',
    '',
  ];
  for (const s of ordered()) {
    lines.push(`### ${s.n}. ${s.title}`, '', s.method, '');
    for (const n of s.notes) lines.push(`- ${n}`);
    if (s.notes.length) lines.push('');
  }
  mkdirSync(dirname(DOC), { recursive: true });
  writeFileSync(DOC, `${lines.join('\n').trimEnd()}\n`);
}

// ---------------------------------------------------------------------------------------------- main

const BENCHES: [number, () => Promise<void>][] = [
  [0, benchBaseline],
  [1, benchFailoverKill],
  [2, benchFailoverStop],
  [3, benchDeadAgentTask],
  [4, benchEnqueueToClaim],
  [5, benchThroughput],
  [6, benchCli],
  [8, benchLocks],
  // Last: it writes and archives 100,000 files, and the writeback that follows slows every fsync for a while.
  [7, benchStatusHistory],
];

/** Between sections: flush dirty pages so one section's writeback does not slow the next one's fsyncs. */
async function settle(): Promise<void> {
  spawnSync('sync', [], { stdio: 'ignore' });
  await sleep(1000);
}

async function main(): Promise<number> {
  if (WAIT_IDLE !== null) {
    const until = now() + 10 * 60_000;
    while ((os.loadavg()[0] ?? 0) >= WAIT_IDLE && now() < until) {
      log(
        `waiting for the 1-minute load average (${(os.loadavg()[0] ?? 0).toFixed(2)}) to drop below ${WAIT_IDLE} ...`,
      );
      await sleep(10_000);
    }
  }
  const started = new Date();
  const t0 = now();
  LOAD_START = os.loadavg();
  TMP = mkdtempSync(join(os.tmpdir(), 'flowloom-bench-'));
  const snap = snapshotDist(join(TMP, 'dist'));
  CLI = snap.cli;
  DIST_INDEX = snap.index;
  BUILD_ID = snap.id;
  lib = (await import(pathToFileURL(DIST_INDEX).href)) as Lib;
  log(`flowloom bench (${QUICK ? 'quick' : 'full'}) in ${TMP}, build ${BUILD_ID}`);
  try {
    for (const [n, fn] of BENCHES) {
      if (ONLY.size && !ONLY.has(n)) continue;
      const t = now();
      log(`[${n}] ${fn.name} ...`);
      await fn();
      await settle();
      log(`[${n}] done in ${((now() - t) / 1000).toFixed(1)} s`);
    }
  } finally {
    killAllChildren();
    if (KEEP) log(`kept ${TMP}`);
    else rmSync(TMP, { recursive: true, force: true });
  }
  const elapsed = (now() - t0) / 1000;
  console.log('');
  printTable();
  console.log(`\n${QUICK ? 'quick' : 'full'} run: ${elapsed.toFixed(0)} s`);
  if (WRITE_DOC) {
    writeDoc(started, elapsed);
    console.log(`wrote ${DOC}`);
  } else {
    console.log('docs/benchmarks.md not written (quick or partial run; pass --write to write it anyway)');
  }
  return 0;
}

process.exitCode = await main();
