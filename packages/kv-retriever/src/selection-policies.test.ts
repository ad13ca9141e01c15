import type { SelectionConfig } from '@tinyserve/core';
import { ConfigError, RequestValidationError } from '@tinyserve/core';
import { describe, expect, it } from 'vitest';
import { sequenceFixture } from './__fixtures__/sequence.js';
import type { SequenceFixture } from './__fixtures__/sequence.js';
import { scorePages } from './page-score.js';
import { createSelectionPolicy, selectionPolicies } from './selection-policies.js';
import { denseSelection, selectionBudgetPages } from './selection-policy.js';
import type { SelectPagesParams, SelectPagesResult } from './selection-policy.js';
import { attentionMassRecall, computePageAttentionMass } from './sparse-attention.js';

const BASE: SelectionConfig = {
  policy: 'quest',
  selectionRatio: 0.25,
  tokenBudget: null,
  sinkPages: 1,
  denseLayers: 0,
  useFusedKernel: false,
};

function config(over: Partial<SelectionConfig>): SelectionConfig {
  return { ...BASE, ...over };
}

// 150 tokens in pages of 4: 38 pages, the last one half full.
const fx = sequenceFixture({ seed: 5, tokens: [150, 23], pageSize: 4, numKvHeads: 2, numQHeads: 6, headDim: 8, queryScale: 2 });

function params(f: SequenceFixture, seq = 0, layer = 2): SelectPagesParams {
  const t = f.tables[seq];
  const qLen = f.numQHeads * f.layout.headDim;
  return {
    layout: f.layout,
    layer,
    pages: t.pageIds,
    numTokens: t.numTokens,
    query: f.query.subarray(seq * qLen, (seq + 1) * qLen),
    numQHeads: f.numQHeads,
    metadata: f.metadata,
    kCache: f.kCache,
    seqId: seq,
  };
}

function head(r: SelectPagesResult, j: number): number[] {
  return [...r.indices.subarray(r.indptr[j], r.indptr[j + 1])];
}

function expectAscending(r: SelectPagesResult): void {
  for (let j = 0; j < r.numKvHeads; j++) {
    const h = head(r, j);
    for (let i = 1; i < h.length; i++) expect(h[i]).toBeGreaterThan(h[i - 1]);
  }
}

describe('selectionBudgetPages', () => {
  it('takes ceil of ratio x pages, or ceil of budget / pageSize, without float drift', () => {
    expect(selectionBudgetPages({ selectionRatio: 0.7, tokenBudget: null }, 100, 16)).toBe(70);
    expect(selectionBudgetPages({ selectionRatio: 0.25, tokenBudget: null }, 38, 4)).toBe(10);
    expect(selectionBudgetPages({ selectionRatio: 0.3, tokenBudget: null }, 1, 16)).toBe(1);
    expect(selectionBudgetPages({ selectionRatio: 0.3, tokenBudget: 33 }, 100, 16)).toBe(3);
  });
});

describe('quest', () => {
  const quest = createSelectionPolicy(config({}), { pageSize: 4 });
  const p = params(fx);
  const n = 38;

  it('keeps the sinks and the current page, then the top pages by score, per KV head', () => {
    const r = quest.select(p);
    const scores = scorePages({ layout: fx.layout, metadata: fx.metadata, query: p.query!, numQHeads: 6, pages: p.pages });
    expect(r.dense).toBe(false);
    expectAscending(r);
    for (let j = 0; j < 2; j++) {
      const chosen = head(r, j);
      expect(chosen.length).toBe(10);
      expect(chosen).toContain(0);
      expect(chosen).toContain(n - 1);
      const free = (i: number) => i !== 0 && i !== n - 1;
      const worstChosen = Math.min(...chosen.filter(free).map((i) => scores[j * n + i]));
      for (let i = 0; i < n; i++) {
        if (free(i) && !chosen.includes(i)) expect(scores[j * n + i]).toBeLessThanOrEqual(worstChosen);
      }
    }
    // The two KV heads see different keys, so their choices differ.
    expect(head(r, 0)).not.toEqual(head(r, 1));
  });

  it('takes the budget from tokenBudget when set', () => {
    const r = createSelectionPolicy(config({ tokenBudget: 22 }), { pageSize: 4 }).select(p);
    expect(head(r, 0).length).toBe(6);
    expect(head(r, 1).length).toBe(6);
  });

  it('keeps sinkPages leading pages', () => {
    const r = createSelectionPolicy(config({ sinkPages: 3 })).select(p);
    for (let j = 0; j < 2; j++) expect(head(r, j).slice(0, 3)).toEqual([0, 1, 2]);
  });

  it('attends densely in layers below denseLayers', () => {
    const policy = createSelectionPolicy(config({ denseLayers: 2 }));
    expect(policy.select(params(fx, 0, 1))).toEqual(denseSelection(2, n));
    expect(policy.select(params(fx, 0, 2)).dense).toBe(false);
  });

  it('equals dense at ratio 1 or a budget covering every page', () => {
    expect(createSelectionPolicy(config({ selectionRatio: 1 })).select(p)).toEqual(denseSelection(2, n));
    expect(createSelectionPolicy(config({ tokenBudget: 152 })).select(p)).toEqual(denseSelection(2, n));
  });

  it('is deterministic and breaks ties by lower page index', () => {
    expect(quest.select(p)).toEqual(quest.select(p));
    const flat = quest.select({ ...p, scores: new Float32Array(2 * n) });
    for (let j = 0; j < 2; j++) expect(head(flat, j)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, n - 1]);
  });

  it('uses precomputed scores when given, and the configured GQA aggregation', () => {
    const sum = scorePages({ layout: fx.layout, metadata: fx.metadata, query: p.query!, numQHeads: 6, pages: p.pages, aggregation: 'sum' });
    const viaScores = quest.select({ layout: p.layout, layer: 2, pages: p.pages, numTokens: p.numTokens, scores: sum });
    const viaOption = createSelectionPolicy(config({}), { gqaAggregation: 'sum' }).select(p);
    expect(viaOption).toEqual(viaScores);
    expect(viaOption).not.toEqual(quest.select(p));
  });

  it('never selects an empty page, not even as a sink, and still spends the budget', () => {
    const scores = new Float32Array(2 * n).fill(1);
    scores[0] = -Infinity;
    scores[5] = -Infinity;
    const r = quest.select({ ...p, scores });
    expect(head(r, 0)).toEqual([1, 2, 3, 4, 6, 7, 8, 9, 10, n - 1]);
    expect(head(r, 1)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, n - 1]);
  });

  it('asks for what it needs', () => {
    expect(() => quest.select({ layout: p.layout, layer: 2, pages: p.pages, numTokens: p.numTokens })).toThrow(RequestValidationError);
    expect(() => quest.select({ ...p, numTokens: 10 })).toThrow(/pages/);
    expect(() => quest.select({ ...p, layer: 4 })).toThrow(/layer/);
  });
});

describe('streaming', () => {
  it('keeps the sinks and the most recent pages within the budget, the same for every head', () => {
    const r = createSelectionPolicy(config({ policy: 'streaming', sinkPages: 2 })).select(params(fx));
    const expected = [0, 1, 30, 31, 32, 33, 34, 35, 36, 37];
    expect(head(r, 0)).toEqual(expected);
    expect(head(r, 1)).toEqual(expected);
  });

  it('keeps the current page even when the sinks use up the budget, and is dense at ratio 1', () => {
    const small = sequenceFixture({ seed: 1, tokens: [9], pageSize: 4, numKvHeads: 1, numQHeads: 1, headDim: 2 });
    const r = createSelectionPolicy(config({ policy: 'streaming', selectionRatio: 0.3 })).select(params(small));
    expect(head(r, 0)).toEqual([0, 2]);
    expect(createSelectionPolicy(config({ policy: 'streaming', selectionRatio: 1 })).select(params(fx))).toEqual(denseSelection(2, 38));
  });
});

describe('random', () => {
  const random = createSelectionPolicy(config({ policy: 'random' }), { seed: 9 });

  it('keeps the budget, the sinks and the current page; reproducible per seed and sequence', () => {
    const p = params(fx);
    const r = random.select(p);
    expectAscending(r);
    for (let j = 0; j < 2; j++) {
      expect(head(r, j).length).toBe(10);
      expect(head(r, j)[0]).toBe(0);
      expect(head(r, j)[9]).toBe(37);
    }
    expect(random.select(p)).toEqual(r);
    expect(createSelectionPolicy(config({ policy: 'random' }), { seed: 9 }).select(p)).toEqual(r);
    expect(random.select({ ...p, seqId: 77 })).not.toEqual(r);
    expect(createSelectionPolicy(config({ policy: 'random' }), { seed: 10 }).select(p)).not.toEqual(r);
  });

  it('draws the free pages uniformly', () => {
    const small = sequenceFixture({ seed: 2, tokens: [48], pageSize: 4, numKvHeads: 1, numQHeads: 1, headDim: 2 });
    // 12 pages, budget 5: sink + current + 3 of the 10 others, each with probability 0.3.
    const policy = createSelectionPolicy(config({ policy: 'random', tokenBudget: 20 }));
    const counts = new Array<number>(12).fill(0);
    const draws = 2000;
    for (let s = 0; s < draws; s++) for (const i of policy.select({ ...params(small), seqId: s }).indices) counts[i]++;
    expect(counts[0]).toBe(draws);
    expect(counts[11]).toBe(draws);
    for (let i = 1; i < 11; i++) {
      expect(counts[i]).toBeGreaterThan(draws * 0.3 - 4 * Math.sqrt(draws * 0.21));
      expect(counts[i]).toBeLessThan(draws * 0.3 + 4 * Math.sqrt(draws * 0.21));
    }
  });
});

describe('oracle', () => {
  const p = params(fx);
  const recallOf = (r: SelectPagesResult) =>
    attentionMassRecall({ layout: fx.layout, kCache: fx.kCache, query: p.query!, numQHeads: 6, pages: p.pages, numTokens: p.numTokens, selection: r }).recall;

  it('picks the pages of highest true attention mass per KV head', () => {
    const r = createSelectionPolicy(config({ policy: 'oracle' })).select(p);
    const mass = computePageAttentionMass({ layout: fx.layout, kCache: fx.kCache, query: p.query!, numQHeads: 6, pages: p.pages, numTokens: p.numTokens });
    for (let j = 0; j < 2; j++) {
      const group = Array.from({ length: 38 }, (_, i) => mass[(3 * j) * 38 + i] + mass[(3 * j + 1) * 38 + i] + mass[(3 * j + 2) * 38 + i]);
      const top = group
        .map((m, i) => [m, i])
        .sort((a, b) => b[0] - a[0] || a[1] - b[1])
        .slice(0, 10)
        .map(([, i]) => i)
        .sort((a, b) => a - b);
      expect(head(r, j)).toEqual(top);
    }
  });

  it('has the highest recall of any policy at the same budget, and recall 1 with the budget at all pages', () => {
    const oracle = recallOf(createSelectionPolicy(config({ policy: 'oracle' })).select(p));
    for (const policy of ['quest', 'streaming', 'random']) {
      expect(oracle).toBeGreaterThanOrEqual(recallOf(createSelectionPolicy(config({ policy })).select(p)));
    }
    // Quest's bound finds much of the mass: far above what a random tenth of the pages holds.
    expect(recallOf(createSelectionPolicy(config({})).select(p))).toBeGreaterThan(recallOf(createSelectionPolicy(config({ policy: 'random' })).select(p)));
    const all = createSelectionPolicy(config({ policy: 'oracle', selectionRatio: 1 })).select(p);
    expect(recallOf(all)).toBeCloseTo(1, 12);
  });
});

describe('createSelectionPolicy', () => {
  it('lists the registered policies for an unknown name', () => {
    expect(() => createSelectionPolicy(config({ policy: 'h2o' }))).toThrow(ConfigError);
    expect(() => createSelectionPolicy(config({ policy: 'h2o' }))).toThrow(
      /selectionPolicy: unknown selection policy 'h2o' \(registered: dense, oracle, quest, random, streaming\)/,
    );
  });

  it('rejects a token budget below one page, or too small for the kept pages', () => {
    expect(() => createSelectionPolicy(config({ tokenBudget: 8 }), { pageSize: 16 })).toThrow(/tokenBudget: 8 tokens is less than one page \(pageSize 16\)/);
    expect(() => createSelectionPolicy(config({ tokenBudget: 16, sinkPages: 1 }), { pageSize: 16 })).toThrow(/always keeps 2/);
    expect(() => createSelectionPolicy(config({ policy: 'streaming', tokenBudget: 40, sinkPages: 3 }), { pageSize: 16 })).toThrow(/at least 64/);
    expect(createSelectionPolicy(config({ policy: 'oracle', tokenBudget: 16 }), { pageSize: 16 }).name).toBe('oracle');
    expect(createSelectionPolicy(config({ policy: 'dense', tokenBudget: 1 }), { pageSize: 16 }).name).toBe('dense');
    // Without a page size up front, the check happens on first use.
    const late = createSelectionPolicy(config({ tokenBudget: 2 }));
    expect(() => late.select(params(fx))).toThrow(/less than one page \(pageSize 4\)/);
  });

  it('names each out-of-range field', () => {
    expect(() => createSelectionPolicy(config({ selectionRatio: 0 }))).toThrow(/selectionRatio: must be a number in \(0, 1\]/);
    expect(() => createSelectionPolicy(config({ selectionRatio: 1.5 }))).toThrow(/selectionRatio/);
    expect(() => createSelectionPolicy(config({ tokenBudget: 0 }))).toThrow(/tokenBudget: must be a positive integer or null/);
    expect(() => createSelectionPolicy(config({ sinkPages: -1 }))).toThrow(/sinkPages/);
    expect(() => createSelectionPolicy(config({ denseLayers: 1.5 }))).toThrow(/denseLayers/);
    expect(() => createSelectionPolicy(config({ policy: '' }))).toThrow(/selectionPolicy/);
    expect(() => createSelectionPolicy(config({}), { gqaAggregation: 'mean' as never })).toThrow(/gqaAggregation/);
    expect(() => createSelectionPolicy(config({}), { seed: -1 })).toThrow(/seed/);
  });

  it('builds policies registered by others', () => {
    selectionPolicies.register('first-and-last', (cfg) => ({
      name: 'first-and-last',
      config: cfg,
      select: (prm) => {
        const n = prm.pages.length;
        const indices = Int32Array.from(n > 1 ? [0, n - 1] : [0]);
        return { numKvHeads: 1, numPages: n, indptr: Int32Array.from([0, indices.length]), indices, dense: n === indices.length };
      },
    }));
    try {
      const policy = createSelectionPolicy(config({ policy: 'first-and-last' }));
      expect(policy.name).toBe('first-and-last');
      expect([...policy.select(params(fx)).indices]).toEqual([0, 37]);
    } finally {
      selectionPolicies.unregister('first-and-last');
    }
  });
});
