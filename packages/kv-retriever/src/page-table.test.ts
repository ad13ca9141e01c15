import { describe, expect, it } from 'vitest';
import { PageTable, buildPageTableCsr, pagesForTokens } from './page-table.js';

describe('PageTable', () => {
  it('tracks pages, token count and last-page fill across page boundaries', () => {
    const t = new PageTable(4);
    expect(t.numPages).toBe(0);
    expect(t.lastPageLen).toBe(0);
    expect(t.pagesNeededFor(5)).toBe(2);
    t.append(5, [7, 3]);
    expect(t.pageIds).toEqual([7, 3]);
    expect(t.numTokens).toBe(5);
    expect(t.lastPageLen).toBe(1);
    expect(t.pagesNeededFor(3)).toBe(0);
    t.append(3);
    expect(t.lastPageLen).toBe(4);
    expect(t.pagesNeededFor(1)).toBe(1);
    t.append(1, [9]);
    expect(t.numPages).toBe(3);
    expect(t.lastPageLen).toBe(1);
  });

  it('rejects an append whose new pages do not match what the tokens need', () => {
    const t = new PageTable(4, [1], 3);
    expect(() => t.append(2)).toThrow(/needs 1 new pages, got 0/);
    expect(() => t.append(1, [2])).toThrow(/needs 0 new pages, got 1/);
    expect(() => t.append(2, [-1])).toThrow(/newPageIds\[0\]/);
    expect(() => new PageTable(4, [1, 2], 3)).toThrow(/need 1 pages, got 2/);
    expect(t.numTokens).toBe(3);
  });

  it('locates positions and maps a range to (page, slot)', () => {
    const t = new PageTable(4, [10, 20, 30], 10);
    expect(t.locate(0)).toEqual({ page: 10, slot: 0 });
    expect(t.locate(5)).toEqual({ page: 20, slot: 1 });
    expect(t.locate(9)).toEqual({ page: 30, slot: 1 });
    expect(() => t.locate(10)).toThrow(/position/);
    const m = t.slotMapping(3, 4);
    expect([...m.pages]).toEqual([10, 20, 20, 20]);
    expect([...m.slots]).toEqual([3, 0, 1, 2]);
  });

  it('truncates and hands back the pages no longer needed', () => {
    const t = new PageTable(4, [10, 20, 30], 10);
    expect(t.truncate(5)).toEqual([30]);
    expect(t.pageIds).toEqual([10, 20]);
    expect(t.lastPageLen).toBe(1);
    expect(t.truncate(4)).toEqual([20]);
    expect(t.lastPageLen).toBe(4);
    expect(t.truncate(0)).toEqual([10]);
    expect(t.numPages).toBe(0);
  });

  it('swaps a page for copy-on-write and clones independently', () => {
    const t = new PageTable(4, [10, 20], 6);
    const c = t.clone();
    expect(t.replacePage(1, 25)).toBe(20);
    expect(t.pageIds).toEqual([10, 25]);
    expect(c.pageIds).toEqual([10, 20]);
    expect(t.snapshot()).toEqual({ pageSize: 4, numTokens: 6, pageIds: [10, 25] });
  });

  it('counts pages for tokens', () => {
    expect([0, 1, 4, 5, 8, 9].map((n) => pagesForTokens(n, 4))).toEqual([0, 1, 1, 2, 2, 3]);
  });
});

describe('buildPageTableCsr', () => {
  it('concatenates tables in order with FlashInfer-style last-page lengths', () => {
    const csr = buildPageTableCsr([
      new PageTable(4, [5, 1], 6),
      new PageTable(4),
      { pageSize: 4, numTokens: 12, pageIds: Int32Array.from([2, 3, 0]) },
    ]);
    expect([...csr.indptr]).toEqual([0, 2, 2, 5]);
    expect([...csr.indices]).toEqual([5, 1, 2, 3, 0]);
    expect([...csr.lastPageLen]).toEqual([2, 0, 4]);
  });

  it('rejects tables of different page sizes or inconsistent counts', () => {
    expect(() => buildPageTableCsr([new PageTable(4), new PageTable(8)])).toThrow(/tables\[1\]\.pageSize/);
    expect(() => buildPageTableCsr([{ pageSize: 4, numTokens: 9, pageIds: [1, 2] }])).toThrow(/9 tokens in 2 pages/);
  });
});
