/**
 * FlowLoom domain types.
 *
 * Glossary
 * - session:   one participant (a Claude Code session, a headless agent process, a CLI user) that joined.
 * - master:    the one session that talks with the user and delegates; all others are agents.
 * - mode:      what a session asked for: `auto` (last joined becomes master), `master` (explicit claim,
 *              beats auto), `agent` (never master unless nobody else is alive).
 * - rank:      an atomically assigned sequence number, bumped on join and on mode change; "last joined"
 *              means "highest rank". Never a wall-clock time.
 * - epoch:     grows by one on every change of master; writes carrying an older epoch are refused.
 * - lease:     a claim on a task or a lock that lapses unless renewed; the holder is fenced out after.
 * - token:     identifies one lease (one attempt at a task, one holding of a lock). Lock tokens are
 *              strictly increasing numbers (fencing tokens); task tokens are unique strings.
 * - alive:     a session is alive while its heartbeat is fresher than its TTL and, when it is tied to a
 *              process on this machine, that exact process (pid + start time + boot id) still runs.
 * - event:     one line in the append-only log; every state change writes one.
 */

/** How a session takes part in the election. */
export type SessionMode = 'auto' | 'master' | 'agent';
export const SESSION_MODES: readonly SessionMode[] = ['auto', 'master', 'agent'];

/** What an agent says it is doing. `offline` is never stored: it is derived from liveness. */
export type AgentStatus = 'idle' | 'busy' | 'error' | 'waiting' | 'offline';
export type StoredAgentStatus = Exclude<AgentStatus, 'offline'>;
export const STORED_AGENT_STATUSES: readonly StoredAgentStatus[] = ['idle', 'busy', 'error', 'waiting'];

/** Identifies one process for provable-death checks. A bare pid is never enough: pids get reused. */
export interface ProcessIdentity {
  pid: number;
  /** Start time of the process in clock ticks since boot (from /proc/<pid>/stat), as a string. */
  startTime: string;
  /** /proc/sys/kernel/random/boot_id of the machine. */
  bootId: string;
  host: string;
}

/** A progress report or result line an agent pushed ("3 tests failing in auth module"). */
export interface Report {
  text: string;
  at: number;
  taskId: string | null;
  /** Optional completion ratio 0..1. */
  fraction?: number | null;
}

/** What a session registers. Written only by the session itself. */
export interface SessionRecord {
  id: string;
  mode: SessionMode;
  /** Atomically assigned join/mode-change sequence; highest rank = last joined. */
  rank: number;
  joinedAt: number;
  capabilities: string[];
  resources: string[];
  status: StoredAgentStatus;
  currentTask: string | null;
  report: Report | null;
  process: ProcessIdentity | null;
  /** Heartbeat TTL: the session is offline when its last heartbeat is older. */
  ttlMs: number;
  /** Free-form labels (executor, cwd, Claude Code session id, ...). */
  meta: Record<string, string>;
}

/** A session record as read back, with its last heartbeat. */
export interface SessionView extends SessionRecord {
  heartbeatAt: number;
}

export type MasterChangeReason = 'join' | 'claim' | 'handoff' | 'failover' | 'step-down' | 'leave' | 'vacant';

/** Context passed from one master to the next. */
export interface HandoffNote {
  from: string | null;
  to: string;
  /** Free text from the previous master (may be empty). */
  note: string;
  /** Generated summary of open tasks, agents and locks at the time of the handoff. */
  summary: string;
  at: number;
}

/** The master register (`master.lock`). Exactly one value per epoch. */
export interface MasterRecord {
  epoch: number;
  sessionId: string | null;
  /** True when the master explicitly claimed the role (`mode master`). */
  explicit: boolean;
  since: number;
  reason: MasterChangeReason;
  previous: string | null;
  handoff: HandoffNote | null;
}

export type TaskState = 'pending' | 'active' | 'completed' | 'failed' | 'cancelled';
export const TASK_STATES: readonly TaskState[] = ['pending', 'active', 'completed', 'failed', 'cancelled'];

export type AttemptOutcome =
  | 'completed'
  | 'failed'
  | 'lapsed'
  | 'holder-died'
  | 'timed-out'
  | 'cancelled'
  | 'released';

/** One claim of a task and how it ended. Every attempt's reason is kept. */
export interface Attempt {
  session: string;
  token: string;
  claimedAt: number;
  endedAt: number;
  outcome: AttemptOutcome;
  reason: string;
}

export interface TaskResult {
  summary: string;
  /** Structured result (test counts, exit code, ...). */
  data?: Record<string, unknown> | undefined;
}

/** A task as stored. The state is not a field: it is where the task lives (pending, active, ...). */
export interface TaskRecord {
  id: string;
  title: string;
  prompt: string;
  /** Capabilities a claimer must have, all of them. */
  needs: string[];
  /** Higher runs first. */
  priority: number;
  /** Ids of tasks that must be completed first. */
  after: string[];
  /** Shell command for shell tasks. */
  command: string | null;
  /** Resources locked while the task runs. */
  resources: string[];
  maxAttempts: number;
  /** Longest a single attempt may run, or null. */
  timeoutMs: number | null;
  /** Only this session may claim it. */
  to: string | null;
  createdAt: number;
  createdBy: string | null;
  /** Sort key for age order: time-based, unique, fixed at creation. */
  orderKey: string;
  attempts: Attempt[];
  result: TaskResult | null;
  progress: Report | null;
  /** Why the task is in its terminal state (failed or cancelled). */
  finalReason: string | null;
  finishedAt: number | null;
}

/** The lease on an active task. */
export interface TaskLease {
  session: string;
  token: string;
  claimedAt: number;
  renewedAt: number;
  leaseMs: number;
}

export interface ActiveTask {
  task: TaskRecord;
  lease: TaskLease;
}

/** A held resource lock. */
export interface LockRecord {
  resource: string;
  session: string;
  /** Fencing token: strictly increasing across all locks. */
  token: number;
  acquiredAt: number;
  /** Lease end; renewed by the holder. */
  expiresAt: number;
  /** Task whose run holds this lock, if any. */
  taskId: string | null;
  note: string;
}

/** Someone queued for a lock (`--wait`): served in ticket order among conflicting requests. */
export interface LockWaiter {
  ticket: number;
  session: string;
  resources: string[];
  expiresAt: number;
}

/** The lock table register. */
export interface LockTable {
  nextToken: number;
  locks: LockRecord[];
  waiters: LockWaiter[];
}

/** Counters register. */
export interface SeqRecord {
  rank: number;
}

export type EventType =
  | 'session.joined'
  | 'session.left'
  | 'session.mode'
  | 'session.status'
  | 'session.offline'
  | 'master.changed'
  | 'task.added'
  | 'task.claimed'
  | 'task.progress'
  | 'task.completed'
  | 'task.failed'
  | 'task.retry'
  | 'task.cancelled'
  | 'lock.acquired'
  | 'lock.released'
  | 'lock.freed'
  | 'store.problem'
  | 'tasks.compacted';

export interface EventInput {
  type: EventType;
  session?: string | null;
  task?: string | null;
  /** Human sentence, e.g. "agent-1 claimed t-12 (run tests)". */
  text: string;
  data?: Record<string, unknown>;
}

export interface StoredEvent extends EventInput {
  at: number;
  /** Opaque position in the log; pass it back to read what came after. */
  cursor: string;
}
