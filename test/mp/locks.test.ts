/**
 * Multi-process resource locks: mutual exclusion on overlapping `file:` patterns with increasing fencing
 * tokens, exactly one winner when many processes find the same stale lock at once (proper-lockfile #121),
 * and `lock run` serialising commands.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import type * as FlowLoom from '../../src/index.ts';
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

const FIXTURE_CONFIG = JSON.stringify({ sessionTtlMs: 1000, taskLeaseMs: 2000, pollMs: 100 });

describe('resource locks across processes', () => {
  test('8 processes racing for overlapping file: locks never hold them together; tokens increase', async () => {
    const root = tempDir('overlap');
    const dir = join(root, 'state');
    const marker = join(root, 'marker');
    const orderLog = join(root, 'order.log');
    const PER_PROCESS = 20;
    const env = {
      FLOWLOOM_DIR: dir,
      FLOWLOOM_INDEX: index,
      FLOWLOOM_TEST_CONFIG: FIXTURE_CONFIG,
      MARKER: marker,
      ORDER_LOG: orderLog,
    };
    const started = Date.now();
    const lockers = Array.from({ length: 8 }, (_, i) =>
      children.spawn([join(FIXTURES, 'locker.mjs'), `locker${i}`, String(PER_PROCESS)], env),
    );
    await waitFor(() => lockers.every((l) => l.done), 120_000, 'all lockers to finish');
    const ms = Date.now() - started;
    for (const l of lockers) assert.equal(l.code, 0, l.stderr.join('\n'));

    const violations = lockers.flatMap((l) => l.json.filter((x) => x.event === 'violation'));
    assert.deepEqual(violations, [], 'two processes held overlapping locks at once');
    assert.equal(
      lockers.reduce((n, l) => n + Number(l.json.find((x) => x.event === 'done')?.violations ?? -1), 0),
      0,
    );
    const tokens = readFileSync(orderLog, 'utf8')
      .trim()
      .split('\n')
      .map((l) => Number(l.split(' ')[0]));
    assert.equal(tokens.length, 8 * PER_PROCESS);
    for (let i = 1; i < tokens.length; i++) {
      assert.ok(
        tokens[i]! > tokens[i - 1]!,
        `fencing token ${tokens[i]} after ${tokens[i - 1]} (acquisition ${i})`,
      );
    }
    assert.ok(!existsSync(marker));
    console.log(`overlap: ${tokens.length} exclusive acquisitions by 8 processes in ${ms} ms, 0 violations`);
  });

  test('8 processes finding the same stale lock at once: exactly one acquires it (30 rounds)', async () => {
    const root = tempDir('steal');
    const dir = join(root, 'state');
    const barrier = join(root, 'barrier');
    const ROUNDS = 30;
    const RESOURCE = 'file:src/auth/**';
    const store = new lib.FsStore(dir);
    await store.open({ create: true });
    const coord = new lib.Coordinator(store, { config: { sessionTtlMs: 1000 }, probe: lib.probeProcess });
    const env = { FLOWLOOM_DIR: dir, FLOWLOOM_INDEX: index, FLOWLOOM_TEST_CONFIG: FIXTURE_CONFIG };
    mkdirSync(barrier);
    const racers = Array.from({ length: 8 }, (_, i) =>
      children.spawn([join(FIXTURES, 'racer.mjs'), `racer${i}`, String(ROUNDS), RESOURCE], {
        ...env,
        BARRIER_DIR: barrier,
      }),
    );
    await waitFor(
      () => racers.every((r) => r.json.some((l) => l.event === 'ready')),
      30_000,
      'the racers to join',
    );

    const started = Date.now();
    const winners: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      // A lock left behind by a holder that is gone: a SIGKILLed process (even rounds) or a lapsed lease.
      let stale: FlowLoom.LockRecord;
      if (round % 2 === 0) {
        const holder: Child = children.spawn([join(FIXTURES, 'holder.mjs'), `dead${round}`, RESOURCE], env);
        const held = await waitFor(
          () => holder.json.find((l) => l.event === 'held'),
          20_000,
          'the holder to lock',
        );
        holder.proc.kill('SIGKILL');
        await holder.exited;
        stale = { token: held.token as number } as FlowLoom.LockRecord;
      } else {
        await coord.join({ id: `lapsed${round}`, mode: 'agent' });
        [stale] = (await coord.acquireLocks(`lapsed${round}`, [RESOURCE], { leaseMs: 1 })) as [
          FlowLoom.LockRecord,
        ];
        await waitFor(() => Date.now() > stale.expiresAt + 1, 1000, 'the lease to lapse');
      }
      const table = await store.readRegister<{ locks: FlowLoom.LockRecord[] }>('locks');
      assert.ok(
        table?.value.locks.some((l) => l.token === stale.token),
        'the stale lock is still in the table when the racers start',
      );

      writeFileSync(join(barrier, `go-${round}`), '');
      const results = await waitFor(
        () => {
          const rs = racers.map((r) => r.json.find((l) => l.round === round && typeof l.ok === 'boolean'));
          return rs.every(Boolean) ? (rs as Record<string, unknown>[]) : null;
        },
        20_000,
        `the racers' results of round ${round}`,
      );
      const won = results.filter((r) => r.ok === true);
      assert.equal(
        won.length,
        1,
        `round ${round}: ${won.length} processes acquired the stale lock: ${JSON.stringify(results)}`,
      );
      assert.ok((won[0]!.token as number) > stale.token, 'the new holder has a newer fencing token');
      for (const r of results) if (r.ok === false) assert.equal(r.code, 'LOCK_HELD', JSON.stringify(r));
      winners.push(won[0]!.session as string);

      writeFileSync(join(barrier, `end-${round}`), '');
      await waitFor(
        () => racers.every((r) => r.json.some((l) => l.round === round && l.event === 'released')),
        20_000,
        `the racers to finish round ${round}`,
      );
    }
    await store.close();
    const ms = Date.now() - started;
    console.log(
      `stale steal: ${ROUNDS} rounds in ${ms} ms, exactly one winner each; winners by racer: ${JSON.stringify(
        Object.fromEntries([...new Set(winners)].map((w) => [w, winners.filter((x) => x === w).length])),
      )}`,
    );
  });

  test('`lock run git -- CMD` from two sessions at once runs the commands one at a time', async () => {
    const root = tempDir('lockrun');
    const dir = join(root, 'state');
    const out = join(root, 'intervals.log');
    const env = { ...SHORT_LEASES, FLOWLOOM_DIR: dir };
    for (const s of ['g1', 'g2']) {
      const r = await runCli(children, cli, ['join', '--session', s, '--mode', 'agent', '--json'], env);
      assert.equal(r.code, 0, r.stderr);
    }
    // The command: a start line, 150 ms of work, an end line.
    const script =
      "const fs=require('fs');const [f,id]=process.argv.slice(1);" +
      'fs.appendFileSync(f,`start ${id} ${Date.now()}\\n`);' +
      'setTimeout(()=>fs.appendFileSync(f,`end ${id} ${Date.now()}\\n`),150);';
    const RUNS = 2;
    const runAs = async (session: string) => {
      for (let i = 0; i < RUNS; i++) {
        const r = await runCli(
          children,
          cli,
          [
            'lock',
            'run',
            'git',
            '--session',
            session,
            '--wait',
            '30s',
            '--json',
            '--',
            process.execPath,
            '-e',
            script,
            out,
            `${session}.${i}`,
          ],
          env,
        );
        assert.equal(r.code, 0, r.stderr);
        assert.equal((r.json as { exitCode: number }).exitCode, 0);
      }
    };
    await Promise.all([runAs('g1'), runAs('g2')]);

    const lines = readFileSync(out, 'utf8')
      .trim()
      .split('\n')
      .map((l) => l.split(' '));
    assert.equal(lines.length, 4 * RUNS);
    for (let i = 0; i < lines.length; i += 2) {
      const [kindA, idA, atA] = lines[i]!;
      const [kindB, idB, atB] = lines[i + 1]!;
      assert.equal(kindA, 'start', `line ${i}: ${lines[i]!.join(' ')}`);
      assert.equal(
        kindB,
        'end',
        `line ${i + 1}: a command started while another ran: ${lines.map((l) => l.join(' ')).join(' | ')}`,
      );
      assert.equal(idA, idB);
      assert.ok(Number(atB) >= Number(atA));
      if (i > 0) assert.ok(Number(atA) >= Number(lines[i - 1]![2]), 'intervals do not overlap');
    }
    assert.deepEqual(
      new Set(lines.map((l) => l[1]!.split('.')[0])),
      new Set(['g1', 'g2']),
      'both sessions ran their commands',
    );
    const locks = await runCli(children, cli, ['lock', 'list', '--json'], env);
    assert.deepEqual((locks.json as { locks: unknown[] }).locks, [], 'no lock left behind');
  });
});
