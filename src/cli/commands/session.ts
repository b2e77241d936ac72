import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Coordinator } from '../../coordinator.ts';
import { invalidInput } from '../../core/errors.ts';
import {
  type MasterRecord,
  type ProcessIdentity,
  SESSION_MODES,
  type SessionMode,
} from '../../core/types.ts';
import { currentProcessIdentity, probeProcess, readProcessIdentity } from '../../platform/processIdentity.ts';
import { addToGitExclude } from '../../platform/stateDir.ts';
import { parseDuration, parseIntFlag, parseList } from '../args.ts';
import { type CliContext, CONFIG_FILE } from '../context.ts';
import type { Run, Values } from '../main.ts';

const s = (v: Values[string]) => (typeof v === 'string' ? v : undefined);

export const init: Run = async (ctx, v) => {
  const dir = ctx.stateDir();
  const config: Record<string, number> = {};
  if (s(v['session-ttl'])) config.sessionTtlMs = parseDuration('session-ttl', s(v['session-ttl'])!);
  if (s(v['task-lease'])) config.taskLeaseMs = parseDuration('task-lease', s(v['task-lease'])!);
  if (s(v['lock-lease'])) config.lockLeaseMs = parseDuration('lock-lease', s(v['lock-lease'])!);
  if (s(v['max-attempts'])) config.maxAttempts = parseIntFlag('max-attempts', s(v['max-attempts'])!, 1, 100);
  const existed = existsSync(dir);
  await ctx.coordinator({ create: true });
  if (Object.keys(config).length || !existsSync(join(dir, CONFIG_FILE))) {
    const merged = { ...ctx.config(dir), ...config };
    writeFileSync(join(dir, CONFIG_FILE), `${JSON.stringify(merged, null, 2)}\n`, { mode: 0o600 });
  }
  addToGitExclude(dir);
  ctx.out(`${existed ? 'Using' : 'Created'} ${dir}`, { dir, created: !existed, config: ctx.config(dir) });
  return 0;
};

function parseMode(v: string | undefined): SessionMode | undefined {
  if (v === undefined) return undefined;
  if (!(SESSION_MODES as readonly string[]).includes(v))
    throw invalidInput(`mode "${v}" is not valid`, 'use auto, master or agent');
  return v as SessionMode;
}

function describeRole(id: string, master: MasterRecord): string {
  if (master.sessionId === id) return `${id} is master (epoch ${master.epoch})`;
  return `${id} is an agent; master is ${master.sessionId ?? 'nobody'} (epoch ${master.epoch})`;
}

export const join_: Run = async (ctx, v) => {
  // Validate flags before opening the store: `create` makes the state directory, bad input must not.
  const id = ctx.maybeSession();
  const mode = parseMode(s(v.mode));
  const ttlMs = s(v.ttl) ? parseDuration('ttl', s(v.ttl)!) : undefined;
  const hold = v.hold === true;
  const pidFlag = s(v.pid);
  let proc: ProcessIdentity | null | undefined;
  if (pidFlag !== undefined || hold) {
    const pid =
      pidFlag === undefined || pidFlag === 'self'
        ? process.pid
        : pidFlag === 'parent'
          ? process.ppid
          : parseIntFlag('pid', pidFlag, 1, 2 ** 31);
    proc = pid === process.pid ? currentProcessIdentity() : readProcessIdentity(pid);
    if (!proc)
      throw invalidInput(
        `process ${pid} does not exist`,
        'pass the pid of a running process (or parent/self)',
      );
  }
  const meta: Record<string, string> = {};
  for (const kv of parseList(v.meta as string[] | undefined)) {
    const i = kv.indexOf('=');
    if (i <= 0) throw invalidInput(`--meta "${kv}" is not KEY=VALUE`, 'e.g. --meta executor=shell');
    meta[kv.slice(0, i)] = kv.slice(i + 1);
  }
  const coord = await ctx.coordinator({ create: true });
  const r = await coord.join({
    id,
    mode,
    capabilities: v.capabilities === undefined ? undefined : parseList(v.capabilities as string[]),
    resources: v.resources === undefined ? undefined : parseList(v.resources as string[]),
    process: proc,
    ttlMs,
    meta,
  });
  const sid = r.session.id;
  const json = {
    session: sid,
    role: r.role,
    mode: r.session.mode,
    epoch: r.master.epoch,
    master: r.master.sessionId,
    rejoined: r.rejoined,
    handoff: r.role === 'master' ? r.master.handoff : null,
  };
  ctx.out([describeRole(sid, r.master), ...(id ? [] : [`export FLOWLOOM_SESSION=${sid}`])], json);
  if (!hold) return 0;
  return holdSession(ctx, coord, sid, r.master);
};
export { join_ as join };

/**
 * Stays in the foreground as a live session: heartbeats, watches the master closely (a dead master
 * is replaced within a tick), prints role changes, and leaves on SIGINT/SIGTERM.
 */
async function holdSession(
  ctx: CliContext,
  coord: Coordinator,
  id: string,
  first: MasterRecord,
): Promise<number> {
  let last = first;
  let stopping = false;
  const stop = new AbortController();
  const onSignal = () => {
    stopping = true;
    stop.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const beatEvery = Math.max(50, Math.floor(coord.config.sessionTtlMs / 3));
  const tickMs = Math.min(100, beatEvery);
  let nextBeat = 0;
  const report = (m: MasterRecord) => {
    if (m.epoch === last.epoch && m.sessionId === last.sessionId) return;
    last = m;
    ctx.out(describeRole(id, m), {
      event: 'role',
      session: id,
      role: m.sessionId === id ? 'master' : 'agent',
      epoch: m.epoch,
      master: m.sessionId,
    });
  };
  while (!stopping) {
    const now = Date.now();
    try {
      if (now >= nextBeat) {
        nextBeat = now + beatEvery;
        report((await coord.heartbeat(id)).master);
      } else {
        // Between heartbeats, check only whether the master's process died: one /proc read.
        const m = await coord.master();
        const ms = m.sessionId ? await coord.store.getSession(m.sessionId) : null;
        if (!ms || (ms.process && probeProcess(ms.process) === 'dead') || !coord.isAlive(ms))
          report(await coord.ensureMaster());
        else report(m);
      }
    } catch (e) {
      process.stderr.write(`flowloom: warning: ${(e as Error).message}\n`);
    }
    await coord.waitForChange('master', tickMs, stop.signal);
  }
  await coord.leave(id).catch(() => undefined);
  return 0;
}

export const leave: Run = async (ctx, v) => {
  const coord = await ctx.coordinator();
  const id = ctx.session();
  const r = await coord.leave(id, s(v.note) ?? '');
  ctx.out(`${id} left; master is ${r.master.sessionId ?? 'nobody'} (epoch ${r.master.epoch})`, {
    session: id,
    left: true,
    master: r.master.sessionId,
    epoch: r.master.epoch,
  });
  return 0;
};

export const heartbeat: Run = async (ctx) => {
  const coord = await ctx.coordinator();
  const id = ctx.session();
  const r = await coord.heartbeat(id);
  ctx.out([describeRole(id, r.master), ...r.lostTasks.map((t) => `lost task ${t}: its lease lapsed`)], {
    session: id,
    role: r.role,
    epoch: r.master.epoch,
    master: r.master.sessionId,
    lostTasks: r.lostTasks,
  });
  return 0;
};

export const mode: Run = async (ctx, v, pos) => {
  const m = parseMode(pos[0]);
  if (!m) throw invalidInput('which mode?', 'usage: flowloom mode master|agent|auto');
  const coord = await ctx.coordinator();
  const id = ctx.session();
  const r = await coord.setMode(id, m, s(v.note) ?? '');
  ctx.out(describeRole(id, r.master), {
    session: id,
    mode: m,
    role: r.role,
    epoch: r.master.epoch,
    master: r.master.sessionId,
  });
  return 0;
};

export const handoff: Run = async (ctx, v) => {
  const coord = await ctx.coordinator();
  const id = ctx.session();
  const m = await coord.handoff(id, {
    to: s(v.to),
    note: s(v.note),
    expectEpoch: s(v.epoch) ? parseIntFlag('epoch', s(v.epoch)!, 0, 2 ** 31) : undefined,
  });
  ctx.out(`${id} handed over to ${m.sessionId} (epoch ${m.epoch})`, {
    from: id,
    to: m.sessionId,
    epoch: m.epoch,
    handoff: m.handoff,
  });
  return 0;
};
