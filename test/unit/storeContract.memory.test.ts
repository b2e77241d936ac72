import { MemoryStore } from '../../src/store/memoryStore.ts';
import { runStoreContract } from '../storeContract.ts';

runStoreContract('memory', async (clock) => {
  const store = new MemoryStore({ clock });
  await store.open({ create: true });
  return { store, cleanup: async () => {} };
});
