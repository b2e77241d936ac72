import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ManualClock } from '../../src/core/clock.ts';
import { FsStore, pendingName } from '../../src/store/fs/fsStore.ts';
import type { RegisterName } from '../../src/store/store.ts';
import { makeTask, runStoreContract } from '../storeContract.ts';

/** Where FsStore keeps each register (see the layout in fsStore.ts). */
const REGISTER_DIRS: Record<RegisterName, string> = {
  master: 'master.lock',
  seq: 'seq',
  locks: 'locks',
  archive: join('tasks', 'archive', 'meta'),
};

runStoreContract('fs', async (clock) => {
  const dir = mkdtempSync(join(tmpdir(), 'flowloom-store-'));
  const store = new FsStore(dir, { clock });
  await store.open({ create: true });
  return {
    store,
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
    corrupt: async (what) => {
      switch (what.kind) {
        case 'session':
          writeFileSync(join(dir, 'agents', `${what.id}.json`), what.text);
          break;
        case 'pendingTask':
          writeFileSync(join(dir, 'tasks', 'pending', pendingName(what.task)), what.text);
          break;
        case 'register':
          writeFileSync(
            join(dir, REGISTER_DIRS[what.name], `${String(what.version).padStart(12, '0')}.json`),
            what.text,
          );
          break;
      }
    },
    setAside: async () =>
      readdirSync(join(dir, 'quarantine')).map((n) => ({
        where: join(dir, 'quarantine', n),
        text: readFileSync(join(dir, 'quarantine', n), 'utf8'),
      })),
  };
});

describe('FsStore: two processes on one directory', () => {
  it('never serves a requeued task from a stale cache', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'flowloom-store-'));
    const clock = new ManualClock();
    const a = new FsStore(dir, { clock });
    const b = new FsStore(dir, { clock });
    try {
      await a.open({ create: true });
      await b.open({ create: true });
      const task = makeTask('t-1');
      await a.addTask(task);
      const listedByA = await a.listPending(); // A now caches the pending file
      assert.deepEqual(listedByA[0]?.attempts, []);
      for (let round = 1; round <= 3; round++) {
        const got = await b.claimTask(task, { session: 'b', token: `tok${round}`, leaseMs: 1_000 });
        assert.ok(got);
        const attempt = {
          session: 'b',
          token: `tok${round}`,
          claimedAt: 0,
          endedAt: 1,
          outcome: 'lapsed' as const,
          reason: `r${round}`,
        };
        await b.finishTask({ id: 't-1', session: 'b', token: `tok${round}` }, 'pending', (t) => ({
          ...t,
          attempts: [...t.attempts, attempt],
        }));
        assert.deepEqual(
          (await a.listPending())[0]?.attempts.map((x) => x.reason),
          Array.from({ length: round }, (_, i) => `r${i + 1}`),
        );
      }
      // A claims with the copy it listed before any requeue and still works on the stored content.
      const claimed = await a.claimTask(listedByA[0]!, { session: 'a', token: 'ta', leaseMs: 1_000 });
      assert.equal(claimed?.task.attempts.length, 3);
      const done = await a.finishTask({ id: 't-1', session: 'a', token: 'ta' }, 'failed', (t) => t);
      assert.deepEqual(
        done?.attempts.map((x) => x.reason),
        ['r1', 'r2', 'r3'],
      );
    } finally {
      await a.close();
      await b.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
