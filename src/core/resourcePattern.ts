/**
 * Resource names and glob overlap: the rule behind "locks on overlapping resources conflict".
 *
 * Glossary
 * - resource: `<kind>:<name>` (`file:src/auth/**`, `api:github`, `db:migrations/*`), or a bare kind
 *   (`git`, `deploy`) whose name is empty.
 * - kind: 1-32 of `a-z 0-9 - _`. Resources of different kinds never overlap.
 * - name: a literal or a glob, split into `/`-segments. `*` is any run of characters inside one segment,
 *   `?` one character (never `/`), `**` as a whole segment is zero or more segments, `[abc]` `[a-z]`
 *   `[!x]` (or `[^x]`) are classes, `{a,b}` are alternatives, expanded before anything else. No escapes:
 *   `\` is a path separator in `file:` names and a plain character elsewhere.
 * - overlap: some concrete name matches both patterns. The answer is exact, except that a name with more
 *   than 256 brace alternatives is assumed to overlap everything of its kind: a lock must err towards
 *   conflict, never towards two holders.
 *
 * Pure: no I/O. Whether `file:src/auth` is a directory cannot be known here, so only a trailing `/`
 * marks a directory (`file:src/auth/` is `file:src/auth/**`).
 */
import { invalidInput } from './errors.ts';

const MAX_RESOURCE_LENGTH = 512;
const MAX_ALTERNATIVES = 256;
const KIND = /^[a-z0-9_-]{1,32}$/;
const GLOB_CHAR = /[*?[{]/;
const DRIVE = /^[A-Za-z]:(?:\/|$)/;
// A path that names a directory: trailing '/', or ending in a '.' or '..' segment.
const DIRECTORY_END = /(?:^|\/)\.{0,2}$/;

// ---------------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------------

/** Validates a resource and returns its canonical form; throws INVALID_INPUT with a one-line reason. */
export function normalizeResource(input: string, opts: { root?: string } = {}): string {
  if (typeof input !== 'string') throw invalidInput(`resource must be a string, got ${typeof input}`);
  // A bad root is a caller bug whatever the resource: report it even when this path does not need it.
  if (opts.root !== undefined) rootPath(opts.root);
  const text = input.trim();
  checkText(text);
  const { kind: rawKind, name } = splitResource(text);
  const kind = rawKind.toLowerCase();
  if (!KIND.test(kind)) {
    throw invalidInput(
      `resource ${quote(text)} has an invalid kind ${quote(rawKind)}: use 1-32 lowercase letters, digits, "-" or "_"`,
    );
  }
  const canonicalName = kind === 'file' ? normalizeFileName(name, text, opts.root) : name;
  // Parse once so bad glob syntax is reported here, at the edge, not later inside a lock check.
  if (isGlob(canonicalName)) compileName(canonicalName, text);
  const out = canonicalName === '' ? kind : `${kind}:${canonicalName}`;
  if (out.length > MAX_RESOURCE_LENGTH) throw tooLong(text, out.length);
  return out;
}

/** Whether some concrete resource matches both normalized resources (a lock on one blocks the other). */
export function resourcesOverlap(a: string, b: string): boolean {
  const x = splitResource(a);
  const y = splitResource(b);
  if (x.kind !== y.kind) return false;
  if (!isGlob(x.name) && !isGlob(y.name)) return x.name === y.name;
  const left = isGlob(x.name) ? compileName(x.name, a) : [literalPath(x.name)];
  const right = isGlob(y.name) ? compileName(y.name, b) : [literalPath(y.name)];
  if (left === TOO_MANY || right === TOO_MANY) return true;
  return left.some((p) => right.some((q) => pathsIntersect(p, q)));
}

/** Whether the concrete normalized resource `concrete` (taken literally) matches `pattern`. */
export function resourceMatches(pattern: string, concrete: string): boolean {
  const p = splitResource(pattern);
  const c = splitResource(concrete);
  if (p.kind !== c.kind) return false;
  if (!isGlob(p.name)) return p.name === c.name;
  const alternatives = compileName(p.name, pattern);
  if (alternatives === TOO_MANY) return true;
  const target = literalPath(c.name);
  return alternatives.some((alt) => pathsIntersect(alt, target));
}

/** Whether a name contains glob syntax (`*`, `?`, `[`, `{`). */
export function isGlob(name: string): boolean {
  return GLOB_CHAR.test(name);
}

/** `normalizeResource('file:' + path, { root })`. */
export function fileResource(path: string, root?: string): string {
  return normalizeResource('file:' + path, { root });
}

// ---------------------------------------------------------------------------------------------------
// Validation and canonical form
// ---------------------------------------------------------------------------------------------------

function splitResource(resource: string): { kind: string; name: string } {
  const colon = resource.indexOf(':');
  return colon < 0
    ? { kind: resource, name: '' }
    : { kind: resource.slice(0, colon), name: resource.slice(colon + 1) };
}

/** Quotes a value for a one-line message: escapes keep control characters from breaking the line. */
function quote(value: string): string {
  const shown = JSON.stringify(value.length > 80 ? `${value.slice(0, 77)}...` : value);
  // JSON leaves DEL, C1 controls and the Unicode line separators raw; they would still split a log line.
  return shown.replace(
    /[\u007f-\u009f\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

function tooLong(text: string, length: number): Error {
  return invalidInput(
    `resource ${quote(text)} is ${length} characters long: use at most ${MAX_RESOURCE_LENGTH}`,
  );
}

function checkText(text: string): void {
  if (text === '') {
    throw invalidInput(
      'resource "" is empty: use "<kind>:<name>" such as "file:src/auth/**", or a bare kind such as "git"',
    );
  }
  if (text.length > MAX_RESOURCE_LENGTH) throw tooLong(text, text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) {
      throw invalidInput(
        `resource ${quote(text)} contains a control character: use printable characters only`,
      );
    }
    if (c < 0xd800 || c > 0xdfff) continue;
    const next = text.charCodeAt(i + 1);
    if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
      i++; // a well-formed pair: skip its low half
      continue;
    }
    throw invalidInput(`resource ${quote(text)} contains an unpaired surrogate: use valid Unicode text`);
  }
}

function normalizeFileName(path: string, resource: string, root: string | undefined): string {
  if (path === '') {
    throw invalidInput(`resource ${quote(resource)} names no file: use a path such as "file:src/auth/**"`);
  }
  const slashed = path.replaceAll('\\', '/');
  const segments = isAbsolutePath(slashed)
    ? relativeToRoot(slashed, resource, root)
    : resolveDots(slashed.split('/'), resource, 'escape');
  // The repository root itself is a directory: locking it locks everything.
  if (segments.length === 0) return '**';
  if (DIRECTORY_END.test(slashed) && segments.at(-1) !== '**') segments.push('**');
  const name = segments.join('/');
  rejectDotsInBraces(name, resource);
  return name;
}

function isAbsolutePath(path: string): boolean {
  return path.startsWith('/') || DRIVE.test(path);
}

/**
 * Drops empty and `.` segments and applies `..` lexically. Above the top, `..` either escapes the
 * repository (relative paths: an error) or stays at `/` (absolute paths, as the kernel does).
 */
function resolveDots(raw: readonly string[], resource: string, aboveTop: 'escape' | 'clamp'): string[] {
  const out: string[] = [];
  for (const segment of raw) {
    if (segment === '' || segment === '.') continue;
    if (segment !== '..') {
      out.push(segment);
      continue;
    }
    const top = out.at(-1);
    if (top === undefined) {
      if (aboveTop === 'clamp') continue;
      throw invalidInput(`resource ${quote(resource)} escapes the repository: use a path inside it`);
    }
    // `*/..` would be "the parent of whatever * matched": lexically it cancels, but `**/..` does not.
    if (isGlob(top)) {
      throw invalidInput(`resource ${quote(resource)} has ".." after a wildcard: write the path without it`);
    }
    out.pop();
  }
  return out;
}

function relativeToRoot(path: string, resource: string, root: string | undefined): string[] {
  if (root === undefined) {
    throw invalidInput(
      `resource ${quote(resource)} is an absolute path: use a path relative to the repository root`,
    );
  }
  const base = rootPath(root);
  const target = splitAbsolute(path, resource);
  const inside =
    target !== undefined &&
    target.drive === base.drive &&
    base.segments.every((segment, i) => target.segments[i] === segment);
  if (!inside) {
    throw invalidInput(
      `resource ${quote(resource)} is outside the repository ${quote(root)}: use a path inside it`,
    );
  }
  return target.segments.slice(base.segments.length);
}

function rootPath(root: string): { drive: string; segments: string[] } {
  const base = splitAbsolute(root.replaceAll('\\', '/'));
  if (base === undefined) {
    throw invalidInput(`root ${quote(root)} is not an absolute path: pass the repository's absolute path`);
  }
  return base;
}

/** Splits an absolute path into its drive (`C:` or '') and resolved segments; undefined if relative. */
function splitAbsolute(path: string, resource?: string): { drive: string; segments: string[] } | undefined {
  if (!isAbsolutePath(path)) return undefined;
  const drive = DRIVE.test(path) ? path.slice(0, 2).toUpperCase() : '';
  const raw = path.slice(drive.length).split('/');
  // The root is a plain path, not a pattern: a directory named `*` in it is not a wildcard.
  const segments = resource === undefined ? resolveRootDots(raw) : resolveDots(raw, resource, 'clamp');
  return { drive, segments };
}

function resolveRootDots(raw: readonly string[]): string[] {
  const out: string[] = [];
  for (const segment of raw) {
    if (segment === '..') out.pop();
    else if (segment !== '' && segment !== '.') out.push(segment);
  }
  return out;
}

/**
 * `file:{..,a}/x` would expand to a path that escapes or is not canonical; `.` and `..` outside braces
 * were already resolved, so any left are inside (or glued to) a brace group.
 */
function rejectDotsInBraces(name: string, resource: string): void {
  if (!name.includes('{')) return;
  if (name.split(/[/{},]/).some((part) => part === '.' || part === '..')) {
    throw invalidInput(
      `resource ${quote(resource)} has "." or ".." inside "{...}": write each alternative as a plain path`,
    );
  }
}

// ---------------------------------------------------------------------------------------------------
// Character sets
// ---------------------------------------------------------------------------------------------------

/** Sorted, disjoint, inclusive code-point intervals, flattened: [lo0, hi0, lo1, hi1, ...]. */
type CharSet = readonly number[];

// What one character of a valid name can be: no controls, no surrogates, and never '/' inside a
// segment. Classes are cut down to this, so `[!a]` and `[!b]` intersect iff a real character is in both.
const ANY_CHAR: CharSet = [0x20, 0x2e, 0x30, 0x7e, 0xa0, 0xd7ff, 0xe000, 0x10ffff];
const MAX_CODE_POINT = 0x10ffff;

function intersectSets(a: CharSet, b: CharSet): number[] {
  const out: number[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const lo = Math.max(a[i]!, b[j]!);
    const hi = Math.min(a[i + 1]!, b[j + 1]!);
    if (lo <= hi) out.push(lo, hi);
    if (a[i + 1]! < b[j + 1]!) i += 2;
    else j += 2;
  }
  return out;
}

function setsIntersect(a: CharSet, b: CharSet): boolean {
  return intersectSets(a, b).length > 0;
}

function unionOfRanges(ranges: readonly (readonly [number, number])[]): number[] {
  const sorted = [...ranges].sort((x, y) => x[0] - y[0]);
  const out: number[] = [];
  for (const [lo, hi] of sorted) {
    const last = out.length - 1;
    if (last > 0 && lo <= out[last]! + 1) out[last] = Math.max(out[last]!, hi);
    else out.push(lo, hi);
  }
  return out;
}

function complementSet(set: CharSet): number[] {
  const out: number[] = [];
  let next = 0;
  for (let i = 0; i < set.length; i += 2) {
    if (set[i]! > next) out.push(next, set[i]! - 1);
    next = set[i + 1]! + 1;
  }
  if (next <= MAX_CODE_POINT) out.push(next, MAX_CODE_POINT);
  return out;
}

function codePoint(char: string): number {
  return char.codePointAt(0)!;
}

// ---------------------------------------------------------------------------------------------------
// Compiling names: braces -> alternatives -> segments -> tokens
// ---------------------------------------------------------------------------------------------------

/** A `*`, or one character drawn from a set (a literal, `?` or a class). */
type Token = { readonly star: true } | { readonly star: false; readonly set: CharSet };
type Segment =
  | { readonly globstar: true }
  | { readonly globstar: false; readonly tokens: readonly Token[]; readonly satisfiable: boolean };
type Path = readonly Segment[];

const STAR: Token = { star: true };
const ANY_ONE: Token = { star: false, set: ANY_CHAR };
const GLOBSTAR: Segment = { globstar: true };
const TOO_MANY = 'too-many';
type Alternatives = readonly Path[] | typeof TOO_MANY;

// Lock checks compare the same few patterns over and over; parsing is the costly part.
const compiledNames = new Map<string, Alternatives>();
const MAX_CACHED_NAMES = 1024;

/** Parses a glob name into its brace alternatives, or TOO_MANY; throws INVALID_INPUT on bad syntax. */
function compileName(name: string, resource: string): Alternatives {
  const cached = compiledNames.get(name);
  if (cached !== undefined) return cached;
  const chars = Array.from(name);
  const sequence = parseBraces(chars, resource);
  const result =
    countAlternatives(sequence) > MAX_ALTERNATIVES
      ? TOO_MANY
      : expandBraces(sequence).map((text) => toPath(text, resource));
  if (compiledNames.size >= MAX_CACHED_NAMES) compiledNames.clear();
  compiledNames.set(name, result);
  return result;
}

function literalPath(name: string): Path {
  return name.split('/').map((segment) => ({
    globstar: false,
    tokens: Array.from(segment, (char): Token => ({ star: false, set: [codePoint(char), codePoint(char)] })),
    satisfiable: true,
  }));
}

/** Plain glob text, or a `{...}` group of alternative sequences. */
type BraceNode = string | BraceGroup;
interface BraceGroup {
  readonly alternatives: readonly (readonly BraceNode[])[];
}

/** Splits a name into text and brace groups. Classes are skipped whole: `[{,]` holds no brace. */
function parseBraces(chars: readonly string[], resource: string): BraceNode[] {
  let i = 0;
  const sequence = (inGroup: boolean): BraceNode[] => {
    const nodes: BraceNode[] = [];
    let text = '';
    while (i < chars.length) {
      const c = chars[i]!;
      if (inGroup && (c === ',' || c === '}')) break;
      if (c === '[') {
        const end = scanClass(chars, i, resource).end;
        text += chars.slice(i, end).join('');
        i = end;
      } else if (c === '{') {
        if (text !== '') nodes.push(text);
        text = '';
        i++;
        nodes.push(group());
      } else {
        // Outside a group, `}` and `,` are plain characters, as in the shell.
        text += c;
        i++;
      }
    }
    if (text !== '') nodes.push(text);
    return nodes;
  };
  const group = (): BraceGroup => {
    const alternatives: BraceNode[][] = [];
    for (;;) {
      alternatives.push(sequence(true));
      const c = chars[i];
      i++;
      if (c === '}') return { alternatives };
      if (c !== ',') {
        throw invalidInput(`resource ${quote(resource)} has an unclosed "{": close it with "}"`);
      }
    }
  };
  return sequence(false);
}

/** How many alternatives a sequence expands to, saturating just above the cap. */
function countAlternatives(sequence: readonly BraceNode[]): number {
  let product = 1;
  for (const node of sequence) {
    if (typeof node === 'string') continue;
    let sum = 0;
    for (const alternative of node.alternatives)
      sum = Math.min(sum + countAlternatives(alternative), MAX_ALTERNATIVES + 1);
    product = Math.min(product * sum, MAX_ALTERNATIVES + 1);
  }
  return product;
}

function expandBraces(sequence: readonly BraceNode[]): string[] {
  let results = [''];
  for (const node of sequence) {
    if (typeof node === 'string') {
      results = results.map((prefix) => prefix + node);
    } else {
      const tails = node.alternatives.flatMap(expandBraces);
      results = results.flatMap((prefix) => tails.map((tail) => prefix + tail));
    }
  }
  return results;
}

function toPath(text: string, resource: string): Path {
  return text
    .split('/')
    .map((segment) => (segment === '**' ? GLOBSTAR : toSegment(Array.from(segment), resource)));
}

function toSegment(chars: readonly string[], resource: string): Segment {
  const tokens: Token[] = [];
  for (let i = 0; i < chars.length; ) {
    const c = chars[i]!;
    if (c === '*') {
      // `a**b` inside a segment is just `a*b`; one star token per run keeps the DP small.
      if (tokens.at(-1)?.star !== true) tokens.push(STAR);
      i++;
    } else if (c === '?') {
      tokens.push(ANY_ONE);
      i++;
    } else if (c === '[') {
      const scan = scanClass(chars, i, resource);
      tokens.push({ star: false, set: scan.set });
      i = scan.end;
    } else {
      tokens.push({ star: false, set: [codePoint(c), codePoint(c)] });
      i++;
    }
  }
  // A segment matches nothing if some class in it is empty (e.g. `[!\u0020-\u{10FFFF}]`).
  const satisfiable = tokens.every((t) => t.star || t.set.length > 0);
  return { globstar: false, tokens, satisfiable };
}

/** Reads the class starting at `chars[start] === '['`: its end (after `]`) and its character set. */
function scanClass(chars: readonly string[], start: number, resource: string): { end: number; set: CharSet } {
  let i = start + 1;
  const negated = chars[i] === '!' || chars[i] === '^';
  if (negated) i++;
  const ranges: [number, number][] = [];
  // A `]` right after `[` or `[!` is a member, as in POSIX: `[]a]` is `]` or `a`.
  for (let first = true; i < chars.length; first = false) {
    const c = chars[i]!;
    if (c === ']' && !first) {
      const members = unionOfRanges(ranges);
      const set = negated
        ? intersectSets(complementSet(members), ANY_CHAR)
        : intersectSets(members, ANY_CHAR);
      return { end: i + 1, set };
    }
    const high = chars[i + 2];
    const isRange = chars[i + 1] === '-' && high !== undefined && high !== ']';
    if (c === '/' || (isRange && high === '/')) {
      throw invalidInput(`resource ${quote(resource)} has "/" inside "[...]": move it out of the class`);
    }
    if (isRange) {
      if (codePoint(c) > codePoint(high)) {
        throw invalidInput(
          `resource ${quote(resource)} has a reversed range "${c}-${high}" in "[...]": write it low to high`,
        );
      }
      ranges.push([codePoint(c), codePoint(high)]);
      i += 3;
    } else {
      ranges.push([codePoint(c), codePoint(c)]);
      i++;
    }
  }
  throw invalidInput(`resource ${quote(resource)} has an unclosed "[": close the class with "]"`);
}

// ---------------------------------------------------------------------------------------------------
// Intersection: a product automaton walked by memoised DP. Every step advances at least one side, so
// there are no cycles and each (i, j) is decided once.
// ---------------------------------------------------------------------------------------------------

const UNKNOWN = 0;
const NO = 1;
const YES = 2;

/** Memoises `step` over (i, j) in [0..n] x [0..m]. */
function memoised(
  n: number,
  m: number,
  step: (i: number, j: number) => boolean,
): (i: number, j: number) => boolean {
  const memo = new Uint8Array((n + 1) * (m + 1));
  const visit = (i: number, j: number): boolean => {
    const key = i * (m + 1) + j;
    if (memo[key] !== UNKNOWN) return memo[key] === YES;
    const result = step(i, j);
    memo[key] = result ? YES : NO;
    return result;
  };
  return visit;
}

/** Whether some `/`-separated name matches both paths. */
function pathsIntersect(a: Path, b: Path): boolean {
  // `**` may swallow any segment the other side can produce (another `**` included, taken as empty).
  const swallowable = (s: Segment): boolean => s.globstar || s.satisfiable;
  const visit = memoised(a.length, b.length, (i, j) => {
    const x = a[i];
    const y = b[j];
    if (x === undefined && y === undefined) return true;
    if (x?.globstar && (visit(i + 1, j) || (y !== undefined && swallowable(y) && visit(i, j + 1))))
      return true;
    if (y?.globstar && (visit(i, j + 1) || (x !== undefined && swallowable(x) && visit(i + 1, j))))
      return true;
    if (x === undefined || y === undefined || x.globstar || y.globstar) return false;
    return segmentsIntersect(x.tokens, y.tokens) && visit(i + 1, j + 1);
  });
  return visit(0, 0);
}

/** Whether some single segment (no `/`) matches both token lists. */
function segmentsIntersect(p: readonly Token[], q: readonly Token[]): boolean {
  const visit = memoised(p.length, q.length, (i, j) => {
    const a = p[i];
    const b = q[j];
    if (a === undefined && b === undefined) return true;
    // A star may stop here (match nothing more)...
    if (a?.star && visit(i + 1, j)) return true;
    if (b?.star && visit(i, j + 1)) return true;
    if (a === undefined || b === undefined || (a.star && b.star)) return false;
    // ...or absorb the character the other side's single-character token takes.
    if (a.star) return b.star === false && setsIntersect(b.set, ANY_CHAR) && visit(i, j + 1);
    if (b.star) return setsIntersect(a.set, ANY_CHAR) && visit(i + 1, j);
    return setsIntersect(a.set, b.set) && visit(i + 1, j + 1);
  });
  return visit(0, 0);
}
