import { EventEmitter } from 'node:events';
import { type Clock, systemClock } from '../core/clock.ts';
import { invalidInput } from '../core/errors.ts';
import type {
  ActiveTask,
  EventInput,
  Report,
  SessionRecord,
  SessionView,
  StoredEvent,
  TaskLease,
  TaskRecord,
  TaskState,
} from '../core/types.ts';
import type {
  LeaseRef,
  NewLease,
  RegisterName,
  Store,
  StoreProblem,
  TaskLookup,
  Versioned,
  WatchArea,
} from './store.ts';

/** Events kept before the oldest are dropped (the file backend rotates its log the same way). */
const DEFAULT_MAX_EVENTS = 100_000;
const CURSOR_RE = /^\d{1,15}$/;

interface TaskEntry {
  state: TaskState;
  task: TaskRecord;
  lease: TaskLease | null;
  /** Store-clock time of the move into a terminal state; orders finished tasks newest first. */
  finishedAt: number;
  /** Tie-breaker for `finishedAt`: a counter bumped on every finish. */
  finishSeq: number;
}

/**
 * The in-process reference implementation of the Store contract: same semantics as FsStore, no I/O.
 * For unit tests (with a ManualClock) and for embedding FlowLoom in one process.
 *
 * Every method does its whole read-modify-write before its first `await` (there is none), so each
 * call is atomic with respect to every other call: that is what makes compare-and-set, claim and
 * finish exclusive here. Records are deep-copied in and out, so a caller can never change stored
 * state except through the Store methods.
 */
export class MemoryStore implements Store {
  readonly kind = 'memory' as const;
  readonly location = 'memory';
  readonly clock: Clock;
  onProblem: ((problem: StoreProblem) => void) | null = null;

  private readonly maxEvents: number;
  private readonly registers = new Map<RegisterName, Versioned<unknown>>();
  private readonly sessions = new Map<string, { rec: SessionRecord; heartbeatAt: number }>();
  private readonly tasks = new Map<string, TaskEntry>();
  /** Compacted completed tasks: still found by id, counted as completed, no longer listed. */
  private readonly archived = new Map<string, TaskRecord>();
  private events: (StoredEvent & { seq: number })[] = [];
  private nextEventSeq = 1;
  private finishCounter = 0;
  private readonly emitter = new EventEmitter();

  constructor(opts: { clock?: Clock; maxEvents?: number } = {}) {
    this.clock = opts.clock ?? systemClock;
    this.maxEvents = Math.max(1, opts.maxEvents ?? DEFAULT_MAX_EVENTS);
    // Every waiting claimer or lock waiter subscribes; there is no leak to warn about.
    this.emitter.setMaxListeners(0);
  }

  async open(_opts: { create?: boolean } = {}): Promise<void> {
    // Nothing to create: the state lives as long as this object.
  }

  async close(): Promise<void> {
    this.emitter.removeAllListeners();
  }

  // ---------------------------------------------------------------- registers

  async readRegister<T>(name: RegisterName): Promise<Versioned<T> | null> {
    const cur = this.registers.get(name);
    return cur ? { version: cur.version, value: copy(cur.value) as T } : null;
  }

  async writeRegister<T>(name: RegisterName, expectedVersion: number, value: T): Promise<boolean> {
    const version = this.registers.get(name)?.version ?? 0;
    if (version !== expectedVersion) return false;
    this.registers.set(name, { version: version + 1, value: copy(value) });
    if (name === 'master' || name === 'locks') this.changed(name);
    return true;
  }

  // ---------------------------------------------------------------- sessions

  async putSession(rec: SessionRecord): Promise<void> {
    this.sessions.set(rec.id, { rec: copy(rec), heartbeatAt: this.clock.now() });
    this.changed('sessions');
  }

  async touchSession(id: string): Promise<boolean> {
    const s = this.sessions.get(id);
    if (!s) return false;
    s.heartbeatAt = this.clock.now();
    this.changed('sessions');
    return true;
  }

  async getSession(id: string): Promise<SessionView | null> {
    const s = this.sessions.get(id);
    return s ? { ...copy(s.rec), heartbeatAt: s.heartbeatAt } : null;
  }

  async listSessions(): Promise<SessionView[]> {
    return [...this.sessions.values()]
      .map((s) => ({ ...copy(s.rec), heartbeatAt: s.heartbeatAt }))
      .sort((a, b) => a.rank - b.rank);
  }

  async deleteSession(id: string): Promise<void> {
    if (this.sessions.delete(id)) this.changed('sessions');
  }

  // ---------------------------------------------------------------- tasks

  async addTask(task: TaskRecord, _opts: { checkUnique?: boolean } = {}): Promise<void> {
    // A map cannot hold two tasks with one id, so the check is always on (it is free here).
    if (this.tasks.has(task.id) || this.archived.has(task.id)) {
      throw invalidInput(`a task with id "${task.id}" already exists`, 'choose another --id or omit it');
    }
    this.tasks.set(task.id, { state: 'pending', task: copy(task), lease: null, finishedAt: 0, finishSeq: 0 });
    this.changed('tasks');
  }

  async listPending(): Promise<TaskRecord[]> {
    return this.pendingEntries().map((e) => copy(e.task));
  }

  async claimTask(task: TaskRecord, lease: NewLease): Promise<ActiveTask | null> {
    const e = this.tasks.get(task.id);
    if (e?.state !== 'pending') return null;
    const now = this.clock.now();
    e.state = 'active';
    e.lease = {
      session: lease.session,
      token: lease.token,
      claimedAt: now,
      renewedAt: now,
      leaseMs: lease.leaseMs,
    };
    this.changed('tasks');
    // The stored content, not the caller's copy: it may predate a requeue that added an attempt.
    return { task: copy(e.task), lease: { ...e.lease } };
  }

  async listActive(): Promise<ActiveTask[]> {
    const out: ActiveTask[] = [];
    for (const e of this.tasks.values()) {
      if (e.state === 'active' && e.lease) out.push({ task: copy(e.task), lease: { ...e.lease } });
    }
    return out;
  }

  async renewLease(ref: LeaseRef): Promise<boolean> {
    const e = this.current(ref);
    if (!e?.lease) return false;
    e.lease.renewedAt = this.clock.now();
    return true;
  }

  async setProgress(ref: LeaseRef, progress: Report): Promise<boolean> {
    const e = this.current(ref);
    if (!e?.lease) return false;
    e.lease.renewedAt = this.clock.now();
    e.task.progress = copy(progress);
    return true;
  }

  async finishTask(
    ref: LeaseRef,
    to: Exclude<TaskState, 'active'>,
    update: (task: TaskRecord) => TaskRecord,
  ): Promise<TaskRecord | null> {
    const e = this.current(ref);
    if (!e) return null;
    // `update` runs before anything changes: if it throws, the task stays active under its lease.
    const next = copy(update(copy(e.task)));
    this.move(e, to, next);
    return copy(next);
  }

  async movePending(
    id: string,
    to: 'failed' | 'cancelled',
    update: (task: TaskRecord) => TaskRecord,
  ): Promise<TaskRecord | null> {
    const e = this.tasks.get(id);
    if (e?.state !== 'pending') return null;
    const next = copy(update(copy(e.task)));
    this.move(e, to, next);
    return copy(next);
  }

  async getTask(id: string): Promise<TaskLookup | null> {
    const e = this.tasks.get(id);
    if (e) return { state: e.state, task: copy(e.task), lease: e.lease ? { ...e.lease } : null };
    const archived = this.archived.get(id);
    return archived ? { state: 'completed', task: copy(archived), lease: null } : null;
  }

  async listTasks(state: TaskState, opts: { limit?: number } = {}): Promise<TaskRecord[]> {
    const limit = opts.limit ?? Number.POSITIVE_INFINITY;
    let entries: TaskEntry[];
    if (state === 'pending') entries = this.pendingEntries();
    else if (state === 'active') entries = [...this.tasks.values()].filter((e) => e.state === 'active');
    else entries = this.finishedEntries(state).reverse();
    return entries.slice(0, limit).map((e) => copy(e.task));
  }

  async countTasks(): Promise<Record<TaskState, number>> {
    const counts: Record<TaskState, number> = {
      pending: 0,
      active: 0,
      completed: 0,
      failed: 0,
      cancelled: 0,
    };
    for (const e of this.tasks.values()) counts[e.state]++;
    counts.completed += this.archived.size;
    return counts;
  }

  async taskStates(ids: string[]): Promise<Map<string, TaskState | null>> {
    const out = new Map<string, TaskState | null>();
    for (const id of ids)
      out.set(id, this.tasks.get(id)?.state ?? (this.archived.has(id) ? 'completed' : null));
    return out;
  }

  async compact(opts: { keep: number }): Promise<number> {
    const completed = this.finishedEntries('completed');
    const victims = completed.slice(0, Math.max(0, completed.length - Math.max(0, opts.keep)));
    for (const e of victims) {
      this.tasks.delete(e.task.id);
      this.archived.set(e.task.id, e.task);
    }
    return victims.length;
  }

  // ---------------------------------------------------------------- events

  async appendEvent(event: EventInput): Promise<void> {
    const seq = this.nextEventSeq++;
    const stored: StoredEvent & { seq: number } = {
      ...eventFields(event),
      at: this.clock.now(),
      cursor: String(seq),
      seq,
    };
    this.events.push(stored);
    if (this.events.length > this.maxEvents)
      this.events = this.events.slice(this.events.length - this.maxEvents);
    this.changed('events');
  }

  async readEvents(
    cursor: string | null,
    limit: number,
  ): Promise<{ events: StoredEvent[]; cursor: string | null }> {
    if (cursor !== null && (typeof cursor !== 'string' || !CURSOR_RE.test(cursor))) {
      throw invalidInput(
        `cursor "${String(cursor)}" is not a FlowLoom event cursor: pass the cursor printed by a previous read`,
      );
    }
    if (!Number.isInteger(limit) || limit < 0) {
      throw invalidInput(`limit ${limit} is not a valid number of events: pass a whole number >= 0`);
    }
    const after = cursor === null ? 0 : Number(cursor);
    const oldest = this.events[0]?.seq;
    if (oldest !== undefined && after < oldest - 1) {
      this.onProblem?.({
        what: `events after cursor ${cursor}`,
        reason: `events were lost: the log keeps the newest ${this.maxEvents}; continuing from the oldest kept`,
        movedTo: null,
      });
    }
    const events: StoredEvent[] = [];
    let next = cursor;
    // Sequence numbers are dense, so the first event after `after` is found by arithmetic.
    for (
      let i = Math.max(0, after - (oldest ?? 0) + 1);
      i < this.events.length && events.length < limit;
      i++
    ) {
      const { seq: _seq, ...e } = this.events[i]!;
      events.push(copy(e));
      next = e.cursor;
    }
    return { events, cursor: next };
  }

  async tailCursor(): Promise<string | null> {
    return this.events.at(-1)?.cursor ?? null;
  }

  // ---------------------------------------------------------------- watch

  watch(area: WatchArea, onChange: () => void): () => void {
    this.emitter.on(area, onChange);
    return () => {
      this.emitter.off(area, onChange);
    };
  }

  // ---------------------------------------------------------------- helpers

  /** The active entry whose current lease is (session, token), or null: the fence. */
  private current(ref: LeaseRef): TaskEntry | null {
    const e = this.tasks.get(ref.id);
    if (e?.state !== 'active' || !e.lease) return null;
    return e.lease.session === ref.session && e.lease.token === ref.token ? e : null;
  }

  private move(e: TaskEntry, to: Exclude<TaskState, 'active'>, next: TaskRecord): void {
    e.state = to;
    e.task = next;
    e.lease = null;
    e.finishedAt = this.clock.now();
    e.finishSeq = ++this.finishCounter;
    this.changed('tasks');
  }

  /** Best first: priority descending, then orderKey (age), then id. */
  private pendingEntries(): TaskEntry[] {
    return [...this.tasks.values()]
      .filter((e) => e.state === 'pending')
      .sort(
        (a, b) =>
          b.task.priority - a.task.priority ||
          compareStrings(a.task.orderKey, b.task.orderKey) ||
          compareStrings(a.task.id, b.task.id),
      );
  }

  /** Tasks in a terminal state, oldest finish first. */
  private finishedEntries(state: TaskState): TaskEntry[] {
    return [...this.tasks.values()]
      .filter((e) => e.state === state)
      .sort((a, b) => a.finishedAt - b.finishedAt || a.finishSeq - b.finishSeq);
  }

  /** Wakes watchers after the change is complete, asynchronously, as file notifications do. */
  private changed(area: WatchArea): void {
    if (this.emitter.listenerCount(area) === 0) return;
    queueMicrotask(() => this.emitter.emit(area));
  }
}

function copy<T>(value: T): T {
  return structuredClone(value);
}

/** The fields the file backend keeps, as it keeps them (JSON: `undefined` dropped, bad data replaced). */
function eventFields(e: EventInput): EventInput {
  const { type, session, task, text, data } = e;
  try {
    return JSON.parse(JSON.stringify({ type, session, task, text, data })) as EventInput;
  } catch (err) {
    // Circular or BigInt data must not stop the state change this event records.
    const reason = err instanceof Error ? err.message : String(err);
    return JSON.parse(JSON.stringify({ type, session, task, text, data: { unserializable: true, reason } }));
  }
}

function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
