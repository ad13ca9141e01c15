import { describe, expect, it } from 'vitest';
import { pageCounts, selectedLists, selectionFromLog } from './selection-lists.js';

describe('selectedLists (the cuda sparse kernel\'s page lists)', () => {
  // Three sequences, two KV heads: 0 and 2 sparse, 1 not.
  const sel = {
    sparse: Uint8Array.from([1, 0, 1]),
    indptr: Int32Array.from([0, 2, 3, 3, 3, 3, 5]),
    pages: Int32Array.from([0, 4, 4, 1, 2]),
  };

  it('lists the sparse sequences only, their lists as given (an empty list stays empty)', () => {
    const l = selectedLists(sel, 2, null);
    expect(Array.from(l.seqs)).toEqual([0, 2]);
    expect(Array.from(l.indptr)).toEqual([0, 2, 3, 3, 5]);
    expect(Array.from(l.pages)).toEqual([0, 4, 4, 1, 2]);
  });

  it('adds every page of the other sequences for a decode-only launch', () => {
    const l = selectedLists(sel, 2, Int32Array.from([5, 3, 4]));
    expect(Array.from(l.seqs)).toEqual([0, 1, 2]);
    expect(Array.from(l.indptr)).toEqual([0, 2, 3, 6, 9, 9, 11]);
    expect(Array.from(l.pages)).toEqual([0, 4, 4, 0, 1, 2, 0, 1, 2, 1, 2]);
  });
});

describe('selectionFromLog (a fused launch\'s selection, as copySelection lays it out)', () => {
  // 2 sequences x 2 KV heads, maxPages 4: counts, then one row of 4 per pair.
  const log = Int32Array.from([99, 2, 2, 1, 4, /* rows */ 0, 2, -1, -1, 1, 3, -1, -1, 2, -1, -1, -1, 0, 1, 2, 3]);

  it('reads one sequence\'s heads from the slot at `base`', () => {
    const r = selectionFromLog(log, 1, 4, 4, 1, 2, 4);
    expect(Array.from(r.indptr)).toEqual([0, 1, 5]);
    expect(Array.from(r.indices)).toEqual([2, 0, 1, 2, 3]);
    expect(r.dense).toBe(false);
    const first = selectionFromLog(log, 1, 4, 4, 0, 2, 4);
    expect(Array.from(first.indices)).toEqual([0, 2, 1, 3]);
  });

  it('rejects a count beyond the row width (rows cut too short)', () => {
    expect(() => selectionFromLog(log, 1, 4, 3, 1, 2, 4)).toThrow(/lists 4 pages \(4 in the sequence, rows of 3\)/);
  });

  it('marks a selection of every page dense', () => {
    const all = Int32Array.from([1, 1, 0, 0]);
    expect(selectionFromLog(all, 0, 1, 1, 0, 1, 1)).toMatchObject({ dense: true, numPages: 1, numKvHeads: 1 });
  });

  it('rejects a count beyond the sequence\'s pages (a log read at the wrong place)', () => {
    expect(() => selectionFromLog(log, 0, 4, 4, 0, 2, 4)).toThrow(/lists 99 pages \(4 in the sequence, rows of 4\)/);
  });
});

describe('pageCounts', () => {
  it('gives the pages of each sequence of a CSR table', () => {
    expect(Array.from(pageCounts(Int32Array.from([0, 3, 3, 7])))).toEqual([3, 0, 4]);
  });
});
