import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Coordinator } from '../../coordinator.ts';
import { isFlowLoomError } from '../../core/errors.ts';
import { probeProcess } from '../../platform/processIdentity.ts';
import type { Run } from '../main.ts';
import { renderStatus } from './status.ts';

/**
 * A narrated run on the file backend in a temporary directory. Each participant uses its own
 * Coordinator on the shared directory, exactly as separate processes would.
 */
export const demo: Run = async (ctx, v) => {
  const dir = mkdtempSync(join(tmpdir(), 'flowloom-demo-'));
  const [{ FsStore }, { Coordinator: C }] = await Promise.all([
    import('../../store/fs/fsStore.ts'),
    import('../../coordinator.ts'),
  ]);
  const open = async (): Promise<Coordinator> => {
    const store = new FsStore(join(dir, '.flowloom-coordination'));
    await store.open({ create: true });
    return new C(store, { probe: probeProcess });
  };
  const steps: { step: string; detail: string }[] = [];
  const say = (step: string, detail = '') => {
    steps.push({ step, detail });
    if (!ctx.json) process.stdout.write(`${step}${detail ? `\n    ${detail}` : ''}\n`);
  };
  const [alice, agent1, agent2, bob] = await Promise.all([open(), open(), open(), open()]);
  try {
    say(`FlowLoom demo in ${dir}`);
    const a = await alice.join({ id: 'alice', capabilities: ['planner'] });
    say(`1. alice joins -> ${a.role} (epoch ${a.master.epoch})`);
    await agent1.join({ id: 'agent-1', mode: 'agent', capabilities: ['test-runner'] });
    await agent2.join({ id: 'agent-2', mode: 'agent', capabilities: ['doc-writer'] });
    say('2. agent-1 (test-runner) and agent-2 (doc-writer) join as agents; alice stays master');

    const tests = await alice.addTask(
      {
        title: 'Run the auth test suite',
        needs: ['test-runner'],
        resources: ['file:src/auth/**'],
        priority: 100,
      },
      { session: 'alice', expectEpoch: a.master.epoch },
    );
    const docs = await alice.addTask(
      { title: 'Update the API docs', needs: ['doc-writer'] },
      { session: 'alice' },
    );
    const notes = await alice.addTask(
      { title: 'Write release notes', needs: ['doc-writer'], after: [docs.id] },
      { session: 'alice' },
    );
    say(
      `3. alice delegates 3 tasks: ${tests.id} (tests), ${docs.id} (docs), ${notes.id} (notes, after ${docs.id})`,
    );

    const c1 = await agent1.claimTask('agent-1');
    const c2 = await agent2.claimTask('agent-2');
    say(
      `4. agent-1 claims ${c1?.task.id} "${c1?.task.title}" and locks file:src/auth/**`,
      `agent-2 claims ${c2?.task.id} "${c2?.task.title}" (${notes.id} waits for it)`,
    );

    try {
      await agent2.acquireLocks('agent-2', ['file:src/auth/login.ts']);
      say('5. unexpected: agent-2 got the lock');
    } catch (e) {
      if (!isFlowLoomError(e)) throw e;
      say('5. agent-2 tries to edit src/auth/login.ts -> lock conflict', e.message);
    }

    if (!c1 || !c2) throw new Error('demo: a claim failed');
    await agent1.reportProgress(
      { id: c1.task.id, session: 'agent-1', token: c1.lease.token },
      '3 tests failing in auth module',
    );
    const mid = await alice.status();
    say('6. alice asks for status', mid.lines.filter((l) => l.includes('reports')).join('\n    '));

    await agent1.completeTask(
      { id: c1.task.id, session: 'agent-1', token: c1.lease.token },
      { summary: '3 failing tests fixed, 42 passed' },
    );
    await agent2.completeTask(
      { id: c2.task.id, session: 'agent-2', token: c2.lease.token },
      { summary: 'docs updated' },
    );
    const c3 = await agent2.claimTask('agent-2');
    if (!c3) throw new Error('demo: the dependent task was not claimable');
    await agent2.completeTask(
      { id: c3.task.id, session: 'agent-2', token: c3.lease.token },
      { summary: 'notes written' },
    );
    say(
      `7. agent-1 completes ${c1.task.id}; agent-2 completes ${c2.task.id}, then claims and completes ${c3.task.id}`,
    );

    await agent2.acquireLocks('agent-2', ['file:src/auth/login.ts']);
    await agent2.releaseLocks('agent-2', {});
    say('8. the auth lock was released with the task: agent-2 can now lock src/auth/login.ts');

    const b = await bob.join({ id: 'bob' });
    say(
      `9. bob joins last -> ${b.role} (epoch ${b.master.epoch}); handoff note from ${b.master.handoff?.from}:`,
      b.master.handoff?.summary ?? '',
    );

    const final = await bob.status();
    say('10. final status:');
    if (!ctx.json) for (const l of renderStatus(final)) process.stdout.write(`    ${l}\n`);
    ctx.out('', { dir, steps, status: final });
  } finally {
    await Promise.all([alice, agent1, agent2, bob].map((c) => c.store.close()));
    if (v.keep !== true) rmSync(dir, { recursive: true, force: true });
    else if (!ctx.json) process.stdout.write(`state kept in ${join(dir, '.flowloom-coordination')}\n`);
  }
  return 0;
};
