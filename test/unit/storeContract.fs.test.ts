import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsStore, pendingName } from '../../src/store/fs/fsStore.ts';
import type { RegisterName } from '../../src/store/store.ts';
import { runStoreContract } from '../storeContract.ts';

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
          writeFileSync(join(dir, REGISTER_DIRS[what.name], `${String(what.version).padStart(12, '0')}.json`), what.text);
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
