/**
 * The rules of FlowLoom (src/coordinator.ts) on a ManualClock: election, the leased task queue, fenced
 * locks and status. Everything runs on MemoryStore; the election and fencing rules also on FsStore.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import fc from 'fast-check';
import { Coordinator, type CoordinatorConfig } from '../../src/coordinator.ts';
import { ManualClock } from '../../src/core/clock.ts';
import { ErrorCode, type FlowLoomError, isFlowLoomError } from '../../src/core/errors.ts';
import type { ProcessIdentity, SessionMode, StoredEvent } from '../../src/core/types.ts';
import { FsStore } from '../../src/store/fs/fsStore.ts';
import { MemoryStore } from '../../src/store/memoryStore.ts';
import type { LeaseRef, Store } from '../../src/store/store.ts';
import { waitFor } from '../storeContract.ts';

// ---------------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------------

const TTL = 15_000;
const LEASE = 10_000;

const CONFIG: Partial<CoordinatorConfig> = {
  sessionTtlMs: TTL,
  taskLeaseMs: LEASE,
  lockLeaseMs: 60_000,
  maxAttempts: 3,
  pollMs: 10,
};

interface Env {
  clock: ManualClock;
  store: Store;
  c: Coordinator;
  /** Pids the injected probe reports as dead; every other process is alive. */
  dead: Set<number>;
  /** Another coordinator on the same store, as a second process would hold. */
  other: () => Coordinator;
}

type Backend = 'memory' | 'fs';

async function makeEnv(
  t: TestContext,
  backend: Backend,
  config: Partial<CoordinatorConfig> = {},
): Promise<Env> {
  const clock = new ManualClock();
  let store: Store;
  if (backend === 'memory') {
    store = new MemoryStore({ clock });
  } else {
    const dir = mkdtempSync(join(tmpdir(), 'flowloom-coord-'));
    // Not durable: these tests are about the rules; the contract suite covers the fsync'ed path.
    store = new FsStore(dir, { clock, durable: false });
    t.after(() => rmSync(dir, { recursive: true, force: true }));
  }
  await store.open({ create: true });
  t.after(() => store.close());
  const dead = new Set<number>();
  const opts = {
    config: { ...CONFIG, ...config },
    probe: (p: ProcessIdentity) => (dead.has(p.pid) ? ('dead' as const) : ('alive' as const)),
  };
  return { clock, store, c: new Coordinator(store, opts), dead, other: () => new Coordinator(store, opts) };
}

function proc(pid: number): ProcessIdentity {
  return { pid, startTime: '12345', bootId: 'boot-1', host: 'test-host' };
}

function code(expected: ErrorCode, message?: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(isFlowLoomError(e), `expected a FlowLoomError, got ${String(e)}`);
    assert.equal(e.code, expected, e.message);
    if (message) assert.match(e.message, message);
    return true;
  };
}

async function allEvents(store: Store): Promise<StoredEvent[]> {
  return (await store.readEvents(null, 1_000_000)).events;
}

async function masterEvents(store: Store): Promise<{ epoch: number; session: string | null }[]> {
  return (await allEvents(store))
    .filter((e) => e.type === 'master.changed')
    .map((e) => ({ epoch: e.data?.epoch as number, session: e.session ?? null }));
}

/** Refreshes heartbeats without the side effects of Coordinator.heartbeat (which also elects). */
async function touch(store: Store, ...ids: string[]): Promise<void> {
  for (const id of ids) assert.equal(await store.touchSession(id), true, `touch ${id}`);
}

function refOf(a: { task: { id: string }; lease: { session: string; token: string } }): LeaseRef {
  return { id: a.task.id, session: a.lease.session, token: a.lease.token };
}

/**
 * The election invariant, checked on the event log: epochs never go back; a change of the named
 * master always comes with a higher epoch; each epoch names one session.
 */
function assertEpochInvariant(events: { epoch: number; session: string | null }[]): void {
  const named = new Map<number, string | null>();
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    const prev = events[i - 1];
    if (prev) {
      assert.ok(e.epoch >= prev.epoch, `epoch went back: ${JSON.stringify(events)}`);
      if (e.session !== prev.session) {
        assert.ok(e.epoch > prev.epoch, `master changed within epoch ${e.epoch}: ${JSON.stringify(events)}`);
      }
    }
    if (named.has(e.epoch))
      assert.equal(named.get(e.epoch), e.session, `epoch ${e.epoch} names two sessions`);
    named.set(e.epoch, e.session);
  }
}

// ---------------------------------------------------------------------------------------------------
// Election
// ---------------------------------------------------------------------------------------------------

for (const backend of ['memory', 'fs'] as const) {
  describe(`election (${backend})`, () => {
    it('makes the first auto joiner master at epoch 1', async (t) => {
      const { c, store } = await makeEnv(t, backend);
      const r = await c.join({ id: 'a' });
      assert.equal(r.role, 'master');
      assert.equal(r.rejoined, false);
      assert.deepEqual(
        {
          epoch: r.master.epoch,
          sessionId: r.master.sessionId,
          explicit: r.master.explicit,
          reason: r.master.reason,
        },
        { epoch: 1, sessionId: 'a', explicit: false, reason: 'join' },
      );
      assert.equal(r.master.handoff, null);
      assert.deepEqual(await masterEvents(store), [{ epoch: 1, session: 'a' }]);
    });

    it('lets a later auto joiner take over with a handoff naming the previous master', async (t) => {
      const { c, store } = await makeEnv(t, backend);
      await c.join({ id: 'a' });
      await c.addTask({ title: 'write docs' });
      const r = await c.join({ id: 'b' });
      assert.equal(r.role, 'master');
      assert.equal(r.master.epoch, 2);
      assert.equal(r.master.previous, 'a');
      assert.equal(r.master.reason, 'join');
      assert.equal(r.master.handoff?.from, 'a');
      assert.equal(r.master.handoff?.to, 'b');
      assert.match(r.master.handoff?.summary ?? '', /1 pending .*"write docs"/);
      assert.equal((await c.master()).sessionId, 'b');
      const last = (await allEvents(store)).filter((e) => e.type === 'master.changed').at(-1);
      assert.equal(last?.text, 'b is master (epoch 2, took over from a by joining last)');
    });

    it('keeps an explicit master against a later auto joiner', async (t) => {
      const { c } = await makeEnv(t, backend);
      const a = await c.join({ id: 'a', mode: 'master' });
      assert.equal(a.master.explicit, true);
      const b = await c.join({ id: 'b' });
      assert.equal(b.role, 'agent');
      assert.deepEqual([b.master.sessionId, b.master.epoch], ['a', 1]);
    });

    it('lets a later explicit claim beat an earlier explicit one', async (t) => {
      const { c } = await makeEnv(t, backend);
      await c.join({ id: 'a', mode: 'master' });
      const b = await c.join({ id: 'b', mode: 'master' });
      assert.equal(b.role, 'master');
      assert.deepEqual(
        [b.master.epoch, b.master.reason, b.master.explicit, b.master.previous],
        [2, 'claim', true, 'a'],
      );
      // ...and an explicit claim beats an implicit master too.
      const c2 = await c.join({ id: 'c' });
      assert.equal(c2.role, 'agent');
    });

    it('never lets an agent-mode joiner take over a live master', async (t) => {
      const { c } = await makeEnv(t, backend);
      await c.join({ id: 'a' });
      for (const id of ['b', 'c', 'd']) {
        const r = await c.join({ id, mode: 'agent' });
        assert.equal(r.role, 'agent');
        assert.deepEqual([r.master.sessionId, r.master.epoch], ['a', 1]);
      }
    });

    it('makes an agent-mode session master only when nobody else is alive', async (t) => {
      const { c } = await makeEnv(t, backend);
      const x = await c.join({ id: 'x', mode: 'agent' });
      assert.equal(x.role, 'master');
      const y = await c.join({ id: 'y' });
      assert.equal(y.role, 'master');
      assert.equal(y.master.epoch, 2);
    });

    it('fails over to the highest-rank live auto session, then to agents', async (t) => {
      const { c, clock, store } = await makeEnv(t, backend);
      await c.join({ id: 'x' }); // rank 1
      await c.join({ id: 'y' }); // rank 2
      await c.join({ id: 'z', mode: 'agent' }); // rank 3
      await c.join({ id: 'm', mode: 'master' }); // rank 4
      assert.equal((await c.master()).sessionId, 'm');
      clock.advance(TTL / 2);
      await touch(store, 'x', 'y', 'z');
      clock.advance(TTL / 2 + 1); // m's heartbeat is now older than its TTL
      assert.equal((await c.master()).sessionId, 'm', 'nothing changes until someone notices');
      const m1 = await c.ensureMaster();
      assert.deepEqual([m1.sessionId, m1.epoch, m1.reason, m1.previous], ['y', 4, 'failover', 'm']);
      assert.equal(m1.explicit, false);
      // Both auto sessions go quiet: the agent is the only one left.
      await touch(store, 'z');
      clock.advance(TTL / 2 + 1);
      await touch(store, 'z');
      const m2 = await c.ensureMaster();
      assert.deepEqual([m2.sessionId, m2.epoch, m2.reason, m2.previous], ['z', 5, 'failover', 'y']);
      assert.match((await c.status()).lines[0] ?? '', /^z is master \(epoch 5, elected after y died\)/);
    });

    it('fails over at once when the master is provably dead', async (t) => {
      const { c, dead } = await makeEnv(t, backend);
      await c.join({ id: 'a', process: proc(101) });
      await c.join({ id: 'b', process: proc(102) }); // master
      dead.add(102);
      const m = await c.ensureMaster();
      assert.deepEqual([m.sessionId, m.epoch, m.reason, m.previous], ['a', 3, 'failover', 'b']);
    });

    it('hands off to a named session with a note', async (t) => {
      const { c } = await makeEnv(t, backend);
      await c.join({ id: 'a' });
      await c.join({ id: 'b', mode: 'agent' });
      await c.join({ id: 'c', mode: 'agent' });
      const m = await c.handoff('a', { to: 'c', note: 'auth refactor half done', expectEpoch: 1 });
      assert.deepEqual(
        [m.sessionId, m.epoch, m.reason, m.previous, m.explicit],
        ['c', 2, 'handoff', 'a', false],
      );
      assert.equal(m.handoff?.note, 'auth refactor half done');
      assert.equal(m.handoff?.from, 'a');
      assert.match(m.handoff?.summary ?? '', /Agents: /);
      // Without --to: the best live session by the rule (here the highest rank).
      const m2 = await c.handoff('c');
      assert.deepEqual([m2.sessionId, m2.epoch], ['a', 3]);
    });

    it('refuses a handoff from a session that is not master', async (t) => {
      const { c } = await makeEnv(t, backend);
      await c.join({ id: 'a' });
      await c.join({ id: 'b', mode: 'agent' });
      await assert.rejects(
        c.handoff('b', { to: 'b' }),
        code(ErrorCode.NOT_MASTER, /b is not the master \(the master is a\)/),
      );
      await assert.rejects(c.handoff('a', { to: 'ghost' }), code(ErrorCode.SESSION_NOT_FOUND));
      assert.equal((await c.master()).sessionId, 'a');
    });

    it('hands off when the master switches to agent mode', async (t) => {
      const { c } = await makeEnv(t, backend);
      await c.join({ id: 'b', mode: 'agent' });
      await c.join({ id: 'a' });
      const r = await c.setMode('a', 'agent', 'going heads-down');
      assert.equal(r.role, 'agent');
      assert.deepEqual([r.master.sessionId, r.master.reason, r.master.previous], ['b', 'step-down', 'a']);
      assert.equal(r.master.handoff?.note, 'going heads-down');
      // Alone, a master that steps down stays master: someone must be.
      const { c: solo } = await makeEnv(t, backend);
      await solo.join({ id: 'only' });
      assert.equal((await solo.setMode('only', 'agent')).role, 'master');
    });

    it('hands off when the master leaves, and is vacant when nobody is left', async (t) => {
      const { c, store } = await makeEnv(t, backend);
      await c.join({ id: 'b' });
      await c.join({ id: 'a' });
      const { master } = await c.leave('a', 'bye');
      assert.deepEqual(
        [master.sessionId, master.reason, master.previous, master.epoch],
        ['b', 'leave', 'a', 3],
      );
      assert.equal(master.handoff?.note, 'bye');
      assert.equal(await store.getSession('a'), null);
      const last = await c.leave('b');
      assert.equal(last.master.sessionId, null);
      assert.equal(last.master.reason, 'vacant');
      assertEpochInvariant(await masterEvents(store));
      const again = await c.join({ id: 'c' });
      assert.equal(again.role, 'master');
      assert.ok(again.master.epoch > last.master.epoch);
    });

    it('refuses writes that carry a stale epoch', async (t) => {
      const { c } = await makeEnv(t, backend);
      await c.join({ id: 'a' });
      await c.addTask({ title: 'ok' }, { session: 'a', expectEpoch: 1 });
      await c.join({ id: 'b' });
      await assert.rejects(
        c.addTask({ title: 'late' }, { session: 'a', expectEpoch: 1 }),
        code(ErrorCode.STALE_EPOCH, /carries epoch 1 but the current epoch is 2 \(master b\)/),
      );
      await assert.rejects(c.handoff('b', { to: 'a', expectEpoch: 1 }), code(ErrorCode.STALE_EPOCH));
      const t1 = await c.addTask({ title: 'x' });
      await assert.rejects(
        c.cancelTask(t1.id, { session: 'a', expectEpoch: 1 }),
        code(ErrorCode.STALE_EPOCH),
      );
      await c.addTask({ title: 'fresh' }, { session: 'b', expectEpoch: 2 });
    });

    it('elects exactly one master among 30 concurrent joins, with growing epochs', async (t) => {
      const env = await makeEnv(t, backend);
      const results = await Promise.all(
        Array.from({ length: 30 }, (_, i) => env.other().join({ id: `s${i}` })),
      );
      const m = await env.c.master();
      const sessions = await env.store.listSessions();
      assert.equal(sessions.length, 30);
      const highest = sessions.reduce((a, b) => (b.rank > a.rank ? b : a));
      assert.equal(m.sessionId, highest.id, 'last joined (highest rank) wins');
      assert.equal(new Set(sessions.map((s) => s.rank)).size, 30, 'ranks are unique');
      const events = await masterEvents(env.store);
      assert.ok(events.length >= 1);
      for (let i = 1; i < events.length; i++)
        assert.ok(events[i]!.epoch > events[i - 1]!.epoch, JSON.stringify(events));
      assertEpochInvariant(events);
      assert.equal(events.at(-1)?.epoch, m.epoch);
      assert.equal(events.at(-1)?.session, m.sessionId);
      // Every joiner that was told "master" was master at the epoch it was told.
      const byEpoch = new Map(events.map((e) => [e.epoch, e.session]));
      for (const r of results)
        if (r.role === 'master') assert.equal(byEpoch.get(r.master.epoch), r.session.id);
    });
  });
}

describe('election invariant under random operations (memory)', () => {
  const ids = ['a', 'b', 'c', 'd'];
  const op = fc.oneof(
    fc.record({
      k: fc.constant('join' as const),
      id: fc.constantFrom(...ids),
      mode: fc.constantFrom<SessionMode>('auto', 'master', 'agent'),
    }),
    fc.record({ k: fc.constant('leave' as const), id: fc.constantFrom(...ids) }),
    fc.record({ k: fc.constant('heartbeat' as const), id: fc.constantFrom(...ids) }),
    fc.record({ k: fc.constant('advance' as const), ms: fc.constantFrom(1_000, 8_000, TTL + 1) }),
    fc.record({
      k: fc.constant('setMode' as const),
      id: fc.constantFrom(...ids),
      mode: fc.constantFrom<SessionMode>('auto', 'master', 'agent'),
    }),
    fc.record({
      k: fc.constant('handoff' as const),
      id: fc.constantFrom(...ids),
      to: fc.option(fc.constantFrom(...ids), { nil: undefined }),
    }),
    fc.record({ k: fc.constant('ensure' as const) }),
  );
  type Op = typeof op extends fc.Arbitrary<infer T> ? T : never;
  const expected: ErrorCode[] = [
    ErrorCode.SESSION_NOT_FOUND,
    ErrorCode.NOT_MASTER,
    ErrorCode.NOTHING_AVAILABLE,
    ErrorCode.INVALID_INPUT,
  ];

  async function run(env: Env, o: Op): Promise<void> {
    const c = env.other(); // each operation as if from its own process
    try {
      switch (o.k) {
        case 'join':
          await c.join({ id: o.id, mode: o.mode });
          break;
        case 'leave':
          await c.leave(o.id);
          break;
        case 'heartbeat':
          await c.heartbeat(o.id);
          break;
        case 'advance':
          env.clock.advance(o.ms);
          break;
        case 'setMode':
          await c.setMode(o.id, o.mode);
          break;
        case 'handoff':
          await c.handoff(o.id, { to: o.to });
          break;
        case 'ensure':
          await c.ensureMaster();
          break;
      }
    } catch (e) {
      if (!isFlowLoomError(e) || !expected.includes(e.code)) throw e;
    }
  }

  it('never names two masters in one epoch and never moves epochs back', async (t) => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.array(op, { minLength: 1, maxLength: 3 }), { maxLength: 20 }),
        async (batches) => {
          const env = await makeEnv(t, 'memory');
          // Operations in one batch run concurrently.
          for (const batch of batches) await Promise.all(batch.map((o) => run(env, o)));
          const events = await masterEvents(env.store);
          assertEpochInvariant(events);
          const m = await env.c.master();
          if (events.length)
            assert.deepEqual([m.epoch, m.sessionId], [events.at(-1)!.epoch, events.at(-1)!.session]);
          // Whoever notices next repairs the register: a live master, or none when nobody is alive.
          const after = await env.c.ensureMaster();
          const live = (await env.store.listSessions()).filter((x) => env.c.isAlive(x));
          if (after.sessionId === null) assert.deepEqual(live, []);
          else
            assert.ok(
              live.some((x) => x.id === after.sessionId),
              `master ${after.sessionId} is not alive`,
            );
          assertEpochInvariant(await masterEvents(env.store));
        },
      ),
      { numRuns: 150 },
    );
  });
});

// ---------------------------------------------------------------------------------------------------
// Task queue
// ---------------------------------------------------------------------------------------------------

describe('task queue (memory)', () => {
  const env = (t: TestContext, config: Partial<CoordinatorConfig> = {}) =>
    makeEnv(t, 'memory', { sessionTtlMs: 3_600_000, ...config });

  it('hands out tasks by priority, then age', async (t) => {
    const { c, clock } = await env(t);
    await c.join({ id: 'w' });
    const ids: Record<string, string> = {};
    for (const [name, priority] of [
      ['old-normal', 0],
      ['old-high', 5],
      ['new-normal', 0],
      ['new-high', 5],
      ['urgent', 9],
    ] as const) {
      ids[name] = (await c.addTask({ title: name, priority })).id;
      clock.advance(1);
    }
    const order: string[] = [];
    for (let i = 0; i < 5; i++) order.push((await c.claimTask('w'))!.task.title);
    assert.deepEqual(order, ['urgent', 'old-high', 'new-high', 'old-normal', 'new-normal']);
    assert.equal(await c.claimTask('w'), null);
  });

  it('gives a task only to a session with all the capabilities it needs', async (t) => {
    const { c } = await env(t);
    await c.join({ id: 'plain' });
    await c.join({ id: 'gpu-only', capabilities: ['gpu'] });
    await c.join({ id: 'gpu-cuda', capabilities: ['GPU', 'cuda', 'linux'] });
    const task = await c.addTask({ title: 'train', needs: ['gpu', 'cuda'] });
    assert.equal(await c.claimTask('plain'), null);
    assert.equal(await c.claimTask('gpu-only'), null);
    assert.equal((await c.claimTask('gpu-cuda'))?.task.id, task.id);
  });

  it('gives a task addressed with `to` only to that session', async (t) => {
    const { c } = await env(t);
    await c.join({ id: 'a' });
    await c.join({ id: 'b' });
    const task = await c.addTask({ title: 'for b', to: 'b' });
    assert.equal(await c.claimTask('a'), null);
    assert.equal((await c.claimTask('b'))?.task.id, task.id);
  });

  it('holds dependents until their dependencies completed', async (t) => {
    const { c } = await env(t);
    await c.join({ id: 'w1' });
    await c.join({ id: 'w2' });
    const build = await c.addTask({ title: 'build' });
    const test = await c.addTask({ title: 'test', after: [build.id], priority: 10 });
    const held = await c.claimTask('w1');
    assert.equal(held?.task.id, build.id, 'the dependent is skipped although its priority is higher');
    assert.equal(await c.claimTask('w2'), null, 'still blocked while the dependency is active');
    await c.completeTask(refOf(held!), { summary: 'built' });
    assert.equal((await c.claimTask('w2'))?.task.id, test.id);
    await assert.rejects(
      c.addTask({ title: 'x', after: ['t-nope'] }),
      code(ErrorCode.TASK_NOT_FOUND, /"t-nope"/),
    );
  });

  it('fails a dependent whose dependency failed', async (t) => {
    const { c, store } = await env(t);
    await c.join({ id: 'w' });
    const dep = await c.addTask({ title: 'migrate' });
    const child = await c.addTask({ title: 'deploy', after: [dep.id] });
    const held = await c.claimTask('w');
    const out = await c.failTask(refOf(held!), 'migration broke', { retry: false });
    assert.equal(out.state, 'failed');
    assert.equal(await c.claimTask('w'), null);
    const got = await store.getTask(child.id);
    assert.equal(got?.state, 'failed');
    assert.equal(got?.task.finalReason, `dependency ${dep.id} failed`);
  });

  it('returns a lapsed lease to the queue and dead-letters it after maxAttempts, keeping every reason', async (t) => {
    const { c, clock, store } = await env(t);
    await c.join({ id: 'w' });
    const task = await c.addTask({ title: 'flaky', maxAttempts: 2 });
    const first = await c.claimTask('w');
    clock.advance(LEASE + 1);
    assert.deepEqual(await c.reap(), { requeued: [task.id], failed: [], freedLocks: 0 });
    const back = await store.getTask(task.id);
    assert.equal(back?.state, 'pending');
    assert.deepEqual(
      back?.task.attempts.map((a) => [a.outcome, a.token]),
      [['lapsed', first!.lease.token]],
    );
    const second = await c.claimTask('w');
    assert.equal(second?.task.attempts.length, 1);
    assert.notEqual(second?.lease.token, first?.lease.token);
    clock.advance(LEASE + 1);
    assert.deepEqual(await c.reap(), { requeued: [], failed: [task.id], freedLocks: 0 });
    const dead = await store.getTask(task.id);
    assert.equal(dead?.state, 'failed');
    assert.deepEqual(
      dead?.task.attempts.map((a) => a.outcome),
      ['lapsed', 'lapsed'],
    );
    for (const a of dead!.task.attempts) assert.match(a.reason, /lease of w lapsed \(10 s without renewal\)/);
    assert.equal(dead?.task.finalReason, dead?.task.attempts[1]?.reason);
    const types = (await allEvents(store)).map((e) => e.type);
    assert.ok(types.includes('task.retry') && types.includes('task.failed'));
  });

  it('counts failures against maxAttempts and retries until then', async (t) => {
    const { c } = await env(t);
    await c.join({ id: 'w' });
    await c.addTask({ title: 'x', maxAttempts: 2 });
    const a1 = await c.claimTask('w');
    assert.equal((await c.failTask(refOf(a1!), 'first')).state, 'pending');
    const a2 = await c.claimTask('w');
    const out = await c.failTask(refOf(a2!), 'second');
    assert.equal(out.state, 'failed');
    assert.deepEqual(
      out.task.attempts.map((a) => a.reason),
      ['first', 'second'],
    );
  });

  it('fences a holder whose lease lapsed, even before the reaper ran', async (t) => {
    const { c, clock, store } = await env(t);
    await c.join({ id: 'w' });
    await c.join({ id: 'late' });
    const task = await c.addTask({ title: 'slow' });
    const held = await c.claimTask('w');
    const ref = refOf(held!);
    clock.advance(LEASE + 1);
    // Nobody reaped yet: the task still sits in active under w's lease.
    assert.equal((await store.getTask(task.id))?.state, 'active');
    await assert.rejects(
      c.completeTask(ref, { summary: 'done late' }),
      code(ErrorCode.LEASE_EXPIRED, /w does not hold task/),
    );
    await assert.rejects(c.renewTask(ref), code(ErrorCode.LEASE_EXPIRED));
    await assert.rejects(c.reportProgress(ref, 'still going'), code(ErrorCode.LEASE_EXPIRED));
    await assert.rejects(c.failTask(ref, 'gave up'), code(ErrorCode.LEASE_EXPIRED));
    await assert.rejects(c.releaseTask(ref), code(ErrorCode.LEASE_EXPIRED));
    const hb = await c.heartbeat('w');
    assert.deepEqual(hb.lostTasks, [task.id], 'a heartbeat does not revive a lapsed lease');
    assert.equal((await store.getTask(task.id))?.state, 'active');
    // The reaper (run by any claimer) returns it; the next claimer gets it; the old lease stays fenced.
    const next = await c.claimTask('late');
    assert.equal(next?.task.id, task.id);
    assert.equal(next?.task.attempts[0]?.outcome, 'lapsed');
    await assert.rejects(c.completeTask(ref, { summary: 'done late' }), code(ErrorCode.LEASE_EXPIRED));
    const done = await c.completeTask(refOf(next!), { summary: 'ok' });
    assert.deepEqual(
      done.attempts.map((a) => a.outcome),
      ['lapsed', 'completed'],
    );
  });

  it('lets a holder that renews keep its task past the first lease', async (t) => {
    const { c, clock } = await env(t);
    await c.join({ id: 'w' });
    await c.addTask({ title: 'long' });
    const held = await c.claimTask('w');
    for (let i = 0; i < 5; i++) {
      clock.advance(LEASE / 2);
      assert.deepEqual((await c.heartbeat('w')).lostTasks, []);
    }
    assert.deepEqual((await c.reap()).requeued, []);
    const done = await c.completeTask(refOf(held!), { summary: 'ok', data: { tests: 12 } });
    assert.deepEqual(done.result, { summary: 'ok', data: { tests: 12 } });
  });

  it('requeues at once when the holder is provably dead', async (t) => {
    const { c, dead, store } = await env(t);
    await c.join({ id: 'w', process: proc(4242) });
    const task = await c.addTask({ title: 'edit', resources: ['file:src/a.ts'] });
    const held = await c.claimTask('w');
    assert.equal((await c.listLocks()).locks[0]?.taskId, task.id);
    dead.add(4242);
    const r = await c.reap();
    assert.deepEqual(r.requeued, [task.id]);
    const back = await store.getTask(task.id);
    assert.equal(back?.state, 'pending');
    assert.equal(back?.task.attempts[0]?.outcome, 'holder-died');
    assert.match(back?.task.attempts[0]?.reason ?? '', /holder w died \(pid 4242\)/);
    assert.deepEqual((await c.listLocks()).locks, []);
    await assert.rejects(c.completeTask(refOf(held!), { summary: 'zombie' }), code(ErrorCode.LEASE_EXPIRED));
  });

  it('requeues a task that ran past its timeout', async (t) => {
    const { c, clock, store } = await env(t);
    await c.join({ id: 'w' });
    const task = await c.addTask({ title: 'bounded', timeoutMs: 4_000 });
    await c.claimTask('w');
    clock.advance(3_000);
    await c.heartbeat('w');
    assert.deepEqual((await c.reap()).requeued, []);
    clock.advance(1_001);
    await c.heartbeat('w'); // the lease is fresh: only the timeout ends it
    assert.deepEqual((await c.reap()).requeued, [task.id]);
    const back = await store.getTask(task.id);
    assert.equal(back?.task.attempts[0]?.outcome, 'timed-out');
    assert.equal(back?.task.attempts[0]?.reason, 'timed out after 4 s');
  });

  it('cancels pending and active tasks, and fences the holder', async (t) => {
    const { c, store } = await env(t);
    await c.join({ id: 'm' });
    await c.join({ id: 'w', mode: 'agent' });
    const p = await c.addTask({ title: 'pending one' });
    const cancelled = await c.cancelTask(p.id, { session: 'm' });
    assert.equal(cancelled.finalReason, 'cancelled by m');
    assert.equal((await store.getTask(p.id))?.state, 'cancelled');
    const a = await c.addTask({ title: 'active one', resources: ['git'] });
    const held = await c.claimTask('w');
    assert.equal(held?.task.id, a.id);
    const stopped = await c.cancelTask(a.id, { session: 'm' }, 'not needed');
    assert.equal(stopped.finalReason, 'not needed by m');
    assert.deepEqual(
      stopped.attempts.map((x) => x.outcome),
      ['cancelled'],
    );
    assert.equal((await store.getTask(a.id))?.state, 'cancelled');
    assert.deepEqual((await c.listLocks()).locks, [], 'its locks were released');
    await assert.rejects(c.completeTask(refOf(held!), { summary: 'x' }), code(ErrorCode.LEASE_EXPIRED));
    await assert.rejects(c.cancelTask(a.id), code(ErrorCode.TASK_STATE, /already cancelled/));
    await assert.rejects(c.cancelTask('t-unknown'), code(ErrorCode.TASK_NOT_FOUND));
  });

  it('does not count a released attempt', async (t) => {
    const { c, store } = await env(t);
    await c.join({ id: 'w' });
    const task = await c.addTask({ title: 'x', maxAttempts: 1 });
    const a1 = await c.claimTask('w');
    await c.releaseTask(refOf(a1!), 'need a human');
    const back = await store.getTask(task.id);
    assert.equal(back?.state, 'pending');
    assert.deepEqual(
      back?.task.attempts.map((a) => [a.outcome, a.reason]),
      [['released', 'need a human']],
    );
    const a2 = await c.claimTask('w');
    await c.releaseTask(refOf(a2!));
    const a3 = await c.claimTask('w');
    const out = await c.failTask(refOf(a3!), 'real failure');
    assert.equal(out.state, 'failed', 'the one counted attempt used up maxAttempts 1');
    assert.equal(out.task.attempts.length, 3);
  });

  it('lets exactly one of many concurrent claimers have each task', async (t) => {
    const { c, other } = await env(t);
    for (let i = 0; i < 10; i++) await c.join({ id: `w${i}`, mode: 'agent' });
    for (let i = 0; i < 4; i++) await c.addTask({ title: `t${i}` });
    const got = await Promise.all(Array.from({ length: 10 }, (_, i) => other().claimTask(`w${i}`)));
    const won = got.filter((g) => g !== null);
    assert.equal(won.length, 4);
    assert.equal(new Set(won.map((g) => g.task.id)).size, 4);
  });
});

// Fencing also on the file backend.
for (const backend of ['memory', 'fs'] as const) {
  describe(`task fencing (${backend})`, () => {
    it('refuses completion after the lease lapsed and after a second completion', async (t) => {
      const { c, clock, store } = await makeEnv(t, backend, { sessionTtlMs: 3_600_000 });
      await c.join({ id: 'w' });
      const task = await c.addTask({ title: 'x' });
      const held = await c.claimTask('w');
      clock.advance(LEASE + 1);
      await assert.rejects(c.completeTask(refOf(held!), { summary: 'late' }), code(ErrorCode.LEASE_EXPIRED));
      assert.deepEqual((await c.reap()).requeued, [task.id]);
      const again = await c.claimTask('w');
      await c.completeTask(refOf(again!), { summary: 'ok' });
      await assert.rejects(
        c.completeTask(refOf(again!), { summary: 'twice' }),
        code(ErrorCode.LEASE_EXPIRED),
      );
      const done = await store.getTask(task.id);
      assert.equal(done?.state, 'completed');
      assert.deepEqual(
        done?.task.attempts.map((a) => a.outcome),
        ['lapsed', 'completed'],
      );
    });

    it('fences lock holders by token', async (t) => {
      const { c } = await makeEnv(t, backend);
      await c.join({ id: 'a' });
      await c.join({ id: 'b' });
      const [l1] = await c.acquireLocks('a', ['file:src/x.ts']);
      await assert.rejects(
        c.releaseLocks('a', { resources: ['file:src/x.ts'], token: l1!.token + 1 }),
        code(ErrorCode.LEASE_EXPIRED),
      );
      await assert.rejects(
        c.releaseLocks('b', { resources: ['file:src/x.ts'] }),
        code(ErrorCode.LEASE_EXPIRED, /b does not hold/),
      );
      assert.equal((await c.releaseLocks('a', { resources: ['file:src/x.ts'], token: l1!.token })).length, 1);
      const [l2] = await c.acquireLocks('b', ['file:src/x.ts']);
      assert.ok(l2!.token > l1!.token);
    });
  });
}

// ---------------------------------------------------------------------------------------------------
// Locks
// ---------------------------------------------------------------------------------------------------

describe('locks (memory)', () => {
  it('makes overlapping file globs conflict and names the holder', async (t) => {
    const { c } = await makeEnv(t, 'memory');
    await c.join({ id: 'a' });
    await c.join({ id: 'b' });
    await c.acquireLocks('a', ['file:src/auth/**'], { note: 'refactor' });
    for (const r of [
      'file:src/auth/login.ts',
      'file:src/*/login.ts',
      'file:src/auth/',
      'file:./src/auth/deep/x.ts',
    ]) {
      await assert.rejects(
        c.acquireLocks('b', [r]),
        (e: unknown) => {
          code(ErrorCode.LOCK_HELD, /file:src\/auth\/\*\* is held by a since /)(e);
          assert.equal((e as FlowLoomError).details?.holder, 'a');
          return true;
        },
        r,
      );
    }
    // Not overlapping: a sibling directory, another kind.
    assert.equal((await c.acquireLocks('b', ['file:src/authz/x.ts', 'api:github'])).length, 2);
    // All or nothing: one busy resource means none is taken.
    await assert.rejects(
      c.acquireLocks('b', ['file:docs/readme.md', 'file:src/auth/a.ts']),
      code(ErrorCode.LOCK_HELD),
    );
    assert.ok(!(await c.listLocks()).locks.some((l) => l.resource === 'file:docs/readme.md'));
  });

  it('renews a lock the same session acquires again', async (t) => {
    const { c, clock } = await makeEnv(t, 'memory');
    await c.join({ id: 'a' });
    const [l1] = await c.acquireLocks('a', ['git'], { leaseMs: 20_000 });
    clock.advance(15_000);
    const [l2] = await c.acquireLocks('a', ['git'], { leaseMs: 20_000 });
    assert.equal(l2!.token, l1!.token);
    assert.equal(l2!.expiresAt, clock.now() + 20_000);
    assert.equal((await c.listLocks()).locks.length, 1);
  });

  it("frees a dead holder's lock and a lapsed lease", async (t) => {
    const { c, clock, dead, store } = await makeEnv(t, 'memory');
    await c.join({ id: 'a', process: proc(300) });
    await c.join({ id: 'b' });
    await c.acquireLocks('a', ['file:src/app.ts']);
    await assert.rejects(c.acquireLocks('b', ['file:src/app.ts']), code(ErrorCode.LOCK_HELD));
    dead.add(300);
    assert.equal((await c.reap()).freedLocks, 1);
    const freed = (await allEvents(store)).find((e) => e.type === 'lock.freed');
    assert.equal(freed?.text, 'file:src/app.ts freed: holder a is gone or its lease lapsed');
    assert.equal((await c.acquireLocks('b', ['file:src/app.ts'])).length, 1);
    // A lease that ran out frees the resource even while the holder lives.
    await c.acquireLocks('b', ['deploy'], { leaseMs: 1_000 });
    clock.advance(1_001);
    await touch(store, 'b');
    await c.join({ id: 'c' });
    assert.equal((await c.acquireLocks('c', ['deploy'])).length, 1);
  });

  it('serves waiters in ticket order', { timeout: 10_000 }, async (t) => {
    const { c, other } = await makeEnv(t, 'memory');
    for (const id of ['a', 'b', 'c', 'd']) await c.join({ id, mode: 'agent' });
    await c.acquireLocks('a', ['file:src/**']);
    const waiting = (n: number) => async () => (await c.listLocks()).waiters.length === n;
    const settled: string[] = [];
    const queue = (id: string, resource: string) =>
      other()
        .acquireLocks(id, [resource], { waitMs: 60_000 })
        .then((l) => {
          settled.push(id);
          return l;
        });
    const pb = queue('b', 'file:src/app.ts');
    await waitFor(waiting(1), 'b to queue');
    const pc = queue('c', 'file:src/**/*.ts');
    await waitFor(waiting(2), 'c to queue');
    const { waiters } = await c.listLocks();
    assert.deepEqual(
      waiters.map((w) => w.session),
      ['b', 'c'],
    );
    assert.ok(waiters[0]!.ticket < waiters[1]!.ticket);
    await c.releaseLocks('a', {});
    // A non-waiting newcomer may not jump the queue either.
    const lb = await pb;
    assert.equal(lb[0]?.session, 'b');
    assert.deepEqual(settled, ['b']);
    await assert.rejects(c.acquireLocks('d', ['file:src/app.ts']), code(ErrorCode.LOCK_HELD));
    await c.releaseLocks('b', {});
    const lc = await pc;
    assert.equal(lc[0]?.session, 'c');
    assert.ok(lc[0]!.token > lb[0]!.token);
    assert.deepEqual(settled, ['b', 'c']);
    assert.deepEqual((await c.listLocks()).waiters, []);
  });

  it('issues strictly increasing fencing tokens', async (t) => {
    const { c } = await makeEnv(t, 'memory');
    await c.join({ id: 'a' });
    await c.join({ id: 'b' });
    const tokens: number[] = [];
    for (let i = 0; i < 5; i++) {
      const who = i % 2 === 0 ? 'a' : 'b';
      for (const l of await c.acquireLocks(who, ['db:migrations', `file:f${i}.ts`])) tokens.push(l.token);
      await c.releaseLocks(who, { resources: ['db:migrations'] });
    }
    for (let i = 1; i < tokens.length; i++) assert.ok(tokens[i]! > tokens[i - 1]!, tokens.join(','));
  });
});

// ---------------------------------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------------------------------

describe('status (memory)', () => {
  it('says when all agents are idle', async (t) => {
    const { c } = await makeEnv(t, 'memory');
    await c.join({ id: 'm' });
    await c.join({ id: 'a1', mode: 'agent' });
    await c.join({ id: 'a2', mode: 'agent' });
    const s = await c.status();
    assert.deepEqual(s.lines, [
      'm is master (epoch 1, joined).',
      'All agents idle.',
      'Queue: 0 pending, 0 active, 0 completed, 0 failed, 0 cancelled.',
    ]);
  });

  it("relays an agent's progress report", async (t) => {
    const { c, clock } = await makeEnv(t, 'memory');
    await c.join({ id: 'm' });
    await c.join({ id: 'a1', mode: 'agent' });
    await c.join({ id: 'a2', mode: 'agent' });
    const task = await c.addTask({ title: 'run tests', resources: ['file:src/auth/**'] });
    const held = await c.claimTask('a1');
    clock.advance(2_000);
    await c.reportProgress(refOf(held!), '3 tests failing in auth module', 0.4);
    const s = await c.status();
    assert.ok(s.lines.includes('a1 reports: 3 tests failing in auth module'), s.lines.join('\n'));
    assert.ok(!s.lines.includes('All agents idle.'));
    assert.ok(s.lines.includes('Locks: file:src/auth/** (a1).'));
    assert.equal(s.active[0]?.id, task.id);
    assert.equal(s.active[0]?.progress?.text, '3 tests failing in auth module');
    assert.equal(s.active[0]?.leaseRemainingMs, LEASE);
    const a1 = s.sessions.find((x) => x.id === 'a1');
    assert.equal(a1?.status, 'busy');
    assert.equal(a1?.currentTask?.id, task.id);
    // Once done, the agent is idle again.
    await c.completeTask(refOf(held!), { summary: 'fixed' });
    assert.ok((await c.status()).lines.includes('All agents idle.'));
  });

  it('reports offline sessions, a failover and a vacancy', async (t) => {
    const { c, clock, store } = await makeEnv(t, 'memory');
    await c.join({ id: 'm' });
    await c.join({ id: 'a1', mode: 'agent' });
    clock.advance(TTL + 1_000);
    await touch(store, 'a1');
    // status() reaps, and the reaper elects: a1 is the only one alive.
    assert.deepEqual((await c.status()).lines, [
      'a1 is master (epoch 2, elected after m died).',
      'm is offline (no heartbeat for 16 s).',
      'Queue: 0 pending, 0 active, 0 completed, 0 failed, 0 cancelled.',
    ]);
    clock.advance(TTL + 1_000);
    assert.deepEqual((await c.status()).lines, [
      'No master: no session is alive.',
      'm is offline (no heartbeat for 32 s).',
      'a1 is offline (no heartbeat for 16 s).',
      'Queue: 0 pending, 0 active, 0 completed, 0 failed, 0 cancelled.',
    ]);
  });
});
