import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { FlowLoomError } from '../../src/core/errors.ts';
import {
  addToGitExclude,
  findGitCommonDir,
  resolveStateDir,
  STATE_DIR_NAME,
} from '../../src/platform/stateDir.ts';

// realpath: the module canonicalises paths, and tmpdir() may be a symlink (macOS /tmp).
const tmp = realpathSync(mkdtempSync(join(tmpdir(), 'flowloom-statedir-')));
after(() => rmSync(tmp, { recursive: true, force: true }));

// Keep the developer's git config and any GIT_DIR of an enclosing hook out of the test repositories.
const gitEnv: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !k.startsWith('GIT_') && k !== 'FLOWLOOM_DIR'),
);
Object.assign(gitEnv, { HOME: tmp, GIT_CONFIG_NOSYSTEM: '1' });

function git(cwd: string, ...args: string[]): void {
  execFileSync(
    'git',
    ['-c', 'user.name=t', '-c', 'user.email=t@t', '-c', 'init.defaultBranch=main', ...args],
    { cwd, env: gitEnv, stdio: 'pipe' },
  );
}

function newRepo(name: string): string {
  const root = join(tmp, name);
  mkdirSync(root, { recursive: true });
  git(root, 'init', '-q');
  git(root, 'commit', '-q', '--allow-empty', '-m', 'x');
  return root;
}

const noEnv: NodeJS.ProcessEnv = {};

describe('findGitCommonDir / resolveStateDir in git repositories', () => {
  let repo: string;
  let wt: string;
  before(() => {
    repo = newRepo('repo');
    mkdirSync(join(repo, 'src', 'deep'), { recursive: true });
    wt = join(tmp, 'wt');
    git(repo, 'worktree', 'add', '-q', '../wt', '-b', 'wt');
    mkdirSync(join(wt, 'pkg'), { recursive: true });
  });

  test('a subdirectory of the main repository resolves to the repository root', () => {
    assert.equal(findGitCommonDir(join(repo, 'src', 'deep')), join(repo, '.git'));
    assert.deepEqual(resolveStateDir({ cwd: join(repo, 'src', 'deep'), env: noEnv }), {
      dir: join(repo, STATE_DIR_NAME),
      source: 'git',
    });
  });

  test('a linked worktree shares the main repository state dir', () => {
    assert.equal(findGitCommonDir(join(wt, 'pkg')), join(repo, '.git'));
    assert.deepEqual(resolveStateDir({ cwd: join(wt, 'pkg'), env: noEnv }), {
      dir: join(repo, STATE_DIR_NAME),
      source: 'git',
    });
  });

  test('a worktree whose gitdir line is relative resolves the same', () => {
    const wt2 = join(tmp, 'wt2');
    git(repo, 'worktree', 'add', '-q', '../wt2', '-b', 'wt2');
    writeFileSync(join(wt2, '.git'), 'gitdir: ../repo/.git/worktrees/wt2\n');
    assert.equal(findGitCommonDir(wt2), join(repo, '.git'));
    assert.equal(resolveStateDir({ cwd: wt2, env: noEnv }).dir, join(repo, STATE_DIR_NAME));
  });

  test('--dir beats FLOWLOOM_DIR beats git; relative values resolve against cwd', () => {
    const cwd = join(repo, 'src');
    const env = { FLOWLOOM_DIR: '../from-env' };
    assert.deepEqual(resolveStateDir({ cwd, dir: 'from-flag', env }), {
      dir: join(repo, 'src', 'from-flag'),
      source: 'flag',
    });
    assert.deepEqual(resolveStateDir({ cwd, dir: '/abs/state', env }), { dir: '/abs/state', source: 'flag' });
    assert.deepEqual(resolveStateDir({ cwd, env }), { dir: join(repo, 'from-env'), source: 'env' });
    assert.deepEqual(resolveStateDir({ cwd, dir: undefined, env: { FLOWLOOM_DIR: '' } }), {
      dir: join(repo, STATE_DIR_NAME),
      source: 'git',
    });
  });

  test('an empty --dir is refused', () => {
    assert.throws(
      () => resolveStateDir({ cwd: repo, dir: ' ', env: noEnv }),
      (e: unknown) =>
        e instanceof FlowLoomError &&
        e.code === 'INVALID_INPUT' &&
        e.message === '--dir must be a directory path, got an empty string',
    );
  });

  test('each submodule gets its own state dir at its own root', () => {
    const lib = newRepo('lib');
    const sup = newRepo('super');
    git(sup, '-c', 'protocol.file.allow=always', 'submodule', 'add', '-q', lib, 'a');
    git(sup, '-c', 'protocol.file.allow=always', 'submodule', 'add', '-q', lib, 'b');
    assert.equal(findGitCommonDir(join(sup, 'a')), join(sup, '.git', 'modules', 'a'));
    assert.equal(resolveStateDir({ cwd: join(sup, 'a'), env: noEnv }).dir, join(sup, 'a', STATE_DIR_NAME));
    assert.equal(resolveStateDir({ cwd: join(sup, 'b'), env: noEnv }).dir, join(sup, 'b', STATE_DIR_NAME));
  });
});

describe('resolveStateDir outside git', () => {
  test('no repository: <cwd>/.flowloom-coordination', () => {
    const cwd = join(tmp, 'plain', 'x');
    mkdirSync(cwd, { recursive: true });
    assert.equal(findGitCommonDir(cwd), null);
    assert.deepEqual(resolveStateDir({ cwd, env: noEnv }), { dir: join(cwd, STATE_DIR_NAME), source: 'cwd' });
  });

  test('an existing state dir further up is reused', () => {
    const top = join(tmp, 'shared');
    mkdirSync(join(top, STATE_DIR_NAME), { recursive: true });
    mkdirSync(join(top, 'a', 'b'), { recursive: true });
    assert.deepEqual(resolveStateDir({ cwd: join(top, 'a', 'b'), env: noEnv }), {
      dir: join(top, STATE_DIR_NAME),
      source: 'cwd',
    });
  });
});

describe('addToGitExclude', () => {
  test('adds the line once, creating info/ when missing', () => {
    const repo = newRepo('excl');
    rmSync(join(repo, '.git', 'info'), { recursive: true, force: true });
    const stateDir = resolveStateDir({ cwd: repo, env: noEnv }).dir;
    addToGitExclude(stateDir);
    mkdirSync(stateDir);
    addToGitExclude(stateDir);
    assert.equal(readFileSync(join(repo, '.git', 'info', 'exclude'), 'utf8'), '/.flowloom-coordination/\n');
    const status = execFileSync('git', ['status', '--porcelain'], {
      cwd: repo,
      env: gitEnv,
      encoding: 'utf8',
    });
    assert.equal(status, '');
  });

  test('from a linked worktree the shared exclude file still gets one line', () => {
    const repo = newRepo('excl-wt');
    git(repo, 'worktree', 'add', '-q', '../excl-wt2', '-b', 'w');
    writeFileSync(join(repo, '.git', 'info', 'exclude'), '# comment\n*.tmp');
    const stateDir = resolveStateDir({ cwd: join(tmp, 'excl-wt2'), env: noEnv }).dir;
    addToGitExclude(stateDir);
    addToGitExclude(stateDir);
    assert.equal(
      readFileSync(join(repo, '.git', 'info', 'exclude'), 'utf8'),
      '# comment\n*.tmp\n/.flowloom-coordination/\n',
    );
  });

  test('an equivalent existing pattern counts as present', () => {
    const repo = newRepo('excl-variant');
    writeFileSync(join(repo, '.git', 'info', 'exclude'), '.flowloom-coordination/\n');
    addToGitExclude(join(repo, STATE_DIR_NAME));
    assert.equal(readFileSync(join(repo, '.git', 'info', 'exclude'), 'utf8'), '.flowloom-coordination/\n');
  });

  test('a state dir nested deeper gets its own anchored path', () => {
    const repo = newRepo('excl-nested');
    addToGitExclude(join(repo, 'var', 'state'));
    assert.match(readFileSync(join(repo, '.git', 'info', 'exclude'), 'utf8'), /\n\/var\/state\/\n$/);
  });

  test('outside a repository it does nothing and never throws', () => {
    const dir = join(tmp, 'norepo', STATE_DIR_NAME);
    assert.doesNotThrow(() => addToGitExclude(dir));
    assert.equal(existsSync(join(tmp, 'norepo')), false);
    assert.doesNotThrow(() => addToGitExclude('/proc/self/nonexistent/x'));
  });
});
