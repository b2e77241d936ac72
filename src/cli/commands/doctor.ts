import { readdirSync, renameSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import type { Run } from '../main.ts';

const KNOWN_TOP = new Set([
  'config.json',
  'master.lock',
  'seq',
  'locks',
  'agents',
  'tasks',
  'status',
  'events',
  'quarantine',
  'memory',
  'agents-run',
]);
const KNOWN_TASKS = new Set([
  'pending',
  'active',
  'completed',
  'failed',
  'cancelled',
  'requeue',
  'progress',
  'archive',
]);

/** Walks the state directory: damaged files are set aside by reading everything; stale temp files are listed. */
export const doctor: Run = async (ctx, v) => {
  const coord = await ctx.coordinator();
  const dir = ctx.stateDir();
  const fix = v.fix === true;
  const findings: { what: string; problem: string; action: string }[] = [];
  // Reading every record makes the store set aside what does not parse (reported through ctx.problems).
  await coord.store.listSessions();
  await coord.store.listPending();
  await coord.store.listActive();
  for (const st of ['completed', 'failed', 'cancelled'] as const) await coord.store.listTasks(st);
  await coord.store.readRegister('master');
  await coord.store.readRegister('seq');
  await coord.store.readRegister('locks');
  for (const p of ctx.problems)
    findings.push({
      what: p.what,
      problem: p.reason,
      action: p.movedTo ? `set aside in ${relative(dir, p.movedTo)}` : 'reported',
    });
  const now = Date.now();
  const quarantineTarget = (rel: string) => join(dir, 'quarantine', `${now}-${rel.replace(/[/\\]/g, '__')}`);
  for (const name of readdirSync(dir)) {
    if (KNOWN_TOP.has(name) || name.startsWith('.tmp-')) continue;
    findings.push({
      what: name,
      problem: 'unknown entry in the state directory',
      action: fix ? 'set aside in quarantine/' : 'run `flowloom doctor --fix` to set it aside',
    });
    if (fix) renameSync(join(dir, name), quarantineTarget(name));
  }
  for (const name of readdirSync(join(dir, 'tasks'))) {
    if (KNOWN_TASKS.has(name)) continue;
    findings.push({
      what: `tasks/${name}`,
      problem: 'unknown entry',
      action: fix ? 'set aside in quarantine/' : 'run `flowloom doctor --fix`',
    });
    if (fix) renameSync(join(dir, 'tasks', name), quarantineTarget(`tasks/${name}`));
  }
  const scan = (sub: string) => {
    for (const name of readdirSync(join(dir, sub))) {
      if (!name.startsWith('.tmp-')) continue;
      const p = join(dir, sub, name);
      let age = 0;
      try {
        age = now - statSync(p).mtimeMs;
      } catch {
        continue;
      }
      if (age < 60_000) continue;
      findings.push({
        what: `${sub}/${name}`,
        problem: 'temp file left by an interrupted write',
        action: fix ? 'set aside in quarantine/' : 'run `flowloom doctor --fix`',
      });
      if (fix) renameSync(p, quarantineTarget(`${sub}/${name}`));
    }
  };
  for (const sub of [
    '',
    'agents',
    'tasks/pending',
    'tasks/active',
    'tasks/completed',
    'tasks/failed',
    'tasks/cancelled',
    'tasks/progress',
    'status',
    'master.lock',
    'seq',
    'locks',
  ])
    scan(sub);
  const requeue = readdirSync(join(dir, 'tasks', 'requeue'));
  if (requeue.length)
    findings.push({
      what: 'tasks/requeue',
      problem: `${requeue.length} interrupted move(s) back to the queue`,
      action: fix ? 'finished' : 'run `flowloom doctor --fix`',
    });
  let reaped = { requeued: [] as string[], failed: [] as string[], freedLocks: 0 };
  if (fix) {
    const recover = (coord.store as { recoverInterrupted?: (ms: number) => Promise<number> })
      .recoverInterrupted;
    if (recover) await recover.call(coord.store, 0);
    reaped = await coord.reap();
  }
  const quarantined = readdirSync(join(dir, 'quarantine'));
  const lines = findings.length
    ? findings.map((f) => `${f.what}: ${f.problem} (${f.action})`)
    : ['state directory is healthy'];
  if (quarantined.length)
    lines.push(`${quarantined.length} file(s) kept in ${join(dir, 'quarantine')} for inspection`);
  if (reaped.requeued.length || reaped.failed.length || reaped.freedLocks)
    lines.push(
      `returned ${reaped.requeued.length} lapsed task(s) to the queue, failed ${reaped.failed.length}, freed ${reaped.freedLocks} lock(s)`,
    );
  ctx.out(lines, { dir, healthy: findings.length === 0, findings, quarantined, reaped });
  return 0;
};
