import type { Clock } from '../core/clock.ts';
import type {
  ActiveTask,
  EventInput,
  Report,
  SessionRecord,
  SessionView,
  StoredEvent,
  TaskRecord,
  TaskState,
} from '../core/types.ts';

/**
 * The Store is the only place that touches a backend. It offers atomic mechanics; the rules (who is
 * master, which task to claim, what conflicts) live once in the Coordinator.
 *
 * Contract (every backend passes test/storeContract.ts):
 * - Registers are compare-and-set cells. `writeRegister(name, v, value)` MUST succeed for exactly one
 *   writer per (name, v): the first to write version v + 1. Version 0 means "absent".
 * - Sessions are written only by their owner (`putSession`); `touchSession` MUST update the heartbeat
 *   time without rewriting the record.
 * - A task lives in exactly one state. `claimTask` MUST move a pending task to active for exactly one
 *   caller; losers get null. `finishTask` MUST succeed only while the given lease (session + token) is
 *   the task's current lease, and exactly once per lease: this is the fence that stops a holder whose
 *   lease lapsed. `movePending` MUST succeed only while the task is still pending.
 * - Everything written MUST be whole: a reader never sees a half-written record.
 * - Damaged records found while reading MUST be set aside and reported through `onProblem`, never thrown
 *   at the caller and never deleted silently.
 * - `watch` SHOULD wake the callback soon after a matching change made by any process; callers also poll,
 *   so a backend without notifications is still correct, only slower.
 */
export interface Store {
  readonly kind: 'fs' | 'memory' | 'postgres' | 'git';
  /** Human-readable location (a directory, a URL without credentials). */
  readonly location: string;
  readonly clock: Clock;

  /** Creates what is missing (directories, schema); idempotent. */
  open(opts?: { create?: boolean }): Promise<void>;
  close(): Promise<void>;
  /** Called with damaged records that were set aside. */
  onProblem: ((problem: StoreProblem) => void) | null;

  readRegister<T>(name: RegisterName): Promise<Versioned<T> | null>;
  /** Compare-and-set: writes `value` as version `expectedVersion + 1`; false when someone else did first. */
  writeRegister<T>(name: RegisterName, expectedVersion: number, value: T): Promise<boolean>;

  putSession(rec: SessionRecord): Promise<void>;
  /** Refreshes the heartbeat; false when the session does not exist. */
  touchSession(id: string): Promise<boolean>;
  getSession(id: string): Promise<SessionView | null>;
  listSessions(): Promise<SessionView[]>;
  deleteSession(id: string): Promise<void>;

  /** Adds a pending task. With `checkUnique`, fails with INVALID_INPUT if the id exists anywhere. */
  addTask(task: TaskRecord, opts?: { checkUnique?: boolean }): Promise<void>;
  /** Pending tasks, best first: priority descending, then orderKey ascending. */
  listPending(): Promise<TaskRecord[]>;
  /** Moves one pending task to active under a new lease; null if someone else got it first. */
  claimTask(task: TaskRecord, lease: NewLease): Promise<ActiveTask | null>;
  listActive(): Promise<ActiveTask[]>;
  /** Extends a lease; false when the lease is no longer current (fenced). */
  renewLease(ref: LeaseRef): Promise<boolean>;
  /** Records progress on an active task; false when the lease is no longer current. */
  setProgress(ref: LeaseRef, progress: Report): Promise<boolean>;
  /**
   * Ends the current attempt: moves the active task to `to` with `update` applied. Returns the stored
   * record, or null when (session, token) is no longer the task's lease.
   */
  finishTask(
    ref: LeaseRef,
    to: Exclude<TaskState, 'active'>,
    update: (task: TaskRecord) => TaskRecord,
  ): Promise<TaskRecord | null>;
  /** Moves a pending task to a terminal state (cancel, dependency failed); null if it is no longer pending. */
  movePending(
    id: string,
    to: 'failed' | 'cancelled',
    update: (task: TaskRecord) => TaskRecord,
  ): Promise<TaskRecord | null>;
  getTask(id: string): Promise<TaskLookup | null>;
  /** Tasks in one state, newest first for terminal states, best first for pending. */
  listTasks(state: TaskState, opts?: { limit?: number }): Promise<TaskRecord[]>;
  countTasks(): Promise<Record<TaskState, number>>;
  /** States of several tasks at once (dependency checks); unknown ids map to null, archived ones to 'completed'. */
  taskStates(ids: string[]): Promise<Map<string, TaskState | null>>;
  /** Archives finished tasks beyond `keep` per terminal state; returns how many were archived. */
  compact(opts: { keep: number }): Promise<number>;

  appendEvent(event: EventInput): Promise<void>;
  /** Events after `cursor` (from the start of the retained log when null), oldest first. */
  readEvents(cursor: string | null, limit: number): Promise<{ events: StoredEvent[]; cursor: string | null }>;
  /** The cursor just past the newest event (to follow only what comes next). */
  tailCursor(): Promise<string | null>;

  /** Saves the aggregated status snapshot where humans and tools look for it (optional). */
  saveStatus?(snapshot: unknown): Promise<void>;

  /** Calls `onChange` soon after changes to the given area; returns an unsubscribe function. */
  watch(area: WatchArea, onChange: () => void): () => void;
}

export type RegisterName = 'master' | 'seq' | 'locks' | 'archive';
export type WatchArea = 'tasks' | 'locks' | 'master' | 'sessions' | 'events';

export interface Versioned<T> {
  version: number;
  value: T;
}

export interface NewLease {
  session: string;
  token: string;
  leaseMs: number;
}

export interface LeaseRef {
  id: string;
  session: string;
  token: string;
}

export interface TaskLookup {
  state: TaskState;
  task: TaskRecord;
  lease: ActiveTask['lease'] | null;
}

export interface StoreProblem {
  /** What was damaged (a path, a row). */
  what: string;
  reason: string;
  /** Where it was set aside, if it was moved. */
  movedTo: string | null;
}
