import { invalidInput } from '../core/errors.ts';

/** Parses a duration: `10` (seconds), `500ms`, `10s`, `2m`, `1h`. Returns milliseconds. */
export function parseDuration(flag: string, value: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value.trim());
  if (!m)
    throw invalidInput(
      `--${flag} "${value}" is not a duration`,
      'use seconds (10) or a unit: 500ms, 10s, 2m, 1h',
    );
  const n = Number(m[1]);
  const unit = m[2] ?? 's';
  const ms = unit === 'ms' ? n : unit === 's' ? n * 1000 : unit === 'm' ? n * 60_000 : n * 3_600_000;
  if (!Number.isFinite(ms) || ms > 7 * 24 * 3_600_000)
    throw invalidInput(`--${flag} "${value}" is too long`, 'use at most 7 days');
  return Math.round(ms);
}

/** Parses a whole number flag within bounds. */
export function parseIntFlag(flag: string, value: string, min: number, max: number): number {
  if (!/^-?\d+$/.test(value.trim()))
    throw invalidInput(`--${flag} "${value}" is not a whole number`, `use a number from ${min} to ${max}`);
  const n = Number(value);
  if (n < min || n > max)
    throw invalidInput(`--${flag} ${n} is out of range`, `use a number from ${min} to ${max}`);
  return n;
}

const PRIORITIES: Record<string, number> = { low: -100, normal: 0, high: 100, urgent: 500 };

/** Parses `--priority`: a number or low|normal|high|urgent. */
export function parsePriority(value: string): number {
  const named = PRIORITIES[value.trim().toLowerCase()];
  if (named !== undefined) return named;
  if (!/^-?\d+$/.test(value.trim())) {
    throw invalidInput(
      `--priority "${value}" is not a priority`,
      'use a whole number from -999 to 999, or low|normal|high|urgent',
    );
  }
  return parseIntFlag('priority', value, -999, 999);
}

/** Splits comma-separated lists, also accepting repeated flags. */
export function parseList(values: string | string[] | undefined): string[] {
  if (values === undefined) return [];
  const arr = Array.isArray(values) ? values : [values];
  return arr
    .flatMap((v) => v.split(','))
    .map((v) => v.trim())
    .filter(Boolean);
}
