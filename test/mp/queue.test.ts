/**
 * Multi-process task queue: workers draining thousands of tasks while being SIGKILLed, fencing of a holder
 * whose lease lapsed, and fast reclaim of a task whose holder provably died.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import type * as FlowLoom from '../../src/index.ts';
import {
  type Child,
  Children,
  cleanup,
  delay,
  FIXTURES,
  runCli,
  SHORT_LEASES,
  snapshotDist,
  tempDir,
  waitFor,
} from './helpers.ts';

const children = new Children();
let cli = '';
let index = '';
let lib: typeof FlowLoom;

before(async () => {
  ({ cli, index } = await snapshotDist());
  lib = (await import(pathToFileURL(index).href)) as typeof FlowLoom;
});

after(async () => {
  await children.killAll();
  cleanup();
});

const TOTAL = 3000;
const WORKERS = 8;
const MIN_KILLS = 100;

/** Files of one task state directory, without temp files. */
function taskFiles(dir: string, state: string): string[] {
  const d = join(dir, 'tasks', state);
  return existsSync(d) ? readdirSync(d).filter((n) => !n.startsWith('.tmp-')) : [];
}

describe('task queue across processes', () => {
  test(`${WORKERS} workers drain ${TOTAL} tasks despite ${MIN_KILLS}+ SIGKILLs`, async () => {
    const root = tempDir('drain');
    const dir = join(root, 'state');
    const execLog = join(root, 'executions.log');
    const config = {
      sessionTtlMs: 1000,
      taskLeaseMs: 2000,
      pollMs: 100,
      maxAttempts: 50,
      keepFinished: 1_000_000,
    };

    // Enqueue through the library (not durable: a power loss is not what this test is about).
    const t0 = Date.now();
    const store = new lib.FsStore(dir, { durable: false });
    await store.open({ create: true });
    const coord = new lib.Coordinator(store, { config });
    const ids = new Set<string>();
    for (let i = 0; i < TOTAL; i++) ids.add((await coord.addTask({ title: `task ${i}` })).id);
    await store.close();
    const enqueueMs = Date.now() - t0;
    assert.equal(ids.size, TOTAL);

    const env = {
      FLOWLOOM_DIR: dir,
      FLOWLOOM_INDEX: index,
      FLOWLOOM_TEST_CONFIG: JSON.stringify(config),
      EXEC_LOG: execLog,
      EXEC_MS: '2',
      TOTAL: String(TOTAL),
    };
    let nextId = 0;
    const workers: Child[] = [];
    const startWorker = () =>
      workers.push(children.spawn([join(FIXTURES, 'worker.mjs'), `w${nextId++}`], env));
    // A worker that claimed a task is in its loop of claim, execute, complete: killing it lands anywhere in it.
    const killed = new Set<Child>();
    const working = (w: Child) => !w.done && !killed.has(w) && w.json.some((l) => l.event === 'working');
    const finished = () => taskFiles(dir, 'completed').length;

    // A live master, as in real use: the workers join as agents, so killing them never moves mastership.
    const master = children.spawn(
      [cli, 'join', '--session', 'boss', '--mode', 'master', '--hold', '--json'],
      {
        ...SHORT_LEASES,
        FLOWLOOM_DIR: dir,
      },
    );
    await waitFor(() => master.json.length > 0, 20_000, 'the master to join');

    const t1 = Date.now();
    for (let i = 0; i < WORKERS; i++) startWorker();
    let kills = 0;
    while (kills < MIN_KILLS) {
      const pool = await waitFor(
        () => {
          const p = workers.filter(working);
          return p.length > 0 ? p : null;
        },
        30_000,
        'a working worker to kill',
      );
      const victim = pool[Math.floor(Math.random() * pool.length)]!;
      victim.proc.kill('SIGKILL');
      killed.add(victim);
      kills++;
      startWorker();
      assert.ok(finished() < TOTAL, `the queue drained after only ${kills} kills: make the tasks slower`);
      await delay(40); // pacing of the chaos, not a wait for a condition
    }
    const killPhaseMs = Date.now() - t1;
    const doneAtEndOfKills = finished();

    // Let the last workers drain the queue; they exit once every task is finished.
    await waitFor(() => workers.every((w) => w.done), 180_000, 'all workers to finish and exit');
    const drainMs = Date.now() - t1;
    assert.ok(!master.done, 'the master session stayed up');
    for (const w of workers) {
      if (w.signal === 'SIGKILL') continue;
      assert.equal(w.code, 0, `worker exited with ${w.code}: ${w.stderr.join('\n')}`);
    }

    // Every task is completed exactly once; none is pending, active, failed, cancelled or parked.
    for (const state of ['pending', 'active', 'failed', 'cancelled', 'requeue']) {
      assert.deepEqual(taskFiles(dir, state), [], `tasks left in ${state}/`);
    }
    const lines = readFileSync(execLog, 'utf8').trim().split('\n');
    const executions = new Map<string, number>();
    for (const l of lines) {
      const id = l.split(' ')[0]!;
      executions.set(id, (executions.get(id) ?? 0) + 1);
    }
    assert.equal(executions.size, TOTAL, 'every task was executed');
    const reExecutions = lines.length - TOTAL;

    const completed = taskFiles(dir, 'completed');
    assert.equal(completed.length, TOTAL, 'one completed file per task');
    const completedIds = new Set<string>();
    const outcomes: Record<string, number> = {};
    for (const name of completed) {
      const t = JSON.parse(
        readFileSync(join(dir, 'tasks', 'completed', name), 'utf8'),
      ) as FlowLoom.TaskRecord;
      assert.equal(`${t.id}.json`, name);
      completedIds.add(t.id);
      const wins = t.attempts.filter((a) => a.outcome === 'completed');
      assert.equal(wins.length, 1, `${t.id} completed ${wins.length} times: ${JSON.stringify(t.attempts)}`);
      assert.equal(t.attempts.at(-1)?.outcome, 'completed', `${t.id}: the completion is the last attempt`);
      assert.ok(t.result?.summary.startsWith('done by w'), `${t.id} has its result`);
      // Every execution began under a claim, and every claim ends as an attempt that is kept.
      const runs = executions.get(t.id) ?? 0;
      assert.ok(t.attempts.length >= runs, `${t.id}: ${runs} executions, ${t.attempts.length} attempts kept`);
      for (const a of t.attempts) outcomes[a.outcome] = (outcomes[a.outcome] ?? 0) + 1;
    }
    assert.deepEqual(
      [...ids].filter((id) => !completedIds.has(id)),
      [],
      'no task lost',
    );

    const fenced = workers.reduce(
      (n, w) => n + Number(w.json.find((l) => l.event === 'exit')?.fenced ?? 0),
      0,
    );
    console.log(
      `drain: ${TOTAL} tasks enqueued in ${enqueueMs} ms; ${kills} kills over ${killPhaseMs} ms ` +
        `(${doneAtEndOfKills} tasks done by then); ${workers.length} worker processes; all done after ${drainMs} ms; ` +
        `${lines.length} executions = ${reExecutions} re-executions; ${fenced} completions refused by fencing; ` +
        `attempt outcomes ${JSON.stringify(outcomes)}`,
    );
    assert.ok(reExecutions <= kills, `${reExecutions} re-executions for ${kills} kills`);
  });

  test("a stale holder's `task done` is refused with LEASE_EXPIRED; only the new holder completes", async () => {
    const dir = join(tempDir('stale-done'), 'state');
    const env = { ...SHORT_LEASES, FLOWLOOM_DIR: dir, FLOWLOOM_TASK_LEASE: '1s' };
    for (const s of ['first', 'second']) {
      assert.equal(
        (await runCli(children, cli, ['join', '--session', s, '--mode', 'agent', '--json'], env)).code,
        0,
      );
    }
    const added = await runCli(children, cli, ['task', 'add', 'refactor auth', '--json'], env);
    assert.equal(added.code, 0, added.stderr);
    const id = (added.json as { task: { id: string } }).task.id;

    const first = await runCli(children, cli, ['task', 'claim', '--session', 'first', '--json'], env);
    assert.equal(first.code, 0, first.stderr);
    const firstLease = (first.json as { lease: { token: string } }).lease;
    // The first holder never renews: after 1 s its lease lapses and the reaper returns the task.
    // The second holder takes a long lease: it must still hold the task when it completes it below.
    const second = await runCli(
      children,
      cli,
      ['task', 'claim', '--session', 'second', '--wait', '10s', '--lease', '60s', '--json'],
      env,
    );
    assert.equal(second.code, 0, second.stderr);
    const got = second.json as { task: { id: string }; lease: { token: string } };
    assert.equal(got.task.id, id);
    assert.notEqual(got.lease.token, firstLease.token);

    const stale = await runCli(children, cli, ['task', 'done', id, '--session', 'first', '--json'], env);
    assert.notEqual(stale.code, 0, 'the stale done must fail');
    assert.equal((stale.json as { error: { code: string } }).error.code, 'LEASE_EXPIRED', stale.stdout);
    const staleWithToken = await runCli(
      children,
      cli,
      ['task', 'done', id, '--session', 'first', '--token', firstLease.token, '--json'],
      env,
    );
    assert.notEqual(staleWithToken.code, 0);
    assert.equal((staleWithToken.json as { error: { code: string } }).error.code, 'LEASE_EXPIRED');

    const fresh = await runCli(
      children,
      cli,
      ['task', 'done', id, '--session', 'second', '--result', 'ok', '--json'],
      env,
    );
    assert.equal(fresh.code, 0, fresh.stderr);
    const shown = await runCli(children, cli, ['task', 'show', id, '--json'], env);
    const found = shown.json as { state: string; task: FlowLoom.TaskRecord };
    assert.equal(found.state, 'completed');
    assert.deepEqual(
      found.task.attempts.map((a) => [a.session, a.outcome]),
      [
        ['first', 'lapsed'],
        ['second', 'completed'],
      ],
    );
  });

  test("a dead agent's task is claimable again within about a second", async () => {
    const dir = join(tempDir('dead-holder'), 'state');
    const env = { ...SHORT_LEASES, FLOWLOOM_DIR: dir };
    assert.equal(
      (await runCli(children, cli, ['join', '--session', 'rescuer', '--mode', 'agent', '--json'], env)).code,
      0,
    );
    const added = await runCli(children, cli, ['task', 'add', 'flaky job', '--json'], env);
    const id = (added.json as { task: { id: string } }).task.id;
    // A 60 s lease: getting the task back early can only come from proving that the holder died.
    const holder = children.spawn([join(FIXTURES, 'claimer.mjs'), 'doomed', '60000'], {
      FLOWLOOM_DIR: dir,
      FLOWLOOM_INDEX: index,
      FLOWLOOM_TEST_CONFIG: JSON.stringify({ sessionTtlMs: 1000, taskLeaseMs: 2000, pollMs: 100 }),
    });
    const claimed = await waitFor(
      () => holder.json.find((l) => l.event === 'claimed'),
      20_000,
      'the fixture to claim',
    );
    assert.equal(claimed.task, id);

    const killedAt = Date.now();
    holder.proc.kill('SIGKILL');
    const r = await runCli(
      children,
      cli,
      ['task', 'claim', '--session', 'rescuer', '--wait', '5s', '--json'],
      env,
    );
    const reclaimMs = Date.now() - killedAt;
    assert.equal(r.code, 0, r.stderr);
    assert.equal((r.json as { task: { id: string } }).task.id, id);
    const shown = await runCli(children, cli, ['task', 'show', id, '--json'], env);
    const attempts = (shown.json as { task: FlowLoom.TaskRecord }).task.attempts;
    assert.deepEqual(
      attempts.map((a) => [a.session, a.outcome]),
      [['doomed', 'holder-died']],
    );
    console.log(
      `reclaim: task of SIGKILLed holder claimed by another session ${reclaimMs} ms after the kill`,
    );
    assert.ok(reclaimMs < 3000, `reclaim took ${reclaimMs} ms`);
  });
});
