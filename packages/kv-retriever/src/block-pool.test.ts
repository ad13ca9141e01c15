import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { BlockPool, ROOT_PREFIX_HASH, hashPageTokens } from './block-pool.js';

/** Registers the full pages of `tokens` held in `pages`, as the engine does. */
function commitAll(pool: BlockPool, pages: number[], tokens: number[]): string[] {
  const hashes: string[] = [];
  let parent = ROOT_PREFIX_HASH;
  for (let i = 0; i < Math.floor(tokens.length / pool.pageSize); i++) {
    parent = hashPageTokens(parent, tokens, i * pool.pageSize, (i + 1) * pool.pageSize);
    hashes.push(parent);
    pool.commitFullPage(pages[i], parent);
  }
  return hashes;
}

describe('BlockPool allocation and refcounts', () => {
  it('hands out distinct pages and fails softly when full', () => {
    const pool = new BlockPool({ numPages: 4, pageSize: 2 });
    const a = pool.allocate(3);
    expect(a).not.toBeNull();
    expect(new Set(a).size).toBe(3);
    expect(pool.allocate(2)).toBeNull();
    expect(pool.usedPages).toBe(3);
    expect(pool.stats().allocationFailures).toBe(1);
    const b = pool.allocate(1) as number[];
    expect(a).not.toContain(b[0]);
    expect(pool.stats().usage).toBe(1);
    pool.verify();
  });

  it('frees a page only when its last reference goes', () => {
    const pool = new BlockPool({ numPages: 2, pageSize: 4 });
    const [p] = pool.allocate(1) as number[];
    pool.retain(p);
    expect(pool.refCount(p)).toBe(2);
    pool.release(p);
    expect(pool.usedPages).toBe(1);
    pool.release(p);
    expect(pool.usedPages).toBe(0);
    expect(() => pool.release(p)).toThrow(/unreferenced page/);
    expect(() => pool.retain(p)).toThrow(/free page/);
    expect(() => pool.refCount(9)).toThrow(/page: must be a page id in \[0, 2\)/);
    pool.verify();
  });

  it('rejects a bad pool size naming the field', () => {
    expect(() => new BlockPool({ numPages: 0, pageSize: 4 })).toThrow(/numKvPages/);
    expect(() => new BlockPool({ numPages: 4, pageSize: 0 })).toThrow(/pageSize/);
  });
});

describe('BlockPool prefix caching', () => {
  it('finds the longest cached full-page prefix and counts hits', () => {
    const pool = new BlockPool({ numPages: 8, pageSize: 4 });
    const tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    const pages = pool.allocate(3) as number[];
    commitAll(pool, pages, tokens);
    // Only the two full pages are named.
    expect(pool.stats().hashedPages).toBe(2);

    const same = pool.lookupPrefix([1, 2, 3, 4, 5, 6, 7, 8, 42]);
    expect(same.pages).toEqual(pages.slice(0, 2));
    expect(same.numTokens).toBe(8);
    const diverging = pool.lookupPrefix([1, 2, 3, 4, 5, 6, 0, 8]);
    expect(diverging.pages).toEqual(pages.slice(0, 1));
    // The chain: the same second page after a different first page is not a hit.
    expect(pool.lookupPrefix([9, 9, 9, 9, 5, 6, 7, 8]).pages).toEqual([]);
    expect(pool.lookupPrefix([1, 2, 3, 4, 5, 6, 7, 8], { maxTokens: 7 }).pages).toEqual(pages.slice(0, 1));

    const s = pool.stats();
    expect(s.prefixQueries).toBe(4);
    expect(s.prefixQueryTokens).toBe(9 + 8 + 8 + 7);
    expect(s.prefixHitTokens).toBe(8 + 4 + 0 + 4);
    expect(s.prefixHitPages).toBe(2 + 1 + 0 + 1);
  });

  it('keeps released hashed pages cached and evicts them LRU, tail first, only when needed', () => {
    const pool = new BlockPool({ numPages: 4, pageSize: 2 });
    const tokens = [1, 2, 3, 4, 5, 6];
    const pages = pool.allocate(3) as number[];
    commitAll(pool, pages, tokens);
    pool.releaseAll(pages);
    expect(pool.usedPages).toBe(0);
    expect(pool.stats().cachedFreePages).toBe(3);
    expect(pool.lookupPrefix(tokens).pages).toEqual(pages);

    // One free uncached page exists: taken before any eviction.
    pool.allocate(1);
    expect(pool.stats().evictions).toBe(0);
    // The next one evicts the tail of the prefix (released first), keeping the head findable.
    pool.allocate(1);
    expect(pool.stats().evictions).toBe(1);
    expect(pool.lookupPrefix(tokens).pages).toEqual(pages.slice(0, 2));
    pool.verify();
  });

  it('revives a cached page on retain so that allocation cannot evict it', () => {
    const pool = new BlockPool({ numPages: 2, pageSize: 2 });
    const pages = pool.allocate(2) as number[];
    commitAll(pool, pages, [7, 7, 8, 8]);
    pool.releaseAll(pages);
    const hit = pool.lookupPrefix([7, 7]);
    pool.retain(hit.pages[0]);
    expect(pool.usedPages).toBe(1);
    expect(pool.allocate(2)).toBeNull();
    const one = pool.allocate(1) as number[];
    expect(one).toEqual([pages[1]]);
    expect(pool.pageHash(pages[1])).toBeUndefined();
    expect(pool.lookupPrefix([7, 7]).pages).toEqual([pages[0]]);
    pool.verify();
  });

  it('does not register a hash twice', () => {
    const pool = new BlockPool({ numPages: 4, pageSize: 2 });
    const [a, b] = pool.allocate(2) as number[];
    const h = hashPageTokens(ROOT_PREFIX_HASH, [1, 2]);
    expect(pool.commitFullPage(a, h)).toBe(true);
    expect(pool.commitFullPage(b, h)).toBe(false);
    expect(pool.commitFullPage(a, 'other')).toBe(false);
    pool.release(b);
    expect(pool.stats().cachedFreePages).toBe(0);
  });

  it('forgets hashes on release when prefix caching is off', () => {
    const pool = new BlockPool({ numPages: 2, pageSize: 2, enablePrefixCaching: false });
    const pages = pool.allocate(1) as number[];
    expect(commitAll(pool, pages, [1, 2])).toHaveLength(1);
    pool.releaseAll(pages);
    expect(pool.lookupPrefix([1, 2]).pages).toEqual([]);
  });
});

describe('BlockPool copy-on-write', () => {
  it('writes a private page in place after dropping its hash, and copies a shared one', () => {
    const pool = new BlockPool({ numPages: 4, pageSize: 2 });
    const [priv, shared] = pool.allocate(2) as number[];
    commitAll(pool, [priv], [1, 2]);
    pool.retain(shared);
    const res = pool.prepareWrite([priv, shared]);
    expect(res).not.toBeNull();
    const { pages, copies } = res!;
    expect(pages[0]).toBe(priv);
    expect(pool.pageHash(priv)).toBeUndefined();
    expect(pages[1]).not.toBe(shared);
    expect(copies).toEqual([{ src: shared, dst: pages[1] }]);
    // Our reference moved to the copy; the other holder keeps the original.
    expect(pool.refCount(shared)).toBe(1);
    expect(pool.refCount(pages[1])).toBe(1);
    pool.verify();
  });

  it('copies a private hashed page when asked to keep the cached prefix', () => {
    const pool = new BlockPool({ numPages: 3, pageSize: 2 });
    const [p] = pool.allocate(1) as number[];
    commitAll(pool, [p], [5, 6]);
    const res = pool.prepareWrite([p], { keepCached: true })!;
    expect(res.copies).toEqual([{ src: p, dst: res.pages[0] }]);
    // The original is unreferenced now but still findable.
    expect(pool.refCount(p)).toBe(0);
    expect(pool.lookupPrefix([5, 6]).pages).toEqual([p]);
    pool.verify();
  });

  it('changes nothing when there is no room for the copies', () => {
    const pool = new BlockPool({ numPages: 2, pageSize: 2 });
    const [a, b] = pool.allocate(2) as number[];
    pool.retain(a);
    expect(pool.prepareWrite([a, b])).toBeNull();
    expect(pool.refCount(a)).toBe(2);
    expect(pool.refCount(b)).toBe(1);
    pool.verify();
  });
});

describe('BlockPool under random operations', () => {
  it('keeps its invariants and returns every page', () => {
    type Op = { kind: 'alloc'; n: number } | { kind: 'share'; i: number } | { kind: 'drop'; i: number } | { kind: 'cow'; i: number };
    const op = fc.oneof(
      fc.record({ kind: fc.constant('alloc' as const), n: fc.integer({ min: 1, max: 3 }) }),
      fc.record({ kind: fc.constant('share' as const), i: fc.nat() }),
      fc.record({ kind: fc.constant('drop' as const), i: fc.nat() }),
      fc.record({ kind: fc.constant('cow' as const), i: fc.nat() }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 2, maxLength: 12 }), (ops: Op[], tokens) => {
        const pool = new BlockPool({ numPages: 6, pageSize: 2 });
        // Each holder owns one reference to each of its pages.
        const holders: number[][] = [];
        for (const o of ops) {
          if (o.kind === 'alloc') {
            const pages = pool.allocate(o.n);
            if (pages === null) continue;
            commitAll(pool, pages, tokens.slice(0, pages.length * 2));
            holders.push(pages);
          } else if (holders.length > 0) {
            const idx = o.i % holders.length;
            if (o.kind === 'share') {
              const hit = pool.lookupPrefix(tokens);
              for (const p of holders[idx]) pool.retain(p);
              for (const p of hit.pages) pool.retain(p);
              holders.push([...holders[idx]], hit.pages);
            } else if (o.kind === 'drop') {
              pool.releaseAll(holders[idx]);
              holders.splice(idx, 1);
            } else {
              const res = pool.prepareWrite(holders[idx]);
              if (res !== null) holders[idx] = res.pages;
            }
          }
          pool.verify();
        }
        for (const h of holders) pool.releaseAll(h);
        pool.verify();
        expect(pool.usedPages).toBe(0);
        expect(pool.availablePages).toBe(pool.numPages);
      }),
      { numRuns: 200 },
    );
  });
});
