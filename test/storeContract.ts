/**
 * The Store conformance suite: every backend runs this one file (see src/store/store.ts for the
 * contract in MUST/SHOULD words). A backend test file calls `runStoreContract` with a factory that
 * builds a fresh, opened store on the given ManualClock.
 */
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { ManualClock } from '../src/core/clock.ts';
import { ErrorCode, isFlowLoomError } from '../src/core/errors.ts';
import type { Report, SessionRecord, TaskRecord } from '../src/core/types.ts';
import type { RegisterName, Store, StoreProblem } from '../src/store/store.ts';

/** Damage a backend can inflict on its own stored data, for the damaged-records part of the suite. */
export type Damage =
  /** Overwrite the stored record of an existing session with `text`. */
  | { kind: 'session'; id: string; text: string }
  /** Store `text` where the pending task `task` would live (the task itself was never added). */
  | { kind: 'pendingTask'; task: TaskRecord; text: string }
  /** Overwrite an existing version of a register with `text`. */
  | { kind: 'register'; name: RegisterName; version: number; text: string };

export interface StoreFixture {
  store: Store;
  cleanup: () => Promise<void>;
  /** Writes garbage into the backend; the damaged-records tests are skipped without it. */
  corrupt?: (what: Damage) => Promise<void>;
  /** Everything the backend set aside so far (quarantine), with its content. */
  setAside?: () => Promise<{ where: string; text: string }[]>;
}

export type StoreFactory = (clock: ManualClock) => Promise<StoreFixture>;

// ---------------------------------------------------------------------------------------------------
// Record builders
// ---------------------------------------------------------------------------------------------------

let orderCounter = 0;

/** A valid pending task; `orderKey` grows with every call unless given. */
export function makeTask(id: string, over: Partial<TaskRecord> = {}): TaskRecord {
  orderCounter++;
  return {
    id,
    title: `task ${id}`,
    prompt: '',
    needs: [],
    priority: 0,
    after: [],
    command: null,
    resources: [],
    maxAttempts: 3,
    timeoutMs: null,
    to: null,
    createdAt: 1_700_000_000_000,
    createdBy: null,
    orderKey: `k${String(orderCounter).padStart(10, '0')}`,
    attempts: [],
    result: null,
    progress: null,
    finalReason: null,
    finishedAt: null,
    ...over,
  };
}

/** A valid session record. */
export function makeSession(id: string, over: Partial<SessionRecord> = {}): SessionRecord {
  return {
    id,
    mode: 'auto',
    rank: 1,
    joinedAt: 1_700_000_000_000,
    capabilities: [],
    resources: [],
    status: 'idle',
    currentTask: null,
    report: null,
    process: null,
    ttlMs: 15_000,
    meta: {},
    ...over,
  };
}

/** Waits until `cond` holds, yielding to I/O between checks; fails after `ms` (no fixed sleeps). */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  what: string,
  ms = 5_000,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

function assertCode(code: ErrorCode): (e: unknown) => boolean {
  return (e) => {
    assert.ok(isFlowLoomError(e), `expected a FlowLoomError, got ${String(e)}`);
    assert.equal(e.code, code);
    return true;
  };
}

// ---------------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------------

interface Ctx {
  store: Store;
  clock: ManualClock;
  fx: StoreFixture;
  problems: StoreProblem[];
  t: TestContext;
}

/** Registers the contract suite for one backend. */
export function runStoreContract(name: string, makeStore: StoreFactory): void {
  const withStore = (fn: (ctx: Ctx) => Promise<void>) => async (t: TestContext) => {
    const clock = new ManualClock();
    const fx = await makeStore(clock);
    const problems: StoreProblem[] = [];
    fx.store.onProblem = (p) => problems.push(p);
    try {
      await fn({ store: fx.store, clock, fx, problems, t });
    } finally {
      await fx.store.close();
      await fx.cleanup();
    }
  };

  /** Adds a task and claims it; returns the lease reference. */
  const addAndClaim = async (store: Store, task: TaskRecord, session = 's1', token = `tok-${task.id}`) => {
    await store.addTask(task);
    const got = await store.claimTask(task, { session, token, leaseMs: 10_000 });
    assert.ok(got, `claim of ${task.id} failed`);
    return { id: task.id, session, token };
  };

  describe(`Store contract: ${name}`, () => {
    it(
      'reports its kind and location',
      withStore(async ({ store }) => {
        assert.ok(['fs', 'memory', 'postgres', 'git'].includes(store.kind), store.kind);
        assert.equal(typeof store.location, 'string');
        // open is idempotent
        await store.open({ create: true });
        await store.open({ create: true });
      }),
    );

    describe('registers', () => {
      it(
        'reads an absent register as null',
        withStore(async ({ store }) => {
          for (const r of ['master', 'seq', 'locks', 'archive'] as const)
            assert.equal(await store.readRegister(r), null);
        }),
      );

      it(
        'creates with version 0 and counts versions up by one',
        withStore(async ({ store }) => {
          assert.equal(await store.writeRegister('seq', 0, { rank: 1 }), true);
          assert.deepEqual(await store.readRegister('seq'), { version: 1, value: { rank: 1 } });
          assert.equal(await store.writeRegister('seq', 1, { rank: 2 }), true);
          assert.deepEqual(await store.readRegister('seq'), { version: 2, value: { rank: 2 } });
        }),
      );

      it(
        'refuses a stale or future version and keeps the value',
        withStore(async ({ store }) => {
          assert.equal(await store.writeRegister('seq', 0, { rank: 1 }), true);
          assert.equal(await store.writeRegister('seq', 1, { rank: 2 }), true);
          assert.equal(await store.writeRegister('seq', 0, { rank: 99 }), false);
          assert.equal(await store.writeRegister('seq', 1, { rank: 99 }), false);
          assert.equal(await store.writeRegister('seq', 7, { rank: 99 }), false);
          assert.deepEqual(await store.readRegister('seq'), { version: 2, value: { rank: 2 } });
        }),
      );

      it(
        'refuses stale versions long after they were superseded',
        withStore(async ({ store }) => {
          for (let v = 0; v < 40; v++)
            assert.equal(await store.writeRegister('seq', v, { rank: v + 1 }), true);
          for (const stale of [0, 1, 16, 20, 32, 39]) {
            assert.equal(await store.writeRegister('seq', stale, { rank: -1 }), false, `version ${stale}`);
          }
          assert.deepEqual(await store.readRegister('seq'), { version: 40, value: { rank: 40 } });
          assert.equal(await store.writeRegister('seq', 40, { rank: 41 }), true);
        }),
      );

      it(
        'lets exactly one of many concurrent writers win each version',
        withStore(async ({ store }) => {
          for (let version = 0; version < 3; version++) {
            const results = await Promise.all(
              Array.from({ length: 20 }, (_, i) =>
                store.writeRegister('seq', version, { rank: version * 100 + i }),
              ),
            );
            const winners = results.flatMap((ok, i) => (ok ? [i] : []));
            assert.equal(winners.length, 1, `version ${version}: winners ${winners.join(',')}`);
            assert.deepEqual(await store.readRegister('seq'), {
              version: version + 1,
              value: { rank: version * 100 + winners[0]! },
            });
          }
        }),
      );

      it(
        'loses no increment when concurrent writers retry their compare-and-set',
        withStore(async ({ store }) => {
          const increment = async () => {
            for (let i = 0; i < 500; i++) {
              const cur = await store.readRegister<{ rank: number }>('seq');
              if (await store.writeRegister('seq', cur?.version ?? 0, { rank: (cur?.value.rank ?? 0) + 1 }))
                return;
            }
            assert.fail('increment kept losing');
          };
          await Promise.all(Array.from({ length: 15 }, increment));
          assert.deepEqual(await store.readRegister('seq'), { version: 15, value: { rank: 15 } });
        }),
      );

      it(
        'keeps registers independent',
        withStore(async ({ store }) => {
          assert.equal(await store.writeRegister('locks', 0, { nextToken: 1, locks: [], waiters: [] }), true);
          assert.equal(await store.readRegister('master'), null);
          assert.equal(await store.writeRegister('seq', 0, { rank: 3 }), true);
          assert.equal((await store.readRegister('locks'))?.version, 1);
        }),
      );

      it(
        'copies values in and out',
        withStore(async ({ store }) => {
          const value = { nextToken: 1, locks: [], waiters: [] as unknown[] };
          await store.writeRegister('locks', 0, value);
          value.nextToken = 99;
          const read = await store.readRegister<typeof value>('locks');
          assert.equal(read?.value.nextToken, 1);
          read!.value.nextToken = 42;
          assert.equal((await store.readRegister<typeof value>('locks'))?.value.nextToken, 1);
        }),
      );
    });

    describe('sessions', () => {
      it(
        'stores a session with its heartbeat at the clock time of the put',
        withStore(async ({ store, clock }) => {
          const rec = makeSession('s1', { capabilities: ['test'], meta: { cwd: '/x' } });
          await store.putSession(rec);
          assert.deepEqual(await store.getSession('s1'), { ...rec, heartbeatAt: clock.now() });
          clock.advance(5_000);
          await store.putSession({ ...rec, status: 'busy' });
          const again = await store.getSession('s1');
          assert.equal(again?.status, 'busy');
          assert.equal(again?.heartbeatAt, clock.now());
        }),
      );

      it(
        'touch moves the heartbeat to the clock time and keeps the record',
        withStore(async ({ store, clock }) => {
          const rec = makeSession('s1', { report: { text: 'hi', at: 1, taskId: null, fraction: null } });
          await store.putSession(rec);
          clock.advance(12_345);
          assert.equal(await store.touchSession('s1'), true);
          assert.deepEqual(await store.getSession('s1'), { ...rec, heartbeatAt: clock.now() });
          assert.equal(await store.touchSession('nobody'), false);
          assert.equal(await store.getSession('nobody'), null);
        }),
      );

      it(
        'lists and deletes sessions',
        withStore(async ({ store, clock }) => {
          await store.putSession(makeSession('a', { rank: 2 }));
          await store.putSession(makeSession('b', { rank: 1 }));
          await store.putSession(makeSession('c', { rank: 3 }));
          const all = await store.listSessions();
          assert.deepEqual(all.map((s) => s.id).sort(), ['a', 'b', 'c']);
          assert.ok(all.every((s) => s.heartbeatAt === clock.now()));
          await store.deleteSession('b');
          await store.deleteSession('b'); // idempotent
          await store.deleteSession('never');
          assert.equal(await store.getSession('b'), null);
          assert.deepEqual((await store.listSessions()).map((s) => s.id).sort(), ['a', 'c']);
          assert.equal(await store.touchSession('b'), false);
        }),
      );

      it(
        'copies records in and out',
        withStore(async ({ store }) => {
          const rec = makeSession('s1', { capabilities: ['a'] });
          await store.putSession(rec);
          rec.capabilities.push('b');
          const got = await store.getSession('s1');
          assert.deepEqual(got?.capabilities, ['a']);
          got!.capabilities.push('c');
          (await store.listSessions())[0]!.capabilities.push('d');
          assert.deepEqual((await store.getSession('s1'))?.capabilities, ['a']);
        }),
      );
    });

    describe('tasks', () => {
      it(
        'adds pending tasks and rejects a duplicate id with checkUnique',
        withStore(async ({ store }) => {
          const t = makeTask('t-1', { needs: ['gpu'], prompt: 'do it' });
          await store.addTask(t, { checkUnique: true });
          assert.deepEqual(await store.getTask('t-1'), { state: 'pending', task: t, lease: null });
          await assert.rejects(
            store.addTask(makeTask('t-1'), { checkUnique: true }),
            assertCode(ErrorCode.INVALID_INPUT),
          );
          // also while active and once finished
          const ref = await addAndClaim(store, makeTask('t-2'));
          await assert.rejects(
            store.addTask(makeTask('t-2'), { checkUnique: true }),
            assertCode(ErrorCode.INVALID_INPUT),
          );
          await store.finishTask(ref, 'completed', (x) => x);
          await assert.rejects(
            store.addTask(makeTask('t-2'), { checkUnique: true }),
            assertCode(ErrorCode.INVALID_INPUT),
          );
          assert.deepEqual(
            (await store.listPending()).map((x) => x.id),
            ['t-1'],
          );
        }),
      );

      it(
        'lists pending tasks by priority descending, then orderKey',
        withStore(async ({ store }) => {
          const tasks = [
            makeTask('low-old', { priority: -5, orderKey: 'a0001' }),
            makeTask('mid-new', { priority: 0, orderKey: 'a0009' }),
            makeTask('high', { priority: 10, orderKey: 'a0005' }),
            makeTask('mid-old', { priority: 0, orderKey: 'a0002' }),
            makeTask('top', { priority: 999, orderKey: 'a0008' }),
            makeTask('bottom', { priority: -999, orderKey: 'a0000' }),
          ];
          for (const t of [tasks[3], tasks[0], tasks[5], tasks[1], tasks[4], tasks[2]])
            await store.addTask(t!);
          assert.deepEqual(
            (await store.listPending()).map((t) => t.id),
            ['top', 'high', 'mid-old', 'mid-new', 'low-old', 'bottom'],
          );
          assert.deepEqual(
            (await store.listTasks('pending', { limit: 2 })).map((t) => t.id),
            ['top', 'high'],
          );
        }),
      );

      it(
        'claims a pending task under a new lease',
        withStore(async ({ store, clock }) => {
          const t = makeTask('t-1');
          await store.addTask(t);
          clock.advance(1_000);
          const got = await store.claimTask(t, { session: 's1', token: 'tok1', leaseMs: 30_000 });
          const lease = {
            session: 's1',
            token: 'tok1',
            claimedAt: clock.now(),
            renewedAt: clock.now(),
            leaseMs: 30_000,
          };
          assert.deepEqual(got, { task: t, lease });
          assert.deepEqual(await store.getTask('t-1'), { state: 'active', task: t, lease });
          assert.deepEqual(await store.listActive(), [{ task: t, lease }]);
          assert.deepEqual(await store.listPending(), []);
          assert.equal(await store.claimTask(t, { session: 's2', token: 'tok2', leaseMs: 30_000 }), null);
          assert.equal(
            await store.claimTask(makeTask('ghost'), { session: 's2', token: 'tok3', leaseMs: 1 }),
            null,
          );
        }),
      );

      it(
        'gives a task to exactly one of 20 concurrent claimers',
        withStore(async ({ store }) => {
          const t = makeTask('t-1');
          await store.addTask(t);
          const results = await Promise.all(
            Array.from({ length: 20 }, (_, i) =>
              store.claimTask(t, { session: `s${i}`, token: `tok${i}`, leaseMs: 10_000 }),
            ),
          );
          const winners = results.filter((r) => r !== null);
          assert.equal(winners.length, 1);
          const active = await store.listActive();
          assert.equal(active.length, 1);
          assert.deepEqual(active[0]?.lease, winners[0]?.lease);
          assert.equal((await store.getTask('t-1'))?.state, 'active');
        }),
      );

      it(
        'gives each of many tasks to exactly one claimer when all race for all',
        withStore(async ({ store }) => {
          const tasks = Array.from({ length: 8 }, (_, i) => makeTask(`t-${i}`));
          for (const t of tasks) await store.addTask(t);
          const claims = tasks.flatMap((t) =>
            Array.from({ length: 5 }, (_, i) =>
              store.claimTask(t, { session: `s${i}`, token: `${t.id}-${i}`, leaseMs: 10_000 }),
            ),
          );
          const won = (await Promise.all(claims)).filter((r) => r !== null);
          assert.deepEqual(won.map((a) => a.task.id).sort(), tasks.map((t) => t.id).sort());
          assert.equal((await store.countTasks()).active, 8);
        }),
      );

      it(
        'renews a lease only under the current (session, token)',
        withStore(async ({ store, clock }) => {
          const ref = await addAndClaim(store, makeTask('t-1'));
          clock.advance(7_000);
          assert.equal(await store.renewLease(ref), true);
          assert.equal((await store.listActive())[0]?.lease.renewedAt, clock.now());
          assert.equal(await store.renewLease({ ...ref, token: 'other' }), false);
          assert.equal(await store.renewLease({ ...ref, session: 'other' }), false);
          assert.equal(await store.renewLease({ ...ref, id: 'nope' }), false);
        }),
      );

      it(
        'records progress under the current lease and keeps it',
        withStore(async ({ store, clock }) => {
          const ref = await addAndClaim(store, makeTask('t-1'));
          clock.advance(3_000);
          const progress: Report = { text: '3 tests failing', at: clock.now(), taskId: 't-1', fraction: 0.5 };
          assert.equal(await store.setProgress(ref, progress), true);
          assert.deepEqual((await store.getTask('t-1'))?.task.progress, progress);
          assert.deepEqual((await store.listActive())[0]?.task.progress, progress);
          assert.deepEqual((await store.listTasks('active'))[0]?.progress, progress);
          assert.equal((await store.listActive())[0]?.lease.renewedAt, clock.now());
          assert.equal(
            await store.setProgress({ ...ref, token: 'other' }, { ...progress, text: 'forged' }),
            false,
          );
          const done = await store.finishTask(ref, 'completed', (t) => t);
          assert.deepEqual(done?.progress, progress);
          assert.deepEqual((await store.getTask('t-1'))?.task.progress, progress);
        }),
      );

      it(
        'fences finishTask by (session, token), exactly once per lease',
        withStore(async ({ store, clock }) => {
          const ref = await addAndClaim(store, makeTask('t-1'));
          const mark = (t: TaskRecord): TaskRecord => ({
            ...t,
            result: { summary: 'ok' },
            finishedAt: clock.now(),
          });
          assert.equal(await store.finishTask({ ...ref, token: 'wrong' }, 'completed', mark), null);
          assert.equal(await store.finishTask({ ...ref, session: 'wrong' }, 'completed', mark), null);
          assert.equal((await store.getTask('t-1'))?.state, 'active');
          const results = await Promise.all([
            store.finishTask(ref, 'completed', mark),
            store.finishTask(ref, 'failed', mark),
            store.finishTask(ref, 'pending', mark),
          ]);
          assert.equal(results.filter((r) => r !== null).length, 1);
          const state = (await store.getTask('t-1'))?.state;
          assert.ok(state === 'completed' || state === 'failed' || state === 'pending');
          assert.equal(await store.finishTask(ref, 'completed', mark), null);
          assert.equal(await store.renewLease(ref), false);
          assert.deepEqual(await store.listActive(), []);
        }),
      );

      it(
        'applies the update and returns the stored record',
        withStore(async ({ store }) => {
          const ref = await addAndClaim(store, makeTask('t-1'));
          const done = await store.finishTask(ref, 'failed', (t) => ({
            ...t,
            finalReason: 'boom',
            finishedAt: 5,
          }));
          assert.equal(done?.finalReason, 'boom');
          assert.deepEqual(await store.getTask('t-1'), { state: 'failed', task: done, lease: null });
        }),
      );

      it(
        'makes a task finished to pending claimable again with its new content',
        withStore(async ({ store, clock }) => {
          const original = makeTask('t-1', { priority: 3 });
          const ref = await addAndClaim(store, original);
          const attempt = {
            session: 's1',
            token: ref.token,
            claimedAt: 1,
            endedAt: 2,
            outcome: 'lapsed' as const,
            reason: 'lease lapsed',
          };
          const back = await store.finishTask(ref, 'pending', (t) => ({
            ...t,
            attempts: [...t.attempts, attempt],
          }));
          assert.deepEqual(back?.attempts, [attempt]);
          const pending = await store.listPending();
          assert.deepEqual(
            pending.map((t) => t.attempts),
            [[attempt]],
          );
          assert.deepEqual((await store.getTask('t-1'))?.task.attempts, [attempt]);
          // A claimer holding an old copy (listed before the requeue) still gets the stored content.
          clock.advance(10);
          const again = await store.claimTask(original, { session: 's2', token: 'tok2', leaseMs: 5_000 });
          assert.ok(again);
          assert.deepEqual(again.task.attempts, [attempt]);
          assert.deepEqual((await store.listActive())[0]?.task.attempts, [attempt]);
          const done = await store.finishTask(
            { id: 't-1', session: 's2', token: 'tok2' },
            'completed',
            (t) => t,
          );
          assert.deepEqual(done?.attempts, [attempt]);
          // The old lease stays fenced out after the task came back.
          assert.equal(await store.finishTask(ref, 'completed', (t) => t), null);
        }),
      );

      it(
        'moves a pending task to failed or cancelled only while it is pending',
        withStore(async ({ store }) => {
          await store.addTask(makeTask('t-1'));
          await store.addTask(makeTask('t-2'));
          const moved = await store.movePending('t-1', 'cancelled', (t) => ({
            ...t,
            finalReason: 'no longer needed',
          }));
          assert.equal(moved?.finalReason, 'no longer needed');
          assert.deepEqual(await store.getTask('t-1'), { state: 'cancelled', task: moved, lease: null });
          assert.equal(await store.movePending('t-1', 'failed', (t) => t), null);
          assert.equal(await store.movePending('ghost', 'failed', (t) => t), null);
          const ref = await addAndClaim(store, makeTask('t-3'));
          assert.equal(await store.movePending('t-3', 'cancelled', (t) => t), null);
          assert.equal((await store.getTask('t-3'))?.state, 'active');
          assert.ok(await store.finishTask(ref, 'completed', (t) => t));
          assert.equal(
            (await store.movePending('t-2', 'failed', (t) => ({ ...t, finalReason: 'dep' })))?.finalReason,
            'dep',
          );
          const t4 = makeTask('t-4');
          await store.addTask(t4);
          const racing = await Promise.all([
            store.movePending('t-4', 'failed', (t) => t),
            store.movePending('t-4', 'cancelled', (t) => t),
            store.claimTask(t4, { session: 's', token: 'x', leaseMs: 1 }),
          ]);
          assert.equal(racing.filter((r) => r !== null).length, 1);
        }),
      );

      it(
        'keeps ids that end like other ids apart',
        withStore(async ({ store }) => {
          await store.addTask(makeTask('pre-build'));
          await store.addTask(makeTask('x.1'));
          assert.equal(await store.getTask('build'), null);
          assert.equal(await store.getTask('1'), null);
          assert.equal(await store.movePending('build', 'cancelled', (t) => t), null);
          assert.equal((await store.taskStates(['build'])).get('build'), null);
          await store.addTask(makeTask('build'), { checkUnique: true });
          const moved = await store.movePending('build', 'cancelled', (t) => t);
          assert.equal(moved?.id, 'build');
          assert.equal((await store.getTask('pre-build'))?.state, 'pending');
          assert.equal((await store.getTask('build'))?.task.id, 'build');
        }),
      );

      it(
        'finds a task in every state and lists each state',
        withStore(async ({ store, clock }) => {
          await store.addTask(makeTask('p'));
          const a = await addAndClaim(store, makeTask('a'));
          const done = ['completed', 'failed', 'cancelled'] as const;
          for (const s of done) {
            const ref = await addAndClaim(store, makeTask(`x-${s}`));
            clock.advance(1_000);
            await store.finishTask(ref, s, (t) => ({ ...t, finalReason: s }));
          }
          assert.equal((await store.getTask('p'))?.state, 'pending');
          const active = await store.getTask('a');
          assert.equal(active?.state, 'active');
          assert.equal(active?.lease?.token, a.token);
          for (const s of done) {
            const got = await store.getTask(`x-${s}`);
            assert.equal(got?.state, s);
            assert.equal(got?.lease, null);
            assert.equal(got?.task.finalReason, s);
            assert.deepEqual(
              (await store.listTasks(s)).map((t) => t.id),
              [`x-${s}`],
            );
          }
          assert.equal(await store.getTask('nope'), null);
          assert.deepEqual(
            (await store.listTasks('pending')).map((t) => t.id),
            ['p'],
          );
          assert.deepEqual(
            (await store.listTasks('active')).map((t) => t.id),
            ['a'],
          );
          assert.deepEqual(await store.countTasks(), {
            pending: 1,
            active: 1,
            completed: 1,
            failed: 1,
            cancelled: 1,
          });
          const states = await store.taskStates(['p', 'a', 'x-completed', 'x-failed', 'x-cancelled', 'nope']);
          assert.deepEqual(Object.fromEntries(states), {
            p: 'pending',
            a: 'active',
            'x-completed': 'completed',
            'x-failed': 'failed',
            'x-cancelled': 'cancelled',
            nope: null,
          });
        }),
      );

      it(
        'lists finished tasks newest first, with a limit',
        withStore(async ({ store, clock }) => {
          for (let i = 0; i < 5; i++) {
            const ref = await addAndClaim(store, makeTask(`t-${i}`));
            clock.advance(1_000);
            await store.finishTask(ref, 'completed', (t) => ({ ...t, finishedAt: clock.now() }));
          }
          assert.deepEqual(
            (await store.listTasks('completed')).map((t) => t.id),
            ['t-4', 't-3', 't-2', 't-1', 't-0'],
          );
          assert.deepEqual(
            (await store.listTasks('completed', { limit: 2 })).map((t) => t.id),
            ['t-4', 't-3'],
          );
        }),
      );

      it(
        'compacts completed tasks beyond `keep`, still counting and finding them',
        withStore(async ({ store, clock }) => {
          for (let i = 0; i < 6; i++) {
            const ref = await addAndClaim(store, makeTask(`t-${i}`, { title: `title ${i}` }));
            clock.advance(1_000);
            await store.finishTask(ref, 'completed', (t) => ({ ...t, result: { summary: `r${i}` } }));
          }
          const failed = await addAndClaim(store, makeTask('f-1'));
          await store.finishTask(failed, 'failed', (t) => t);
          assert.equal(await store.compact({ keep: 10 }), 0);
          assert.equal(await store.compact({ keep: 2 }), 4);
          assert.deepEqual(
            (await store.listTasks('completed')).map((t) => t.id),
            ['t-5', 't-4'],
          );
          assert.deepEqual(await store.countTasks(), {
            pending: 0,
            active: 0,
            completed: 6,
            failed: 1,
            cancelled: 0,
          });
          const archived = await store.getTask('t-0');
          assert.equal(archived?.state, 'completed');
          assert.equal(archived?.task.title, 'title 0');
          assert.deepEqual(archived?.task.result, { summary: 'r0' });
          assert.deepEqual(Object.fromEntries(await store.taskStates(['t-0', 't-3', 't-5', 'f-1'])), {
            't-0': 'completed',
            't-3': 'completed',
            't-5': 'completed',
            'f-1': 'failed',
          });
          await assert.rejects(
            store.addTask(makeTask('t-1'), { checkUnique: true }),
            assertCode(ErrorCode.INVALID_INPUT),
          );
          assert.equal(await store.compact({ keep: 2 }), 0);
          // A second round adds to the archive count.
          for (let i = 6; i < 9; i++) {
            const ref = await addAndClaim(store, makeTask(`t-${i}`));
            clock.advance(1_000);
            await store.finishTask(ref, 'completed', (t) => t);
          }
          assert.equal(await store.compact({ keep: 1 }), 4);
          assert.deepEqual(
            (await store.listTasks('completed')).map((t) => t.id),
            ['t-8'],
          );
          assert.equal((await store.countTasks()).completed, 9);
          assert.equal((await store.getTask('t-6'))?.state, 'completed');
        }),
      );

      it(
        'copies tasks in and out',
        withStore(async ({ store }) => {
          const t = makeTask('t-1', { needs: ['a'] });
          await store.addTask(t);
          t.needs.push('b');
          const listed = await store.listPending();
          assert.deepEqual(listed[0]?.needs, ['a']);
          listed[0]!.needs.push('c');
          const got = await store.getTask('t-1');
          assert.deepEqual(got?.task.needs, ['a']);
          got!.task.needs.push('d');
          const claimed = await store.claimTask(got!.task, { session: 's', token: 'k', leaseMs: 1_000 });
          claimed!.task.needs.push('e');
          assert.deepEqual((await store.listActive())[0]?.task.needs, ['a']);
        }),
      );
    });

    describe('events', () => {
      it(
        'starts empty',
        withStore(async ({ store }) => {
          assert.deepEqual(await store.readEvents(null, 10), { events: [], cursor: null });
          assert.equal(await store.tailCursor(), null);
        }),
      );

      it(
        'appends and reads back in order with the clock time',
        withStore(async ({ store, clock }) => {
          const times: number[] = [];
          for (let i = 0; i < 5; i++) {
            times.push(clock.now());
            await store.appendEvent({
              type: 'task.added',
              session: 's1',
              task: `t-${i}`,
              text: `added ${i}`,
              data: { i },
            });
            clock.advance(10);
          }
          await store.appendEvent({ type: 'tasks.compacted', text: 'no session or task' });
          const { events, cursor } = await store.readEvents(null, 100);
          assert.equal(events.length, 6);
          assert.deepEqual(
            events.slice(0, 5).map((e) => ({
              type: e.type,
              session: e.session,
              task: e.task,
              text: e.text,
              data: e.data,
              at: e.at,
            })),
            times.map((at, i) => ({
              type: 'task.added',
              session: 's1',
              task: `t-${i}`,
              text: `added ${i}`,
              data: { i },
              at,
            })),
          );
          assert.equal(events[5]?.text, 'no session or task');
          assert.equal(events[5]?.session ?? null, null);
          assert.equal(cursor, events[5]?.cursor);
          assert.equal(new Set(events.map((e) => e.cursor)).size, 6);
        }),
      );

      it(
        'pages with cursor and limit and resumes after any event',
        withStore(async ({ store }) => {
          for (let i = 0; i < 7; i++)
            await store.appendEvent({ type: 'task.progress', text: `e${i}`, data: { i } });
          const seen: number[] = [];
          let cursor: string | null = null;
          for (let page = 0; page < 10; page++) {
            const r: Awaited<ReturnType<Store['readEvents']>> = await store.readEvents(cursor, 3);
            assert.ok(r.events.length <= 3);
            if (r.events.length === 0) {
              assert.equal(r.cursor, cursor);
              break;
            }
            seen.push(...r.events.map((e) => e.data?.i as number));
            cursor = r.cursor;
          }
          assert.deepEqual(seen, [0, 1, 2, 3, 4, 5, 6]);
          const all = (await store.readEvents(null, 100)).events;
          const fromThird = await store.readEvents(all[2]!.cursor, 100);
          assert.deepEqual(
            fromThird.events.map((e) => e.text),
            ['e3', 'e4', 'e5', 'e6'],
          );
          assert.deepEqual((await store.readEvents(null, 0)).events, []);
        }),
      );

      it(
        'follows from the tail cursor',
        withStore(async ({ store }) => {
          await store.appendEvent({ type: 'task.added', text: 'old' });
          const tail = await store.tailCursor();
          assert.notEqual(tail, null);
          assert.deepEqual((await store.readEvents(tail, 10)).events, []);
          await store.appendEvent({ type: 'task.added', text: 'new 1' });
          await store.appendEvent({ type: 'task.added', text: 'new 2' });
          const r = await store.readEvents(tail, 10);
          assert.deepEqual(
            r.events.map((e) => e.text),
            ['new 1', 'new 2'],
          );
          assert.equal(r.cursor, await store.tailCursor());
        }),
      );

      it(
        'rejects a cursor it never printed',
        withStore(async ({ store }) => {
          await store.appendEvent({ type: 'task.added', text: 'x' });
          await assert.rejects(store.readEvents('not a cursor', 10), assertCode(ErrorCode.INVALID_INPUT));
          await assert.rejects(store.readEvents(null, -1), assertCode(ErrorCode.INVALID_INPUT));
        }),
      );
    });

    describe('watch', () => {
      const fired = (store: Store, area: Parameters<Store['watch']>[0]) => {
        let count = 0;
        const stop = store.watch(area, () => {
          count++;
        });
        return { count: () => count, stop };
      };

      it(
        'wakes watchers of tasks, locks, master and sessions after changes',
        withStore(async ({ store }) => {
          const tasks = fired(store, 'tasks');
          const locks = fired(store, 'locks');
          const master = fired(store, 'master');
          const sessions = fired(store, 'sessions');
          await store.addTask(makeTask('t-1'));
          await waitFor(() => tasks.count() > 0, 'a tasks notification');
          await store.writeRegister('locks', 0, { nextToken: 1, locks: [], waiters: [] });
          await waitFor(() => locks.count() > 0, 'a locks notification');
          await store.writeRegister('master', 0, {
            epoch: 1,
            sessionId: 's1',
            explicit: false,
            since: 0,
            reason: 'join',
            previous: null,
            handoff: null,
          });
          await waitFor(() => master.count() > 0, 'a master notification');
          await store.putSession(makeSession('s1'));
          await waitFor(() => sessions.count() > 0, 'a sessions notification');
          for (const w of [tasks, locks, master, sessions]) w.stop();
        }),
      );

      it(
        'stops calling a watcher after it unsubscribes',
        withStore(async ({ store }) => {
          const gone = fired(store, 'tasks');
          const kept = fired(store, 'tasks');
          gone.stop();
          await store.addTask(makeTask('t-1'));
          await waitFor(() => kept.count() > 0, 'a tasks notification');
          assert.equal(gone.count(), 0);
          kept.stop();
        }),
      );
    });

    describe('damaged records', () => {
      const garbage = '{"id": "half-written'; // what a torn write would leave behind

      it(
        'sets a damaged session aside, reports it and keeps the others',
        withStore(async ({ fx, store, problems, t }) => {
          if (!fx.corrupt) return t.skip('the backend offers no corrupt hook');
          await store.putSession(makeSession('good'));
          await store.putSession(makeSession('bad'));
          await fx.corrupt({ kind: 'session', id: 'bad', text: garbage });
          assert.deepEqual(
            (await store.listSessions()).map((s) => s.id),
            ['good'],
          );
          assert.equal(await store.getSession('bad'), null);
          assertSetAside(problems, 'bad', garbage, await fx.setAside?.());
          assert.equal((await store.getSession('good'))?.id, 'good');
        }),
      );

      it(
        'sets a damaged pending task aside on read paths and keeps the others',
        withStore(async ({ fx, store, problems, t }) => {
          if (!fx.corrupt) return t.skip('the backend offers no corrupt hook');
          const good = makeTask('good');
          await store.addTask(good);
          const bad = makeTask('bad', { priority: 50 });
          await fx.corrupt({ kind: 'pendingTask', task: bad, text: garbage });
          assert.deepEqual(
            (await store.listPending()).map((t) => t.id),
            ['good'],
          );
          assertSetAside(problems, 'bad', garbage, await fx.setAside?.());
          assert.equal(await store.getTask('bad'), null);
          assert.equal(await store.claimTask(bad, { session: 's', token: 'k', leaseMs: 1_000 }), null);
          assert.ok(await store.claimTask(good, { session: 's', token: 'k', leaseMs: 1_000 }));
        }),
      );

      it(
        'sets a damaged task aside when it is looked up directly',
        withStore(async ({ fx, store, problems, t }) => {
          if (!fx.corrupt) return t.skip('the backend offers no corrupt hook');
          const bad = makeTask('bad');
          await fx.corrupt({ kind: 'pendingTask', task: bad, text: 'not json at all' });
          assert.equal(await store.getTask('bad'), null);
          assertSetAside(problems, 'bad', 'not json at all', await fx.setAside?.());
        }),
      );

      it(
        'sets a damaged register version aside and falls back to the one before',
        withStore(async ({ fx, store, problems, t }) => {
          if (!fx.corrupt) return t.skip('the backend offers no corrupt hook');
          assert.equal(await store.writeRegister('seq', 0, { rank: 1 }), true);
          assert.equal(await store.writeRegister('seq', 1, { rank: 2 }), true);
          await fx.corrupt({ kind: 'register', name: 'seq', version: 2, text: garbage });
          assert.deepEqual(await store.readRegister('seq'), { version: 1, value: { rank: 1 } });
          assertSetAside(problems, 'seq', garbage, await fx.setAside?.());
          // Writing on from what is readable works.
          assert.equal(await store.writeRegister('seq', 1, { rank: 5 }), true);
          assert.deepEqual(await store.readRegister('seq'), { version: 2, value: { rank: 5 } });
        }),
      );

      it(
        'sets a register version of the wrong shape aside',
        withStore(async ({ fx, store, problems, t }) => {
          if (!fx.corrupt) return t.skip('the backend offers no corrupt hook');
          assert.equal(await store.writeRegister('seq', 0, { rank: 1 }), true);
          const foreign = JSON.stringify({ value: { rank: 'seven' } });
          await fx.corrupt({ kind: 'register', name: 'seq', version: 1, text: foreign });
          assert.equal(await store.readRegister('seq'), null);
          assertSetAside(problems, 'seq', foreign, await fx.setAside?.());
        }),
      );
    });
  });
}

/** One problem names `what`, says where it went, and the damaged bytes are kept there. */
function assertSetAside(
  problems: StoreProblem[],
  what: string,
  text: string,
  setAside: { where: string; text: string }[] | undefined,
): void {
  const p = problems.find((x) => x.what.includes(what));
  assert.ok(p, `no problem reported for ${what}: ${JSON.stringify(problems)}`);
  assert.ok(p.reason.length > 0);
  assert.ok(p.movedTo, `${what} was not set aside`);
  if (setAside) {
    const kept = setAside.find((s) => s.where === p.movedTo);
    assert.ok(kept, `nothing at ${p.movedTo}`);
    assert.equal(kept.text, text, 'the damaged content must be kept as it was');
  }
}
