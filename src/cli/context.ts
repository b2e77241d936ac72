import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as z from 'zod/mini';
import type { Coordinator, CoordinatorConfig } from '../coordinator.ts';
import { ErrorCode, FlowLoomError, invalidInput } from '../core/errors.ts';
import { validateId } from '../core/ids.ts';
import { assertLocalFilesystem } from '../platform/fsType.ts';
import { probeProcess } from '../platform/processIdentity.ts';
import { resolveStateDir } from '../platform/stateDir.ts';
import type { StoreProblem } from '../store/store.ts';
import { parseDuration } from './args.ts';

export const CONFIG_FILE = 'config.json';

const configSchema = z.object({
  sessionTtlMs: z.optional(z.number().check(z.positive())),
  taskLeaseMs: z.optional(z.number().check(z.positive())),
  lockLeaseMs: z.optional(z.number().check(z.positive())),
  maxAttempts: z.optional(z.number().check(z.positive())),
  keepFinished: z.optional(z.number().check(z.positive())),
  pollMs: z.optional(z.number().check(z.positive())),
});

/** Refuses a state directory path that is (or lies under) a regular file, before anything tries mkdir. */
function assertDirectoryPath(dir: string): void {
  for (let p = dir; ; p = dirname(p)) {
    let st: ReturnType<typeof statSync>;
    try {
      st = statSync(p, { throwIfNoEntry: false });
    } catch (e) {
      // ENOTDIR: some ancestor is a file, found further up. Otherwise (EACCES) the store reports it.
      if ((e as NodeJS.ErrnoException).code === 'ENOTDIR') continue;
      return;
    }
    if (st === undefined) {
      if (dirname(p) === p) return;
      continue;
    }
    if (st.isDirectory()) return;
    throw invalidInput(
      `the state directory ${dir} cannot be used: ${p} is not a directory`,
      'point --dir or FLOWLOOM_DIR at a directory',
    );
  }
}

/** Everything a command needs: flags shared by all commands, output, and the coordinator. */
export class CliContext {
  readonly json: boolean;
  readonly debug: boolean;
  private readonly dirFlag: string | undefined;
  private readonly sessionFlag: string | undefined;
  readonly env: NodeJS.ProcessEnv;
  readonly cwd: string;
  private coord: Coordinator | null = null;
  /** Problems the store reported (damaged files set aside) during this command. */
  readonly problems: StoreProblem[] = [];

  constructor(opts: {
    json: boolean;
    debug: boolean;
    dir?: string | undefined;
    session?: string | undefined;
    env: NodeJS.ProcessEnv;
    cwd: string;
  }) {
    this.json = opts.json;
    this.debug = opts.debug;
    this.dirFlag = opts.dir;
    this.sessionFlag = opts.session;
    this.env = opts.env;
    this.cwd = opts.cwd;
  }

  /** The state directory this command works on. */
  stateDir(): string {
    return resolveStateDir({ cwd: this.cwd, dir: this.dirFlag, env: this.env }).dir;
  }

  /** Opens the file store and the coordinator (once). `create` makes the state directory. */
  async coordinator(opts: { create?: boolean } = {}): Promise<Coordinator> {
    if (this.coord) return this.coord;
    const dir = this.stateDir();
    assertDirectoryPath(dir);
    assertLocalFilesystem(dir);
    const [{ FsStore }, { Coordinator }] = await Promise.all([
      import('../store/fs/fsStore.ts'),
      import('../coordinator.ts'),
    ]);
    const store = new FsStore(dir);
    store.onProblem = (p) => {
      this.problems.push(p);
      process.stderr.write(
        p.movedTo
          ? `flowloom: warning: set aside damaged file ${p.what} (${p.reason}); kept in ${p.movedTo}\n`
          : `flowloom: warning: ${p.what}: ${p.reason}\n`,
      );
    };
    await store.open({ create: opts.create ?? false });
    this.coord = new Coordinator(store, { config: this.config(dir), probe: probeProcess });
    return this.coord;
  }

  /** Reads config.json in the state directory and FLOWLOOM_* duration overrides from the environment. */
  config(dir: string): Partial<CoordinatorConfig> {
    const out: Partial<CoordinatorConfig> = {};
    const path = join(dir, CONFIG_FILE);
    if (existsSync(path)) {
      let raw: unknown;
      try {
        raw = JSON.parse(readFileSync(path, 'utf8'));
      } catch (e) {
        throw invalidInput(
          `${path} is not valid JSON (${(e as Error).message})`,
          'fix or delete it (defaults apply without it)',
        );
      }
      const r = configSchema.safeParse(raw);
      if (!r.success)
        throw invalidInput(
          `${path} has an unexpected setting: ${r.error.issues[0]?.path.join('.') ?? '?'}`,
          'see `flowloom init --help` for the settings',
        );
      Object.assign(out, r.data);
    }
    const envDur = (name: string, key: keyof CoordinatorConfig) => {
      const v = this.env[name];
      if (v) out[key] = parseDuration(name, v);
    };
    envDur('FLOWLOOM_SESSION_TTL', 'sessionTtlMs');
    envDur('FLOWLOOM_TASK_LEASE', 'taskLeaseMs');
    envDur('FLOWLOOM_LOCK_LEASE', 'lockLeaseMs');
    envDur('FLOWLOOM_POLL', 'pollMs');
    return out;
  }

  /** The acting session from --session or FLOWLOOM_SESSION. */
  session(): string {
    const id = this.sessionFlag ?? this.env.FLOWLOOM_SESSION;
    if (!id) {
      throw new FlowLoomError(ErrorCode.INVALID_INPUT, 'no session given', {
        hint: 'pass --session <id> or set FLOWLOOM_SESSION (printed by `flowloom join`)',
      });
    }
    return validateId('session', id);
  }

  /** The session if one was given. */
  maybeSession(): string | undefined {
    const id = this.sessionFlag ?? this.env.FLOWLOOM_SESSION;
    return id ? validateId('session', id) : undefined;
  }

  /** Prints a result: the JSON document with --json, else the human text. */
  out(human: string | string[], json: unknown): void {
    if (this.json) process.stdout.write(`${JSON.stringify(json)}\n`);
    else {
      const text = Array.isArray(human) ? human.join('\n') : human;
      if (text) process.stdout.write(`${text}\n`);
    }
  }

  async close(): Promise<void> {
    await this.coord?.store.close();
  }
}
