/**
 * FlowLoom's public API. Explicit named exports only: every export here is public API.
 */

export type {
  AddTaskInput,
  ClaimOptions,
  CoordinatorConfig,
  CoordinatorOptions,
  JoinInput,
  JoinResult,
  LockOptions,
  ProcessProbe,
  Role,
  SessionStatus,
  StatusSnapshot,
  WriteContext,
} from './coordinator.ts';
export { Coordinator, DEFAULT_CONFIG, describeStatus } from './coordinator.ts';
export type { Clock } from './core/clock.ts';
export { ManualClock, systemClock } from './core/clock.ts';
export { ErrorCode, FlowLoomError, isFlowLoomError } from './core/errors.ts';
export { normalizeResource, resourcesOverlap } from './core/resourcePattern.ts';
export type {
  ActiveTask,
  AgentStatus,
  EventInput,
  LockRecord,
  MasterRecord,
  ProcessIdentity,
  SessionMode,
  SessionRecord,
  StoredEvent,
  TaskRecord,
  TaskState,
} from './core/types.ts';
export { currentProcessIdentity, probeProcess } from './platform/processIdentity.ts';
export { resolveStateDir } from './platform/stateDir.ts';
export { FsStore } from './store/fs/fsStore.ts';
export { MemoryStore } from './store/memoryStore.ts';
export type { Store } from './store/store.ts';
