import { setTimeout as sleep } from 'node:timers/promises';
import type { StatusSnapshot } from '../../coordinator.ts';
import type { StoredEvent } from '../../core/types.ts';
import { parseIntFlag } from '../args.ts';
import type { Run } from '../main.ts';

function ago(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120_000) return `${Math.round(ms / 1000)} s`;
  return `${Math.round(ms / 60_000)} min`;
}

/** The human rendering of a status snapshot. */
export function renderStatus(s: StatusSnapshot): string[] {
  const out: string[] = [];
  const m = s.master;
  out.push(m?.sessionId ? `Master: ${m.sessionId} (epoch ${m.epoch})` : 'Master: none');
  if (m?.handoff && m.sessionId) {
    out.push(`  Handoff from ${m.handoff.from ?? 'nobody'}${m.handoff.note ? `: ${m.handoff.note}` : ''}`);
    if (m.handoff.summary) out.push(`  ${m.handoff.summary}`);
  }
  if (s.sessions.length) {
    out.push('Sessions:');
    for (const x of s.sessions) {
      const task = x.currentTask ? ` on ${x.currentTask.id} "${x.currentTask.title}"` : '';
      const caps = x.capabilities.length ? ` [${x.capabilities.join(', ')}]` : '';
      out.push(
        `  ${x.id.padEnd(16)} ${x.role.padEnd(6)} ${x.status.padEnd(8)}${caps}${task} (heartbeat ${ago(x.heartbeatAgeMs)} ago)`,
      );
    }
  }
  out.push(...s.lines.slice(1).map((l) => (l.startsWith('Queue:') || l.startsWith('Locks:') ? l : `  ${l}`)));
  return out;
}

export const status: Run = async (ctx) => {
  const coord = await ctx.coordinator();
  const snap = await coord.status();
  try {
    await coord.store.saveStatus?.(snap);
  } catch (e) {
    // Reading the status must work on a read-only state directory; only the saved copy is skipped.
    process.stderr.write(`flowloom: warning: status/current.json not updated: ${(e as Error).message}\n`);
  }
  ctx.out(renderStatus(snap), snap);
  return 0;
};

function line(e: StoredEvent): string {
  return `${new Date(e.at).toISOString().slice(11, 23)} ${e.type.padEnd(15)} ${e.text}`;
}

export const events: Run = async (ctx, v) => {
  const coord = await ctx.coordinator();
  const store = coord.store;
  const limit = typeof v.limit === 'string' ? parseIntFlag('limit', v.limit, 1, 100_000) : 50;
  const follow = v.follow === true;
  let cursor: string | null = typeof v.since === 'string' ? v.since : null;
  const print = (e: StoredEvent) => process.stdout.write(`${ctx.json ? JSON.stringify(e) : line(e)}\n`);
  if (cursor === null && !follow) {
    const last = (store as { lastEvents?: (n: number) => StoredEvent[] }).lastEvents?.(limit);
    if (last) {
      if (ctx.json && !follow) ctx.out('', { events: last, cursor: last.at(-1)?.cursor ?? null });
      else last.forEach(print);
      return 0;
    }
  }
  if (!follow) {
    const r = await store.readEvents(cursor, limit);
    if (ctx.json) ctx.out('', r);
    else r.events.forEach(print);
    return 0;
  }
  // Follow: print what came after the cursor (or only new events), then stream until interrupted.
  if (cursor === null) cursor = await store.tailCursor();
  const stop = new AbortController();
  const onSig = () => stop.abort();
  process.on('SIGINT', onSig);
  process.on('SIGTERM', onSig);
  while (!stop.signal.aborted) {
    const r = await store.readEvents(cursor, 500);
    r.events.forEach(print);
    cursor = r.cursor ?? cursor;
    if (r.events.length === 500) continue;
    await Promise.race([
      new Promise<void>((resolve) => {
        const un = store.watch('events', () => {
          un();
          resolve();
        });
        stop.signal.addEventListener('abort', () => {
          un();
          resolve();
        });
      }),
      sleep(1000, undefined, { signal: stop.signal }).catch(() => undefined),
    ]);
  }
  return 0;
};
