/**
 * The election rule, pure. Mastership changes only on events (join, mode change, handoff, failover),
 * never by re-running the rule continuously, so a handoff is not undone by the next heartbeat.
 *
 * Rule: an explicit master that is alive wins; otherwise the last session to join in auto mode;
 * explicit agents only when nobody else is alive. "Last" is the highest rank (an atomically assigned
 * sequence), never a wall-clock time.
 */
import type { SessionMode } from './types.ts';

export interface Candidate {
  id: string;
  mode: SessionMode;
  rank: number;
  alive: boolean;
}

export interface CurrentMaster {
  id: string;
  explicit: boolean;
  rank: number;
  alive: boolean;
}

const MODE_ORDER: Record<SessionMode, number> = { master: 2, auto: 1, agent: 0 };

/** Picks the master among sessions by the rule (failover, vacancy); null when nobody is alive. */
export function pickMaster(
  sessions: readonly Candidate[],
  exclude: ReadonlySet<string> = new Set(),
): Candidate | null {
  let best: Candidate | null = null;
  for (const s of sessions) {
    if (!s.alive || exclude.has(s.id)) continue;
    if (
      best === null ||
      MODE_ORDER[s.mode] > MODE_ORDER[best.mode] ||
      (MODE_ORDER[s.mode] === MODE_ORDER[best.mode] && s.rank > best.rank)
    ) {
      best = s;
    }
  }
  return best;
}

/**
 * Whether a session that just joined (or changed mode) with `mode` and `rank` takes mastership from a
 * live master `current`. (With no live master, the coordinator runs `pickMaster` over everyone alive.)
 */
export function takesOver(
  current: CurrentMaster,
  joiner: { id: string; mode: SessionMode; rank: number },
): boolean {
  if (current.id === joiner.id) return joiner.mode === 'master' && !current.explicit;
  switch (joiner.mode) {
    case 'agent':
      return false;
    case 'auto':
      // Last joined wins, unless the live master claimed the role explicitly or joined even later.
      return !current.explicit && joiner.rank > current.rank;
    case 'master':
      // Explicit beats implicit; between two explicit claims the later one wins.
      return !current.explicit || joiner.rank > current.rank;
  }
}
