/**
 * Process identity for provable-death checks.
 *
 * A bare pid proves nothing: pids are reused. A process is named by (pid, start time, boot id, host);
 * it is provably dead only when we are on the same host and boot and /proc says that pid is gone, was
 * reused (another start time) or is a zombie. Anything we cannot prove returns 'unknown' and the
 * caller falls back to heartbeat leases.
 *
 * Runs on the hot path of a CLI started on every tool call: one readFileSync per probe, no processes.
 */
import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import type { ProcessIdentity } from '../core/types.ts';

/** What a probe can prove about a process. */
export type ProcessLiveness = 'alive' | 'dead' | 'unknown';

// Cached: boot id and /proc presence never change while this process runs.
let procAvailable: boolean | undefined;
let cachedBootId: string | undefined;
let cachedHost: string | undefined;
let cachedSelf: ProcessIdentity | undefined;

function hasProc(): boolean {
  if (procAvailable === undefined) procAvailable = existsSync('/proc/self/stat');
  return procAvailable;
}

function bootId(): string {
  if (cachedBootId === undefined) {
    try {
      cachedBootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    } catch {
      // No boot id (non-Linux, locked-down container): identities then never prove death.
      cachedBootId = '';
    }
  }
  return cachedBootId;
}

function host(): string {
  if (cachedHost === undefined) cachedHost = hostname();
  return cachedHost;
}

function isValidPid(pid: number): boolean {
  // 0 and negative pids name process groups for kill(2): never probe them.
  return Number.isSafeInteger(pid) && pid > 0;
}

/** Parses the text of /proc/<pid>/stat into its state (field 3) and start time (field 22), or null. */
export function parseProcStat(text: string): { state: string; startTime: string } | null {
  // comm (field 2) may contain spaces and ')', so split only after the LAST ')'.
  const close = text.lastIndexOf(')');
  if (close < 0) return null;
  const fields = text
    .slice(close + 1)
    .trim()
    .split(/\s+/);
  // fields[0] is field 3 (state), so field 22 (starttime) is fields[19].
  const state = fields[0];
  const startTime = fields[19];
  if (state === undefined || state === '' || startTime === undefined || !/^\d+$/.test(startTime)) return null;
  return { state, startTime };
}

function isDeadState(state: string): boolean {
  // Z = zombie (exited, not yet reaped), X = dead; neither will ever run again.
  return state === 'Z' || state === 'X';
}

function readStat(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
}

/** kill(pid, 0): true if the pid exists (even if owned by another user), false if not. */
function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Identity of a running process on this machine, or null if no such (live) process exists. */
export function readProcessIdentity(pid: number): ProcessIdentity | null {
  if (!isValidPid(pid)) return null;
  if (!hasProc()) {
    // Without /proc there is no start time: the identity can never prove death, only existence now.
    return pidExists(pid) ? { pid, startTime: '', bootId: '', host: host() } : null;
  }
  const text = readStat(pid);
  if (text === null) return null;
  const stat = parseProcStat(text);
  if (stat === null) return { pid, startTime: '', bootId: bootId(), host: host() };
  // A zombie has already exited: registering it would tie a session to a dead process.
  if (isDeadState(stat.state)) return null;
  return { pid, startTime: stat.startTime, bootId: bootId(), host: host() };
}

/** Whether the process named by `id` still runs: 'unknown' when death cannot be proven from here. */
export function probeProcess(id: ProcessIdentity): ProcessLiveness {
  if (id.host !== host() || id.startTime === '' || !isValidPid(id.pid)) return 'unknown';
  const localBoot = bootId();
  // After a reboot start times restart from zero, so they only compare within one boot.
  if (localBoot === '' || id.bootId !== localBoot) return 'unknown';
  const text = readStat(id.pid);
  if (text === null) {
    // /proc mounted with hidepid hides other users' processes: only ESRCH proves the pid is gone.
    return pidExists(id.pid) ? 'unknown' : 'dead';
  }
  const stat = parseProcStat(text);
  if (stat === null) return 'unknown';
  if (stat.startTime !== id.startTime) return 'dead'; // pid reused by a newer process
  if (isDeadState(stat.state)) return 'dead';
  return 'alive';
}

/** Identity of the current process (cached: it cannot change). */
export function currentProcessIdentity(): ProcessIdentity {
  if (cachedSelf === undefined) {
    cachedSelf = readProcessIdentity(process.pid) ?? {
      pid: process.pid,
      startTime: '',
      bootId: hasProc() ? bootId() : '',
      host: host(),
    };
  }
  return cachedSelf;
}
