import { describe, expect, it } from 'vitest';
import { denseSelection } from './selection-policy.js';
import type { SelectPagesResult } from './selection-policy.js';
import { SelectionStatsCollector } from './selection-stats.js';

// 2 KV heads, 5 pages of 4 tokens, the last holding 2 (18 tokens).
const sparse: SelectPagesResult = {
  numKvHeads: 2,
  numPages: 5,
  indptr: Int32Array.from([0, 2, 5]),
  indices: Int32Array.from([0, 4, 0, 2, 4]),
  dense: false,
};

describe('SelectionStatsCollector', () => {
  it('counts pages and the bytes of the tokens actually read, partial last page included', () => {
    const c = new SelectionStatsCollector({ pageSize: 4, headDim: 8, dtype: 'fp16' });
    c.recordSelection({ selection: sparse, numTokens: 18, readMetadata: true });
    const step = c.endStep();
    const perToken = 2 * 8 * 2; // K and V, 8 halves each
    // Head 0 reads 4 + 2 tokens, head 1 reads 4 + 4 + 2.
    expect(step).toEqual({ pagesScanned: 10, pagesSelected: 5, kvBytesRead: 16 * perToken, kvBytesDense: 2 * 18 * perToken });
    const snap = c.snapshot();
    expect(snap.cumulative.metadataBytesRead).toBe(10 * 2 * 8 * 4);
    expect(snap.cumulative.kvHitRate).toBe(0.5);
    expect(snap.cumulative.kvReadFraction).toBeCloseTo(16 / 36, 12);
  });

  it('has a hit rate and read fraction of 1 for dense attention, and accumulates over steps', () => {
    const c = new SelectionStatsCollector({ pageSize: 4, headDim: 8, dtype: 'fp32' });
    c.recordSelection({ selection: denseSelection(2, 5), numTokens: 18 });
    c.endStep();
    expect(c.snapshot().cumulative.kvHitRate).toBe(1);
    expect(c.snapshot().cumulative.kvReadFraction).toBe(1);
    c.recordSelection({ selection: sparse, numTokens: 18 });
    c.recordSelection({ selection: sparse, numTokens: 18 });
    c.recordRecall(0.5);
    c.recordRecall(0.7);
    c.endStep();
    c.endStep(); // a step with no decode attention (prefill only)
    const snap = c.snapshot();
    expect(snap.steps).toBe(3);
    expect(snap.lastStep).toEqual({ pagesScanned: 0, pagesSelected: 0, kvBytesRead: 0, kvBytesDense: 0, recallMean: null });
    expect(snap.cumulative.pagesScanned).toBe(30);
    expect(snap.cumulative.pagesSelected).toBe(20);
    expect(snap.cumulative.kvHitRate).toBeCloseTo(2 / 3, 12);
    expect(snap.cumulative.recallMean).toBeCloseTo(0.6, 12);
    expect(snap.cumulative.recallSamples).toBe(2);
  });

  it('counts int8 scales: per token with each token, per page with each page read', () => {
    const perToken = new SelectionStatsCollector({ pageSize: 4, headDim: 8, dtype: 'int8' });
    perToken.recordSelection({ selection: sparse, numTokens: 18 });
    expect(perToken.endStep().kvBytesRead).toBe(16 * 2 * (8 + 4));
    const perPage = new SelectionStatsCollector({ pageSize: 4, headDim: 8, dtype: 'int8', int8Scales: 'page' });
    perPage.recordSelection({ selection: sparse, numTokens: 18 });
    const step = perPage.endStep();
    expect(step.kvBytesRead).toBe(16 * 2 * 8 + 5 * 2 * 4);
    expect(step.kvBytesDense).toBe(2 * (18 * 2 * 8 + 5 * 2 * 4));
  });

  it('takes steps counted by an executor, and snapshots plain data', () => {
    const c = new SelectionStatsCollector({ pageSize: 16, headDim: 64, dtype: 'fp32' });
    c.addStep({ pagesScanned: 100, pagesSelected: 25, kvBytesRead: 1000, kvBytesDense: 4000 }, [0.9]);
    const snap = c.snapshot();
    expect(JSON.parse(JSON.stringify(snap))).toEqual(snap);
    expect(snap.lastStep).toEqual({ pagesScanned: 100, pagesSelected: 25, kvBytesRead: 1000, kvBytesDense: 4000, recallMean: 0.9 });
    expect(snap.cumulative.kvHitRate).toBe(0.25);
    expect(() => c.addStep({ pagesScanned: -1, pagesSelected: 0, kvBytesRead: 0, kvBytesDense: 0 })).toThrow(/stats\.pagesScanned/);
    expect(() => c.recordRecall(1.5)).toThrow(/recall/);
    c.reset();
    expect(c.snapshot()).toEqual({
      steps: 0,
      lastStep: null,
      cumulative: {
        pagesScanned: 0,
        pagesSelected: 0,
        kvBytesRead: 0,
        kvBytesDense: 0,
        metadataBytesRead: 0,
        kvReadFraction: null,
        kvHitRate: null,
        recallMean: null,
        recallSamples: 0,
      },
    });
  });

  it('rejects a selection that does not match the token count', () => {
    const c = new SelectionStatsCollector({ pageSize: 4, headDim: 8, dtype: 'fp32' });
    expect(() => c.recordSelection({ selection: sparse, numTokens: 30 })).toThrow(/30 tokens, 5 pages/);
  });
});
