import {
  appendFileSync,
  closeSync,
  existsSync,
  type FSWatcher,
  fstatSync,
  fsyncSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  utimesSync,
  watch,
} from 'node:fs';
import { basename, join } from 'node:path';
import { type Clock, systemClock } from '../../core/clock.ts';
import { ErrorCode, FlowLoomError, invalidInput } from '../../core/errors.ts';
import type {
  ActiveTask,
  EventInput,
  Report,
  SessionRecord,
  SessionView,
  StoredEvent,
  TaskRecord,
  TaskState,
} from '../../core/types.ts';
import {
  type ArchiveMeta,
  archiveMetaSchema,
  lockTableSchema,
  masterRecordSchema,
  parseRecord,
  seqRecordSchema,
  sessionRecordSchema,
  taskRecordSchema,
} from '../recordSchemas.ts';
import type {
  LeaseRef,
  NewLease,
  RegisterName,
  Store,
  StoreProblem,
  TaskLookup,
  Versioned,
  WatchArea,
} from '../store.ts';
import {
  createFileExclusive,
  ensureDir,
  errno,
  mapFsError,
  readIfExists,
  safeUnlink,
  tryRename,
  writeFileAtomic,
  writeTemp,
} from './atomicFile.ts';
import { EventLog } from './eventLog.ts';

/**
 * The embedded default backend: a directory shared by the processes of one machine.
 *
 * Layout (see docs/architecture.md):
 *   master.lock/ seq/ locks/      compare-and-set registers: one file per version, 000000000042.json
 *   agents/<id>.json              session registrations; the file's mtime is the heartbeat
 *   tasks/pending/<prio>-<orderKey>[r<attempts>]-<id>.json    sorted by name = claim order
 *   tasks/active/<id>~<session>~<token>~<claimedAt36>~<leaseMs36>.json   mtime = last renewal
 *   tasks/completed|failed|cancelled/<id>.json
 *   tasks/requeue/                moves back to pending in flight (crash recovery)
 *   tasks/progress/<id>.json      latest progress of an active task
 *   tasks/archive/                compacted finished tasks (jsonl segments + id lists)
 *   status/current.json  events/  quarantine/
 *
 * Atomicity comes from rename(2) (claim, finish: exactly one mover wins, the loser gets ENOENT) and
 * from link(2) of a fully written temp file (create-or-fail), so nothing is ever half-written.
 */
export class FsStore implements Store {
  readonly kind = 'fs' as const;
  readonly location: string;
  readonly clock: Clock;
  onProblem: ((problem: StoreProblem) => void) | null = null;

  private readonly dir: string;
  private readonly durable: boolean;
  private events: EventLog | null = null;
  /**
   * Parsed pending/active task files by name. A requeue rewrites a pending file under the same name
   * (new inode, longer content), so an entry is only used while the file's inode and size still match.
   */
  private readonly contentCache = new Map<string, { task: TaskRecord; ino: number; size: number }>();
  private readonly activeNames = new Map<string, string>();
  private readonly watchers = new Map<string, { watcher: FSWatcher | null; listeners: Set<() => void> }>();

  constructor(dir: string, opts: { clock?: Clock; durable?: boolean } = {}) {
    this.dir = dir;
    this.location = dir;
    this.clock = opts.clock ?? systemClock;
    this.durable = opts.durable ?? true;
  }

  async open(opts: { create?: boolean } = {}): Promise<void> {
    if (!existsSync(this.dir)) {
      if (!opts.create) {
        throw new FlowLoomError(ErrorCode.NOT_INITIALIZED, `no FlowLoom state directory at ${this.dir}`, {
          hint: 'run `flowloom init` (or `flowloom join`) in the repository first, or pass --dir',
        });
      }
    }
    try {
      for (const sub of SUBDIRS) ensureDir(join(this.dir, sub));
    } catch (e) {
      throw mapFsError(e, this.dir);
    }
  }

  async close(): Promise<void> {
    for (const w of this.watchers.values()) w.watcher?.close();
    this.watchers.clear();
    this.events?.close();
    this.events = null;
  }

  // ---------------------------------------------------------------- registers

  async readRegister<T>(name: RegisterName): Promise<Versioned<T> | null> {
    const dir = join(this.dir, REGISTER_DIRS[name]);
    // Versions found damaged: skipped even when they could not be moved (read-only dir), or this would spin.
    const damaged = new Set<number>();
    for (;;) {
      const versions = listVersions(dir).filter((v) => !damaged.has(v));
      const top = versions[versions.length - 1];
      if (top === undefined) return null;
      const path = join(dir, versionName(top));
      let text: string | undefined;
      try {
        text = readIfExists(path);
      } catch (e) {
        if (errno(e) !== 'EISDIR') throw e;
        damaged.add(top);
        this.quarantine(path, 'not a regular file');
        continue;
      }
      if (text === undefined) continue; // collected between listing and reading: list again
      const parsed = parseRegisterFile(name, text);
      if (parsed.ok) return { version: top, value: parsed.value as T };
      damaged.add(top);
      this.quarantine(path, parsed.reason);
    }
  }

  async writeRegister<T>(name: RegisterName, expectedVersion: number, value: T): Promise<boolean> {
    const dir = join(this.dir, REGISTER_DIRS[name]);
    let prev: string | null = null;
    if (expectedVersion > 0) {
      const text = readIfExists(join(dir, versionName(expectedVersion)));
      if (text === undefined) return false; // that version is gone: the caller's view is stale
      prev = registerWriteId(text);
    }
    const mine = expectedVersion + 1;
    const myId = `${process.pid}.${Math.random().toString(36).slice(2, 12)}`;
    const path = join(dir, versionName(mine));
    try {
      if (!createFileExclusive(path, JSON.stringify({ id: myId, prev, value }), this.durable)) return false;
    } catch (e) {
      throw mapFsError(e, this.dir);
    }
    // A writer whose expected version was garbage-collected could create a version below the newest
    // one. Such a write is invisible (readers take the newest), so it must not count as a success.
    const versions = listVersions(dir);
    const top = versions[versions.length - 1] ?? mine;
    if (top > mine) {
      const next = readIfExists(join(dir, versionName(mine + 1)));
      if (next === undefined || registerPrevId(next) !== myId) {
        safeUnlink(path);
        return false;
      }
    }
    if (mine % 16 === 0) {
      for (const v of versions) if (v <= mine - 16) safeUnlink(join(dir, versionName(v)));
    }
    return true;
  }

  // ---------------------------------------------------------------- sessions

  async putSession(rec: SessionRecord): Promise<void> {
    const path = join(this.dir, 'agents', `${rec.id}.json`);
    this.write(path, JSON.stringify(rec));
    // The mtime is the heartbeat: it must come from the store's clock, like touchSession's.
    const now = new Date(this.clock.now());
    try {
      utimesSync(path, now, now);
    } catch (e) {
      if (errno(e) !== 'ENOENT') throw mapFsError(e, this.dir);
    }
  }

  async touchSession(id: string): Promise<boolean> {
    const now = new Date(this.clock.now());
    try {
      utimesSync(join(this.dir, 'agents', `${id}.json`), now, now);
      return true;
    } catch (e) {
      if (errno(e) === 'ENOENT') return false;
      throw mapFsError(e, this.dir);
    }
  }

  async getSession(id: string): Promise<SessionView | null> {
    return this.readSession(join(this.dir, 'agents', `${id}.json`));
  }

  async listSessions(): Promise<SessionView[]> {
    const dir = join(this.dir, 'agents');
    const out: SessionView[] = [];
    for (const name of readdirSync(dir)) {
      if (name.startsWith('.tmp-')) continue;
      if (!name.endsWith('.json')) {
        this.quarantine(join(dir, name), 'not a session file');
        continue;
      }
      const s = await this.readSession(join(dir, name));
      if (s) out.push(s);
    }
    return out.sort((a, b) => a.rank - b.rank);
  }

  async deleteSession(id: string): Promise<void> {
    safeUnlink(join(this.dir, 'agents', `${id}.json`));
  }

  private readSession(path: string): SessionView | null {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      if (errno(e) === 'ENOENT') return null;
      throw e;
    }
    let text: string | null;
    let mtimeMs: number;
    try {
      const st = fstatSync(fd);
      mtimeMs = st.mtimeMs;
      text = st.isFile() ? readFileSync(fd, 'utf8') : null;
    } finally {
      closeSync(fd);
    }
    if (text === null) {
      this.quarantine(path, 'not a regular file');
      return null;
    }
    const parsed = parseRecord(sessionRecordSchema, text);
    if (!parsed.ok) {
      this.quarantine(path, parsed.reason);
      return null;
    }
    if (`${parsed.value.id}.json` !== basename(path)) {
      this.quarantine(path, `session file names ${parsed.value.id}`);
      return null;
    }
    return { ...parsed.value, heartbeatAt: Math.floor(mtimeMs) };
  }

  // ---------------------------------------------------------------- tasks

  async addTask(task: TaskRecord, opts: { checkUnique?: boolean } = {}): Promise<void> {
    if (opts.checkUnique && (await this.getTask(task.id))) {
      throw invalidInput(`a task with id "${task.id}" already exists`, 'choose another --id or omit it');
    }
    const path = join(this.dir, 'tasks', 'pending', pendingName(task));
    let created: boolean;
    try {
      created = createFileExclusive(path, JSON.stringify(task), this.durable);
    } catch (e) {
      throw mapFsError(e, this.dir);
    }
    if (!created)
      throw invalidInput(`a task with id "${task.id}" already exists`, 'choose another --id or omit it');
  }

  async listPending(): Promise<TaskRecord[]> {
    const dir = join(this.dir, 'tasks', 'pending');
    const names = readdirSync(dir).sort();
    const out: TaskRecord[] = [];
    const live = new Set<string>();
    for (const name of names) {
      if (name.startsWith('.tmp-')) continue;
      if (!PENDING_RE.test(name)) {
        this.quarantine(join(dir, name), 'not a pending task file');
        continue;
      }
      live.add(name);
      // One name never holds two contents (see pendingName) and the listing just proved the file
      // exists, so a cached record needs no stat: a stat per pending file made every claim O(pending) syscalls.
      const cached = this.contentCache.get(name);
      const t = cached ? copyRecord(cached.task) : this.readTaskFile(dir, name);
      if (t) out.push(t);
    }
    // Pending files never change under one name, so their parsed content can be cached by name.
    if (this.contentCache.size > live.size + 4096) {
      for (const k of this.contentCache.keys())
        if (k.endsWith('.json') && PENDING_RE.test(k) && !live.has(k)) this.contentCache.delete(k);
    }
    return out;
  }

  async claimTask(task: TaskRecord, lease: NewLease): Promise<ActiveTask | null> {
    const now = this.clock.now();
    const activeName =
      [task.id, lease.session, lease.token, now.toString(36), lease.leaseMs.toString(36)].join('~') + '.json';
    const activeDir = join(this.dir, 'tasks', 'active');
    const pendingDir = join(this.dir, 'tasks', 'pending');
    let from = pendingName(task);
    let moved = this.rename(join(pendingDir, from), join(activeDir, activeName));
    if (!moved && !this.isActiveOrFinished(task.id)) {
      // The caller's copy may predate a requeue, which renamed the file (see pendingName). Checked only
      // when nobody claimed it first (the usual loss), as listing pending/ costs a scan of every task.
      const current = this.findPendingName(task.id);
      if (current !== undefined && current !== from) {
        from = current;
        moved = this.rename(join(pendingDir, from), join(activeDir, activeName));
      }
    }
    if (!moved) return null;
    // The lease's renewal time is the file's mtime; the moved file still carries the time it was written.
    const at = new Date(now);
    try {
      utimesSync(join(activeDir, activeName), at, at);
    } catch (e) {
      if (errno(e) !== 'ENOENT') throw mapFsError(e, this.dir);
    }
    this.activeNames.set(leaseKey(task.id, lease.session, lease.token), activeName);
    const cached = this.contentCache.get(from);
    if (cached) this.contentCache.set(activeName, cached); // rename keeps inode and size
    // The stored content, not the caller's copy: that may predate a requeue that added an attempt.
    const stored = this.readTaskFile(activeDir, activeName);
    if (!stored) return null;
    return {
      task: this.withProgress(stored),
      lease: {
        session: lease.session,
        token: lease.token,
        claimedAt: now,
        renewedAt: now,
        leaseMs: lease.leaseMs,
      },
    };
  }

  async listActive(): Promise<ActiveTask[]> {
    const dir = join(this.dir, 'tasks', 'active');
    const out: ActiveTask[] = [];
    for (const name of readdirSync(dir)) {
      if (name.startsWith('.tmp-')) continue;
      const parts = parseActiveName(name);
      if (!parts) {
        this.quarantine(join(dir, name), 'not an active task file');
        continue;
      }
      let mtimeMs: number;
      try {
        mtimeMs = statSync(join(dir, name)).mtimeMs;
      } catch (e) {
        if (errno(e) === 'ENOENT') continue;
        throw e;
      }
      const task = this.readTaskFile(dir, name);
      if (!task) continue;
      out.push({
        task: this.withProgress(task),
        lease: {
          session: parts.session,
          token: parts.token,
          claimedAt: parts.claimedAt,
          renewedAt: Math.max(parts.claimedAt, Math.floor(mtimeMs)),
          leaseMs: parts.leaseMs,
        },
      });
    }
    return out;
  }

  async renewLease(ref: LeaseRef): Promise<boolean> {
    const name = this.findActiveName(ref);
    if (!name) return false;
    const now = new Date(this.clock.now());
    try {
      utimesSync(join(this.dir, 'tasks', 'active', name), now, now);
      return true;
    } catch (e) {
      if (errno(e) === 'ENOENT') {
        this.activeNames.delete(leaseKey(ref.id, ref.session, ref.token));
        return false;
      }
      throw mapFsError(e, this.dir);
    }
  }

  async setProgress(ref: LeaseRef, progress: Report): Promise<boolean> {
    if (!(await this.renewLease(ref))) return false;
    this.write(join(this.dir, 'tasks', 'progress', `${ref.id}.json`), JSON.stringify(progress), false);
    return true;
  }

  async finishTask(
    ref: LeaseRef,
    to: Exclude<TaskState, 'active'>,
    update: (task: TaskRecord) => TaskRecord,
  ): Promise<TaskRecord | null> {
    const name = this.findActiveName(ref);
    if (!name) return null;
    const activeDir = join(this.dir, 'tasks', 'active');
    const current = this.readTaskFile(activeDir, name);
    if (!current) return null;
    const next = update(this.withProgress(current));
    const from = join(activeDir, name);
    this.activeNames.delete(leaseKey(ref.id, ref.session, ref.token));
    try {
      // The rename out of active/ into requeue/ is the fence: it succeeds for exactly one of holder
      // and reaper. The new content was written beforehand and is renamed into place after, so the
      // target never shows the old content; a crash in between leaves the task parked in requeue/,
      // from where recoverInterrupted() returns it to the queue (it ran at most once more, never
      // counted completed without its result).
      const target =
        to === 'pending'
          ? join(this.dir, 'tasks', 'pending', pendingName(next))
          : join(this.dir, 'tasks', to, `${ref.id}.json`);
      const tmp = writeTemp(target, JSON.stringify(next), this.durable);
      if (to !== 'pending') this.stampFinished(tmp);
      const parked = join(this.dir, 'tasks', 'requeue', `${ref.id}.json`);
      if (!tryRename(from, parked)) {
        safeUnlink(tmp);
        return null;
      }
      renameSync(tmp, target);
      safeUnlink(parked);
    } catch (e) {
      throw mapFsError(e, this.dir);
    }
    safeUnlink(join(this.dir, 'tasks', 'progress', `${ref.id}.json`));
    this.contentCache.delete(name);
    return next;
  }

  async movePending(
    id: string,
    to: 'failed' | 'cancelled',
    update: (task: TaskRecord) => TaskRecord,
  ): Promise<TaskRecord | null> {
    const dir = join(this.dir, 'tasks', 'pending');
    const name = this.findPendingName(id);
    if (!name) return null;
    const current = this.readTaskFile(dir, name);
    if (!current) return null;
    const next = update(current);
    const target = join(this.dir, 'tasks', to, `${id}.json`);
    try {
      const tmp = writeTemp(target, JSON.stringify(next), this.durable);
      this.stampFinished(tmp);
      if (!tryRename(join(dir, name), target)) {
        safeUnlink(tmp);
        return null;
      }
      renameSync(tmp, target);
    } catch (e) {
      throw mapFsError(e, this.dir);
    }
    return next;
  }

  async getTask(id: string): Promise<TaskLookup | null> {
    for (const state of ['completed', 'failed', 'cancelled'] as const) {
      const task = this.readTaskFile(join(this.dir, 'tasks', state), `${id}.json`);
      if (task) return { state, task, lease: null };
    }
    for (const a of await this.listActive()) {
      if (a.task.id === id) return { state: 'active', task: a.task, lease: a.lease };
    }
    const pendingDir = join(this.dir, 'tasks', 'pending');
    const name = this.findPendingName(id);
    if (name) {
      const task = this.readTaskFile(pendingDir, name);
      if (task) return { state: 'pending', task, lease: null };
    }
    const archived = this.findArchived(id);
    if (archived) return { state: 'completed', task: archived, lease: null };
    return null;
  }

  async listTasks(state: TaskState, opts: { limit?: number } = {}): Promise<TaskRecord[]> {
    const limit = opts.limit ?? Number.POSITIVE_INFINITY;
    if (state === 'pending') return (await this.listPending()).slice(0, limit);
    if (state === 'active') return (await this.listActive()).map((a) => a.task).slice(0, limit);
    const dir = join(this.dir, 'tasks', state);
    const entries: { name: string; mtime: number }[] = [];
    for (const name of readdirSync(dir)) {
      if (name.startsWith('.tmp-') || !name.endsWith('.json')) continue;
      try {
        entries.push({ name, mtime: statSync(join(dir, name)).mtimeMs });
      } catch (e) {
        if (errno(e) !== 'ENOENT') throw e;
      }
    }
    entries.sort((a, b) => b.mtime - a.mtime);
    const out: TaskRecord[] = [];
    for (const e of entries) {
      if (out.length >= limit) break;
      const t = this.readTaskFile(dir, e.name);
      if (t) out.push(t);
    }
    return out;
  }

  async countTasks(): Promise<Record<TaskState, number>> {
    const count = (sub: string) =>
      readdirSync(join(this.dir, 'tasks', sub)).filter((n) => !n.startsWith('.tmp-')).length;
    const meta = await this.readRegister<ArchiveMeta>('archive');
    return {
      pending: count('pending'),
      active: count('active'),
      completed: count('completed') + (meta?.value.archived ?? 0),
      failed: count('failed'),
      cancelled: count('cancelled'),
    };
  }

  async taskStates(ids: string[]): Promise<Map<string, TaskState | null>> {
    const out = new Map<string, TaskState | null>();
    let open: Map<string, TaskState> | null = null;
    for (const id of ids) {
      let state: TaskState | null = null;
      for (const s of ['completed', 'failed', 'cancelled'] as const) {
        if (existsSync(join(this.dir, 'tasks', s, `${id}.json`))) {
          state = s;
          break;
        }
      }
      if (state === null) {
        open ??= this.openTaskIds();
        state = open.get(id) ?? (this.findArchived(id) ? 'completed' : null);
      }
      out.set(id, state);
    }
    return out;
  }

  /** States of tasks that are pending, active or being requeued (pending again), i.e. not finished. */
  private openTaskIds(): Map<string, TaskState> {
    const ids = new Map<string, TaskState>();
    for (const n of readdirSync(join(this.dir, 'tasks', 'requeue')))
      ids.set(n.replace(/\.json$/, ''), 'pending');
    for (const n of readdirSync(join(this.dir, 'tasks', 'pending'))) {
      const m = PENDING_RE.exec(n);
      if (m?.[1]) ids.set(m[1], 'pending');
    }
    for (const n of readdirSync(join(this.dir, 'tasks', 'active'))) {
      const p = parseActiveName(n);
      if (p) ids.set(p.id, 'active');
    }
    return ids;
  }

  async compact(opts: { keep: number }): Promise<number> {
    const dir = join(this.dir, 'tasks', 'completed');
    const names = readdirSync(dir).filter((n) => n.endsWith('.json') && !n.startsWith('.tmp-'));
    if (names.length <= opts.keep) return 0;
    const aged = names
      .map((name) => {
        try {
          return { name, mtime: statSync(join(dir, name)).mtimeMs };
        } catch {
          return null;
        }
      })
      .filter((x): x is { name: string; mtime: number } => x !== null)
      .sort((a, b) => a.mtime - b.mtime);
    const victims = aged.slice(0, aged.length - opts.keep);
    const archiveDir = join(this.dir, 'tasks', 'archive');
    const staging = join(archiveDir, 'staging');
    ensureDir(staging);
    const lines: string[] = [];
    const ids: string[] = [];
    const staged: string[] = [];
    for (const v of victims) {
      // Rename first: when two processes compact at once each file is archived by one of them only.
      const to = join(staging, v.name);
      if (!tryRename(join(dir, v.name), to)) continue;
      const t = this.readTaskFile(staging, v.name);
      staged.push(to);
      if (!t) continue;
      lines.push(JSON.stringify(t));
      ids.push(t.id);
    }
    if (lines.length === 0) return 0;
    for (;;) {
      const meta = await this.readRegister<ArchiveMeta>('archive');
      const cur = meta?.value ?? { archived: 0, segment: 1 };
      const segment =
        cur.archived > 0 && cur.archived % 20_000 < lines.length ? cur.segment + 1 : cur.segment;
      const base = join(archiveDir, String(segment).padStart(6, '0'));
      appendDurable(`${base}.jsonl`, `${lines.join('\n')}\n`);
      appendDurable(`${base}.ids`, `${ids.join('\n')}\n`);
      if (
        await this.writeRegister<ArchiveMeta>('archive', meta?.version ?? 0, {
          archived: cur.archived + lines.length,
          segment,
        })
      )
        break;
      // Lost the counter race: the lines are already appended (reads de-duplicate by id); retry the count only.
      lines.length = 0;
      break;
    }
    for (const s of staged) safeUnlink(s);
    return ids.length;
  }

  private findArchived(id: string): TaskRecord | null {
    const dir = join(this.dir, 'tasks', 'archive');
    let names: string[];
    try {
      names = readdirSync(dir).filter((n) => n.endsWith('.ids'));
    } catch {
      return null;
    }
    for (const n of names.sort().reverse()) {
      const ids = readFileSync(join(dir, n), 'utf8');
      if (!ids.includes(`${id}\n`)) continue;
      if (!ids.split('\n').includes(id)) continue;
      const lines = readFileSync(join(dir, n.replace(/\.ids$/, '.jsonl')), 'utf8').split('\n');
      for (const line of lines) {
        if (!line.includes(`"id":"${id}"`)) continue;
        const p = parseRecord(taskRecordSchema, line);
        if (p.ok && p.value.id === id) return p.value;
      }
    }
    return null;
  }

  /**
   * Finishes moves interrupted by a crash: files left in requeue/ go back to pending unless the task
   * already exists elsewhere. Returns how many were recovered.
   */
  async recoverInterrupted(olderThanMs: number): Promise<number> {
    const dir = join(this.dir, 'tasks', 'requeue');
    let n = 0;
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      let mtime: number;
      try {
        mtime = statSync(path).mtimeMs;
      } catch {
        continue;
      }
      if (this.clock.now() - mtime < olderThanMs) continue;
      const task = this.readTaskFile(dir, name);
      if (!task) continue;
      const id = task.id;
      const states = await this.taskStatesExcludingRequeue(id);
      if (states) safeUnlink(path);
      else if (tryRename(path, join(this.dir, 'tasks', 'pending', pendingName(task)))) n++;
    }
    return n;
  }

  private async taskStatesExcludingRequeue(id: string): Promise<boolean> {
    for (const s of ['completed', 'failed', 'cancelled'] as const) {
      if (existsSync(join(this.dir, 'tasks', s, `${id}.json`))) return true;
    }
    if (this.findPendingName(id)) return true;
    return readdirSync(join(this.dir, 'tasks', 'active')).some((n) => n.startsWith(`${id}~`));
  }

  // ---------------------------------------------------------------- events

  private eventLog(): EventLog {
    this.events ??= new EventLog(join(this.dir, 'events'), this.clock, {
      onProblem: (p) => this.onProblem?.(p),
    });
    return this.events;
  }

  async appendEvent(event: EventInput): Promise<void> {
    try {
      this.eventLog().append(event);
    } catch (e) {
      throw mapFsError(e, this.dir);
    }
  }

  async readEvents(
    cursor: string | null,
    limit: number,
  ): Promise<{ events: StoredEvent[]; cursor: string | null }> {
    return this.eventLog().read(cursor, limit);
  }

  async tailCursor(): Promise<string | null> {
    return this.eventLog().tail();
  }

  /** The newest `n` events. */
  lastEvents(n: number): StoredEvent[] {
    return this.eventLog().last(n);
  }

  async saveStatus(snapshot: unknown): Promise<void> {
    this.write(join(this.dir, 'status', 'current.json'), `${JSON.stringify(snapshot, null, 2)}\n`, false);
  }

  // ---------------------------------------------------------------- watch

  watch(area: WatchArea, onChange: () => void): () => void {
    const dir = join(this.dir, WATCH_DIRS[area]);
    let entry = this.watchers.get(dir);
    if (!entry) {
      const listeners = new Set<() => void>();
      let watcher: FSWatcher | null = null;
      try {
        watcher = watch(dir, { persistent: false }, () => {
          for (const l of listeners) l();
        });
        watcher.on('error', () => {
          // inotify can fail (limits, directory removed); callers poll as a safety net.
        });
      } catch {
        watcher = null;
      }
      entry = { watcher, listeners };
      this.watchers.set(dir, entry);
    }
    entry.listeners.add(onChange);
    const e = entry;
    return () => {
      e.listeners.delete(onChange);
    };
  }

  // ---------------------------------------------------------------- helpers

  /** Writes a file atomically, mapping permission and disk-full errors. */
  private write(path: string, data: string, durable = this.durable): void {
    try {
      writeFileAtomic(path, data, durable);
    } catch (e) {
      throw mapFsError(e, this.dir);
    }
  }

  private rename(from: string, to: string): boolean {
    try {
      return tryRename(from, to);
    } catch (e) {
      throw mapFsError(e, this.dir);
    }
  }

  private findActiveName(ref: LeaseRef): string | null {
    const key = leaseKey(ref.id, ref.session, ref.token);
    const cached = this.activeNames.get(key);
    if (cached) return cached;
    const prefix = `${ref.id}~${ref.session}~${ref.token}~`;
    const name = readdirSync(join(this.dir, 'tasks', 'active')).find((n) => n.startsWith(prefix));
    return name ?? null;
  }

  /** Whether task `id` is active or finished; cheap, active/ holds one file per running task. */
  private isActiveOrFinished(id: string): boolean {
    if (readdirSync(join(this.dir, 'tasks', 'active')).some((n) => n.startsWith(`${id}~`))) return true;
    return (['completed', 'failed', 'cancelled'] as const).some((s) =>
      existsSync(join(this.dir, 'tasks', s, `${id}.json`)),
    );
  }

  /** The pending file of task `id`; an exact match, so `build` never finds `pre-build`. */
  private findPendingName(id: string): string | undefined {
    return readdirSync(join(this.dir, 'tasks', 'pending')).find((n) => PENDING_RE.exec(n)?.[1] === id);
  }

  /** Stamps a finished task's file with the store clock: finished tasks are ordered by mtime. */
  private stampFinished(path: string): void {
    const now = new Date(this.clock.now());
    utimesSync(path, now, now);
  }

  private withProgress(task: TaskRecord): TaskRecord {
    const text = readIfExists(join(this.dir, 'tasks', 'progress', `${task.id}.json`));
    if (text === undefined) return task;
    try {
      const p = JSON.parse(text) as Report;
      return typeof p.text === 'string' ? { ...task, progress: p } : task;
    } catch {
      return task;
    }
  }

  private readTaskFile(dir: string, name: string): TaskRecord | null {
    const path = join(dir, name);
    const cached = this.contentCache.get(name);
    if (cached) {
      const st = statSync(path, { throwIfNoEntry: false });
      if (!st) return null;
      // Copies out: a caller changing a returned record must not change what later reads return.
      if (st.ino === cached.ino && st.size === cached.size) return structuredClone(cached.task);
    }
    // Content and identity from one open file, so a cache entry never pairs one file's text with another's inode.
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      if (errno(e) === 'ENOENT') return null;
      throw e;
    }
    let text: string | null;
    let ino: number;
    let size: number;
    try {
      const st = fstatSync(fd);
      ({ ino, size } = st);
      // A directory where a task file belongs is foreign: set aside, never a crash (EISDIR).
      text = st.isFile() ? readFileSync(fd, 'utf8') : null;
    } finally {
      closeSync(fd);
    }
    if (text === null) {
      this.quarantine(path, 'not a regular file');
      return null;
    }
    const parsed = parseRecord(taskRecordSchema, text);
    if (!parsed.ok) {
      this.quarantine(join(dir, name), parsed.reason);
      return null;
    }
    const expectedId = taskIdFromName(dir, name);
    if (expectedId !== null && expectedId !== parsed.value.id) {
      this.quarantine(join(dir, name), `file name does not match task id ${parsed.value.id}`);
      return null;
    }
    if (dir.endsWith(join('tasks', 'pending')) || dir.endsWith(join('tasks', 'active'))) {
      this.contentCache.set(name, { task: structuredClone(parsed.value), ino, size });
    }
    return parsed.value;
  }

  /** Sets a damaged or foreign file aside in quarantine/ and reports it; never deletes it. */
  quarantine(path: string, reason: string): void {
    const rel = path.startsWith(this.dir) ? path.slice(this.dir.length + 1) : basename(path);
    const target = join(this.dir, 'quarantine', `${Date.now()}-${rel.replace(/[/\\]/g, '__')}`);
    let movedTo: string | null = null;
    try {
      ensureDir(join(this.dir, 'quarantine'));
      if (tryRename(path, target)) movedTo = target;
      else return; // someone else moved it already
    } catch {
      movedTo = null;
    }
    this.contentCache.delete(basename(path));
    this.onProblem?.({ what: rel, reason, movedTo });
  }

  /** The state directory. */
  get root(): string {
    return this.dir;
  }
}

const SUBDIRS = [
  '',
  'master.lock',
  'seq',
  'locks',
  'agents',
  'tasks/pending',
  'tasks/active',
  'tasks/completed',
  'tasks/failed',
  'tasks/cancelled',
  'tasks/requeue',
  'tasks/progress',
  'tasks/archive',
  'tasks/archive/meta',
  'status',
  'events',
  'quarantine',
];

const REGISTER_DIRS: Record<RegisterName, string> = {
  master: 'master.lock',
  seq: 'seq',
  locks: 'locks',
  archive: 'tasks/archive/meta',
};

const WATCH_DIRS: Record<WatchArea, string> = {
  tasks: 'tasks/pending',
  locks: 'locks',
  master: 'master.lock',
  sessions: 'agents',
  events: 'events',
};

const VERSION_RE = /^(\d{12})\.json$/;
const PENDING_RE = /^\d{4}-[0-9a-z]+-([A-Za-z0-9][A-Za-z0-9._-]*)\.json$/;

function versionName(v: number): string {
  return `${String(v).padStart(12, '0')}.json`;
}

function listVersions(dir: string): number[] {
  const out: number[] = [];
  for (const n of readdirSync(dir)) {
    const m = VERSION_RE.exec(n);
    if (m?.[1]) out.push(Number(m[1]));
  }
  return out.sort((a, b) => a - b);
}

function parseRegisterFile(
  name: RegisterName,
  text: string,
): { ok: true; value: unknown } | { ok: false; reason: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    return { ok: false, reason: `not JSON (${(e as Error).message})` };
  }
  if (typeof raw !== 'object' || raw === null || !('value' in raw))
    return { ok: false, reason: 'not a register version' };
  const schema = {
    master: masterRecordSchema,
    seq: seqRecordSchema,
    locks: lockTableSchema,
    archive: archiveMetaSchema,
  }[name];
  const r = schema.safeParse((raw as { value: unknown }).value);
  return r.success ? { ok: true, value: r.data } : { ok: false, reason: 'unexpected register shape' };
}

function registerWriteId(text: string): string | null {
  try {
    const v = JSON.parse(text) as { id?: unknown };
    return typeof v.id === 'string' ? v.id : null;
  } catch {
    return null;
  }
}

function registerPrevId(text: string): string | null {
  try {
    const v = JSON.parse(text) as { prev?: unknown };
    return typeof v.prev === 'string' ? v.prev : null;
  } catch {
    return null;
  }
}

/**
 * Pending file name: sorts by priority (higher first), then age. A requeued task (one more attempt) gets a
 * new name, `r<attempts>` after its fixed-length order key, so a name never changes content.
 */
export function pendingName(task: TaskRecord): string {
  const prio = 1000 - Math.max(-999, Math.min(999, Math.trunc(task.priority)));
  const requeued = task.attempts.length > 0 ? `r${task.attempts.length.toString(36)}` : '';
  return `${String(prio).padStart(4, '0')}-${task.orderKey}${requeued}-${task.id}.json`;
}

function parseActiveName(
  name: string,
): { id: string; session: string; token: string; claimedAt: number; leaseMs: number } | null {
  if (!name.endsWith('.json')) return null;
  const parts = name.slice(0, -5).split('~');
  if (parts.length !== 5) return null;
  const [id, session, token, at, lease] = parts as [string, string, string, string, string];
  const claimedAt = Number.parseInt(at, 36);
  const leaseMs = Number.parseInt(lease, 36);
  if (!id || !session || !token || !Number.isFinite(claimedAt) || !Number.isFinite(leaseMs)) return null;
  return { id, session, token, claimedAt, leaseMs };
}

function taskIdFromName(dir: string, name: string): string | null {
  if (dir.endsWith(join('tasks', 'pending'))) return PENDING_RE.exec(name)?.[1] ?? null;
  if (dir.endsWith(join('tasks', 'active'))) return parseActiveName(name)?.id ?? null;
  if (name.endsWith('.json')) return name.slice(0, -5);
  return null;
}

/**
 * A deep copy of a record parsed from JSON (plain objects, arrays, primitives). Several times faster than
 * structuredClone, which matters on the claim path: listPending copies every pending record.
 */
function copyRecord<T>(value: T): T {
  if (typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) return value.map(copyRecord) as T;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = copyRecord(v);
  return out as T;
}

function leaseKey(id: string, session: string, token: string): string {
  return `${id}~${session}~${token}`;
}

function appendDurable(path: string, data: string): void {
  appendFileSync(path, data, { mode: 0o600 });
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
