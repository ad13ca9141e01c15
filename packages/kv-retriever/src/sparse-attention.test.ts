import type { SelectionConfig } from '@tinyserve/core';
import { kvElementIndex } from '@tinyserve/core';
import { describe, expect, it } from 'vitest';
import { sequenceFixture } from './__fixtures__/sequence.js';
import type { SequenceFixture } from './__fixtures__/sequence.js';
import { buildPageTableCsr } from './page-table.js';
import { createSelectionPolicy } from './selection-policies.js';
import { denseSelection } from './selection-policy.js';
import type { SelectPagesResult } from './selection-policy.js';
import {
  attentionMassRecall,
  computePageAttentionMass,
  packSelections,
  pagedAttentionDecodeDense,
  sparsePagedAttention,
} from './sparse-attention.js';

const fx = sequenceFixture({ seed: 21, tokens: [37, 5, 64, 1], pageSize: 8, numKvHeads: 2, numQHeads: 4, headDim: 16, queryScale: 2 });
const csr = buildPageTableCsr(fx.tables);
const base = { layout: fx.layout, kCache: fx.kCache, vCache: fx.vCache, query: fx.query, numQHeads: fx.numQHeads, ...csr, pageIndptr: csr.indptr, pageIndices: csr.indices };

/** Textbook softmax attention over the listed positions of one sequence, in float64. */
function naive(f: SequenceFixture, seq: number, h: number, positions: number[]): number[] {
  const { headDim, numKvHeads } = f.layout;
  const j = Math.floor(h / (f.numQHeads / numKvHeads));
  const q = f.query.subarray((seq * f.numQHeads + h) * headDim, (seq * f.numQHeads + h + 1) * headDim);
  const at = positions.map((pos) => {
    const { page, slot } = f.tables[seq].locate(pos);
    return kvElementIndex(f.layout, page, slot, j);
  });
  const logits = at.map((k) => q.reduce((s, x, d) => s + x * f.kCache[k + d], 0) / Math.sqrt(headDim));
  const mx = Math.max(...logits);
  const w = logits.map((l) => Math.exp(l - mx));
  const z = w.reduce((a, b) => a + b, 0);
  return Array.from({ length: headDim }, (_, d) => at.reduce((s, k, i) => s + (w[i] / z) * f.vCache[k + d], 0));
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

describe('pagedAttentionDecodeDense', () => {
  it('matches textbook softmax attention over every position (GQA, partial pages, scattered pages)', () => {
    const out = pagedAttentionDecodeDense(base);
    fx.tables.forEach((t, s) => {
      for (let h = 0; h < 4; h++) {
        const expected = naive(fx, s, h, range(t.numTokens));
        const got = out.subarray((s * 4 + h) * 16, (s * 4 + h + 1) * 16);
        expected.forEach((e, d) => expect(got[d]).toBeCloseTo(e, 5));
      }
    });
  });
});

describe('sparsePagedAttention', () => {
  it('with every page selected equals the dense reference exactly', () => {
    const all = packSelections(fx.tables.map((t) => denseSelection(2, t.numPages)));
    expect(sparsePagedAttention({ ...base, ...all })).toEqual(pagedAttentionDecodeDense(base));
  });

  it('equals dense exactly end to end through quest at ratio 1', () => {
    const quest = createSelectionPolicy({ policy: 'quest', selectionRatio: 1, tokenBudget: null, sinkPages: 1, denseLayers: 0, useFusedKernel: false });
    const sel = packSelections(
      fx.tables.map((t, s) =>
        quest.select({
          layout: fx.layout,
          layer: 0,
          pages: t.pageIds,
          numTokens: t.numTokens,
          query: fx.query.subarray(s * 64, (s + 1) * 64),
          numQHeads: 4,
          metadata: fx.metadata,
        }),
      ),
    );
    expect(sparsePagedAttention({ ...base, ...sel })).toEqual(pagedAttentionDecodeDense(base));
  });

  it('attends to exactly the selected pages of each KV head', () => {
    // Sequence 0 has 5 pages (last holds 5); sequence 2 has 8 full pages.
    const pick: Record<number, number[][]> = { 0: [[0, 4], [1, 2, 3]], 1: [[0], [0]], 2: [[7], [0, 3, 6, 7]], 3: [[0], [0]] };
    const selections: SelectPagesResult[] = fx.tables.map((t, s) => {
      const heads = pick[s];
      const indices = Int32Array.from(heads.flat());
      return { numKvHeads: 2, numPages: t.numPages, indptr: Int32Array.from([0, heads[0].length, indices.length]), indices, dense: false };
    });
    const out = sparsePagedAttention({ ...base, ...packSelections(selections) });
    fx.tables.forEach((t, s) => {
      for (let h = 0; h < 4; h++) {
        const positions = pick[s][Math.floor(h / 2)].flatMap((li) => range(8).map((x) => li * 8 + x)).filter((pos) => pos < t.numTokens);
        const expected = naive(fx, s, h, positions);
        const got = out.subarray((s * 4 + h) * 16, (s * 4 + h + 1) * 16);
        expected.forEach((e, d) => expect(got[d]).toBeCloseTo(e, 5));
      }
    });
  });

  it('outputs zeros for a head with nothing selected, and rejects unsorted or out-of-range selections', () => {
    const empty = packSelections(fx.tables.map(() => ({ indptr: new Int32Array(3), indices: new Int32Array(0) })));
    expect(sparsePagedAttention({ ...base, ...empty }).every((x) => x === 0)).toBe(true);
    const bad = packSelections(fx.tables.map((t) => denseSelection(2, t.numPages)));
    bad.selectedPages[1] = 0;
    expect(() => sparsePagedAttention({ ...base, ...bad })).toThrow(/selectedPages\[1\]: must be ascending/);
    const outOfRange = packSelections(fx.tables.map((t) => denseSelection(2, t.numPages)));
    outOfRange.selectedPages[4] = 5;
    expect(() => sparsePagedAttention({ ...base, ...outOfRange })).toThrow(/selectedPages\[4\]/);
    expect(() => sparsePagedAttention({ ...base, selectedIndptr: new Int32Array(3), selectedPages: new Int32Array(0) })).toThrow(/selectedIndptr/);
  });
});

describe('packSelections', () => {
  it('concatenates per-sequence, per-head selections', () => {
    const packed = packSelections([
      { indptr: Int32Array.from([0, 2, 3]), indices: Int32Array.from([0, 4, 1]) },
      { indptr: Int32Array.from([0, 1, 1]), indices: Int32Array.from([0]) },
    ]);
    expect([...packed.selectedIndptr]).toEqual([0, 2, 3, 4, 4]);
    expect([...packed.selectedPages]).toEqual([0, 4, 1, 0]);
  });
});

describe('attention mass and recall', () => {
  const t = fx.tables[2];
  const q = fx.query.subarray(2 * 64, 3 * 64);
  const massParams = { layout: fx.layout, kCache: fx.kCache, query: q, numQHeads: 4, pages: t.pageIds, numTokens: t.numTokens };

  it('gives each head a distribution over pages that matches the softmax', () => {
    const mass = computePageAttentionMass(massParams);
    for (let h = 0; h < 4; h++) {
      const row = [...mass.subarray(h * 8, (h + 1) * 8)];
      expect(row.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
      expect(row.every((m) => m > 0)).toBe(true);
    }
  });

  it('is 1 for dense and for the oracle with the budget at all pages, and the selected share otherwise', () => {
    const mass = computePageAttentionMass(massParams);
    expect(attentionMassRecall({ ...massParams, selection: denseSelection(2, 8) }).recall).toBeCloseTo(1, 12);
    const oracle = createSelectionPolicy({ policy: 'oracle', selectionRatio: 1, tokenBudget: null, sinkPages: 0, denseLayers: 0, useFusedKernel: false });
    const all = oracle.select({ ...massParams, layer: 0 });
    expect(attentionMassRecall({ ...massParams, selection: all }).recall).toBeCloseTo(1, 12);

    const selection = { indptr: Int32Array.from([0, 1, 3]), indices: Int32Array.from([2, 0, 7]) };
    const r = attentionMassRecall({ ...massParams, selection, mass });
    const expected = [mass[2], mass[8 + 2], mass[16] + mass[16 + 7], mass[24] + mass[24 + 7]];
    expected.forEach((e, h) => expect(r.perHead[h]).toBeCloseTo(e, 12));
    expect(r.recall).toBeCloseTo(expected.reduce((a, b) => a + b, 0) / 4, 12);
    expect(r.recall).toBeLessThan(1);
  });
});

describe('sparse attention error', () => {
  it('stays within 2 (1 - recall) max|v| of dense for each head (quest and oracle, several budgets)', () => {
    // Dense = m*a + (1-m)*b with a the output over the selected keys and b over the rest, so
    // |sparse - dense| = (1-m)|a - b| <= 2 (1-m) max|v|.
    const seq = 2;
    const t = fx.tables[seq];
    const q = fx.query.subarray(seq * 64, (seq + 1) * 64);
    const one = buildPageTableCsr([t]);
    const single = { ...base, query: q, pageIndptr: one.indptr, pageIndices: one.indices, lastPageLen: one.lastPageLen };
    const dense = pagedAttentionDecodeDense(single);
    const vmax = Math.max(...fx.vCache.map(Math.abs));
    for (const policy of ['quest', 'oracle']) {
      for (const ratio of [0.25, 0.5, 0.75]) {
        const cfg: SelectionConfig = { policy, selectionRatio: ratio, tokenBudget: null, sinkPages: 0, denseLayers: 0, useFusedKernel: false };
        const selectParams = { layout: fx.layout, layer: 0, pages: t.pageIds, numTokens: t.numTokens, query: q, numQHeads: 4 };
        const sel = createSelectionPolicy(cfg).select({ ...selectParams, kCache: fx.kCache, metadata: fx.metadata });
        const out = sparsePagedAttention({ ...single, ...packSelections([sel]) });
        const { perHead } = attentionMassRecall({ ...selectParams, kCache: fx.kCache, selection: sel });
        for (let h = 0; h < 4; h++) {
          const err = Math.max(...out.subarray(h * 16, (h + 1) * 16).map((x, d) => Math.abs(x - dense[h * 16 + d])));
          expect(err).toBeLessThanOrEqual(2 * (1 - perHead[h]) * vmax + 1e-6);
        }
      }
    }
  });
});
