/**
 * Every failure FlowLoom reports carries a stable `code`. Surfaces map codes to exit codes (CLI) or
 * `isError` results (MCP); messages are one line and say what was wrong and what to do.
 */
export const ErrorCode = {
  /** Bad flag, argument, id or file content supplied by the user. */
  INVALID_INPUT: 'INVALID_INPUT',
  /** The session is unknown (never joined, or left). */
  SESSION_NOT_FOUND: 'SESSION_NOT_FOUND',
  /** No task with that id. */
  TASK_NOT_FOUND: 'TASK_NOT_FOUND',
  /** The task is not in a state that allows the operation (e.g. done on a pending task). */
  TASK_STATE: 'TASK_STATE',
  /** The caller's lease on a task or lock lapsed or was taken over: fencing refused the write. */
  LEASE_EXPIRED: 'LEASE_EXPIRED',
  /** A master-only write came from a session that is not the master. */
  NOT_MASTER: 'NOT_MASTER',
  /** A write carried an epoch older than the current one. */
  STALE_EPOCH: 'STALE_EPOCH',
  /** A lock is held by someone else (non-waiting acquire). */
  LOCK_HELD: 'LOCK_HELD',
  /** Nothing to claim, or a wait ran out. */
  NOTHING_AVAILABLE: 'NOTHING_AVAILABLE',
  /** Waiting for a task or lock ran out of time. */
  TIMEOUT: 'TIMEOUT',
  /** The state directory does not exist. */
  NOT_INITIALIZED: 'NOT_INITIALIZED',
  /** The backend cannot be used (unreachable, read-only, network filesystem, ...). */
  STORE_UNAVAILABLE: 'STORE_UNAVAILABLE',
  /** The backend refused writes (read-only filesystem, permissions, disk full). */
  STORE_READ_ONLY: 'STORE_READ_ONLY',
  /** A compare-and-set kept losing under contention. */
  CONFLICT: 'CONFLICT',
  /** A bug: something that should not happen. */
  INTERNAL: 'INTERNAL',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** The one error class FlowLoom throws on purpose. `hint` says what to do about it. */
export class FlowLoomError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown> | undefined;
  constructor(
    code: ErrorCode,
    message: string,
    opts: { hint?: string; details?: Record<string, unknown>; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'FlowLoomError';
    this.code = code;
    this.hint = opts.hint;
    this.details = opts.details;
  }
  /** One line for humans: the message, then the hint. */
  oneLine(): string {
    return this.hint ? `${this.message}; ${this.hint}` : this.message;
  }
}

export function isFlowLoomError(e: unknown, code?: ErrorCode): e is FlowLoomError {
  return e instanceof FlowLoomError && (code === undefined || e.code === code);
}

/** Shorthand for the most common user error. */
export function invalidInput(message: string, hint?: string): FlowLoomError {
  return new FlowLoomError(ErrorCode.INVALID_INPUT, message, hint === undefined ? {} : { hint });
}
