/**
 * Multi-process election: many sessions joining at once, failover after SIGKILL of the master, and
 * fencing of a master that was stopped (SIGSTOP) past its lease and then resumed (SIGCONT).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  type Child,
  Children,
  cleanup,
  FIXTURES,
  runCli,
  SHORT_LEASES,
  snapshotDist,
  tempDir,
  waitFor,
} from './helpers.ts';

interface SessionRow {
  id: string;
  role: string;
  rank: number;
  alive: boolean;
  pid: number | null;
}
interface Status {
  master: { sessionId: string | null; epoch: number; alive: boolean } | null;
  sessions: SessionRow[];
}
interface MasterEvent {
  session: string | null;
  data: { epoch: number };
}

const children = new Children();
let cli = '';
let index = '';

before(async () => {
  ({ cli, index } = await snapshotDist());
});

after(async () => {
  await children.killAll();
  cleanup();
});

async function status(env: Record<string, string>): Promise<Status> {
  const r = await runCli(children, cli, ['status', '--json'], env);
  assert.equal(r.code, 0, r.stderr);
  return r.json as unknown as Status;
}

async function masterEvents(env: Record<string, string>): Promise<MasterEvent[]> {
  const r = await runCli(children, cli, ['events', '--json', '--limit', '1000'], env);
  assert.equal(r.code, 0, r.stderr);
  const events = (r.json as { events: { type: string }[] }).events;
  return events.filter((e) => e.type === 'master.changed') as unknown as MasterEvent[];
}

/** Epochs strictly increase in log order (so no epoch is used twice) and each names one session. */
function assertEpochsWellFormed(events: MasterEvent[]): void {
  assert.ok(events.length > 0, 'no master.changed events');
  for (let i = 1; i < events.length; i++) {
    const prev = events[i - 1]!.data.epoch;
    const cur = events[i]!.data.epoch;
    assert.ok(
      cur > prev,
      `epoch ${cur} follows epoch ${prev} in the log: ${JSON.stringify(events.map((e) => [e.data.epoch, e.session]))}`,
    );
  }
}

function alive(c: Child): boolean {
  return !c.done;
}

describe('election across processes', () => {
  test('50 sessions joining at once elect exactly one master: the last to join', async () => {
    const dir = join(tempDir('join50'), 'state');
    // The joined sessions never heartbeat (no --hold), so their TTL must outlast the join storm: with a
    // 1 s TTL the early joiners would be offline before the last one joins and the rule would differ.
    const env = { ...SHORT_LEASES, FLOWLOOM_DIR: dir, FLOWLOOM_SESSION_TTL: '120s' };
    const started = Date.now();
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        runCli(children, cli, ['join', '--session', `s${i}`, '--json'], env),
      ),
    );
    const joinMs = Date.now() - started;
    for (const [i, r] of results.entries()) assert.equal(r.code, 0, `s${i}: ${r.stderr}`);

    const st = await status(env);
    assert.equal(st.sessions.length, 50, 'all 50 sessions are registered');
    const masters = st.sessions.filter((s) => s.role === 'master');
    assert.equal(masters.length, 1, `exactly one master, got ${masters.map((m) => m.id).join(', ')}`);
    const last = st.sessions.reduce((a, b) => (b.rank > a.rank ? b : a));
    assert.equal(new Set(st.sessions.map((s) => s.rank)).size, 50, 'ranks are unique');
    assert.equal(st.master?.sessionId, last.id, 'the master is the session with the highest rank');
    assert.equal(masters[0]!.id, last.id);
    assert.equal(st.master?.alive, true);

    const events = await masterEvents(env);
    assertEpochsWellFormed(events);
    for (const e of events) assert.match(e.session ?? '', /^s\d+$/, 'each epoch names one session');
    const final = events.at(-1)!;
    assert.equal(final.data.epoch, st.master?.epoch);
    assert.equal(final.session, last.id);
    console.log(
      `50 joins took ${joinMs} ms; ${events.length} master changes, final epoch ${final.data.epoch}`,
    );
  });

  test('SIGKILL of the master: exactly one new master with a higher epoch', async () => {
    const dir = join(tempDir('failover'), 'state');
    const env = { ...SHORT_LEASES, FLOWLOOM_DIR: dir };
    const holds = Array.from({ length: 5 }, (_, i) =>
      children.spawn([cli, 'join', '--session', `h${i}`, '--hold', '--json'], env),
    );
    await waitFor(() => holds.every((h) => h.json.length > 0), 20_000, 'all 5 sessions to join');
    const initial = await waitFor(
      async () => {
        const st = await status(env);
        const live = st.sessions.filter((s) => s.alive).length;
        return live === 5 && st.master?.alive ? st : null;
      },
      20_000,
      '5 live sessions and a live master',
    );
    const oldMaster = initial.master!.sessionId!;
    const oldEpoch = initial.master!.epoch;
    const victim = holds.find((h) => h.pid === initial.sessions.find((s) => s.id === oldMaster)?.pid);
    assert.ok(victim, `the master ${oldMaster} is one of our processes`);

    const survivors = holds.filter((h) => h !== victim);
    const seen = survivors.map((h) => h.json.length);
    const killedAt = Date.now();
    victim.proc.kill('SIGKILL');
    // The survivors print a line on every role change: the first one naming another master ends the failover.
    const noticedAt = await waitFor(
      () =>
        survivors.some((h, i) =>
          h.json.slice(seen[i]).some((l) => l.master !== oldMaster && l.master != null),
        ) && Date.now(),
      10_000,
      'a survivor to report a new master',
    );
    const st = await waitFor(
      async () => {
        const s = await status(env);
        return s.master?.sessionId && s.master.sessionId !== oldMaster && s.master.alive ? s : null;
      },
      10_000,
      'status to show a new live master',
    );
    const statusAt = Date.now();
    const newMaster = st.master!.sessionId!;
    assert.ok(st.master!.epoch > oldEpoch, `epoch grew: ${oldEpoch} -> ${st.master!.epoch}`);
    assert.equal(st.sessions.filter((s) => s.role === 'master').length, 1);
    assert.ok(survivors.every(alive), 'no survivor died');

    const events = await masterEvents(env);
    assertEpochsWellFormed(events);
    const ofNewEpoch = events.filter((e) => e.data.epoch === st.master!.epoch);
    assert.equal(ofNewEpoch.length, 1, 'the new epoch has exactly one master');
    assert.equal(ofNewEpoch[0]!.session, newMaster);
    console.log(
      `failover: ${oldMaster} (epoch ${oldEpoch}) killed -> ${newMaster} (epoch ${st.master!.epoch}); ` +
        `kill to new master reported by a survivor: ${noticedAt - killedAt} ms, seen in status: ${statusAt - killedAt} ms`,
    );
  });

  test('a master stopped past its lease is fenced after SIGCONT: its writes carry a stale epoch', async () => {
    const dir = join(tempDir('sigstop'), 'state');
    const env = { ...SHORT_LEASES, FLOWLOOM_DIR: dir };
    const other = children.spawn([cli, 'join', '--session', 'other', '--hold', '--json'], env);
    await waitFor(() => other.json.length > 0, 20_000, 'the other session to join');
    const fixture = children.spawn([join(FIXTURES, 'stoppable-master.mjs'), 'stopper'], {
      FLOWLOOM_DIR: dir,
      FLOWLOOM_INDEX: index,
      FLOWLOOM_TEST_CONFIG: JSON.stringify({ sessionTtlMs: 1000, taskLeaseMs: 2000, pollMs: 100 }),
    });
    const became = await waitFor(
      () => fixture.json.find((l) => l.event === 'master'),
      20_000,
      'the fixture to become master',
    );
    const myEpoch = became.epoch as number;
    const attempts = () => fixture.json.filter((l) => typeof l.ok === 'boolean');
    await waitFor(() => attempts().filter((a) => a.ok === true).length >= 3, 10_000, 'three accepted writes');

    fixture.proc.kill('SIGSTOP');
    const stoppedAt = Date.now();
    const st = await waitFor(
      async () => {
        const s = await status(env);
        return s.master?.sessionId === 'other' ? s : null;
      },
      15_000,
      'the other session to become master',
    );
    const takenOverMs = Date.now() - stoppedAt;
    assert.ok(st.master!.epoch > myEpoch);

    const resumedAt = Date.now();
    fixture.proc.kill('SIGCONT');
    // An attempt begun before the stop may finish after the resume; those begun after it are the ones
    // that must be refused.
    const afterResume = () => attempts().filter((a) => (a.startedAt as number) >= resumedAt);
    await waitFor(() => afterResume().length >= 5, 10_000, 'five write attempts after the resume');
    for (const a of afterResume()) {
      assert.equal(a.ok, false, `write after resume was accepted: ${JSON.stringify(a)}`);
      assert.equal(a.code, 'STALE_EPOCH', JSON.stringify(a));
    }
    const inFlight = attempts().filter(
      (a) => (a.startedAt as number) < resumedAt && (a.endedAt as number) >= resumedAt,
    );

    const end = await status(env);
    assert.equal(end.master?.sessionId, 'other', 'the master stays the other session');
    assert.equal(end.master?.epoch, st.master!.epoch, 'no further master change');
    assert.ok(!other.done && !fixture.done);
    console.log(
      `SIGSTOP: other took over in ${takenOverMs} ms (epoch ${myEpoch} -> ${st.master!.epoch}); ` +
        `${afterResume().length} writes after SIGCONT all refused with STALE_EPOCH; ${inFlight.length} in flight across the stop`,
    );
  });
});
