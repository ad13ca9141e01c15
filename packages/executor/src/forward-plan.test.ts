import { describe, expect, it } from 'vitest';
import { RequestValidationError } from '@tinyserve/core';
import type { ForwardParams } from '@tinyserve/core';
import { planForward } from './forward-plan.js';
import type { ForwardLimits } from './forward-plan.js';

const LIMITS: ForwardLimits = { vocabSize: 50, pageSize: 4, numKvPages: 10, maxPositions: null };

/** Two sequences: seq 7 decodes position 5 (pages 3, 8), seq 9 prefills 3 tokens (page 0). */
function valid(): ForwardParams {
  return {
    tokenIds: Int32Array.from([4, 10, 11, 12]),
    queryIndptr: Int32Array.from([0, 1, 4]),
    startPos: Int32Array.from([5, 0]),
    pageIndptr: Int32Array.from([0, 2, 3]),
    pageIndices: Int32Array.from([3, 8, 0]),
    logitsMode: Uint8Array.from([1, 2]),
    seqIds: Int32Array.from([7, 9]),
  };
}

function rejects(change: (p: ForwardParams) => void, field: string, message: RegExp, limits = LIMITS): void {
  const p = valid();
  change(p);
  let err: unknown;
  try {
    planForward(p, limits);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(RequestValidationError);
  expect((err as RequestValidationError).field).toBe(field);
  expect((err as Error).message).toMatch(message);
  expect((err as RequestValidationError).code).toBe('invalid_request');
}

describe('planForward', () => {
  it('flattens a valid step per token and lays out the logit rows', () => {
    const plan = planForward(valid(), LIMITS);
    expect(Array.from(plan.tokenSeq)).toEqual([0, 1, 1, 1]);
    expect(Array.from(plan.tokenPos)).toEqual([5, 0, 1, 2]);
    expect(Array.from(plan.contextLens)).toEqual([6, 3]);
    expect(Array.from(plan.logitRows)).toEqual([0, 1, 2, 3]);
    expect(Array.from(plan.logitsIndptr)).toEqual([0, 1, 4]);
  });

  it('gives no rows to sequences with logitsMode 0', () => {
    const p = valid();
    p.logitsMode = Uint8Array.from([0, 1]);
    const plan = planForward(p, LIMITS);
    expect(Array.from(plan.logitRows)).toEqual([3]);
    expect(Array.from(plan.logitsIndptr)).toEqual([0, 0, 1]);
  });

  it('accepts pages shared between sequences that only read them', () => {
    const p = valid();
    // seq 9 now reads seq 7's first page as a shared prefix and writes into page 0.
    p.startPos = Int32Array.from([5, 4]);
    p.pageIndices = Int32Array.from([3, 8, 3, 0]);
    p.pageIndptr = Int32Array.from([0, 2, 4]);
    expect(planForward(p, LIMITS).contextLens[1]).toBe(7);
  });

  it('rejects arrays of the wrong type or length', () => {
    rejects((p) => (p.tokenIds = [1, 2] as unknown as Int32Array), 'tokenIds', /Int32Array/);
    rejects((p) => (p.logitsMode = Int32Array.from([1, 1]) as unknown as Uint8Array), 'logitsMode', /Uint8Array/);
    rejects((p) => (p.startPos = Int32Array.from([5])), 'startPos', /length 1, expected 2/);
    rejects((p) => (p.queryIndptr = Int32Array.from([0, 4])), 'queryIndptr', /length 2, expected 3/);
    rejects((p) => (p.seqIds = new Int32Array(0)), 'seqIds', /at least one sequence/);
  });

  it('rejects inconsistent CSR offsets', () => {
    rejects((p) => (p.queryIndptr = Int32Array.from([1, 1, 4])), 'queryIndptr[0]', /must be 0/);
    rejects((p) => (p.queryIndptr = Int32Array.from([0, 3, 2])), 'queryIndptr[2]', /less than/);
    rejects((p) => (p.queryIndptr = Int32Array.from([0, 1, 3])), 'queryIndptr[2]', /tokenIds.length = 4/);
    rejects((p) => (p.pageIndptr = Int32Array.from([0, 2, 2])), 'pageIndptr[2]', /pageIndices.length = 3/);
    rejects((p) => (p.queryIndptr = Int32Array.from([0, 0, 4])), 'queryIndptr[1]', /no new tokens/);
  });

  it('rejects token ids outside the vocabulary and pages outside the cache', () => {
    rejects((p) => (p.tokenIds[2] = 50), 'tokenIds[2]', /outside the vocabulary \[0, 50\)/);
    rejects((p) => (p.tokenIds[0] = -1), 'tokenIds[0]', /-1/);
    rejects((p) => (p.pageIndices[1] = 10), 'pageIndices[1]', /outside the KV cache \[0, 10\)/);
  });

  it('rejects page tables that do not cover the positions', () => {
    rejects((p) => (p.startPos[0] = 8), 'pageIndices', /needs 3 pages for 9 positions .* has 2/);
    rejects((p) => (p.startPos[1] = -2), 'startPos[1]', />= 0/);
  });

  it('rejects aliased pages and colliding writes', () => {
    rejects((p) => (p.pageIndices = Int32Array.from([3, 3, 0])), 'pageIndices[1]', /listed twice/);
    rejects((p) => (p.pageIndices = Int32Array.from([3, 0, 0]) /* both write page 0 slot 1 */), 'pageIndices', /another sequence writes/);
  });

  it('rejects bad logitsMode, duplicate sequence ids and positions beyond the model', () => {
    rejects((p) => (p.logitsMode[1] = 3), 'logitsMode[1]', /0 \(none\), 1 \(last token\) or 2/);
    rejects((p) => (p.seqIds[1] = 7), 'seqIds[1]', /appears twice/);
    rejects(() => undefined, 'startPos[0]', /6 tokens, beyond the model's 5 positions/, { ...LIMITS, maxPositions: 5 });
  });
});
