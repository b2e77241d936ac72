/**
 * Schemas for records read back from a backend. Anything that does not parse is damaged or foreign:
 * the store sets it aside and reports it instead of trusting it.
 */
import * as z from 'zod/mini';
import type { LockTable, MasterRecord, SeqRecord, SessionRecord, TaskRecord } from '../core/types.ts';

const str = z.string();
const num = z.number();
const strArr = z.array(z.string());

const processIdentity = z.object({ pid: num, startTime: str, bootId: str, host: str });
const report = z.object({
  text: str,
  at: num,
  taskId: z.nullable(str),
  fraction: z.optional(z.nullable(num)),
});

export const sessionRecordSchema = z.object({
  id: str,
  mode: z.enum(['auto', 'master', 'agent']),
  rank: num,
  joinedAt: num,
  capabilities: strArr,
  resources: strArr,
  status: z.enum(['idle', 'busy', 'error', 'waiting']),
  currentTask: z.nullable(str),
  report: z.nullable(report),
  process: z.nullable(processIdentity),
  ttlMs: num,
  meta: z.record(z.string(), z.string()),
});

const handoff = z.object({ from: z.nullable(str), to: str, note: str, summary: str, at: num });
export const masterRecordSchema = z.object({
  epoch: num,
  sessionId: z.nullable(str),
  explicit: z.boolean(),
  since: num,
  reason: z.enum(['join', 'claim', 'handoff', 'failover', 'step-down', 'leave', 'vacant']),
  previous: z.nullable(str),
  handoff: z.nullable(handoff),
});

const attempt = z.object({
  session: str,
  token: str,
  claimedAt: num,
  endedAt: num,
  outcome: z.enum(['completed', 'failed', 'lapsed', 'holder-died', 'timed-out', 'cancelled', 'released']),
  reason: str,
});

export const taskRecordSchema = z.object({
  id: str,
  title: str,
  prompt: str,
  needs: strArr,
  priority: num,
  after: strArr,
  command: z.nullable(str),
  resources: strArr,
  maxAttempts: num,
  timeoutMs: z.nullable(num),
  to: z.nullable(str),
  createdAt: num,
  createdBy: z.nullable(str),
  orderKey: str,
  attempts: z.array(attempt),
  result: z.nullable(z.object({ summary: str, data: z.optional(z.record(z.string(), z.unknown())) })),
  progress: z.nullable(report),
  finalReason: z.nullable(str),
  finishedAt: z.nullable(num),
});

const lockRecord = z.object({
  resource: str,
  session: str,
  token: num,
  acquiredAt: num,
  expiresAt: num,
  taskId: z.nullable(str),
  note: str,
});
const lockWaiter = z.object({ ticket: num, session: str, resources: strArr, expiresAt: num });
export const lockTableSchema = z.object({
  nextToken: num,
  locks: z.array(lockRecord),
  waiters: z.array(lockWaiter),
});

export const seqRecordSchema = z.object({ rank: num });
export const archiveMetaSchema = z.object({ archived: num, segment: num });
export interface ArchiveMeta {
  archived: number;
  segment: number;
}

// Compile-time proof that the schemas produce the domain types.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const proofs: [
  Same<z.infer<typeof sessionRecordSchema>, SessionRecord>,
  Same<z.infer<typeof masterRecordSchema>, MasterRecord>,
  Same<z.infer<typeof lockTableSchema>, LockTable>,
  Same<z.infer<typeof seqRecordSchema>, SeqRecord>,
] = [true, true, true, true];
void proofs;
// TaskRecord's optional `data` differs only in optionality markers; check assignability one way.
const taskProof: (t: z.infer<typeof taskRecordSchema>) => TaskRecord = (t) => t;
void taskProof;

/** Parses JSON text with a schema; returns an error string instead of throwing. */
export function parseRecord<T>(
  schema: {
    safeParse(v: unknown): { success: true; data: T } | { success: false; error: { message: string } };
  },
  text: string,
): { ok: true; value: T } | { ok: false; reason: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    return { ok: false, reason: `not JSON (${(e as Error).message})` };
  }
  const r = schema.safeParse(raw);
  if (r.success) return { ok: true, value: r.data };
  return { ok: false, reason: `unexpected shape: ${r.error.message.replace(/\s+/g, ' ').slice(0, 200)}` };
}
