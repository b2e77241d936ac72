import { spawn } from 'node:child_process';
import { invalidInput } from '../../core/errors.ts';
import type { LockRecord } from '../../core/types.ts';
import { parseDuration, parseIntFlag } from '../args.ts';
import type { Run, Values } from '../main.ts';

const s = (v: Values[string]) => (typeof v === 'string' ? v : undefined);

function describe(l: LockRecord, now: number): string {
  return `${l.resource}  held by ${l.session}${l.taskId ? ` (task ${l.taskId})` : ''}, token ${l.token}, for ${Math.round((now - l.acquiredAt) / 1000)} s`;
}

export const acquire: Run = async (ctx, v, pos) => {
  if (pos.length === 0)
    throw invalidInput('no resource to lock', 'usage: flowloom lock acquire file:src/app.ts [git ...]');
  const coord = await ctx.coordinator();
  const session = ctx.session();
  const locks = await coord.acquireLocks(session, pos, {
    waitMs: s(v.wait) ? parseDuration('wait', s(v.wait)!) : 0,
    leaseMs: s(v.lease) ? parseDuration('lease', s(v.lease)!) : undefined,
    note: s(v.note),
  });
  ctx.out(
    locks.map((l) => `locked ${l.resource} (token ${l.token})`),
    { session, locks },
  );
  return 0;
};

export const release: Run = async (ctx, v, pos) => {
  const coord = await ctx.coordinator();
  const session = ctx.session();
  if (pos.length === 0 && v.all !== true) throw invalidInput('which locks?', 'name resources, or pass --all');
  const released = await coord.releaseLocks(session, {
    resources: pos.length ? pos : undefined,
    token: s(v.token) ? parseIntFlag('token', s(v.token)!, 1, Number.MAX_SAFE_INTEGER) : undefined,
  });
  ctx.out(released.length ? released.map((l) => `released ${l.resource}`) : 'nothing to release', {
    session,
    released,
  });
  return 0;
};

export const list: Run = async (ctx) => {
  const coord = await ctx.coordinator();
  const table = await coord.listLocks();
  const now = coord.store.clock.now();
  ctx.out(
    table.locks.length || table.waiters.length
      ? [
          ...table.locks.map((l) => describe(l, now)),
          ...table.waiters.map(
            (w) => `waiting: ${w.session} for ${w.resources.join(', ')} (ticket ${w.ticket})`,
          ),
        ]
      : 'no locks held',
    table,
  );
  return 0;
};

/** Runs a command while holding the locks; renews them while it runs; exits with its exit code. */
export const run: Run = async (ctx, v, pos) => {
  const sep = pos.indexOf('--');
  const resources = sep >= 0 ? pos.slice(0, sep) : pos;
  const argv = sep >= 0 ? pos.slice(sep + 1) : [];
  if (resources.length === 0 || argv.length === 0)
    throw invalidInput('need resources and a command', 'usage: flowloom lock run git -- git commit -m "msg"');
  const coord = await ctx.coordinator();
  const session = ctx.session();
  const leaseMs = s(v.lease) ? parseDuration('lease', s(v.lease)!) : coord.config.lockLeaseMs;
  const locks = await coord.acquireLocks(session, resources, {
    waitMs: s(v.wait) ? parseDuration('wait', s(v.wait)!) : 60_000,
    leaseMs,
    note: s(v.note) ?? argv.join(' ').slice(0, 200),
  });
  const renew = setInterval(
    () => {
      coord.acquireLocks(session, resources, { leaseMs }).catch((e) => {
        process.stderr.write(
          `flowloom: warning: could not renew ${resources.join(', ')}: ${(e as Error).message}\n`,
        );
      });
    },
    Math.max(100, leaseMs / 3),
  );
  const code = await new Promise<number>((resolve) => {
    const child = spawn(argv[0]!, argv.slice(1), {
      stdio: ctx.json ? ['inherit', 'ignore', 'inherit'] : 'inherit',
      env: {
        ...process.env,
        FLOWLOOM_SESSION: session,
        FLOWLOOM_LOCK_TOKENS: locks.map((l) => `${l.resource}=${l.token}`).join(' '),
      },
    });
    child.on('error', (e) => {
      process.stderr.write(`flowloom: cannot run ${argv[0]}: ${e.message}\n`);
      resolve(127);
    });
    child.on('exit', (c, sig) => resolve(c ?? (sig ? 128 + 15 : 1)));
    const fwd = (sig: NodeJS.Signals) => child.kill(sig);
    process.once('SIGINT', fwd);
    process.once('SIGTERM', fwd);
  });
  clearInterval(renew);
  await coord.releaseLocks(session, { resources: locks.map((l) => l.resource) }).catch(() => undefined);
  ctx.out('', { session, locks, exitCode: code });
  return code;
};
