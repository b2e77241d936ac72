import { ErrorCode, FlowLoomError, invalidInput } from '../../core/errors.ts';
import { validateId } from '../../core/ids.ts';
import { TASK_STATES, type TaskRecord, type TaskState } from '../../core/types.ts';
import { parseDuration, parseIntFlag, parseList, parsePriority } from '../args.ts';
import type { Run, Values } from '../main.ts';

const s = (v: Values[string]) => (typeof v === 'string' ? v : undefined);
const epochOf = (v: Values) => (s(v.epoch) ? parseIntFlag('epoch', s(v.epoch)!, 0, 2 ** 31) : undefined);

function oneLine(t: TaskRecord, state?: TaskState): string {
  const extra = [
    state,
    t.priority ? `priority ${t.priority}` : '',
    t.needs.length ? `needs ${t.needs.join(',')}` : '',
    t.to ? `for ${t.to}` : '',
    t.after.length ? `after ${t.after.join(',')}` : '',
  ].filter(Boolean);
  return `${t.id}  ${t.title}${extra.length ? `  (${extra.join('; ')})` : ''}`;
}

function needId(pos: string[], usage: string): string {
  const id = pos[0];
  if (!id) throw invalidInput('which task?', `usage: ${usage}`);
  return validateId('task', id);
}

export const add: Run = async (ctx, v, pos) => {
  const title = pos.join(' ');
  if (!title.trim())
    throw invalidInput('a task needs a title', 'usage: flowloom task add TITLE [--prompt TEXT] ...');
  const coord = await ctx.coordinator();
  const t = await coord.addTask(
    {
      id: s(v.id),
      title,
      prompt: s(v.prompt),
      needs: parseList(v.needs as string[] | undefined),
      priority: s(v.priority) ? parsePriority(s(v.priority)!) : undefined,
      after: parseList(v.after as string[] | undefined),
      command: s(v.command) ?? null,
      resources: parseList(v.resources as string[] | undefined),
      maxAttempts: s(v['max-attempts'])
        ? parseIntFlag('max-attempts', s(v['max-attempts'])!, 1, 100)
        : undefined,
      timeoutMs: s(v.timeout) ? parseDuration('timeout', s(v.timeout)!) : null,
      to: s(v.to) ?? null,
    },
    { session: ctx.maybeSession(), expectEpoch: epochOf(v) },
  );
  ctx.out(`added ${oneLine(t)}`, { task: t, state: 'pending' });
  return 0;
};

export const claim: Run = async (ctx, v) => {
  const coord = await ctx.coordinator();
  const session = ctx.session();
  const stop = new AbortController();
  const onSig = () => stop.abort();
  process.once('SIGINT', onSig);
  process.once('SIGTERM', onSig);
  const got = await coord.claimTask(session, {
    waitMs: s(v.wait) ? parseDuration('wait', s(v.wait)!) : 0,
    leaseMs: s(v.lease) ? parseDuration('lease', s(v.lease)!) : undefined,
    signal: stop.signal,
  });
  if (!got) {
    throw new FlowLoomError(ErrorCode.NOTHING_AVAILABLE, `no task for ${session} to claim`, {
      hint: 'wait for one with --wait SECONDS, or check needs and dependencies in `flowloom task list`',
    });
  }
  const t = got.task;
  ctx.out(
    [
      `claimed ${oneLine(t)}`,
      ...(t.prompt ? [t.prompt] : []),
      ...(t.command ? [`command: ${t.command}`] : []),
      `lease ${Math.round(got.lease.leaseMs / 1000)} s, token ${got.lease.token}; finish with \`flowloom task done ${t.id}\``,
    ],
    { task: t, lease: got.lease },
  );
  return 0;
};

async function leaseRef(ctx: Parameters<Run>[0], v: Values, id: string) {
  const coord = await ctx.coordinator();
  const session = ctx.session();
  const a = await coord.leaseFor(id, session, s(v.token));
  return { coord, ref: { id, session, token: a.lease.token } };
}

export const done: Run = async (ctx, v, pos) => {
  const id = needId(pos, 'flowloom task done ID [--result TEXT]');
  let data: Record<string, unknown> | undefined;
  if (s(v.data)) {
    try {
      const parsed: unknown = JSON.parse(s(v.data)!);
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
        throw new Error('not an object');
      data = parsed as Record<string, unknown>;
    } catch (e) {
      throw invalidInput(
        `--data is not a JSON object (${(e as Error).message})`,
        'e.g. --data \'{"passed":12}\'',
      );
    }
  }
  const { coord, ref } = await leaseRef(ctx, v, id);
  const t = await coord.completeTask(ref, { summary: s(v.result) ?? '', data });
  ctx.out(`completed ${t.id} "${t.title}"`, { task: t, state: 'completed' });
  return 0;
};

export const fail: Run = async (ctx, v, pos) => {
  const id = needId(pos, 'flowloom task fail ID --reason TEXT');
  const reason = s(v.reason);
  if (!reason)
    throw invalidInput('--reason is required', 'say why the attempt failed: --reason "tests do not compile"');
  const { coord, ref } = await leaseRef(ctx, v, id);
  const r = await coord.failTask(ref, reason, { retry: v['no-retry'] !== true });
  ctx.out(
    r.state === 'failed'
      ? `${id} failed for good: ${reason}`
      : `${id} back in the queue (attempt ${r.task.attempts.length} failed: ${reason})`,
    { task: r.task, state: r.state },
  );
  return 0;
};

export const progress: Run = async (ctx, v, pos) => {
  const id = needId(pos, 'flowloom task progress ID TEXT');
  const text = pos.slice(1).join(' ').trim();
  if (!text)
    throw invalidInput(
      'no progress text',
      'usage: flowloom task progress ID "3 tests failing in auth module"',
    );
  let fraction: number | null = null;
  if (s(v.fraction)) {
    fraction = Number(s(v.fraction));
    if (!(fraction >= 0 && fraction <= 1))
      throw invalidInput(`--fraction "${s(v.fraction)}" is not between 0 and 1`, 'e.g. --fraction 0.5');
  }
  const { coord, ref } = await leaseRef(ctx, v, id);
  await coord.reportProgress(ref, text, fraction);
  ctx.out(`${ref.session} reports: ${text}`, { task: id, session: ref.session, progress: text, fraction });
  return 0;
};

export const release: Run = async (ctx, v, pos) => {
  const id = needId(pos, 'flowloom task release ID');
  const { coord, ref } = await leaseRef(ctx, v, id);
  await coord.releaseTask(ref, `released by ${ref.session}`);
  ctx.out(`${id} is back in the queue`, { task: id, state: 'pending' });
  return 0;
};

export const cancel: Run = async (ctx, v, pos) => {
  const id = needId(pos, 'flowloom task cancel ID');
  const coord = await ctx.coordinator();
  const t = await coord.cancelTask(
    id,
    { session: ctx.maybeSession(), expectEpoch: epochOf(v) },
    s(v.reason) ?? 'cancelled',
  );
  ctx.out(`cancelled ${t.id} "${t.title}"`, { task: t, state: 'cancelled' });
  return 0;
};

export const list: Run = async (ctx, v) => {
  const coord = await ctx.coordinator();
  const st = s(v.state);
  if (st !== undefined && !(TASK_STATES as readonly string[]).includes(st)) {
    throw invalidInput(`--state "${st}" is not a task state`, `use one of ${TASK_STATES.join(', ')}`);
  }
  const limit = s(v.limit) ? parseIntFlag('limit', s(v.limit)!, 1, 100_000) : 100;
  const states = st ? [st as TaskState] : TASK_STATES;
  const rows: { state: TaskState; task: TaskRecord }[] = [];
  for (const state of states)
    for (const task of await coord.store.listTasks(state, { limit })) rows.push({ state, task });
  ctx.out(rows.length ? rows.map((r) => oneLine(r.task, r.state)) : 'no tasks', {
    tasks: rows.map((r) => ({ ...r.task, state: r.state })),
  });
  return 0;
};

export const show: Run = async (ctx, _v, pos) => {
  const id = needId(pos, 'flowloom task show ID');
  const coord = await ctx.coordinator();
  const found = await coord.store.getTask(id);
  if (!found)
    throw new FlowLoomError(ErrorCode.TASK_NOT_FOUND, `no task "${id}"`, {
      hint: 'see `flowloom task list` for ids',
    });
  const t = found.task;
  const lines = [oneLine(t, found.state)];
  if (t.prompt) lines.push(`prompt: ${t.prompt}`);
  if (t.command) lines.push(`command: ${t.command}`);
  if (t.resources.length) lines.push(`resources: ${t.resources.join(', ')}`);
  if (found.lease) lines.push(`held by ${found.lease.session} (token ${found.lease.token})`);
  if (t.progress) lines.push(`progress: ${t.progress.text}`);
  for (const [i, a] of t.attempts.entries())
    lines.push(`attempt ${i + 1}: ${a.session} ${a.outcome}${a.reason ? `: ${a.reason}` : ''}`);
  if (t.result) lines.push(`result: ${t.result.summary}`);
  if (t.finalReason) lines.push(`reason: ${t.finalReason}`);
  ctx.out(lines, { ...found });
  return 0;
};
