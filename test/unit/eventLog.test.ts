import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import {
  appendFileSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ManualClock } from '../../src/core/clock.ts';
import { isFlowLoomError } from '../../src/core/errors.ts';
import type { EventInput, StoredEvent } from '../../src/core/types.ts';
import { EventLog, type EventLogOptions, MAX_EVENT_LINE_BYTES } from '../../src/store/fs/eventLog.ts';
import type { StoreProblem } from '../../src/store/store.ts';

interface Fixture {
  root: string;
  dir: string;
  log: EventLog;
  clock: ManualClock;
  problems: StoreProblem[];
  seg: (n: number) => string;
}

function setup(t: { after: (fn: () => void) => void }, opts: EventLogOptions = {}): Fixture {
  const root = mkdtempSync(join(tmpdir(), 'flowloom-eventlog-'));
  const dir = join(root, 'events');
  const problems: StoreProblem[] = [];
  const clock = new ManualClock();
  const log = new EventLog(dir, clock, { ...opts, onProblem: (p) => problems.push(p) });
  t.after(() => {
    log.close();
    rmSync(root, { recursive: true, force: true });
  });
  return { root, dir, log, clock, problems, seg: (n) => join(dir, `${String(n).padStart(8, '0')}.jsonl`) };
}

/** About 100 bytes per line, so a 300-byte segment holds three events. */
function ev(i: number): EventInput {
  return {
    type: 'task.progress',
    session: 'agent-1',
    task: 't-1',
    text: `event ${i} ${'.'.repeat(20)}`,
    data: { i },
  };
}

function appendMany(f: Fixture, from: number, to: number): void {
  for (let i = from; i < to; i++) {
    f.log.append(ev(i));
    f.clock.advance(1);
  }
}

function indexes(events: StoredEvent[]): number[] {
  return events.map((e) => e.data?.i as number);
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from }, (_, k) => from + k);
}

function segmentsOf(dir: string): string[] {
  return readdirSync(dir)
    .filter((n) => n.endsWith('.jsonl'))
    .sort();
}

test('append and read round trip with cursors', (t) => {
  const f = setup(t);
  assert.equal(statSync(f.dir).mode & 0o777, 0o700);
  assert.deepEqual(f.log.read(null, 10), { events: [], cursor: null });
  assert.equal(f.log.tail(), null);
  assert.deepEqual(f.log.last(3), []);

  f.log.append({ type: 'session.joined', session: 'agent-1', text: 'agent-1 joined' });
  f.clock.advance(5);
  f.log.append({
    type: 'task.added',
    session: null,
    task: 't-1',
    text: 'added t-1',
    data: { title: 'tests' },
  });
  f.clock.advance(5);
  f.log.append({ type: 'lock.acquired', text: 'lock on file:src/**' });

  const { events, cursor } = f.log.read(null, 10);
  const lines = readFileSync(f.seg(1), 'utf8').split('\n');
  const ends = [lines[0]!, lines[1]!, lines[2]!].map((_, k) =>
    lines.slice(0, k + 1).reduce((n, l) => n + Buffer.byteLength(l) + 1, 0),
  );
  assert.deepEqual(events, [
    {
      type: 'session.joined',
      session: 'agent-1',
      text: 'agent-1 joined',
      at: 1_700_000_000_000,
      cursor: `1:${ends[0]}`,
    },
    {
      type: 'task.added',
      session: null,
      task: 't-1',
      text: 'added t-1',
      data: { title: 'tests' },
      at: 1_700_000_000_005,
      cursor: `1:${ends[1]}`,
    },
    { type: 'lock.acquired', text: 'lock on file:src/**', at: 1_700_000_000_010, cursor: `1:${ends[2]}` },
  ]);
  assert.equal(cursor, `1:${statSync(f.seg(1)).size}`);
  assert.equal(f.log.tail(), cursor);
  assert.deepEqual(f.log.read(cursor, 10), { events: [], cursor });
  assert.deepEqual(f.log.last(2), events.slice(1));
  // The cursor is computed, never stored.
  assert.ok(lines.slice(0, 3).every((l) => !('cursor' in JSON.parse(l))));
  assert.deepEqual(f.problems, []);
});

test('reading from the middle and with a limit', (t) => {
  const f = setup(t);
  appendMany(f, 0, 10);
  const a = f.log.read(null, 4);
  assert.deepEqual(indexes(a.events), [0, 1, 2, 3]);
  assert.equal(a.cursor, a.events[3]!.cursor);
  const b = f.log.read(a.cursor, 4);
  assert.deepEqual(indexes(b.events), [4, 5, 6, 7]);
  const c = f.log.read(b.cursor, 4);
  assert.deepEqual(indexes(c.events), [8, 9]);
  assert.deepEqual(f.log.read(c.cursor, 4), { events: [], cursor: c.cursor });
  assert.deepEqual(indexes(f.log.read(b.events[0]!.cursor, 100).events), [5, 6, 7, 8, 9]);
  assert.deepEqual(f.log.read(a.cursor, 0), { events: [], cursor: a.cursor });
});

test('a malformed cursor is refused with a message that quotes it', (t) => {
  const f = setup(t);
  appendMany(f, 0, 2);
  for (const bad of ['x', '1:', ':5', '0:5', '1:-3', 'a:b', '1:2:3', ' 1:2']) {
    assert.throws(
      () => f.log.read(bad, 10),
      (err: unknown) =>
        isFlowLoomError(err, 'INVALID_INPUT') &&
        err.message ===
          `cursor "${bad}" is not a FlowLoom event cursor: pass the cursor printed by a previous read`,
    );
  }
});

test('rotation keeps maxSegments segments and reads across them in order', (t) => {
  const f = setup(t, { maxSegmentBytes: 300, maxSegments: 3 });
  appendMany(f, 0, 60);
  const segs = segmentsOf(f.dir);
  assert.deepEqual(segs, ['00000018.jsonl', '00000019.jsonl', '00000020.jsonl']);
  for (const s of segs.slice(0, -1)) assert.ok(statSync(join(f.dir, s)).size >= 300);

  const all = f.log.read(null, 1000);
  const got = indexes(all.events);
  assert.deepEqual(got, range(60 - got.length, 60));
  assert.ok(got.length >= 7, `kept ${got.length} events`);
  const segOf = (e: StoredEvent) => Number(e.cursor.split(':')[0]);
  assert.deepEqual([...new Set(all.events.map(segOf))], [18, 19, 20]);

  // Reading in small steps crosses the same boundaries.
  const stepped: StoredEvent[] = [];
  let cursor: string | null = null;
  for (let k = 0; k < 20; k++) {
    const r = f.log.read(cursor, 2);
    stepped.push(...r.events);
    cursor = r.cursor;
  }
  assert.deepEqual(stepped, all.events);

  // last(n) reads backwards across segment boundaries and agrees with read().
  const last5 = f.log.last(5);
  assert.deepEqual(last5, all.events.slice(-5));
  assert.ok(new Set(last5.map(segOf)).size >= 2);
  assert.deepEqual(f.log.last(1000), all.events);
  assert.equal(f.log.tail(), all.cursor);
  assert.deepEqual(f.problems, []);
});

test('a cursor into a deleted segment continues from the oldest retained one and reports the loss once', (t) => {
  const f = setup(t, { maxSegmentBytes: 300, maxSegments: 2 });
  appendMany(f, 0, 1);
  const old = f.log.tail();
  assert.equal(old?.startsWith('1:'), true);
  appendMany(f, 1, 30);
  assert.ok(!segmentsOf(f.dir).includes('00000001.jsonl'));

  const r = f.log.read(old, 1000);
  const got = indexes(r.events);
  assert.deepEqual(got, range(30 - got.length, 30));
  assert.equal(f.problems.length, 1);
  assert.equal(f.problems[0]!.what, 'events/00000001.jsonl');
  assert.match(f.problems[0]!.reason, /lost to rotation/);
  assert.equal(f.problems[0]!.movedTo, null);

  assert.deepEqual(f.log.read(r.cursor, 1000).events, []);
  assert.equal(f.problems.length, 1);
  // Each read from the stale cursor reports the gap; the cursor it returns is past the gap.
  const again = f.log.read(old, 1);
  assert.equal(f.problems.length, 2);
  assert.deepEqual(indexes(f.log.read(again.cursor, 1000).events), got.slice(1));
  assert.equal(f.problems.length, 2);
});

test('a partial trailing line is not returned until it is complete', (t) => {
  const f = setup(t);
  appendMany(f, 0, 2);
  const c = f.log.tail();
  appendFileSync(f.seg(1), '{"at":1,"type":"task.added","te');

  const r = f.log.read(null, 10);
  assert.deepEqual(indexes(r.events), [0, 1]);
  assert.equal(r.cursor, c);
  assert.deepEqual(f.log.read(c, 10), { events: [], cursor: c });
  assert.equal(f.log.tail(), c);
  assert.deepEqual(indexes(f.log.last(5)), [0, 1]);

  appendFileSync(f.seg(1), 'xt":"late"}\n');
  const done = f.log.read(c, 10);
  assert.equal(done.events.length, 1);
  assert.equal(done.events[0]!.text, 'late');
  assert.equal(done.cursor, `1:${statSync(f.seg(1)).size}`);
  assert.deepEqual(f.problems, []);
});

test('an unterminated line left by a crash in an older segment does not stop readers for good', (t) => {
  const f = setup(t, { maxSegmentBytes: 300, maxSegments: 10 });
  appendMany(f, 0, 3);
  appendFileSync(f.seg(1), '{"at":1,"ty');
  appendMany(f, 3, 5);
  assert.deepEqual(segmentsOf(f.dir), ['00000001.jsonl', '00000002.jsonl']);

  // Fresh: a writer may still be finishing it, so the reader waits at the end of segment 1.
  const r = f.log.read(null, 100);
  assert.deepEqual(indexes(r.events), [0, 1, 2]);
  assert.equal(f.problems.length, 0);

  const past = new Date(Date.now() - 60_000);
  utimesSync(f.seg(1), past, past);
  const r2 = f.log.read(r.cursor, 100);
  assert.deepEqual(indexes(r2.events), [3, 4]);
  assert.equal(f.problems.length, 1);
  assert.equal(f.problems[0]!.what, `events/00000001.jsonl:${r.cursor!.split(':')[1]}`);
});

test('a garbage line is skipped and reported, never thrown', (t) => {
  const f = setup(t);
  appendMany(f, 0, 1);
  const first = f.log.tail()!;
  appendFileSync(f.seg(1), 'not json at all\n');
  const second = statSync(f.seg(1)).size;
  appendFileSync(f.seg(1), '{"type":"task.added","text":"no time"}\n');
  appendFileSync(f.seg(1), '[1,2,3]\n');
  appendMany(f, 1, 2);

  const r = f.log.read(null, 10);
  assert.deepEqual(indexes(r.events), [0, 1]);
  assert.deepEqual(
    f.problems.map((p) => [p.what, p.movedTo]),
    [
      [`events/00000001.jsonl:${first.split(':')[1]}`, null],
      [`events/00000001.jsonl:${second}`, null],
      [
        `events/00000001.jsonl:${second + Buffer.byteLength('{"type":"task.added","text":"no time"}\n')}`,
        null,
      ],
    ],
  );
  // Reading the same damage again (status views poll last()) does not repeat the report.
  assert.deepEqual(indexes(f.log.last(10)), [0, 1]);
  assert.equal(f.problems.length, 3);

  // Garbage after the last event still moves the cursor, so a follower is not told twice.
  appendFileSync(f.seg(1), '}{\n');
  const r2 = f.log.read(r.cursor, 10);
  assert.deepEqual(r2.events, []);
  assert.equal(r2.cursor, `1:${statSync(f.seg(1)).size}`);
  assert.equal(f.problems.length, 4);
});

test('events larger than a read chunk survive reads in both directions', (t) => {
  const f = setup(t);
  for (let i = 0; i < 7; i++) {
    f.log.append({
      type: 'task.progress',
      text: `big ${i}`,
      data: { i, blob: String(i).repeat(30_000 + i * 1000) },
    });
  }
  const all = f.log.read(null, 100);
  assert.deepEqual(indexes(all.events), range(0, 7));
  assert.ok(all.events.every((e, i) => String(e.data?.blob).length === 30_000 + i * 1000));
  assert.deepEqual(f.log.last(4), all.events.slice(3));
  assert.deepEqual(f.log.last(7), all.events);
});

test('an oversized event is truncated to one bounded line', (t) => {
  const f = setup(t);
  f.log.append({
    type: 'task.completed',
    task: 't-9',
    text: `${'a'.repeat(999)}\u{1F600}${'b'.repeat(5000)}`,
    data: { blob: 'z'.repeat(100_000) },
  });
  appendMany(f, 1, 2);
  const line = readFileSync(f.seg(1), 'utf8').split('\n')[0]!;
  assert.ok(Buffer.byteLength(line) + 1 <= MAX_EVENT_LINE_BYTES);

  const [big, next] = f.log.read(null, 10).events;
  assert.equal(big!.task, 't-9');
  assert.equal(big!.text, 'a'.repeat(999)); // the emoji's surrogate pair is not split
  assert.equal(big!.data?.truncated, true);
  assert.ok((big!.data?.bytes as number) > 100_000);
  assert.deepEqual(next!.data, { i: 1 });
});

test('close is idempotent and a later append reopens the newest segment', (t) => {
  const f = setup(t, { maxSegmentBytes: 300 });
  appendMany(f, 0, 4);
  f.log.close();
  f.log.close();
  appendMany(f, 4, 5);
  assert.deepEqual(indexes(f.log.read(null, 100).events), range(0, 5));
  assert.deepEqual(segmentsOf(f.dir), ['00000001.jsonl', '00000002.jsonl']);
});

test('a writer notices a segment deleted under it', (t) => {
  const f = setup(t);
  appendMany(f, 0, 2);
  rmSync(f.dir, { recursive: true });
  appendMany(f, 2, 3);
  assert.deepEqual(indexes(f.log.read(null, 100).events), [2]);
});

const WRITERS = 4;
const PER_WRITER = 500;

test('concurrent appends from several processes are whole, unique and in per-process order', {
  timeout: 60_000,
}, async (t) => {
  const f = setup(t, { maxSegmentBytes: 64 * 1024, maxSegments: 1000 });
  const script = join(f.root, 'writer.mts');
  const moduleUrl = new URL('../../src/store/fs/eventLog.ts', import.meta.url).href;
  const clockUrl = new URL('../../src/core/clock.ts', import.meta.url).href;
  writeFileSync(
    script,
    `import { EventLog } from ${JSON.stringify(moduleUrl)};
import { systemClock } from ${JSON.stringify(clockUrl)};
const [dir, proc, count] = process.argv.slice(2);
const log = new EventLog(dir, systemClock, { maxSegmentBytes: 64 * 1024, maxSegments: 1000 });
process.stdout.write('ready\\n');
process.stdin.once('data', () => {
  for (let i = 0; i < Number(count); i++) {
    // Mostly small lines, some of several pages so that writes span page boundaries.
    const pad = i % 50 === 7 ? 'L'.repeat(9000) : 'x'.repeat((i * 37) % 300);
    log.append({ type: 'task.progress', session: 'p' + proc, text: 'p' + proc + ' #' + i + ' ' + pad, data: { proc: Number(proc), i } });
  }
  log.close();
  process.exit(0);
});
`,
  );

  const children: ChildProcess[] = [];
  t.after(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill();
  });
  const ready: Promise<void>[] = [];
  const exited: Promise<number | null>[] = [];
  for (let p = 0; p < WRITERS; p++) {
    const child = spawn(process.execPath, ['--import', 'tsx', script, f.dir, String(p), String(PER_WRITER)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    children.push(child);
    exited.push(new Promise((resolve) => child.once('exit', (code) => resolve(code))));
    ready.push(
      new Promise((resolve, reject) => {
        child.stdout!.once('data', () => resolve());
        child.once('exit', (code) => reject(new Error(`writer ${p} exited with ${code} before starting`)));
      }),
    );
  }
  await Promise.all(ready);
  for (const c of children) c.stdin!.write('go\n');

  // Follow the log while the writers run: every line must come out whole, exactly once.
  const followed: StoredEvent[] = [];
  let cursor: string | null = null;
  let running = true;
  const done = Promise.all(exited).then((codes) => {
    running = false;
    return codes;
  });
  while (running) {
    const r = f.log.read(cursor, 200);
    followed.push(...r.events);
    cursor = r.cursor;
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  assert.deepEqual(await done, Array(WRITERS).fill(0));
  for (let r = f.log.read(cursor, 500); r.events.length > 0; r = f.log.read(r.cursor, 500)) {
    followed.push(...r.events);
  }

  const all = f.log.read(null, 100_000);
  assert.deepEqual(f.problems, [], 'no damaged line');
  assert.equal(all.events.length, WRITERS * PER_WRITER);
  assert.ok(segmentsOf(f.dir).length > 3, 'rotation happened');
  const check = (events: StoredEvent[]) => {
    const seen = new Set<string>();
    const lastI = new Map<number, number>();
    for (const e of events) {
      const { proc, i } = e.data as { proc: number; i: number };
      const key = `${proc}:${i}`;
      assert.ok(!seen.has(key), `duplicate ${key}`);
      seen.add(key);
      assert.ok(e.text.startsWith(`p${proc} #${i} `));
      assert.ok(i > (lastI.get(proc) ?? -1), `process ${proc} out of order at ${i}`);
      lastI.set(proc, i);
    }
    return seen;
  };
  assert.equal(check(all.events).size, WRITERS * PER_WRITER);
  // A follower may miss a line that a writer caught between fstat and write lands in a segment the
  // follower already left (see the module header); that window is microseconds wide.
  const seen = check(followed);
  assert.ok(seen.size >= WRITERS * PER_WRITER - 10, `follower saw ${seen.size}`);
  assert.deepEqual(f.log.last(3), all.events.slice(-3));
});
