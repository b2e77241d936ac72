/**
 * Where the shared state directory lives.
 *
 * Every worktree of one repository must resolve to the SAME directory, or sessions in different
 * worktrees would elect separate masters. The git layout is read directly (`.git` dir, or a `.git` file
 * pointing at a gitdir with a `commondir` file) because this runs on every tool call and spawning
 * `git rev-parse --git-common-dir` would cost more than the rest of the command.
 */
import { appendFileSync, mkdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { invalidInput } from '../core/errors.ts';

/** Name of the state directory inside a repository or working directory. */
export const STATE_DIR_NAME = '.flowloom-coordination';

/** How the state directory was chosen, for `status` output and error messages. */
export type StateDirSource = 'flag' | 'env' | 'git' | 'cwd';

interface GitLocation {
  /** The git dir shared by all worktrees (holds objects, refs, info/exclude). */
  commonDir: string;
  /** Top of the worktree that contains the start path (where its `.git` entry is). */
  worktreeRoot: string;
  /** Top of the main worktree: the same for every linked worktree of the repository. */
  mainRoot: string;
}

/** realpath where possible so every worktree yields byte-identical paths (e.g. /tmp vs /private/tmp). */
function canonical(p: string): string {
  try {
    return realpathSync.native(p);
  } catch {
    const parent = dirname(p);
    return parent === p ? p : join(canonical(parent), basename(p));
  }
}

function statKind(p: string): 'dir' | 'file' | null {
  try {
    const st = statSync(p, { throwIfNoEntry: false });
    if (st === undefined) return null;
    return st.isDirectory() ? 'dir' : st.isFile() ? 'file' : null;
  } catch {
    return null;
  }
}

function readTrimmed(p: string): string | null {
  try {
    return readFileSync(p, 'utf8').trim();
  } catch {
    return null;
  }
}

/** `core.worktree` from a git config file: set for submodules, whose gitdir lives in the superproject. */
function readCoreWorktree(commonDir: string): string | null {
  const text = readTrimmed(join(commonDir, 'config'));
  if (text === null) return null;
  let inCore = false;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line.startsWith('[')) inCore = /^\[\s*core\s*\]/i.test(line);
    else if (inCore) {
      const m = /^worktree\s*=\s*(.*)$/i.exec(line);
      if (m?.[1]) return resolve(commonDir, m[1].replace(/^"(.*)"$/, '$1'));
    }
  }
  return null;
}

function mainRootOf(commonDir: string): string {
  // The usual layout: <root>/.git. Otherwise (submodule under .git/modules/, bare repo) ask its config.
  if (basename(commonDir) === '.git') return dirname(commonDir);
  return readCoreWorktree(commonDir) ?? dirname(commonDir);
}

function locateGit(start: string): GitLocation | null {
  let dir = resolve(start);
  for (;;) {
    const dotGit = join(dir, '.git');
    const kind = statKind(dotGit);
    if (kind === 'dir') {
      const root = canonical(dir);
      return { commonDir: join(root, '.git'), worktreeRoot: root, mainRoot: root };
    }
    if (kind === 'file') {
      // A linked worktree or submodule: `.git` is a file "gitdir: <path>", path relative to this dir.
      const m = /^gitdir:\s*(.+)$/m.exec(readTrimmed(dotGit) ?? '');
      if (m?.[1]) {
        const gitDir = canonical(resolve(dir, m[1].trim()));
        const worktreeRoot = canonical(dir);
        const common = readTrimmed(join(gitDir, 'commondir'));
        if (common === null || common === '') {
          // No commondir: this gitdir is the repository itself (submodule, --separate-git-dir).
          return { commonDir: gitDir, worktreeRoot, mainRoot: worktreeRoot };
        }
        const commonDir = canonical(resolve(gitDir, common));
        return { commonDir, worktreeRoot, mainRoot: canonical(mainRootOf(commonDir)) };
      }
      // An unreadable or malformed .git file: git itself would refuse it, so look further up.
    }
    const parent = dirname(dir);
    if (parent === dir) return null;
    dir = parent;
  }
}

/** Absolute git common dir of the repository containing `start` (shared by all its worktrees), or null. */
export function findGitCommonDir(start: string): string | null {
  return locateGit(start)?.commonDir ?? null;
}

function findExistingStateDir(start: string): string | null {
  let dir = start;
  for (;;) {
    const candidate = join(dir, STATE_DIR_NAME);
    if (statKind(candidate) === 'dir') return candidate;
    const parent = dirname(dir);
    if (parent === dir) return null;
    dir = parent;
  }
}

/** Picks the state directory: --dir, then FLOWLOOM_DIR, then the repository root, then cwd. */
export function resolveStateDir(opts: { cwd: string; dir?: string | undefined; env?: NodeJS.ProcessEnv }): {
  dir: string;
  source: StateDirSource;
} {
  const cwd = resolve(opts.cwd);
  if (opts.dir !== undefined) {
    if (opts.dir.trim() === '') throw invalidInput('--dir must be a directory path, got an empty string');
    return { dir: resolve(cwd, opts.dir), source: 'flag' };
  }
  // An empty FLOWLOOM_DIR= is how shells unset a variable for one command: treat it as absent.
  const fromEnv = (opts.env ?? process.env).FLOWLOOM_DIR;
  if (fromEnv !== undefined && fromEnv.trim() !== '') return { dir: resolve(cwd, fromEnv), source: 'env' };
  const git = locateGit(cwd);
  if (git !== null) return { dir: join(git.mainRoot, STATE_DIR_NAME), source: 'git' };
  return { dir: findExistingStateDir(cwd) ?? join(cwd, STATE_DIR_NAME), source: 'cwd' };
}

function gitignoreEscape(s: string): string {
  return s.replace(/[\\*?[]/g, '\\$&');
}

/** Adds the state dir to the repository's info/exclude so `git status` stays clean; best effort. */
export function addToGitExclude(stateDir: string): void {
  try {
    const dir = canonical(resolve(stateDir));
    const git = locateGit(dir);
    if (git === null) return;
    // info/exclude is shared by every worktree but its patterns are relative to each worktree's root.
    const rel = relative(git.worktreeRoot, dir);
    if (rel === '' || rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) return;
    const parts = rel.split(sep);
    if (parts[0] === '.git') return; // git never tracks its own directory
    const bare = parts.map(gitignoreEscape).join('/');
    const line = `/${bare}/`;
    const file = join(git.commonDir, 'info', 'exclude');
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      mkdirSync(dirname(file), { recursive: true });
    }
    const variants = new Set([line, `/${bare}`, `${bare}/`, bare]);
    if (text.split(/\r?\n/).some((l) => variants.has(l.trim()))) return;
    // Append rather than rewrite: a concurrent writer may at worst add a duplicate line, never lose one.
    appendFileSync(file, `${text === '' || text.endsWith('\n') ? '' : '\n'}${line}\n`);
  } catch {
    // Best effort: a read-only .git or odd layout must never stop coordination.
  }
}
