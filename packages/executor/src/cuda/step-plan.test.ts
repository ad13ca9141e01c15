import { describe, expect, it } from 'vitest';
import { RequestValidationError } from '@tinyserve/core';
import { selectionRowPages, selectionTopK, trimPageTable } from './step-plan.js';
import { broadcastShape, broadcastStrides } from './cuda-kernels.js';

describe('trimPageTable', () => {
  it('keeps exactly the pages each sequence needs', () => {
    const t = trimPageTable(Int32Array.from([0, 3, 5]), Int32Array.from([7, 2, 9, 4, 1]), Int32Array.from([5, 4]), 4);
    expect(Array.from(t.pageIndptr)).toEqual([0, 2, 3]);
    expect(Array.from(t.pageIndices)).toEqual([7, 2, 4]);
  });

  it('returns the arrays unchanged when nothing is extra', () => {
    const indptr = Int32Array.from([0, 1]);
    const indices = Int32Array.from([3]);
    expect(trimPageTable(indptr, indices, Int32Array.from([4]), 4).pageIndices).toBe(indices);
  });

  it('rejects a sequence with too few pages, naming it', () => {
    expect(() => trimPageTable(Int32Array.from([0, 1]), Int32Array.from([3]), Int32Array.from([5]), 4)).toThrow(RequestValidationError);
    expect(() => trimPageTable(Int32Array.from([0, 1]), Int32Array.from([3]), Int32Array.from([5]), 4)).toThrow(/sequence 0 has 5 tokens, needing 2 pages/);
  });
});

describe('selectionTopK', () => {
  it('counts pages as the kv-retriever policies do', () => {
    const lens = Int32Array.from([32768, 100, 16]);
    expect(Array.from(selectionTopK(lens, 16, { selectionRatio: 1, tokenBudget: 2048 }))).toEqual([128, 128, 128]);
    expect(Array.from(selectionTopK(lens, 16, { selectionRatio: 0.3, tokenBudget: null }))).toEqual([615, 3, 1]);
    // 0.7 * 10 pages is 7, not 8 (the policies' epsilon).
    expect(Array.from(selectionTopK(Int32Array.from([160]), 16, { selectionRatio: 0.7, tokenBudget: null }))).toEqual([7]);
  });
});

describe('selectionRowPages', () => {
  it('bounds what the fused selection keeps: top-K, forced pages when more, at most the pages there are', () => {
    const lens = Int32Array.from([160, 40, 5]);
    expect(selectionRowPages(lens, 16, Int32Array.from([3, 3, 3]), 1)).toBe(3);
    // Three sinks and the current page outnumber K = 2.
    expect(selectionRowPages(lens, 16, Int32Array.from([2, 2, 2]), 3)).toBe(4);
    // K beyond every sequence's pages: the longest has 10.
    expect(selectionRowPages(lens, 16, Int32Array.from([64, 64, 64]), 1)).toBe(10);
  });
});

describe('broadcasting for the cuda binary kernel', () => {
  it('gives numpy shapes and zero strides where a dim broadcasts', () => {
    expect(broadcastShape([4, 1], [1, 6])).toEqual([4, 6]);
    expect(broadcastShape([6], [3, 4, 6])).toEqual([3, 4, 6]);
    expect(broadcastStrides([6], [4, 6])).toEqual([0, 1]);
    expect(broadcastStrides([4, 1], [4, 6])).toEqual([1, 0]);
    expect(broadcastStrides([2, 3, 4], [2, 3, 4])).toEqual([12, 4, 1]);
    expect(() => broadcastShape([3], [4])).toThrow(/do not broadcast/);
  });
});

