import { type Candidate, pickMaster, takesOver } from './core/election.ts';
import { ErrorCode, FlowLoomError, invalidInput } from './core/errors.ts';
import { newLeaseToken, newOrderKey, newTaskId, validateId } from './core/ids.ts';
import { normalizeResource, resourcesOverlap } from './core/resourcePattern.ts';
import type {
  ActiveTask,
  AgentStatus,
  Attempt,
  AttemptOutcome,
  EventInput,
  HandoffNote,
  LockRecord,
  LockTable,
  MasterChangeReason,
  MasterRecord,
  ProcessIdentity,
  Report,
  SeqRecord,
  SessionMode,
  SessionRecord,
  SessionView,
  StoredAgentStatus,
  TaskRecord,
  TaskResult,
  TaskState,
} from './core/types.ts';
import type { LeaseRef, Store } from './store/store.ts';

/** Tunables; every duration ends in Ms. */
export interface CoordinatorConfig {
  /** A session whose last heartbeat is older is offline. */
  sessionTtlMs: number;
  /** Default lease on a claimed task; holders renew at about a third of it. */
  taskLeaseMs: number;
  /** Default lease on a resource lock. */
  lockLeaseMs: number;
  /** Default attempts before a task goes to failed (dead letter). */
  maxAttempts: number;
  /** Finished tasks kept as files before older ones are archived. */
  keepFinished: number;
  /** Poll period used as a safety net when waiting (file events wake waiters sooner). */
  pollMs: number;
}

export const DEFAULT_CONFIG: CoordinatorConfig = {
  sessionTtlMs: 15_000,
  taskLeaseMs: 30_000,
  lockLeaseMs: 60_000,
  maxAttempts: 3,
  keepFinished: 2_000,
  pollMs: 500,
};

export type ProcessProbe = (id: ProcessIdentity) => 'alive' | 'dead' | 'unknown';

export interface CoordinatorOptions {
  config?: Partial<CoordinatorConfig>;
  /** Tells whether a process is provably dead; without it, only heartbeats count. */
  probe?: ProcessProbe;
}

export interface JoinInput {
  id?: string | undefined;
  mode?: SessionMode | undefined;
  capabilities?: string[] | undefined;
  resources?: string[] | undefined;
  process?: ProcessIdentity | null | undefined;
  ttlMs?: number | undefined;
  meta?: Record<string, string> | undefined;
}

export type Role = 'master' | 'agent';

export interface JoinResult {
  session: SessionRecord;
  role: Role;
  master: MasterRecord;
  /** True when the session already existed and was re-joined (resume). */
  rejoined: boolean;
}

export interface AddTaskInput {
  id?: string | undefined;
  title: string;
  prompt?: string | undefined;
  needs?: string[] | undefined;
  priority?: number | undefined;
  after?: string[] | undefined;
  command?: string | null | undefined;
  resources?: string[] | undefined;
  maxAttempts?: number | undefined;
  timeoutMs?: number | null | undefined;
  to?: string | null | undefined;
}

export interface WriteContext {
  /** Acting session, if any. */
  session?: string | null | undefined;
  /** Epoch the writer believes is current; the write is refused when it is stale. */
  expectEpoch?: number | undefined;
}

export interface ClaimOptions {
  leaseMs?: number | undefined;
  /** Wait up to this long for a task (0 = do not wait). */
  waitMs?: number | undefined;
  signal?: AbortSignal | undefined;
}

export interface LockOptions {
  leaseMs?: number | undefined;
  /** Wait up to this long, queued fairly behind earlier waiters (0 = fail at once). */
  waitMs?: number | undefined;
  taskId?: string | null | undefined;
  note?: string | undefined;
  signal?: AbortSignal | undefined;
}

export interface SessionStatus {
  id: string;
  role: Role;
  mode: SessionMode;
  status: AgentStatus;
  alive: boolean;
  capabilities: string[];
  resources: string[];
  currentTask: { id: string; title: string; progress: Report | null } | null;
  report: Report | null;
  heartbeatAgeMs: number;
  rank: number;
  pid: number | null;
  meta: Record<string, string>;
}

export interface StatusSnapshot {
  generatedAt: number;
  store: { kind: string; location: string };
  master: (MasterRecord & { alive: boolean }) | null;
  sessions: SessionStatus[];
  queue: { counts: Record<TaskState, number>; pendingByCapability: Record<string, number> };
  active: { id: string; title: string; session: string; progress: Report | null; leaseRemainingMs: number }[];
  locks: (LockRecord & { ageMs: number })[];
  /** Sentences for humans: "agent-1 reports: 3 tests failing in auth module", "All agents idle". */
  lines: string[];
}

const MAX_CAS_RETRIES = 200;

/**
 * The rules of FlowLoom, implemented once on top of any Store: sessions and election, the leased task
 * queue, fenced resource locks, and status. Stateless between calls apart from caches, so any number of
 * processes may each hold one.
 */
export class Coordinator {
  readonly store: Store;
  readonly config: CoordinatorConfig;
  private readonly probe: ProcessProbe;
  private lastReapAt = 0;
  private lastCompactAt = 0;

  constructor(store: Store, opts: CoordinatorOptions = {}) {
    this.store = store;
    this.config = { ...DEFAULT_CONFIG, ...opts.config };
    this.probe = opts.probe ?? (() => 'unknown');
  }

  private now(): number {
    return this.store.clock.now();
  }

  private async emit(e: EventInput): Promise<void> {
    await this.store.appendEvent(e);
  }

  // ============================================================ sessions and election

  /** Whether a session counts as present: fresh heartbeat and, when provable, a running process. */
  isAlive(s: SessionView): boolean {
    if (this.now() - s.heartbeatAt > s.ttlMs) return false;
    return !(s.process && this.probe(s.process) === 'dead');
  }

  /** Whether a session is provably gone (its process died on this machine, or it left). */
  private isProvablyDead(s: SessionView | null): boolean {
    return s === null || (s.process !== null && this.probe(s.process) === 'dead');
  }

  private async nextRank(): Promise<number> {
    for (let i = 0; i < MAX_CAS_RETRIES; i++) {
      const cur = await this.store.readRegister<SeqRecord>('seq');
      const rank = (cur?.value.rank ?? 0) + 1;
      if (await this.store.writeRegister<SeqRecord>('seq', cur?.version ?? 0, { rank })) return rank;
    }
    throw new FlowLoomError(ErrorCode.CONFLICT, 'could not assign a join sequence number under contention', {
      hint: 'try again',
    });
  }

  /** Registers a session (or re-joins an existing one) and applies the election rule. */
  async join(input: JoinInput): Promise<JoinResult> {
    const id = validateId('session', input.id ?? `s-${newTaskId().slice(2)}`);
    const existing = await this.store.getSession(id);
    const mode = input.mode ?? existing?.mode ?? 'auto';
    // A resumed session keeps its rank (and so its place in the election) unless its mode changes.
    const keepRank = existing !== null && existing.mode === mode && this.isAlive(existing);
    const rank = keepRank ? existing.rank : await this.nextRank();
    const rec: SessionRecord = {
      id,
      mode,
      rank,
      joinedAt: existing?.joinedAt ?? this.now(),
      capabilities: normalizeWords(input.capabilities ?? existing?.capabilities ?? [], 'capability'),
      resources: input.resources ?? existing?.resources ?? [],
      status: existing?.status ?? 'idle',
      currentTask: existing?.currentTask ?? null,
      report: existing?.report ?? null,
      process: input.process === undefined ? (existing?.process ?? null) : input.process,
      ttlMs: input.ttlMs ?? existing?.ttlMs ?? this.config.sessionTtlMs,
      meta: { ...existing?.meta, ...input.meta },
    };
    await this.store.putSession(rec);
    await this.emit({
      type: 'session.joined',
      session: id,
      text: existing ? `${id} re-joined (${mode})` : `${id} joined (${mode})`,
      data: { mode, rank, capabilities: rec.capabilities },
    });
    const master = keepRank ? await this.ensureMaster() : await this.electOnJoin({ id, mode, rank });
    return {
      session: rec,
      role: master.sessionId === id ? 'master' : 'agent',
      master,
      rejoined: existing !== null,
    };
  }

  /** Applies the rule for a session that joined or changed mode. */
  private async electOnJoin(joiner: { id: string; mode: SessionMode; rank: number }): Promise<MasterRecord> {
    return this.changeMaster(async (cur) => {
      const master = cur?.sessionId ? await this.store.getSession(cur.sessionId) : null;
      const masterAlive = master !== null && this.isAlive(master);
      if (cur && master && masterAlive) {
        if (!takesOver({ id: master.id, explicit: cur.explicit, rank: master.rank, alive: true }, joiner)) {
          return null;
        }
        const reason: MasterChangeReason = joiner.mode === 'master' ? 'claim' : 'join';
        if (cur.sessionId === joiner.id) return { ...cur, explicit: joiner.mode === 'master', reason };
        return this.nextMaster(cur, joiner.id, joiner.mode === 'master', reason, '');
      }
      return this.failoverRecord(cur, new Set());
    });
  }

  /** Makes sure a live master exists: if the master is gone, elects one (whoever notices first). */
  async ensureMaster(): Promise<MasterRecord> {
    return this.changeMaster(async (cur) => {
      if (cur?.sessionId) {
        const m = await this.store.getSession(cur.sessionId);
        if (m && this.isAlive(m)) return null;
      }
      return this.failoverRecord(cur, new Set());
    });
  }

  /** The record that replaces a dead or missing master; null when nothing changes. */
  private async failoverRecord(cur: MasterRecord | null, exclude: Set<string>): Promise<MasterRecord | null> {
    const sessions = await this.store.listSessions();
    const pick = pickMaster(
      sessions.map((s) => this.candidate(s)),
      exclude,
    );
    if (!pick) {
      if (cur === null || cur.sessionId === null) return null;
      // A new epoch even without a master: a write the old master still makes with its epoch is refused.
      return {
        ...cur,
        epoch: cur.epoch + 1,
        sessionId: null,
        explicit: false,
        since: this.now(),
        reason: 'vacant',
        previous: cur.sessionId,
        handoff: null,
      };
    }
    if (cur?.sessionId === pick.id) return null;
    const reason: MasterChangeReason = cur?.sessionId ? 'failover' : 'join';
    return this.nextMaster(cur, pick.id, pick.mode === 'master', reason, '');
  }

  private candidate(s: SessionView): Candidate {
    return { id: s.id, mode: s.mode, rank: s.rank, alive: this.isAlive(s) };
  }

  private async nextMaster(
    cur: MasterRecord | null,
    to: string,
    explicit: boolean,
    reason: MasterChangeReason,
    note: string,
  ): Promise<MasterRecord> {
    const at = this.now();
    const from = cur?.sessionId ?? null;
    const handoff: HandoffNote | null =
      from === null && note === '' ? null : { from, to, note, summary: await this.summarize(), at };
    return {
      epoch: (cur?.epoch ?? 0) + 1,
      sessionId: to,
      explicit,
      since: at,
      reason,
      previous: from,
      handoff,
    };
  }

  /**
   * Compare-and-set loop on the master register. `decide` sees the current record and returns the
   * next one, or null for no change. At most one writer wins per version, so at most one master per epoch.
   */
  private async changeMaster(
    decide: (cur: MasterRecord | null) => Promise<MasterRecord | null>,
  ): Promise<MasterRecord> {
    for (let i = 0; i < MAX_CAS_RETRIES; i++) {
      const cur = await this.store.readRegister<MasterRecord>('master');
      const next = await decide(cur?.value ?? null);
      if (next === null) return cur?.value ?? vacantMaster(this.now());
      if (await this.store.writeRegister('master', cur?.version ?? 0, next)) {
        if (next.sessionId !== (cur?.value.sessionId ?? null) || next.explicit !== cur?.value.explicit) {
          await this.emit({
            type: 'master.changed',
            session: next.sessionId,
            text:
              next.sessionId === null
                ? 'no master: no session is alive'
                : `${next.sessionId} is master (epoch ${next.epoch}, ${describeReason(next)})`,
            data: {
              epoch: next.epoch,
              reason: next.reason,
              previous: next.previous,
              explicit: next.explicit,
            },
          });
        }
        return next;
      }
    }
    throw new FlowLoomError(ErrorCode.CONFLICT, 'the master register kept changing under contention', {
      hint: 'try again',
    });
  }

  /** The current master record (a vacant one when nobody ever joined). */
  async master(): Promise<MasterRecord> {
    return (await this.store.readRegister<MasterRecord>('master'))?.value ?? vacantMaster(this.now());
  }

  /** Throws STALE_EPOCH when `expectEpoch` is given and is not the current epoch. */
  async checkEpoch(ctx: WriteContext): Promise<MasterRecord> {
    const m = await this.master();
    if (ctx.expectEpoch !== undefined && ctx.expectEpoch !== m.epoch) {
      throw new FlowLoomError(
        ErrorCode.STALE_EPOCH,
        `write refused: it carries epoch ${ctx.expectEpoch} but the current epoch is ${m.epoch} (master ${m.sessionId ?? 'none'})`,
        {
          hint: 'this session is no longer master; run `flowloom status` to see who is',
          details: { epoch: m.epoch },
        },
      );
    }
    return m;
  }

  private async requireSession(id: string): Promise<SessionView> {
    validateId('session', id);
    const s = await this.store.getSession(id);
    if (!s) {
      throw new FlowLoomError(ErrorCode.SESSION_NOT_FOUND, `session "${id}" has not joined`, {
        hint: 'run `flowloom join --session <id>` first',
      });
    }
    return s;
  }

  /** Refreshes a session's heartbeat, renews its task and lock leases, and checks the master. */
  async heartbeat(id: string): Promise<{ role: Role; master: MasterRecord; lostTasks: string[] }> {
    validateId('session', id);
    if (!(await this.store.touchSession(id))) await this.requireSession(id);
    const lostTasks: string[] = [];
    for (const a of await this.store.listActive()) {
      if (a.lease.session !== id) continue;
      // A lapsed lease is lost even before the reaper ran: renewing it would revive a fenced holder.
      const lapsed = this.now() > a.lease.renewedAt + a.lease.leaseMs;
      if (lapsed || !(await this.store.renewLease({ id: a.task.id, session: id, token: a.lease.token })))
        lostTasks.push(a.task.id);
    }
    await this.renewLocks(id);
    const master = await this.ensureMaster();
    return { role: master.sessionId === id ? 'master' : 'agent', master, lostTasks };
  }

  /** Leaves: gives back tasks and locks; a leaving master hands off to the best live session. */
  async leave(id: string, note = ''): Promise<{ master: MasterRecord }> {
    const s = await this.requireSession(id);
    for (const a of await this.store.listActive()) {
      if (a.lease.session === id) {
        await this.endAttempt(
          { id: a.task.id, session: id, token: a.lease.token },
          a,
          'released',
          `${id} left`,
        );
      }
    }
    await this.releaseLocks(id, {});
    await this.store.deleteSession(id);
    await this.emit({ type: 'session.left', session: id, text: `${id} left` });
    const master = await this.changeMaster(async (cur) => {
      if (cur?.sessionId !== id) return null;
      const next = await this.failoverRecord(cur, new Set([id]));
      if (next && next.sessionId !== null) {
        return {
          ...next,
          reason: 'leave',
          handoff: { ...(next.handoff ?? emptyHandoff(id, next.sessionId, this.now())), note },
        };
      }
      return next;
    });
    void s;
    return { master };
  }

  /** Changes a session's mode and applies the rule (a master stepping down hands off). */
  async setMode(id: string, mode: SessionMode, note = ''): Promise<{ role: Role; master: MasterRecord }> {
    const s = await this.requireSession(id);
    const rank = await this.nextRank();
    await this.store.putSession({ ...stripView(s), mode, rank });
    await this.emit({
      type: 'session.mode',
      session: id,
      text: `${id} switched to ${mode} mode`,
      data: { mode },
    });
    let master: MasterRecord;
    if (mode === 'agent') {
      master = await this.changeMaster(async (cur) => {
        if (cur?.sessionId !== id) return null;
        const next = await this.failoverRecord(cur, new Set([id]));
        if (next === null || next.sessionId === null) return null; // nobody else: stay master
        return {
          ...next,
          reason: 'step-down',
          handoff: { ...(next.handoff ?? emptyHandoff(id, next.sessionId, this.now())), note },
        };
      });
    } else if (mode === 'auto') {
      // Clearing an explicit claim does not grab or drop mastership; it only makes it implicit.
      master = await this.changeMaster(async (cur) => {
        if (cur?.sessionId === id && cur.explicit) return { ...cur, explicit: false };
        if (!cur?.sessionId) return this.failoverRecord(cur, new Set());
        return null;
      });
      if (master.sessionId !== id) master = await this.ensureMaster();
    } else {
      master = await this.electOnJoin({ id, mode, rank });
    }
    return { role: master.sessionId === id ? 'master' : 'agent', master };
  }

  /** Moves mastership from the current master to `to` (or the best live session) with a note. */
  async handoff(
    from: string,
    opts: { to?: string | undefined; note?: string | undefined; expectEpoch?: number | undefined } = {},
  ): Promise<MasterRecord> {
    await this.requireSession(from);
    if (opts.to !== undefined) {
      const target = await this.requireSession(opts.to);
      if (!this.isAlive(target)) {
        throw new FlowLoomError(
          ErrorCode.INVALID_INPUT,
          `session "${opts.to}" is offline and cannot take over`,
          {
            hint: 'hand off to a live session (see `flowloom status`)',
          },
        );
      }
    }
    return this.changeMaster(async (cur) => {
      if (opts.expectEpoch !== undefined && cur && cur.epoch !== opts.expectEpoch) {
        throw new FlowLoomError(
          ErrorCode.STALE_EPOCH,
          `handoff refused: epoch ${opts.expectEpoch} is stale (now ${cur.epoch})`,
          {
            hint: 'this session is no longer master',
          },
        );
      }
      if (cur?.sessionId !== from) {
        throw new FlowLoomError(
          ErrorCode.NOT_MASTER,
          `${from} is not the master (the master is ${cur?.sessionId ?? 'nobody'})`,
          {
            hint: 'only the master can hand off',
          },
        );
      }
      let to = opts.to;
      if (to === undefined) {
        const sessions = await this.store.listSessions();
        to = pickMaster(
          sessions.map((s) => this.candidate(s)),
          new Set([from]),
        )?.id;
        if (to === undefined) {
          throw new FlowLoomError(ErrorCode.NOTHING_AVAILABLE, 'no other live session to hand off to', {
            hint: 'start another session first, or name one with --to',
          });
        }
      }
      if (to === from) return null;
      return this.nextMaster(cur, to, false, 'handoff', opts.note ?? '');
    });
  }

  /** Records an agent's own status and optional report ("3 tests failing in auth module"). */
  async setStatus(id: string, status: StoredAgentStatus, reportText?: string): Promise<void> {
    const s = await this.requireSession(id);
    const report: Report | null =
      reportText === undefined
        ? s.report
        : { text: reportText, at: this.now(), taskId: s.currentTask, fraction: null };
    await this.store.putSession({ ...stripView(s), status, report });
    await this.emit({
      type: 'session.status',
      session: id,
      text: reportText ? `${id} reports: ${reportText}` : `${id} is ${status}`,
      data: { status },
    });
  }

  /** A generated summary of open tasks, agents and locks, for handoff notes. */
  async summarize(): Promise<string> {
    const [pending, active, sessions, table] = await Promise.all([
      this.store.listPending(),
      this.store.listActive(),
      this.store.listSessions(),
      this.store.readRegister<LockTable>('locks'),
    ]);
    const live = sessions.filter((s) => this.isAlive(s));
    const parts: string[] = [];
    parts.push(
      `Open tasks: ${pending.length} pending${
        pending.length
          ? ` (${pending
              .slice(0, 5)
              .map((t) => `${t.id} "${t.title}"`)
              .join(', ')}${pending.length > 5 ? ', ...' : ''})`
          : ''
      }, ${active.length} active${
        active.length
          ? ` (${active
              .slice(0, 5)
              .map((a) => `${a.task.id} by ${a.lease.session}`)
              .join(', ')})`
          : ''
      }.`,
    );
    parts.push(
      `Agents: ${live.length ? live.map((s) => `${s.id} ${active.some((a) => a.lease.session === s.id) ? 'busy' : s.status}`).join(', ') : 'none alive'}.`,
    );
    const locks = table?.value.locks ?? [];
    parts.push(
      `Locks: ${locks.length ? locks.map((l) => `${l.resource} held by ${l.session}`).join(', ') : 'none'}.`,
    );
    return parts.join(' ');
  }

  // ============================================================ task queue

  /** Adds a pending task. */
  async addTask(input: AddTaskInput, ctx: WriteContext = {}): Promise<TaskRecord> {
    await this.checkEpoch(ctx);
    const title = input.title.trim();
    if (!title)
      throw invalidInput('a task needs a title', 'pass a short title, e.g. `flowloom task add "run tests"`');
    if (title.length > 500)
      throw invalidInput(
        `task title is ${title.length} characters long`,
        'keep it under 500 and put details in --prompt',
      );
    const prompt = input.prompt ?? '';
    if (prompt.length > 100_000)
      throw invalidInput(
        `task prompt is ${prompt.length} characters long`,
        'keep it under 100000 characters',
      );
    const priority = input.priority ?? 0;
    if (!Number.isInteger(priority) || priority < -999 || priority > 999) {
      throw invalidInput(
        `priority ${priority} is out of range`,
        'use a whole number from -999 to 999, or low|normal|high|urgent',
      );
    }
    const maxAttempts = input.maxAttempts ?? this.config.maxAttempts;
    if (!Number.isInteger(maxAttempts) || maxAttempts < 1 || maxAttempts > 100) {
      throw invalidInput(`max attempts ${maxAttempts} is out of range`, 'use a whole number from 1 to 100');
    }
    const after = (input.after ?? []).map((d) => validateId('task', d));
    if (after.length) {
      const states = await this.store.taskStates(after);
      const missing = after.filter((d) => states.get(d) === null);
      if (missing.length) {
        throw new FlowLoomError(
          ErrorCode.TASK_NOT_FOUND,
          `dependency ${missing.map((m) => `"${m}"`).join(', ')} does not exist`,
          {
            hint: 'pass ids of existing tasks to --after (see `flowloom task list`)',
          },
        );
      }
    }
    const id = input.id === undefined ? newTaskId() : validateId('task', input.id);
    const now = this.now();
    const task: TaskRecord = {
      id,
      title,
      prompt,
      needs: normalizeWords(input.needs ?? [], 'capability'),
      priority,
      after,
      command: input.command ?? null,
      resources: (input.resources ?? []).map((r) => normalizeResource(r)),
      maxAttempts,
      timeoutMs: input.timeoutMs ?? null,
      to: input.to ? validateId('session', input.to) : null,
      createdAt: now,
      createdBy: ctx.session ?? null,
      orderKey: newOrderKey(now),
      attempts: [],
      result: null,
      progress: null,
      finalReason: null,
      finishedAt: null,
    };
    await this.store.addTask(task, { checkUnique: input.id !== undefined });
    await this.emit({
      type: 'task.added',
      session: ctx.session ?? null,
      task: id,
      text: `${ctx.session ?? 'someone'} added ${id} "${title}"${task.needs.length ? ` (needs ${task.needs.join(', ')})` : ''}${task.to ? ` for ${task.to}` : ''}`,
      data: { priority, needs: task.needs, to: task.to },
    });
    return task;
  }

  /**
   * Claims the best claimable task for a session: matching capabilities and addressee, dependencies
   * completed, highest priority then oldest. Atomic: exactly one claimer gets each task.
   */
  async claimTask(sessionId: string, opts: ClaimOptions = {}): Promise<ActiveTask | null> {
    const session = await this.requireSession(sessionId);
    const deadline = this.now() + (opts.waitMs ?? 0);
    for (;;) {
      await this.reapIfDue();
      const got = await this.tryClaim(session, opts.leaseMs ?? this.config.taskLeaseMs);
      if (got) return got;
      const remaining = deadline - this.now();
      if (remaining <= 0 || opts.signal?.aborted) return null;
      await this.waitForChange('tasks', Math.min(remaining, this.config.pollMs), opts.signal);
    }
  }

  private async tryClaim(session: SessionView, leaseMs: number): Promise<ActiveTask | null> {
    const caps = new Set(session.capabilities);
    const pending = await this.store.listPending();
    const depMemo = new Map<string, TaskState | null>();
    for (const t of pending) {
      if (t.to !== null && t.to !== session.id) continue;
      if (!t.needs.every((n) => caps.has(n))) continue;
      if (t.after.length) {
        const unknown = t.after.filter((d) => !depMemo.has(d));
        if (unknown.length) for (const [k, v] of await this.store.taskStates(unknown)) depMemo.set(k, v);
        const broken = t.after.find((d) => depMemo.get(d) === 'failed' || depMemo.get(d) === 'cancelled');
        if (broken) {
          await this.failPendingForDependency(t, broken, depMemo.get(broken) as TaskState);
          continue;
        }
        if (!t.after.every((d) => depMemo.get(d) === 'completed')) continue;
      }
      const active = await this.store.claimTask(t, { session: session.id, token: newLeaseToken(), leaseMs });
      if (!active) continue; // someone else was faster
      const ref = { id: t.id, session: session.id, token: active.lease.token };
      if (t.resources.length) {
        try {
          await this.acquireLocks(session.id, t.resources, { taskId: t.id, leaseMs, note: `task ${t.id}` });
        } catch (e) {
          if (!(e instanceof FlowLoomError && e.code === ErrorCode.LOCK_HELD)) throw e;
          // Its resources are busy: put it back untouched and look further.
          await this.store.finishTask(ref, 'pending', (x) => x);
          continue;
        }
      }
      await this.emit({
        type: 'task.claimed',
        session: session.id,
        task: t.id,
        text: `${session.id} claimed ${t.id} "${t.title}"${t.attempts.length ? ` (attempt ${t.attempts.length + 1})` : ''}`,
        data: { token: active.lease.token, attempt: t.attempts.length + 1 },
      });
      return active;
    }
    return null;
  }

  private async failPendingForDependency(t: TaskRecord, dep: string, state: TaskState): Promise<void> {
    const reason = `dependency ${dep} ${state}`;
    const moved = await this.store.movePending(t.id, 'failed', (x) => ({
      ...x,
      finalReason: reason,
      finishedAt: this.now(),
    }));
    if (moved)
      await this.emit({
        type: 'task.failed',
        task: t.id,
        text: `${t.id} "${t.title}" failed: ${reason}`,
        data: { reason },
      });
  }

  /** Waits for a change in an area (file events) or until `ms` passed. */
  waitForChange(area: 'tasks' | 'locks' | 'master', ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        unwatch();
        signal?.removeEventListener('abort', finish);
        resolve();
      };
      const timer = setTimeout(finish, ms);
      const unwatch = this.store.watch(area, finish);
      signal?.addEventListener('abort', finish, { once: true });
    });
  }

  /** Finds the caller's active lease on a task, or explains why there is none. */
  async leaseFor(taskId: string, sessionId: string, token?: string): Promise<ActiveTask> {
    validateId('task', taskId);
    const active = (await this.store.listActive()).find((a) => a.task.id === taskId);
    if (
      active &&
      active.lease.session === sessionId &&
      (token === undefined || token === active.lease.token)
    ) {
      if (this.now() > active.lease.renewedAt + active.lease.leaseMs) {
        throw leaseExpired(taskId, sessionId, 'its lease lapsed');
      }
      return active;
    }
    const found = active ? { state: 'active' as const } : await this.store.getTask(taskId);
    if (!found) {
      throw new FlowLoomError(ErrorCode.TASK_NOT_FOUND, `no task "${taskId}"`, {
        hint: 'see `flowloom task list` for ids',
      });
    }
    if (active)
      throw leaseExpired(
        taskId,
        sessionId,
        `it is held by ${active.lease.session}${token ? ' or under another lease' : ''}`,
      );
    throw leaseExpired(taskId, sessionId, `it is ${found.state}`);
  }

  /** Extends the caller's lease on a task. */
  async renewTask(ref: LeaseRef): Promise<void> {
    await this.leaseFor(ref.id, ref.session, ref.token);
    if (!(await this.store.renewLease(ref)))
      throw leaseExpired(ref.id, ref.session, 'its lease lapsed or was taken over');
  }

  /** Records progress on a held task (also renews the lease) and updates the agent's report. */
  async reportProgress(ref: LeaseRef, text: string, fraction: number | null = null): Promise<void> {
    await this.leaseFor(ref.id, ref.session, ref.token);
    const report: Report = { text, at: this.now(), taskId: ref.id, fraction };
    if (!(await this.store.setProgress(ref, report)))
      throw leaseExpired(ref.id, ref.session, 'its lease lapsed or was taken over');
    const s = await this.store.getSession(ref.session);
    if (s) await this.store.putSession({ ...stripView(s), report, status: 'busy', currentTask: ref.id });
    await this.emit({
      type: 'task.progress',
      session: ref.session,
      task: ref.id,
      text: `${ref.session} reports: ${text}`,
      data: { fraction },
    });
  }

  /** Completes a held task with a result. Refused (LEASE_EXPIRED) when the lease lapsed: fencing. */
  async completeTask(ref: LeaseRef, result: TaskResult): Promise<TaskRecord> {
    // The store fences by token only; a lease that lapsed before the reaper noticed is refused here.
    await this.leaseFor(ref.id, ref.session, ref.token);
    const now = this.now();
    const done = await this.store.finishTask(ref, 'completed', (t) => ({
      ...t,
      result,
      attempts: [...t.attempts, attemptOf(ref, t, now, 'completed', result.summary)],
      finishedAt: now,
      finalReason: null,
    }));
    if (!done) throw leaseExpired(ref.id, ref.session, 'its lease lapsed or was taken over');
    await this.afterFinish(ref);
    await this.emit({
      type: 'task.completed',
      session: ref.session,
      task: ref.id,
      text: `${ref.session} completed ${ref.id} "${done.title}"${result.summary ? `: ${result.summary}` : ''}`,
      data: result.data ? { result: result.data } : {},
    });
    return done;
  }

  /** Fails the current attempt; the task retries until its attempts run out, then goes to failed. */
  async failTask(
    ref: LeaseRef,
    reason: string,
    opts: { retry?: boolean } = {},
  ): Promise<{ task: TaskRecord; state: TaskState }> {
    const active = await this.leaseFor(ref.id, ref.session, ref.token);
    const out = await this.endAttempt(ref, active, 'failed', reason, opts.retry ?? true);
    if (!out) throw leaseExpired(ref.id, ref.session, 'its lease lapsed or was taken over');
    return out;
  }

  /** Gives a held task back to the queue without counting the attempt against it. */
  async releaseTask(ref: LeaseRef, reason = 'released'): Promise<void> {
    const active = await this.leaseFor(ref.id, ref.session, ref.token);
    if (!(await this.endAttempt(ref, active, 'released', reason))) {
      throw leaseExpired(ref.id, ref.session, 'its lease lapsed or was taken over');
    }
  }

  /**
   * Ends an attempt other than by success: back to pending with the attempt recorded, or to failed
   * when the attempts ran out. 'released' attempts do not count.
   */
  private async endAttempt(
    ref: LeaseRef,
    active: ActiveTask,
    outcome: AttemptOutcome,
    reason: string,
    retry = true,
  ): Promise<{ task: TaskRecord; state: TaskState } | null> {
    const now = this.now();
    const attempt = attemptOf(ref, active.task, now, outcome, reason, active.lease.claimedAt);
    const counted = [...active.task.attempts, attempt].filter((a) => a.outcome !== 'released').length;
    const toFailed = outcome !== 'released' && (!retry || counted >= active.task.maxAttempts);
    const state: TaskState = toFailed ? 'failed' : 'pending';
    const task = await this.store.finishTask(ref, state, (t) => ({
      ...t,
      attempts: [...t.attempts, attempt],
      ...(toFailed ? { finalReason: reason, finishedAt: now } : {}),
    }));
    if (!task) return null;
    await this.afterFinish(ref);
    if (toFailed) {
      await this.emit({
        type: 'task.failed',
        session: ref.session,
        task: ref.id,
        text: `${ref.id} "${task.title}" failed after ${counted} attempt${counted === 1 ? '' : 's'}: ${reason}`,
        data: { reason, outcome, attempts: counted },
      });
    } else {
      await this.emit({
        type: 'task.retry',
        session: ref.session,
        task: ref.id,
        text: `${ref.id} "${task.title}" back in the queue (${outcome}: ${reason})`,
        data: { reason, outcome, attempts: counted },
      });
    }
    return { task, state };
  }

  private async afterFinish(ref: LeaseRef): Promise<void> {
    await this.releaseLocks(ref.session, { taskId: ref.id }).catch(() => undefined);
    const s = await this.store.getSession(ref.session);
    if (s && s.currentTask === ref.id)
      await this.store.putSession({ ...stripView(s), currentTask: null, status: 'idle' });
  }

  /** Cancels a pending or active task. */
  async cancelTask(id: string, ctx: WriteContext = {}, reason = 'cancelled'): Promise<TaskRecord> {
    await this.checkEpoch(ctx);
    validateId('task', id);
    const why = ctx.session ? `${reason} by ${ctx.session}` : reason;
    const moved = await this.store.movePending(id, 'cancelled', (t) => ({
      ...t,
      finalReason: why,
      finishedAt: this.now(),
    }));
    let task = moved;
    if (!task) {
      const active = (await this.store.listActive()).find((a) => a.task.id === id);
      if (active) {
        const ref = { id, session: active.lease.session, token: active.lease.token };
        const now = this.now();
        task = await this.store.finishTask(ref, 'cancelled', (t) => ({
          ...t,
          attempts: [...t.attempts, attemptOf(ref, t, now, 'cancelled', why, active.lease.claimedAt)],
          finalReason: why,
          finishedAt: now,
        }));
        if (task) await this.afterFinish(ref);
      }
    }
    if (!task) {
      const found = await this.store.getTask(id);
      if (!found)
        throw new FlowLoomError(ErrorCode.TASK_NOT_FOUND, `no task "${id}"`, {
          hint: 'see `flowloom task list` for ids',
        });
      throw new FlowLoomError(ErrorCode.TASK_STATE, `task ${id} is already ${found.state}`, {
        hint: 'only pending or active tasks can be cancelled',
      });
    }
    await this.emit({
      type: 'task.cancelled',
      session: ctx.session ?? null,
      task: id,
      text: `${id} "${task.title}" ${why}`,
    });
    return task;
  }

  /**
   * Returns lapsed work to the queue: tasks whose holder died (provably) or whose lease or timeout
   * ran out; frees locks of dead holders; elects a master if the master is gone; finishes moves a
   * crash interrupted; archives old finished tasks. Safe to run from any number of processes at once.
   */
  async reap(): Promise<{ requeued: string[]; failed: string[]; freedLocks: number }> {
    this.lastReapAt = this.now();
    const requeued: string[] = [];
    const failed: string[] = [];
    const active = await this.store.listActive();
    if (active.length) {
      const sessions = new Map((await this.store.listSessions()).map((s) => [s.id, s]));
      for (const a of active) {
        const now = this.now();
        const holder = sessions.get(a.lease.session) ?? null;
        let outcome: AttemptOutcome | null = null;
        let reason = '';
        if (this.isProvablyDead(holder)) {
          outcome = 'holder-died';
          reason = holder
            ? `holder ${a.lease.session} died (pid ${holder.process?.pid})`
            : `holder ${a.lease.session} left`;
        } else if (now > a.lease.renewedAt + a.lease.leaseMs) {
          outcome = 'lapsed';
          reason = `lease of ${a.lease.session} lapsed (${Math.round((now - a.lease.renewedAt) / 1000)} s without renewal)`;
        } else if (a.task.timeoutMs !== null && now > a.lease.claimedAt + a.task.timeoutMs) {
          outcome = 'timed-out';
          reason = `timed out after ${Math.round(a.task.timeoutMs / 1000)} s`;
        }
        if (!outcome) continue;
        const ref = { id: a.task.id, session: a.lease.session, token: a.lease.token };
        const r = await this.endAttempt(ref, a, outcome, reason);
        if (r) (r.state === 'failed' ? failed : requeued).push(a.task.id);
      }
    }
    const freedLocks = await this.pruneLocks();
    await this.ensureMaster();
    const recover = (this.store as { recoverInterrupted?: (ms: number) => Promise<number> })
      .recoverInterrupted;
    if (recover) await recover.call(this.store, 10_000);
    if (this.now() - this.lastCompactAt > 10_000) {
      this.lastCompactAt = this.now();
      const n = await this.store.compact({ keep: this.config.keepFinished });
      if (n > 0)
        await this.emit({
          type: 'tasks.compacted',
          text: `archived ${n} finished tasks`,
          data: { archived: n },
        });
    }
    return { requeued, failed, freedLocks };
  }

  /** Runs `reap` unless it ran within the last poll period. */
  async reapIfDue(): Promise<void> {
    if (this.now() - this.lastReapAt >= Math.min(this.config.pollMs, 250)) await this.reap();
  }

  // ============================================================ locks

  /**
   * Acquires leases on resources (all or none). Fails with LOCK_HELD naming the holder, or waits in
   * a fair queue (tickets) when `waitMs` > 0. Returns the lock records with their fencing tokens.
   */
  async acquireLocks(sessionId: string, resources: string[], opts: LockOptions = {}): Promise<LockRecord[]> {
    await this.requireSession(sessionId);
    if (resources.length === 0)
      throw invalidInput('no resource to lock', 'name at least one, e.g. `file:src/app.ts` or `git`');
    const wanted = [...new Set(resources.map((r) => normalizeResource(r)))];
    const leaseMs = opts.leaseMs ?? this.config.lockLeaseMs;
    const taskId = opts.taskId ?? null;
    const deadline = this.now() + (opts.waitMs ?? 0);
    let ticket: number | null = null;
    try {
      for (;;) {
        const r = await this.tryAcquire(
          sessionId,
          wanted,
          leaseMs,
          taskId,
          opts.note ?? '',
          ticket,
          (opts.waitMs ?? 0) > 0,
        );
        if (r.granted) {
          ticket = null;
          for (const l of r.granted) {
            await this.emit({
              type: 'lock.acquired',
              session: sessionId,
              task: taskId,
              text: `${sessionId} locked ${l.resource} (token ${l.token})`,
              data: { resource: l.resource, token: l.token },
            });
          }
          return r.granted;
        }
        ticket = r.ticket;
        const remaining = deadline - this.now();
        if (remaining <= 0 || opts.signal?.aborted) {
          const b = r.blocker;
          const holder = b
            ? `${b.resource} is held by ${b.session}${b.taskId ? ` (task ${b.taskId})` : ''} since ${new Date(b.acquiredAt).toISOString()}`
            : 'an earlier waiter is queued';
          throw new FlowLoomError(
            (opts.waitMs ?? 0) > 0 ? ErrorCode.TIMEOUT : ErrorCode.LOCK_HELD,
            `cannot lock ${wanted.join(', ')}: ${holder}`,
            {
              hint:
                (opts.waitMs ?? 0) > 0
                  ? 'wait longer (--wait) or ask the holder to release it'
                  : 'retry later, or pass --wait SECONDS to queue for it',
              details: { holder: b?.session ?? null, resource: b?.resource ?? null },
            },
          );
        }
        await this.waitForChange(
          'locks',
          Math.min(remaining, this.config.pollMs, Math.max(50, leaseMs / 3)),
          opts.signal,
        );
      }
    } finally {
      if (ticket !== null) await this.dropWaiter(ticket).catch(() => undefined);
    }
  }

  private async tryAcquire(
    sessionId: string,
    wanted: string[],
    leaseMs: number,
    taskId: string | null,
    note: string,
    ticket: number | null,
    queue: boolean,
  ): Promise<
    | { granted: LockRecord[]; ticket: null; blocker: null }
    | { granted: null; ticket: number | null; blocker: LockRecord | null }
  > {
    for (let i = 0; i < MAX_CAS_RETRIES; i++) {
      const cur = await this.store.readRegister<LockTable>('locks');
      const table = await this.pruned(cur?.value ?? emptyLockTable());
      const now = this.now();
      const mine = (l: { session: string; taskId?: string | null }) =>
        l.session === sessionId && (l.taskId ?? null) === taskId;
      const blocker =
        table.locks.find((l) => !mine(l) && wanted.some((w) => resourcesOverlap(w, l.resource))) ?? null;
      const earlier = table.waiters.find(
        (w) =>
          (ticket === null || w.ticket < ticket) &&
          w.session !== sessionId &&
          w.resources.some((r) => wanted.some((x) => resourcesOverlap(r, x))),
      );
      let next: LockTable;
      let granted: LockRecord[] | null = null;
      let myTicket = ticket;
      if (!blocker && !earlier) {
        let nextToken = table.nextToken;
        granted = [];
        const locks = [...table.locks];
        for (const w of wanted) {
          const existing = locks.findIndex((l) => mine(l) && l.resource === w);
          if (existing >= 0) {
            const renewed = { ...(locks[existing] as LockRecord), expiresAt: now + leaseMs };
            locks[existing] = renewed;
            granted.push(renewed);
          } else {
            const rec: LockRecord = {
              resource: w,
              session: sessionId,
              token: nextToken++,
              acquiredAt: now,
              expiresAt: now + leaseMs,
              taskId,
              note,
            };
            locks.push(rec);
            granted.push(rec);
          }
        }
        next = { nextToken, locks, waiters: table.waiters.filter((w) => w.ticket !== ticket) };
      } else if (queue) {
        if (myTicket === null) {
          myTicket = table.nextToken;
          next = {
            ...table,
            nextToken: table.nextToken + 1,
            waiters: [
              ...table.waiters,
              {
                ticket: myTicket,
                session: sessionId,
                resources: wanted,
                expiresAt: now + Math.max(leaseMs, 5_000),
              },
            ],
          };
        } else {
          const w = table.waiters.find((x) => x.ticket === myTicket);
          if (w && w.expiresAt - now > Math.max(leaseMs, 5_000) / 2)
            return { granted: null, ticket: myTicket, blocker };
          const others = table.waiters.filter((x) => x.ticket !== myTicket);
          next = {
            ...table,
            waiters: [
              ...others,
              {
                ticket: myTicket,
                session: sessionId,
                resources: wanted,
                expiresAt: now + Math.max(leaseMs, 5_000),
              },
            ].sort((a, b) => a.ticket - b.ticket),
          };
        }
      } else {
        return { granted: null, ticket: null, blocker: blocker ?? null };
      }
      if (await this.store.writeRegister('locks', cur?.version ?? 0, next)) {
        if (granted) return { granted, ticket: null, blocker: null };
        return { granted: null, ticket: myTicket, blocker };
      }
    }
    throw new FlowLoomError(ErrorCode.CONFLICT, 'the lock table kept changing under contention', {
      hint: 'try again',
    });
  }

  /** The lock table without locks and waiters of dead or lapsed holders. */
  private async pruned(table: LockTable): Promise<LockTable> {
    const now = this.now();
    const alive = new Map<string, boolean>();
    const check = async (id: string) => {
      let v = alive.get(id);
      if (v === undefined) {
        const s = await this.store.getSession(id);
        v = !this.isProvablyDead(s);
        alive.set(id, v);
      }
      return v;
    };
    const locks: LockRecord[] = [];
    for (const l of table.locks) if (l.expiresAt > now && (await check(l.session))) locks.push(l);
    const waiters = [];
    for (const w of table.waiters) if (w.expiresAt > now && (await check(w.session))) waiters.push(w);
    return { nextToken: table.nextToken, locks, waiters };
  }

  private async dropWaiter(ticket: number): Promise<void> {
    for (let i = 0; i < MAX_CAS_RETRIES; i++) {
      const cur = await this.store.readRegister<LockTable>('locks');
      if (!cur?.value.waiters.some((w) => w.ticket === ticket)) return;
      if (
        await this.store.writeRegister('locks', cur.version, {
          ...cur.value,
          waiters: cur.value.waiters.filter((w) => w.ticket !== ticket),
        })
      )
        return;
    }
  }

  /** Frees locks whose holder died or whose lease ran out; returns how many. */
  private async pruneLocks(): Promise<number> {
    for (let i = 0; i < MAX_CAS_RETRIES; i++) {
      const cur = await this.store.readRegister<LockTable>('locks');
      if (!cur) return 0;
      const table = await this.pruned(cur.value);
      const freed = cur.value.locks.filter((l) => !table.locks.includes(l));
      if (freed.length === 0 && table.waiters.length === cur.value.waiters.length) return 0;
      if (await this.store.writeRegister('locks', cur.version, table)) {
        for (const l of freed) {
          await this.emit({
            type: 'lock.freed',
            session: l.session,
            text: `${l.resource} freed: holder ${l.session} is gone or its lease lapsed`,
            data: { resource: l.resource, token: l.token },
          });
        }
        return freed.length;
      }
    }
    return 0;
  }

  /**
   * Releases locks held by a session: all of them, those of one task, or the named resources (each
   * must be held, optionally under a given fencing token).
   */
  async releaseLocks(
    sessionId: string,
    which: { resources?: string[] | undefined; taskId?: string | undefined; token?: number | undefined },
  ): Promise<LockRecord[]> {
    const names = which.resources?.map((r) => normalizeResource(r));
    for (let i = 0; i < MAX_CAS_RETRIES; i++) {
      const cur = await this.store.readRegister<LockTable>('locks');
      const table = cur?.value ?? emptyLockTable();
      const match = (l: LockRecord) =>
        l.session === sessionId &&
        (which.taskId === undefined || l.taskId === which.taskId) &&
        (names === undefined || names.includes(l.resource)) &&
        (which.token === undefined || l.token === which.token);
      const released = table.locks.filter(match);
      if (names) {
        const missing = names.filter((n) => !released.some((l) => l.resource === n));
        if (missing.length) {
          throw new FlowLoomError(
            ErrorCode.LEASE_EXPIRED,
            `${sessionId} does not hold ${missing.join(', ')}${which.token !== undefined ? ` under token ${which.token}` : ''}`,
            {
              hint: 'the lock lapsed, was freed or was never taken; see `flowloom lock list`',
            },
          );
        }
      }
      if (released.length === 0) return [];
      if (!cur) return [];
      if (
        await this.store.writeRegister('locks', cur.version, {
          ...table,
          locks: table.locks.filter((l) => !match(l)),
        })
      ) {
        for (const l of released) {
          await this.emit({
            type: 'lock.released',
            session: sessionId,
            task: l.taskId,
            text: `${sessionId} released ${l.resource}`,
            data: { resource: l.resource, token: l.token },
          });
        }
        return released;
      }
    }
    throw new FlowLoomError(ErrorCode.CONFLICT, 'the lock table kept changing under contention', {
      hint: 'try again',
    });
  }

  /** Extends every lock the session holds that is past half its lease. */
  async renewLocks(sessionId: string): Promise<void> {
    for (let i = 0; i < MAX_CAS_RETRIES; i++) {
      const cur = await this.store.readRegister<LockTable>('locks');
      if (!cur) return;
      const now = this.now();
      const due = cur.value.locks.some(
        (l) => l.session === sessionId && l.expiresAt - now < this.config.lockLeaseMs / 2,
      );
      if (!due) return;
      const locks = cur.value.locks.map((l) =>
        l.session === sessionId && l.expiresAt > now ? { ...l, expiresAt: now + this.config.lockLeaseMs } : l,
      );
      if (await this.store.writeRegister('locks', cur.version, { ...cur.value, locks })) return;
    }
  }

  /** Live locks and waiters. */
  async listLocks(): Promise<LockTable> {
    const cur = await this.store.readRegister<LockTable>('locks');
    return this.pruned(cur?.value ?? emptyLockTable());
  }

  // ============================================================ status

  /** The aggregated snapshot, rebuilt from the store. */
  async status(): Promise<StatusSnapshot> {
    // Status is a read: on a read-only directory it still answers, without reaping.
    await this.reapIfDue().catch((e: unknown) => {
      if (!(e instanceof FlowLoomError && e.code === ErrorCode.STORE_READ_ONLY)) throw e;
    });
    const now = this.now();
    const [master, sessions, active, counts, pending, locks] = await Promise.all([
      this.master(),
      this.store.listSessions(),
      this.store.listActive(),
      this.store.countTasks(),
      this.store.listPending(),
      this.listLocks(),
    ]);
    const byHolder = new Map<string, ActiveTask>();
    for (const a of active) byHolder.set(a.lease.session, a);
    const rows: SessionStatus[] = sessions.map((s) => {
      const alive = this.isAlive(s);
      const held = byHolder.get(s.id);
      let status: AgentStatus = s.status;
      if (!alive) status = 'offline';
      else if (s.status === 'idle' && held) status = 'busy';
      else if (s.status === 'busy' && !held && s.currentTask === null) status = 'idle';
      return {
        id: s.id,
        role: master.sessionId === s.id ? 'master' : 'agent',
        mode: s.mode,
        status,
        alive,
        capabilities: s.capabilities,
        resources: s.resources,
        currentTask: held ? { id: held.task.id, title: held.task.title, progress: held.task.progress } : null,
        report: s.report,
        heartbeatAgeMs: Math.max(0, now - s.heartbeatAt),
        rank: s.rank,
        pid: s.process?.pid ?? null,
        meta: s.meta,
      };
    });
    const pendingByCapability: Record<string, number> = {};
    for (const t of pending)
      for (const n of t.needs.length ? t.needs : ['any'])
        pendingByCapability[n] = (pendingByCapability[n] ?? 0) + 1;
    const masterSession = sessions.find((s) => s.id === master.sessionId);
    const snapshot: StatusSnapshot = {
      generatedAt: now,
      store: { kind: this.store.kind, location: this.store.location },
      master:
        master.sessionId === null && master.epoch === 0
          ? null
          : { ...master, alive: masterSession ? this.isAlive(masterSession) : false },
      sessions: rows,
      queue: { counts, pendingByCapability },
      active: active.map((a) => ({
        id: a.task.id,
        title: a.task.title,
        session: a.lease.session,
        progress: a.task.progress,
        leaseRemainingMs: a.lease.renewedAt + a.lease.leaseMs - now,
      })),
      locks: locks.locks.map((l) => ({ ...l, ageMs: now - l.acquiredAt })),
      lines: [],
    };
    snapshot.lines = describeStatus(snapshot);
    return snapshot;
  }
}

/** Sentences for humans from a snapshot. */
export function describeStatus(s: StatusSnapshot): string[] {
  const lines: string[] = [];
  if (s.master?.sessionId) {
    lines.push(
      `${s.master.sessionId} is master (epoch ${s.master.epoch}, ${describeReason(s.master)})${s.master.alive ? '' : ' but is not responding'}.`,
    );
  } else {
    lines.push('No master: no session is alive.');
  }
  const agents = s.sessions.filter((x) => x.role === 'agent');
  const live = agents.filter((a) => a.alive);
  for (const a of agents) {
    if (a.status === 'offline')
      lines.push(`${a.id} is offline (no heartbeat for ${Math.round(a.heartbeatAgeMs / 1000)} s).`);
    else if (a.status === 'waiting')
      lines.push(`${a.id} is waiting for a human${a.report ? `: ${a.report.text}` : ''}.`);
    else if (a.status === 'error') lines.push(`${a.id} is in error${a.report ? `: ${a.report.text}` : ''}.`);
    else if (a.report && (a.currentTask || a.report.taskId)) lines.push(`${a.id} reports: ${a.report.text}`);
    else if (a.currentTask) lines.push(`${a.id} is working on ${a.currentTask.id} "${a.currentTask.title}".`);
  }
  if (live.length > 0 && live.every((a) => a.status === 'idle')) lines.push('All agents idle.');
  if (agents.length === 0) lines.push('No agents.');
  const c = s.queue.counts;
  lines.push(
    `Queue: ${c.pending} pending, ${c.active} active, ${c.completed} completed, ${c.failed} failed, ${c.cancelled} cancelled.`,
  );
  if (s.locks.length) lines.push(`Locks: ${s.locks.map((l) => `${l.resource} (${l.session})`).join(', ')}.`);
  return lines;
}

function describeReason(m: MasterRecord): string {
  switch (m.reason) {
    case 'join':
      return m.previous ? `took over from ${m.previous} by joining last` : 'joined';
    case 'claim':
      return 'claimed explicitly';
    case 'handoff':
      return `handed over by ${m.previous}`;
    case 'failover':
      return `elected after ${m.previous} died`;
    case 'step-down':
      return `${m.previous} stepped down`;
    case 'leave':
      return `${m.previous} left`;
    case 'vacant':
      return 'vacant';
  }
}

function vacantMaster(now: number): MasterRecord {
  return {
    epoch: 0,
    sessionId: null,
    explicit: false,
    since: now,
    reason: 'vacant',
    previous: null,
    handoff: null,
  };
}

function emptyHandoff(from: string, to: string, at: number): HandoffNote {
  return { from, to, note: '', summary: '', at };
}

function emptyLockTable(): LockTable {
  return { nextToken: 1, locks: [], waiters: [] };
}

function stripView(s: SessionView): SessionRecord {
  const { heartbeatAt: _h, ...rec } = s;
  return rec;
}

function attemptOf(
  ref: LeaseRef,
  t: TaskRecord,
  now: number,
  outcome: AttemptOutcome,
  reason: string,
  claimedAt?: number,
): Attempt {
  void t;
  return {
    session: ref.session,
    token: ref.token,
    claimedAt: claimedAt ?? now,
    endedAt: now,
    outcome,
    reason: reason.slice(0, 2000),
  };
}

function leaseExpired(taskId: string, session: string, why: string): FlowLoomError {
  return new FlowLoomError(ErrorCode.LEASE_EXPIRED, `${session} does not hold task ${taskId}: ${why}`, {
    hint: 'claim a task again with `flowloom task claim`',
  });
}

const WORD_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

function normalizeWords(words: string[], what: string): string[] {
  const out = new Set<string>();
  for (const raw of words) {
    const w = raw.trim().toLowerCase();
    if (!w) continue;
    if (!WORD_RE.test(w))
      throw invalidInput(
        `${what} "${raw}" is not valid`,
        'use lowercase letters, digits, ".", "_" or "-" (e.g. test-runner)',
      );
    out.add(w);
  }
  return [...out];
}
