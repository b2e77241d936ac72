import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { ErrorCode, FlowLoomError } from '../../src/core/errors.ts';
import {
  fileResource,
  isGlob,
  normalizeResource,
  resourceMatches,
  resourcesOverlap,
} from '../../src/core/resourcePattern.ts';

describe('normalizeResource', () => {
  const cases: [input: string, expected: string, root?: string][] = [
    ['file:src/auth/login.ts', 'file:src/auth/login.ts'],
    ['  file:src/auth/**  ', 'file:src/auth/**'],
    ['file:src/auth/', 'file:src/auth/**'],
    ['file:src/**/', 'file:src/**'],
    ['file:./src//auth/./login.ts', 'file:src/auth/login.ts'],
    ['file:src\\auth\\login.ts', 'file:src/auth/login.ts'],
    ['file:src/a/../b.ts', 'file:src/b.ts'],
    ['file:src/auth/..', 'file:src/**'],
    ['file:src/*/x/../y.ts', 'file:src/*/y.ts'],
    ['file:.', 'file:**'],
    ['file:./', 'file:**'],
    ['file:src/..', 'file:**'],
    ['file:docs/{a,b}.md', 'file:docs/{a,b}.md'],
    ['FILE:src/*.ts', 'file:src/*.ts'],
    ['git', 'git'],
    ['GIT', 'git'],
    ['git:', 'git'],
    ['deploy', 'deploy'],
    ['api:github', 'api:github'],
    ['db:migrations/*', 'db:migrations/*'],
    ['db:a//b/', 'db:a//b/'],
    ['my-kind_2:x:y', 'my-kind_2:x:y'],
    ['file:/repo/src/a.ts', 'file:src/a.ts', '/repo'],
    ['file:/repo/src/a.ts', 'file:src/a.ts', '/repo/'],
    ['file:/repo/src/', 'file:src/**', '/repo'],
    ['file:/repo', 'file:**', '/repo'],
    ['file:/repo/x/../src/*.ts', 'file:src/*.ts', '/repo'],
    ['file:src/a.ts', 'file:src/a.ts', '/repo'],
    ['file:C:\\repo\\src\\a.ts', 'file:src/a.ts', 'c:\\repo'],
    ['file:/a.ts', 'file:a.ts', '/'],
    [`file:${'a'.repeat(507)}`, `file:${'a'.repeat(507)}`],
  ];
  for (const [input, expected, root] of cases) {
    test(`${JSON.stringify(input).slice(0, 60)}${root ? ` (root ${root})` : ''} -> ${expected.slice(0, 40)}`, () => {
      assert.equal(normalizeResource(input, root === undefined ? {} : { root }), expected);
    });
  }

  test('is idempotent', () => {
    for (const [input, , root] of cases) {
      const once = normalizeResource(input, root === undefined ? {} : { root });
      assert.equal(normalizeResource(once), once);
    }
  });

  const errors: [input: string, message: string, root?: string][] = [
    ['file:../x', 'resource "file:../x" escapes the repository: use a path inside it'],
    ['file:src/../../x', 'resource "file:src/../../x" escapes the repository: use a path inside it'],
    [
      '',
      'resource "" is empty: use "<kind>:<name>" such as "file:src/auth/**", or a bare kind such as "git"',
    ],
    [
      '   ',
      'resource "" is empty: use "<kind>:<name>" such as "file:src/auth/**", or a bare kind such as "git"',
    ],
    ['file:', 'resource "file:" names no file: use a path such as "file:src/auth/**"'],
    ['file', 'resource "file" names no file: use a path such as "file:src/auth/**"'],
    [
      'file:/etc/passwd',
      'resource "file:/etc/passwd" is an absolute path: use a path relative to the repository root',
    ],
    [
      'file:/etc/passwd',
      'resource "file:/etc/passwd" is outside the repository "/repo": use a path inside it',
      '/repo',
    ],
    [
      'file:/repo2/x',
      'resource "file:/repo2/x" is outside the repository "/repo": use a path inside it',
      '/repo',
    ],
    [
      'file:/repo/../x',
      'resource "file:/repo/../x" is outside the repository "/repo": use a path inside it',
      '/repo',
    ],
    ['file:x', 'root "repo" is not an absolute path: pass the repository\'s absolute path', 'repo'],
    [
      'Fo o:x',
      'resource "Fo o:x" has an invalid kind "Fo o": use 1-32 lowercase letters, digits, "-" or "_"',
    ],
    [':x', 'resource ":x" has an invalid kind "": use 1-32 lowercase letters, digits, "-" or "_"'],
    [
      `${'k'.repeat(33)}:x`,
      `resource "${'k'.repeat(33)}:x" has an invalid kind "${'k'.repeat(33)}": use 1-32 lowercase letters, digits, "-" or "_"`,
    ],
    ['file:src/*/../x', 'resource "file:src/*/../x" has ".." after a wildcard: write the path without it'],
    ['file:src/[ab', 'resource "file:src/[ab" has an unclosed "[": close the class with "]"'],
    ['file:src/[]', 'resource "file:src/[]" has an unclosed "[": close the class with "]"'],
    ['file:src/{a,b', 'resource "file:src/{a,b" has an unclosed "{": close it with "}"'],
    ['db:{a,{b}', 'resource "db:{a,{b}" has an unclosed "{": close it with "}"'],
    ['file:[a/b]', 'resource "file:[a/b]" has "/" inside "[...]": move it out of the class'],
    ['file:[z-a].ts', 'resource "file:[z-a].ts" has a reversed range "z-a" in "[...]": write it low to high'],
    [
      'file:{..,a}/x',
      'resource "file:{..,a}/x" has "." or ".." inside "{...}": write each alternative as a plain path',
    ],
    [
      'file:a\u0000b',
      'resource "file:a\\u0000b" contains a control character: use printable characters only',
    ],
    ['file:a\nb', 'resource "file:a\\nb" contains a control character: use printable characters only'],
    ['file:a\u0085', 'resource "file:a\\u0085" contains a control character: use printable characters only'],
    ['file:a\ud800b', 'resource "file:a\\ud800b" contains an unpaired surrogate: use valid Unicode text'],
    ['file:a\udc00', 'resource "file:a\\udc00" contains an unpaired surrogate: use valid Unicode text'],
    [
      `file:${'a'.repeat(508)}`,
      `resource "file:${'a'.repeat(72)}..." is 513 characters long: use at most 512`,
    ],
    [
      `file:${'a'.repeat(506)}/`,
      `resource "file:${'a'.repeat(72)}..." is 514 characters long: use at most 512`,
    ],
  ];
  for (const [input, message, root] of errors) {
    test(`rejects ${JSON.stringify(input).slice(0, 50)}${root ? ` (root ${root})` : ''}`, () => {
      assert.throws(
        () => normalizeResource(input, root === undefined ? {} : { root }),
        (e: unknown) => {
          assert.ok(e instanceof FlowLoomError);
          assert.equal(e.code, ErrorCode.INVALID_INPUT);
          assert.equal(e.message, message);
          assert.ok(!e.message.includes('\n'), 'message is one line');
          return true;
        },
      );
    });
  }

  test('accepts a well-formed surrogate pair and non-ASCII names', () => {
    assert.equal(normalizeResource('file:docs/😀/é.md'), 'file:docs/😀/é.md');
  });
});

describe('fileResource', () => {
  test('prefixes file: and normalizes', () => {
    assert.equal(fileResource('src/auth/'), 'file:src/auth/**');
    assert.equal(fileResource('/repo/src/a.ts', '/repo'), 'file:src/a.ts');
    assert.throws(() => fileResource('../x'), /escapes the repository/);
  });
});

describe('isGlob', () => {
  const cases: [string, boolean][] = [
    ['src/auth/login.ts', false],
    ['src/*.ts', true],
    ['src/**', true],
    ['a?', true],
    ['[ab]', true],
    ['{a,b}', true],
    ['a]b}c,d', false],
    ['', false],
  ];
  for (const [name, expected] of cases) {
    test(`${JSON.stringify(name)} -> ${expected}`, () => assert.equal(isGlob(name), expected));
  }
});

describe('resourcesOverlap', () => {
  const cases: [string, string, boolean][] = [
    ['file:src/auth/**', 'file:src/auth/login.ts', true],
    ['file:src/auth/**', 'file:src/auth', true],
    ['file:src/auth/**', 'file:src/authx/a.ts', false],
    ['file:src/*.ts', 'file:src/a/b.ts', false],
    ['file:src/*.ts', 'file:src/b.ts', true],
    ['file:src/**', 'file:src/a/b.ts', true],
    ['file:src/**/x.ts', 'file:src/*/x.ts', true],
    ['file:src/**/x.ts', 'file:src/x.ts', true],
    ['file:src/**/x.ts', 'file:src/*/y.ts', false],
    ['file:**/a/**', 'file:**/b/**', true],
    ['file:*/a', 'file:a/*/b', false],
    ['file:*.ts', 'file:*.js', false],
    ['file:a*b', 'file:*c*', true],
    ['file:a*', 'file:*b', true],
    ['file:a*a', 'file:a', false],
    ['file:a?', 'file:ab*', true],
    ['file:a?', 'file:a', false],
    ['file:??', 'file:a*b*c', false],
    ['file:[a-c]x', 'file:bx', true],
    ['file:[a-c]x', 'file:dx', false],
    ['file:[!a]x', 'file:ax', false],
    ['file:[!a]x', 'file:bx', true],
    ['file:[^a]x', 'file:ax', false],
    ['file:[ab]', 'file:[bc]', true],
    ['file:[ab]', 'file:[cd]', false],
    ['file:[!ab]', 'file:[ab]', false],
    ['file:[!a]', 'file:[!b]', true],
    ['file:[]a]', 'file:]', true],
    ['file:**', 'file:anything/at/all.ts', true],
    ['file:**', 'file:*.md', true],
    ['file:docs/{a,b}.md', 'file:docs/b.md', true],
    ['file:docs/{a,b}.md', 'file:docs/c.md', false],
    ['file:{src,test}/**', 'file:test/x.ts', true],
    ['file:{a,b/c}/x', 'file:b/*/x', true],
    ['file:{a,{b,c}}.ts', 'file:c.ts', true],
    ['file:src/a.ts', 'file:src/a.ts', true],
    ['file:src/a.ts', 'file:src/b.ts', false],
    ['git', 'git', true],
    ['git', 'file:git', false],
    ['git', 'git:x', false],
    ['api:github', 'api:github', true],
    ['api:github', 'api:gitlab', false],
    ['api:*', 'api:github', true],
    ['api:*', 'db:github', false],
    ['db:migrations/*', 'db:migrations/001', true],
    ['db:migrations/*', 'db:seeds/001', false],
    ['x:😀?', 'x:😀é', true],
    ['x:?', 'x:😀', true],
  ];
  for (const [a, b, expected] of cases) {
    test(`${a} vs ${b} -> ${expected}`, () => {
      assert.equal(resourcesOverlap(a, b), expected);
      assert.equal(resourcesOverlap(b, a), expected, 'symmetric');
    });
  }

  test('a pattern that matches nothing overlaps nothing, not even itself', () => {
    const empty = 'x:[! -\u{10ffff}]';
    assert.equal(resourcesOverlap(empty, empty), false);
    assert.equal(resourcesOverlap(empty, 'x:*'), false);
    assert.equal(resourcesOverlap('x:**', `x:a/${empty.slice(2)}/b`), false);
  });

  test('up to 256 brace alternatives are exact; more are assumed to overlap', () => {
    const pattern = (n: number): string => `x:${'{a,b}'.repeat(n)}`;
    assert.equal(resourcesOverlap(pattern(8), 'x:zzz'), false);
    assert.equal(resourcesOverlap(pattern(8), `x:${'ab'.repeat(4)}`), true);
    assert.equal(resourcesOverlap(pattern(9), 'x:zzz'), true);
    assert.equal(resourceMatches(pattern(9), 'x:zzz'), true);
    assert.equal(resourcesOverlap(pattern(9), 'y:zzz'), false, 'kinds still differ');
  });

  test('long adversarial patterns stay fast', () => {
    const a = `x:${'*a'.repeat(200)}`;
    const b = `x:${'a*'.repeat(199)}b`;
    const c = `x:${'**/a/'.repeat(80)}b`;
    const d = `x:${'*/'.repeat(200)}b`;
    const started = performance.now();
    assert.equal(resourcesOverlap(a, b), false);
    assert.equal(resourcesOverlap(a, `x:${'a'.repeat(300)}`), true);
    assert.equal(resourcesOverlap(c, d), true);
    assert.equal(resourcesOverlap(c, `x:${'a/'.repeat(79)}b`), false);
    assert.ok(performance.now() - started < 1000);
  });

  test('rejects broken glob syntax with the resource quoted', () => {
    assert.throws(
      () => resourcesOverlap('file:[ab', 'file:a'),
      /^FlowLoomError: resource "file:\[ab" has an unclosed "\["/,
    );
  });
});

describe('resourceMatches', () => {
  const cases: [string, string, boolean][] = [
    ['file:src/auth/**', 'file:src/auth/login.ts', true],
    ['file:src/auth/**', 'file:src/other.ts', false],
    ['file:src/*.ts', 'file:src/a.ts', true],
    ['file:src/*.ts', 'file:src/a/b.ts', false],
    ['file:docs/{a,b}.md', 'file:docs/a.md', true],
    ['file:src/a.ts', 'file:src/a.ts', true],
    ['git', 'git', true],
    ['git', 'api:git', false],
    // The concrete side is taken literally: its `*` is just a character.
    ['file:src/*', 'file:src/*', true],
    ['file:src/a', 'file:src/*', false],
  ];
  for (const [pattern, concrete, expected] of cases) {
    test(`${pattern} matches ${concrete} -> ${expected}`, () => {
      assert.equal(resourceMatches(pattern, concrete), expected);
    });
  }
});

// ---------------------------------------------------------------------------------------------------
// Properties. Patterns are built from a tiny alphabet so that brute force over every short concrete
// name is a complete check. Kind `x` keeps names opaque (no file-path normalization).
// ---------------------------------------------------------------------------------------------------

/** Tokens whose every match needs at most one character each: witnesses stay short. */
const SIMPLE_TOKENS = ['a', 'b', '/', '*', '?', '**', '[ab]', '[!a]'];
const ALL_TOKENS = [...SIMPLE_TOKENS, '{a,b}', '{a/b,*}', '{,b}'];

const patternOf = (tokens: readonly string[], maxTokens: number): fc.Arbitrary<string> =>
  fc.array(fc.constantFrom(...tokens), { maxLength: maxTokens }).map((parts) => parts.join(''));
const concreteName = fc.string({ unit: fc.constantFrom('a', 'b', '/'), maxLength: 6 });

/** Every string over {a, b, /} up to `maxLength` characters. */
function allNames(maxLength: number): string[] {
  const out = [''];
  let layer = [''];
  for (let n = 0; n < maxLength; n++) {
    layer = layer.flatMap((prefix) => ['a', 'b', '/'].map((c) => prefix + c));
    out.push(...layer);
  }
  return out;
}
const NAMES_UP_TO_5 = allNames(5);
const NAMES_UP_TO_6 = allNames(6);

/**
 * An independent matcher: expand braces, then one regular expression per alternative over '/' + name,
 * where each segment is '/' + its pattern and a `**` segment is any number of '/'-led segments.
 */
function oracleMatches(pattern: string, name: string): boolean {
  return expandOracle(pattern).some((alt) => segmentsRegex(alt).test(`/${name}`));
}
function expandOracle(pattern: string): string[] {
  const group = /\{([^{}]*)\}/.exec(pattern);
  if (group === null) return [pattern];
  const before = pattern.slice(0, group.index);
  const after = pattern.slice(group.index + group[0].length);
  return group[1]!.split(',').flatMap((alt) => expandOracle(before + alt + after));
}
function segmentsRegex(pattern: string): RegExp {
  const body = pattern
    .split('/')
    .map((segment) => (segment === '**' ? '(?:/[^/]*)*' : `/${segmentRegex(segment)}`))
    .join('');
  return new RegExp(`^${body}$`, 'u');
}
function segmentRegex(segment: string): string {
  return segment
    .replace(/\[!/g, '[^/') // a negated class never matches '/'
    .replace(/\*+/g, '[^/]*')
    .replace(/\?/g, '[^/]');
}

describe('properties', () => {
  test('(a) overlap is symmetric', () => {
    fc.assert(
      fc.property(patternOf(ALL_TOKENS, 6), patternOf(ALL_TOKENS, 6), (p, q) => {
        assert.equal(resourcesOverlap(`x:${p}`, `x:${q}`), resourcesOverlap(`x:${q}`, `x:${p}`));
      }),
      { numRuns: 500 },
    );
  });

  test('resourceMatches agrees with an independent regular-expression matcher', () => {
    fc.assert(
      fc.property(patternOf(ALL_TOKENS, 6), concreteName, (p, name) => {
        assert.equal(resourceMatches(`x:${p}`, `x:${name}`), oracleMatches(p, name));
      }),
      { numRuns: 1000 },
    );
  });

  test('(b) soundness: a name matching both patterns means they overlap', () => {
    fc.assert(
      fc.property(patternOf(ALL_TOKENS, 4), patternOf(ALL_TOKENS, 4), (p, q) => {
        const witness = NAMES_UP_TO_5.find(
          (n) => resourceMatches(`x:${p}`, `x:${n}`) && resourceMatches(`x:${q}`, `x:${n}`),
        );
        if (witness !== undefined)
          assert.equal(resourcesOverlap(`x:${p}`, `x:${q}`), true, `witness ${witness}`);
      }),
      { numRuns: 300 },
    );
  });

  test('(b) exactness: with up to 3 one-character tokens a side, overlap iff a name of <= 6 chars matches both', () => {
    // Each step of the product automaton consumes a token of one side, so a shortest common
    // name has at most as many characters as the two patterns have one-character tokens.
    fc.assert(
      fc.property(patternOf(SIMPLE_TOKENS, 3), patternOf(SIMPLE_TOKENS, 3), (p, q) => {
        const common = NAMES_UP_TO_6.some((n) => oracleMatches(p, n) && oracleMatches(q, n));
        assert.equal(resourcesOverlap(`x:${p}`, `x:${q}`), common);
      }),
      { numRuns: 300 },
    );
  });

  test('(c) for concrete names, overlap is equality', () => {
    const name = fc.string({ unit: fc.constantFrom('a', 'b', '/', '.', ']', '}', ','), maxLength: 5 });
    fc.assert(
      fc.property(name, name, fc.boolean(), (s, t, same) => {
        const other = same ? s : t;
        assert.equal(resourcesOverlap(`x:${s}`, `x:${other}`), s === other);
        assert.equal(resourceMatches(`x:${s}`, `x:${other}`), s === other);
      }),
      { numRuns: 500 },
    );
  });

  test('(d) a pattern that matches some name overlaps itself', () => {
    fc.assert(
      fc.property(patternOf(ALL_TOKENS, 6), (p) => {
        fc.pre(NAMES_UP_TO_5.some((n) => oracleMatches(p, n)));
        assert.equal(resourcesOverlap(`x:${p}`, `x:${p}`), true);
      }),
      { numRuns: 300 },
    );
  });

  test('normalizing file resources is idempotent and never yields "." or ".." segments', () => {
    const path = fc
      .array(fc.constantFrom('a', 'b', '.', '..', '', '*', '**', '{a,b}'), { minLength: 1, maxLength: 6 })
      .map((segments) => segments.join('/'));
    fc.assert(
      fc.property(path, (p) => {
        let once: string;
        try {
          once = fileResource(p);
        } catch (e) {
          assert.ok(e instanceof FlowLoomError && e.code === ErrorCode.INVALID_INPUT);
          return;
        }
        assert.equal(normalizeResource(once), once);
        const segments = once.slice('file:'.length).split('/');
        assert.ok(
          segments.every((s) => s !== '' && s !== '.' && s !== '..'),
          once,
        );
      }),
      { numRuns: 500 },
    );
  });
});
