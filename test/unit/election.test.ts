import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { type Candidate, pickMaster, takesOver } from '../../src/core/election.ts';

const c = (id: string, mode: Candidate['mode'], rank: number, alive = true): Candidate => ({
  id,
  mode,
  rank,
  alive,
});

describe('election rule', () => {
  it('a later auto joiner takes over from a live implicit master', () => {
    assert.equal(
      takesOver({ id: 'a', explicit: false, rank: 1, alive: true }, { id: 'b', mode: 'auto', rank: 2 }),
      true,
    );
  });
  it('an auto joiner does not take over from an explicit master', () => {
    assert.equal(
      takesOver({ id: 'a', explicit: true, rank: 1, alive: true }, { id: 'b', mode: 'auto', rank: 2 }),
      false,
    );
  });
  it('an explicit claim beats an implicit master and a later explicit claim beats an earlier one', () => {
    assert.equal(
      takesOver({ id: 'a', explicit: false, rank: 5, alive: true }, { id: 'b', mode: 'master', rank: 2 }),
      true,
    );
    assert.equal(
      takesOver({ id: 'a', explicit: true, rank: 1, alive: true }, { id: 'b', mode: 'master', rank: 2 }),
      true,
    );
    assert.equal(
      takesOver({ id: 'a', explicit: true, rank: 3, alive: true }, { id: 'b', mode: 'master', rank: 2 }),
      false,
    );
  });
  it('an agent joiner never takes over a live master', () => {
    assert.equal(
      takesOver({ id: 'a', explicit: false, rank: 1, alive: true }, { id: 'b', mode: 'agent', rank: 9 }),
      false,
    );
  });
  it('an auto joiner that joined earlier than the live master does not take over (concurrent joins)', () => {
    assert.equal(
      takesOver({ id: 'b', explicit: false, rank: 7, alive: true }, { id: 'a', mode: 'auto', rank: 6 }),
      false,
    );
  });
  it('pickMaster prefers explicit, then auto, then agents, highest rank within a mode, live only', () => {
    assert.equal(pickMaster([c('a', 'auto', 1), c('b', 'agent', 9), c('m', 'master', 0)])?.id, 'm');
    assert.equal(pickMaster([c('a', 'auto', 1), c('b', 'agent', 9), c('d', 'auto', 4)])?.id, 'd');
    assert.equal(pickMaster([c('a', 'auto', 1, false), c('b', 'agent', 9), c('e', 'agent', 3)])?.id, 'b');
    assert.equal(pickMaster([c('a', 'auto', 1, false)]), null);
    assert.equal(pickMaster([c('a', 'auto', 1), c('d', 'auto', 4)], new Set(['d']))?.id, 'a');
  });
  it('property: pickMaster returns a live, non-excluded session that no other candidate beats', () => {
    const cand = fc.record({
      id: fc.string({ minLength: 1, maxLength: 3 }),
      mode: fc.constantFrom('auto', 'master', 'agent') as fc.Arbitrary<Candidate['mode']>,
      rank: fc.nat(100),
      alive: fc.boolean(),
    });
    fc.assert(
      fc.property(fc.uniqueArray(cand, { selector: (x) => x.rank, maxLength: 12 }), (xs) => {
        const p = pickMaster(xs);
        const live = xs.filter((x) => x.alive);
        if (live.length === 0) return p === null;
        if (p === null || !p.alive) return false;
        const order = { master: 2, auto: 1, agent: 0 };
        return live.every(
          (x) => order[x.mode] < order[p.mode] || (order[x.mode] === order[p.mode] && x.rank <= p.rank),
        );
      }),
    );
  });
  it('property: in any sequence of auto joins with increasing ranks, the last joiner ends as master', () => {
    fc.assert(
      fc.property(fc.array(fc.nat(1000), { minLength: 1, maxLength: 30 }), (order) => {
        // Joins are applied in any interleaving; each joiner re-reads and retries (CAS) until decided.
        let master: { id: string; explicit: boolean; rank: number; alive: boolean } | null = null;
        const joiners = order.map((_, i) => ({ id: `s${i}`, mode: 'auto' as const, rank: i + 1 }));
        const shuffled = [...joiners].sort((a, b) => (order[a.rank - 1] ?? 0) - (order[b.rank - 1] ?? 0));
        for (const j of shuffled) {
          if (master === null || takesOver(master, j))
            master = { id: j.id, explicit: false, rank: j.rank, alive: true };
        }
        return master?.rank === joiners.length;
      }),
    );
  });
});
