import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { after, describe, test } from 'node:test';
import {
  currentProcessIdentity,
  parseProcStat,
  probeProcess,
  readProcessIdentity,
} from '../../src/platform/processIdentity.ts';

const linux = existsSync('/proc/self/stat');
const children: ChildProcess[] = [];

after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

async function waitFor<T>(what: string, fn: () => T | null | undefined, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== null && v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('parseProcStat', () => {
  // Fields 4 (ppid) to 24 (rss) of a real line; field 22 (start time) is 49244.
  const tail = '7309 7309 6323 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 49244 3133440 380';

  test('reads state and start time after the last paren, even when comm holds parens and spaces', () => {
    assert.deepEqual(parseProcStat(`4242 ((a) b)) Z ${tail}`), { state: 'Z', startTime: '49244' });
    assert.deepEqual(parseProcStat(`7 (sleep) S ${tail}\n`), { state: 'S', startTime: '49244' });
  });

  test('rejects truncated or garbled text', () => {
    assert.equal(parseProcStat(''), null);
    assert.equal(parseProcStat('12 no-parens S 1 2'), null);
    assert.equal(parseProcStat('12 (x) S 1 2 3'), null);
    assert.equal(parseProcStat('12 (x)'), null);
    assert.equal(parseProcStat(`12 (x) S ${tail.replace('49244', 'abc')}`), null);
  });
});

describe('readProcessIdentity / probeProcess', { skip: !linux && 'needs /proc' }, () => {
  test('own process is alive and carries start time, boot id and host', () => {
    const me = currentProcessIdentity();
    assert.equal(me.pid, process.pid);
    assert.match(me.startTime, /^\d+$/);
    assert.equal(me.bootId, readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
    assert.equal(me.host, hostname());
    assert.deepEqual(readProcessIdentity(process.pid), me);
    assert.equal(probeProcess(me), 'alive');
  });

  test('a child is alive, then dead once killed and reaped', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    children.push(child);
    const id = readProcessIdentity(child.pid!);
    assert.ok(id);
    assert.equal(probeProcess(id), 'alive');
    child.kill('SIGKILL');
    await exited(child);
    assert.equal(probeProcess(id), 'dead');
    assert.equal(readProcessIdentity(child.pid!), null);
  });

  test('an unreaped zombie is dead', async () => {
    // The backgrounded `sleep 0` exits under a parent (`exec sleep 30`) that never waits: a real zombie.
    const parent = spawn('sh', ['-c', 'sleep 0 & echo $!; exec sleep 30'], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    children.push(parent);
    let out = '';
    parent.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
    });
    const pid = await waitFor('zombie pid', () => {
      const m = /^(\d+)\n/.exec(out);
      return m ? Number(m[1]) : null;
    });
    const stat = await waitFor('zombie state', () => {
      const s = parseProcStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
      return s?.state === 'Z' ? s : null;
    });
    const me = currentProcessIdentity();
    assert.equal(probeProcess({ ...me, pid, startTime: stat.startTime }), 'dead');
    assert.equal(readProcessIdentity(pid), null);
  });

  test('a different start time means the pid was reused: dead', () => {
    const me = currentProcessIdentity();
    assert.equal(probeProcess({ ...me, startTime: String(Number(me.startTime) + 1) }), 'dead');
  });

  test('another host, another boot or no start time cannot be proven dead: unknown', () => {
    const me = currentProcessIdentity();
    assert.equal(probeProcess({ ...me, host: `${me.host}-elsewhere` }), 'unknown');
    assert.equal(probeProcess({ ...me, bootId: '00000000-0000-0000-0000-000000000000' }), 'unknown');
    assert.equal(probeProcess({ ...me, startTime: '' }), 'unknown');
    assert.equal(probeProcess({ ...me, pid: 0 }), 'unknown');
  });

  test('a pid that does not exist gives null', () => {
    // Above the kernel's maximum pid (4194304), so it can never be in use.
    assert.equal(readProcessIdentity(4_194_305), null);
    assert.equal(readProcessIdentity(-1), null);
  });
});
