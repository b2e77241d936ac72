#!/usr/bin/env node
/**
 * The `flowloom` command line. Parsing and dispatch only: each command lives in commands/ and is
 * loaded when used, so a hook invocation loads just what it needs.
 */
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { ErrorCode, FlowLoomError } from '../core/errors.ts';
import { CliContext } from './context.ts';

type Options = NonNullable<ParseArgsConfig['options']>;
export type Values = Record<string, string | boolean | string[] | boolean[] | undefined>;
export type Run = (ctx: CliContext, values: Values, positionals: string[]) => Promise<number | undefined>;

interface Command {
  usage: string;
  summary: string;
  options: Options;
  /** Allow `--` followed by a command to run. */
  passthrough?: boolean;
  load: () => Promise<Run>;
}

const str = { type: 'string' } as const;
const bool = { type: 'boolean' } as const;
const list = { type: 'string', multiple: true } as const;

const GLOBAL: Options = {
  json: bool,
  dir: str,
  session: str,
  debug: bool,
  help: { type: 'boolean', short: 'h' },
};

const COMMANDS: Record<string, Command> = {
  init: {
    usage: 'flowloom init [--session-ttl 15s] [--task-lease 30s] [--lock-lease 60s] [--max-attempts 3]',
    summary: 'create the state directory (.flowloom-coordination/) and its settings',
    options: { 'session-ttl': str, 'task-lease': str, 'lock-lease': str, 'max-attempts': str },
    load: async () => (await import('./commands/session.ts')).init,
  },
  join: {
    usage:
      'flowloom join [--session ID] [--mode auto|master|agent] [--capabilities a,b] [--resources r] [--pid N|parent|self] [--ttl 15s] [--hold]',
    summary: 'register a session; the last to join in auto mode becomes master',
    options: { mode: str, capabilities: list, resources: list, pid: str, ttl: str, hold: bool, meta: list },
    load: async () => (await import('./commands/session.ts')).join,
  },
  leave: {
    usage: 'flowloom leave [--note TEXT]',
    summary: 'leave: give back tasks and locks; a leaving master hands off',
    options: { note: str },
    load: async () => (await import('./commands/session.ts')).leave,
  },
  heartbeat: {
    usage: 'flowloom heartbeat',
    summary: 'refresh the session and renew its task and lock leases',
    options: {},
    load: async () => (await import('./commands/session.ts')).heartbeat,
  },
  mode: {
    usage: 'flowloom mode master|agent|auto [--note TEXT]',
    summary: 'claim master explicitly, step down to agent, or go back to auto',
    options: { note: str },
    load: async () => (await import('./commands/session.ts')).mode,
  },
  handoff: {
    usage: 'flowloom handoff [--to SESSION] [--note TEXT] [--epoch N]',
    summary: 'hand mastership to another session with a note',
    options: { to: str, note: str, epoch: str },
    load: async () => (await import('./commands/session.ts')).handoff,
  },
  status: {
    usage: 'flowloom status [--json]',
    summary: 'who is master, what agents do and report, the queue and the locks',
    options: {},
    load: async () => (await import('./commands/status.ts')).status,
  },
  events: {
    usage: 'flowloom events [--follow] [--since CURSOR] [--limit N]',
    summary: 'the event log; --follow streams new events (one JSON object per line with --json)',
    options: { follow: { type: 'boolean', short: 'f' }, since: str, limit: str },
    load: async () => (await import('./commands/status.ts')).events,
  },
  'task add': {
    usage:
      'flowloom task add TITLE [--prompt TEXT] [--needs cap,..] [--priority N|low|high|urgent] [--after ID,..] [--command CMD] [--resources r,..] [--max-attempts N] [--timeout 10m] [--to SESSION] [--id ID] [--epoch N]',
    summary: 'add a task to the queue',
    options: {
      prompt: str,
      needs: list,
      priority: str,
      after: list,
      command: str,
      resources: list,
      'max-attempts': str,
      timeout: str,
      to: str,
      id: str,
      epoch: str,
    },
    load: async () => (await import('./commands/task.ts')).add,
  },
  'task claim': {
    usage: 'flowloom task claim [--wait 30s] [--lease 30s]',
    summary: 'claim the best task for this session (exit 3 when there is none)',
    options: { wait: str, lease: str },
    load: async () => (await import('./commands/task.ts')).claim,
  },
  'task done': {
    usage: 'flowloom task done ID [--result TEXT] [--data JSON] [--token T]',
    summary: 'complete a task you hold',
    options: { result: str, data: str, token: str },
    load: async () => (await import('./commands/task.ts')).done,
  },
  'task fail': {
    usage: 'flowloom task fail ID --reason TEXT [--no-retry] [--token T]',
    summary: 'fail the current attempt (retries until max attempts)',
    options: { reason: str, 'no-retry': bool, token: str },
    load: async () => (await import('./commands/task.ts')).fail,
  },
  'task progress': {
    usage: 'flowloom task progress ID TEXT [--fraction 0.5] [--token T]',
    summary: 'report progress on a task you hold (renews its lease)',
    options: { fraction: str, token: str },
    load: async () => (await import('./commands/task.ts')).progress,
  },
  'task release': {
    usage: 'flowloom task release ID [--token T]',
    summary: 'give a task back to the queue without counting the attempt',
    options: { token: str },
    load: async () => (await import('./commands/task.ts')).release,
  },
  'task cancel': {
    usage: 'flowloom task cancel ID [--reason TEXT] [--epoch N]',
    summary: 'cancel a pending or active task',
    options: { reason: str, epoch: str },
    load: async () => (await import('./commands/task.ts')).cancel,
  },
  'task list': {
    usage: 'flowloom task list [--state pending|active|completed|failed|cancelled] [--limit N]',
    summary: 'list tasks',
    options: { state: str, limit: str },
    load: async () => (await import('./commands/task.ts')).list,
  },
  'task show': {
    usage: 'flowloom task show ID',
    summary: 'one task with its attempts, progress and result',
    options: {},
    load: async () => (await import('./commands/task.ts')).show,
  },
  'lock acquire': {
    usage: 'flowloom lock acquire RESOURCE... [--wait 10s] [--lease 60s] [--note TEXT]',
    summary: 'lease resources (file:src/**, git, ...); exit 3 when held by someone else',
    options: { wait: str, lease: str, note: str },
    load: async () => (await import('./commands/lock.ts')).acquire,
  },
  'lock release': {
    usage: 'flowloom lock release [RESOURCE...] [--token N] [--all]',
    summary: 'release resources you hold',
    options: { token: str, all: bool },
    load: async () => (await import('./commands/lock.ts')).release,
  },
  'lock list': {
    usage: 'flowloom lock list',
    summary: 'held locks and waiters',
    options: {},
    load: async () => (await import('./commands/lock.ts')).list,
  },
  'lock run': {
    usage: 'flowloom lock run RESOURCE... [--wait 60s] [--lease 60s] -- COMMAND [ARGS...]',
    summary: 'run a command while holding locks (e.g. git around a commit)',
    options: { wait: str, lease: str, note: str },
    passthrough: true,
    load: async () => (await import('./commands/lock.ts')).run,
  },
  doctor: {
    usage: 'flowloom doctor [--fix]',
    summary: 'check the state directory; --fix sets damaged files aside and finishes interrupted moves',
    options: { fix: bool },
    load: async () => (await import('./commands/doctor.ts')).doctor,
  },
  demo: {
    usage: 'flowloom demo [--keep]',
    summary: 'a guided run in a temporary directory: a master, two agents, tasks and a lock conflict',
    options: { keep: bool },
    load: async () => (await import('./commands/demo.ts')).demo,
  },
};

const GROUPS = new Set(['task', 'lock']);

/** Exit codes: 0 ok, 1 error, 2 usage, 3 nothing available / conflict / timed out. */
export function exitCodeFor(code: ErrorCode): number {
  switch (code) {
    case ErrorCode.INVALID_INPUT:
      return 2;
    case ErrorCode.NOTHING_AVAILABLE:
    case ErrorCode.LOCK_HELD:
    case ErrorCode.TIMEOUT:
    case ErrorCode.CONFLICT:
      return 3;
    default:
      return 1;
  }
}

function helpText(): string {
  const lines = ['Usage: flowloom <command> [options]', '', 'Commands:'];
  for (const [name, c] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(14)} ${c.summary}`);
  lines.push(
    '',
    'Global options: --json (one JSON document), --session ID (or FLOWLOOM_SESSION), --dir DIR (or FLOWLOOM_DIR), --debug, -h/--help',
    'Exit codes: 0 ok, 1 error, 2 usage error, 3 nothing available / busy / timed out.',
  );
  return lines.join('\n');
}

async function main(argv: string[]): Promise<number> {
  const wantsJson = argv.includes('--json');
  const debug = argv.includes('--debug');
  let split = argv.indexOf('--');
  const head = split >= 0 ? argv.slice(0, split) : argv;
  const tail = split >= 0 ? argv.slice(split + 1) : [];
  const wordAt = commandWordIndexes(head);
  const words = wordAt.map((i) => head[i] as string);
  const first = words[0];
  if (head.includes('--version')) {
    process.stdout.write('flowloom 0.1.0\n');
    return 0;
  }
  if (
    first === undefined ||
    first === 'help' ||
    (head.length && (head[0] === '--help' || head[0] === '-h'))
  ) {
    process.stdout.write(`${helpText()}\n`);
    return first === undefined && !head.includes('--help') && !head.includes('-h') ? 2 : 0;
  }
  let name = first;
  if (GROUPS.has(first)) name = `${first} ${words[1] ?? ''}`.trim();
  const cmd = COMMANDS[name];
  if (!cmd) {
    const group = GROUPS.has(first)
      ? Object.keys(COMMANDS)
          .filter((k) => k.startsWith(`${first} `))
          .join(', ')
      : '';
    return usageError(
      wantsJson,
      GROUPS.has(first) ? `"${name}" needs a subcommand: ${group}` : `unknown command "${first}"`,
      'run `flowloom --help` for the list',
    );
  }
  let parsed: ReturnType<typeof parseArgs>;
  try {
    // Drop the command words themselves (by position: a flag value may spell the same word) before parsing.
    const drop = new Set(wordAt.slice(0, name.split(' ').length));
    const rest = head.filter((_, i) => !drop.has(i));
    parsed = parseArgs({
      args: rest,
      options: { ...GLOBAL, ...cmd.options },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    return usageError(
      wantsJson,
      (e as Error).message.split('\n')[0] ?? 'bad arguments',
      `usage: ${cmd.usage}`,
    );
  }
  const values = parsed.values as Values;
  if (values.help) {
    process.stdout.write(`${cmd.usage}\n  ${cmd.summary}\n`);
    return 0;
  }
  if (cmd.passthrough) parsed.positionals.push('--', ...tail);
  else if (split >= 0) return usageError(wantsJson, `"${name}" does not take "--"`, `usage: ${cmd.usage}`);
  split = -1;
  const ctx = new CliContext({
    json: values.json === true,
    debug,
    dir: values.dir as string | undefined,
    session: values.session as string | undefined,
    env: process.env,
    cwd: process.cwd(),
  });
  try {
    const run = await cmd.load();
    return (await run(ctx, values, parsed.positionals)) ?? 0;
  } catch (e) {
    return reportError(ctx.json, debug, e, cmd.usage);
  } finally {
    await ctx.close().catch(() => undefined);
  }
}

/**
 * Positions of the command words (`status`, or `task add`): the first non-flag arguments, skipping the
 * values of string options written before them (`flowloom --dir d --session a status`).
 */
function commandWordIndexes(head: string[]): number[] {
  const takesValue = (opts: Options) =>
    Object.entries(opts)
      .filter(([, o]) => o.type === 'string')
      .map(([k]) => k);
  const valued = new Set(takesValue(GLOBAL));
  const out: number[] = [];
  for (let i = 0; i < head.length && out.length < 2; i++) {
    const a = head[i] as string;
    if (a.startsWith('-')) {
      if (a.startsWith('--') && !a.includes('=') && valued.has(a.slice(2))) i++;
      continue;
    }
    out.push(i);
    if (out.length === 1 && !GROUPS.has(a)) break;
    // Inside a group, options of its subcommands may come before the subcommand word.
    for (const [k, c] of Object.entries(COMMANDS))
      if (k.startsWith(`${a} `)) for (const n of takesValue(c.options)) valued.add(n);
  }
  return out;
}

/** Errors print one line: messages quoting file content or parser output may contain newlines. */
function flat(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, ' ');
}

function usageError(json: boolean, message: string, hint: string): number {
  return reportError(json, false, new FlowLoomError(ErrorCode.INVALID_INPUT, message, { hint }), '');
}

function reportError(json: boolean, debug: boolean, e: unknown, usage: string): number {
  if (e instanceof FlowLoomError) {
    process.stderr.write(`flowloom: ${flat(e.oneLine())}\n`);
    if (debug && e.stack) process.stderr.write(`${e.stack}\n`);
    if (json)
      process.stdout.write(
        `${JSON.stringify({ error: { code: e.code, message: e.message, hint: e.hint ?? null, ...e.details } })}\n`,
      );
    void usage;
    return exitCodeFor(e.code);
  }
  const err = e as Error;
  process.stderr.write(
    `flowloom: internal error: ${flat(err?.message ?? String(e))} (run again with --debug for details)\n`,
  );
  if (debug && err?.stack) process.stderr.write(`${err.stack}\n`);
  if (json)
    process.stdout.write(
      `${JSON.stringify({ error: { code: ErrorCode.INTERNAL, message: err?.message ?? String(e), hint: null } })}\n`,
    );
  return 1;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.stderr.write(`flowloom: internal error: ${(e as Error).message}\n`);
    process.exitCode = 1;
  },
);
