import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, RequestValidationError } from '@tinyserve/core';
import type { ExecutorOptions, ForwardResult, KvCacheDtype, LoadedModel, SelectionConfig } from '@tinyserve/core';
import { selectionBudgetPages } from '@tinyserve/kv-retriever';
import { createExecutor } from './executor-registry.js';
import { TfjsExecutor } from './tfjs-executor.js';
import type { SelectionOptions } from './decode-selection.js';
import { createRandomModel, llamaConfig } from './__fixtures__/random-model.js';
import { TestPager, randomTokens } from './__fixtures__/paging.js';
import type { StepEntry } from './__fixtures__/paging.js';

const PS = 4;
const V = 97;
/** Three layers so that `denseLayers: 1` leaves two sparse ones; GQA 4:2. */
const model = createRandomModel(llamaConfig({ numLayers: 3 }), 41);
const promptA = randomTokens(41, V, 1);
const promptB = randomTokens(9, V, 2);
const decodeA = randomTokens(6, V, 3);
const decodeB = randomTokens(6, V, 4);

function sel(overrides: Partial<SelectionConfig> = {}): SelectionConfig {
  return { policy: 'quest', selectionRatio: 0.3, tokenBudget: null, sinkPages: 1, denseLayers: 1, useFusedKernel: true, ...overrides };
}

function options(selection: SelectionConfig, kvCacheDtype: KvCacheDtype = 'fp32', m: LoadedModel = model): ExecutorOptions {
  return { model: m, pageSize: PS, numKvPages: 64, kvCacheDtype, attentionChunkSize: 8, selection };
}

const executors: TfjsExecutor[] = [];
async function make(selection: SelectionConfig, backend: 'wasm' | 'cpu' = 'wasm', dtype: KvCacheDtype = 'fp32', extra: SelectionOptions = {}): Promise<TfjsExecutor> {
  const ex = await TfjsExecutor.create(backend, options(selection, dtype), extra);
  executors.push(ex);
  return ex;
}
afterAll(() => executors.forEach((e) => e.dispose()));

/**
 * A fixed schedule: A prefills 41 tokens alone; then A decodes while B prefills; then both
 * decode, teacher-forced. Steps 0-1 hold prefill rows; A's decode rows start at step 1.
 */
function schedule(): StepEntry[][] {
  const steps: StepEntry[][] = [[{ seqId: 1, tokens: promptA, logitsMode: 1 }]];
  steps.push([
    { seqId: 1, tokens: [decodeA[0]], logitsMode: 1 },
    { seqId: 2, tokens: promptB, logitsMode: 2 },
  ]);
  for (let i = 1; i < decodeA.length; i++) {
    steps.push([
      { seqId: 2, tokens: [decodeB[i - 1]], logitsMode: 1 },
      { seqId: 1, tokens: [decodeA[i]], logitsMode: 1 },
    ]);
  }
  return steps;
}

interface Run {
  results: ForwardResult[];
  selections: ReturnType<TfjsExecutor['getLastSelections']>[];
}

async function run(ex: TfjsExecutor, steps = schedule()): Promise<Run> {
  const pager = new TestPager(64, PS, 5);
  const results: ForwardResult[] = [];
  const selections: Run['selections'] = [];
  for (const entries of steps) {
    results.push(await ex.forward(pager.step(entries)));
    selections.push(ex.getLastSelections());
  }
  return { results, selections };
}

const logitsOf = (r: Run) => r.results.map((x) => Array.from(x.logits));
const indicesOf = (r: Run) => r.selections.map((step) => step.map((s) => [s.seqId, s.layer, Array.from(s.selection.indices)]));

let denseRun: Run | undefined;
async function dense(): Promise<Run> {
  denseRun ??= await run(await make(sel({ policy: 'dense' })));
  return denseRun;
}

describe('sparse decode equals dense when the selection covers every page', () => {
  const covering: [string, SelectionConfig][] = [
    ['quest ratio 1, fused', sel({ selectionRatio: 1, denseLayers: 0 })],
    ['quest ratio 1, separate kernels', sel({ selectionRatio: 1, denseLayers: 0, useFusedKernel: false })],
    ['quest with a budget >= the context', sel({ tokenBudget: 64, denseLayers: 0 })],
    ['streaming ratio 1', sel({ policy: 'streaming', selectionRatio: 1, denseLayers: 0, useFusedKernel: false })],
  ];
  it.each(covering)('%s: same logits bit for bit, every page read, no metadata read', async (_name, config) => {
    const ref = await dense();
    const got = await run(await make(config));
    expect(logitsOf(got)).toEqual(logitsOf(ref));
    for (const r of got.results.slice(1)) {
      expect(r.selection.pagesScanned).toBeGreaterThan(0);
      expect(r.selection.pagesSelected).toBe(r.selection.pagesScanned);
      expect(r.selection.kvBytesRead).toBe(r.selection.kvBytesDense);
    }
    expect(got.results.map((r) => r.selection)).toEqual(ref.results.map((r) => r.selection));
  });
});

const POLICIES = ['quest', 'streaming', 'random', 'oracle'] as const;

describe.each(POLICIES)('%s at ratio 0.3', (policy) => {
  it('reads fewer bytes, differs from dense only in decode rows, keeps sinks, current page and dense layers', async () => {
    const ref = await dense();
    const got = await run(await make(sel({ policy })));
    // Prefill rows: step 0, and B's prefill rows in step 1 (after A's one decode row).
    expect(Array.from(got.results[0].logits)).toEqual(Array.from(ref.results[0].logits));
    expect(Array.from(got.results[1].logits.subarray(V))).toEqual(Array.from(ref.results[1].logits.subarray(V)));
    expect(got.results[0].selection).toEqual({ pagesScanned: 0, pagesSelected: 0, kvBytesRead: 0, kvBytesDense: 0 });
    let differs = false;
    for (let i = 1; i < got.results.length; i++) {
      const s = got.results[i].selection;
      expect(s.kvBytesDense).toBe(ref.results[i].selection.kvBytesDense);
      expect(s.pagesScanned).toBe(ref.results[i].selection.pagesScanned);
      expect(s.pagesSelected).toBeLessThan(s.pagesScanned);
      expect(s.kvBytesRead).toBeLessThan(s.kvBytesDense);
      const a = got.results[i].logits.subarray(0, V);
      if (a.some((v, k) => v !== ref.results[i].logits[k])) differs = true;
    }
    expect(differs).toBe(true);

    for (const step of got.selections.slice(1)) {
      expect(step.length).toBe(3 * step.filter((r) => r.layer === 0).length);
      for (const r of step) {
        const np = Math.ceil(r.numTokens / PS);
        const { indptr, indices } = r.selection;
        for (let j = 0; j < 2; j++) {
          const head = Array.from(indices.subarray(indptr[j], indptr[j + 1]));
          if (r.layer < 1) {
            expect(head).toEqual(Array.from({ length: np }, (_, p) => p));
            continue;
          }
          // The budget, unless the forced pages (sink + current) alone exceed it.
          const forced = policy === 'oracle' || np === 1 ? 1 : 2;
          expect(head.length).toBe(Math.min(np, Math.max(forced, selectionBudgetPages(sel(), np, PS))));
          // Oracle keeps nothing by rule; the others keep the sink page and the current page.
          if (policy !== 'oracle') expect(head).toEqual(expect.arrayContaining([0, np - 1]));
        }
      }
    }
  });

  it('gives identical results with fused and separate kernels', async () => {
    const fused = await run(await make(sel({ policy })));
    const separate = await run(await make(sel({ policy, useFusedKernel: false })));
    expect(logitsOf(separate)).toEqual(logitsOf(fused));
    expect(indicesOf(separate)).toEqual(indicesOf(fused));
    expect(separate.results.map((r) => r.selection)).toEqual(fused.results.map((r) => r.selection));
  });
});

describe('backends and KV formats', () => {
  it('wasm and cpu agree on sparse decode (same pages, logits within 1e-4)', async () => {
    const wasm = await run(await make(sel(), 'wasm'));
    const cpu = await run(await make(sel({ useFusedKernel: false }), 'cpu'));
    expect(indicesOf(cpu)).toEqual(indicesOf(wasm));
    wasm.results.forEach((r, i) => r.logits.forEach((v, k) => expect(Math.abs(v - cpu.results[i].logits[k])).toBeLessThan(1e-4)));
  });

  it.each(['fp16', 'int8'] as const)('%s: quest at ratio 1 equals dense exactly; small ratios read fewer bytes of the smaller pages', async (dtype) => {
    const ref = await run(await make(sel({ policy: 'dense' }), 'wasm', dtype));
    const full = await run(await make(sel({ selectionRatio: 1, denseLayers: 0 }), 'wasm', dtype));
    expect(logitsOf(full)).toEqual(logitsOf(ref));
    const ex = await make(sel(), 'wasm', dtype);
    const sparse = await run(ex);
    const fp32 = await dense();
    sparse.results.slice(1).forEach((r, i) => {
      expect(r.selection.pagesSelected).toBeLessThan(r.selection.pagesScanned);
      expect(r.selection.kvBytesDense).toBeLessThan(fp32.results[i + 1].selection.kvBytesDense);
    });
    // KV bytes alone (the step results add the fp32 metadata, which at 4-token pages weighs
    // as much as an int8 page: the reason real page sizes are 16 and up).
    const { cumulative } = ex.getSelectionStats();
    expect(cumulative.kvBytesRead).toBeLessThan(0.75 * cumulative.kvBytesDense);
  });

  it('kvBytesPerPage reflects the KV format', async () => {
    // 3 layers x 2 KV heads x 4 slots x 8 dims, K and V; int8 adds a 4-byte scale per (slot, head).
    const elements = 2 * 3 * 2 * PS * 8;
    expect((await make(sel(), 'cpu', 'fp32')).kvBytesPerPage).toBe(elements * 4);
    expect((await make(sel(), 'cpu', 'fp16')).kvBytesPerPage).toBe(elements * 2);
    expect((await make(sel(), 'cpu', 'int8')).kvBytesPerPage).toBe(elements + 2 * 3 * 2 * PS * 4);
  });
});

describe('selection statistics', () => {
  it('counts KV bytes of the pages read plus the metadata scored, per (sequence, layer, KV head)', async () => {
    const ex = await make(sel());
    const { results, selections } = await run(ex);
    const rowBytes = 2 * 8 * 4; // K and V of one head, fp32
    const metaBytes = 2 * 8 * 4; // min and max of one (page, head)
    let steps = 0;
    results.forEach((r, i) => {
      if (i === 0) return;
      steps++;
      let read = 0;
      let dense = 0;
      let scanned = 0;
      let selected = 0;
      for (const rec of selections[i]) {
        const np = Math.ceil(rec.numTokens / PS);
        const last = rec.numTokens - (np - 1) * PS;
        for (const li of rec.selection.indices) read += (li === np - 1 ? last : PS) * rowBytes;
        if (rec.scored) read += np * 2 * metaBytes;
        dense += 2 * rec.numTokens * rowBytes;
        scanned += 2 * np;
        selected += rec.selection.indices.length;
      }
      expect(r.selection).toEqual({ pagesScanned: scanned, pagesSelected: selected, kvBytesRead: read, kvBytesDense: dense });
      expect(selections[i].some((rec) => rec.scored)).toBe(true);
    });
    const stats = ex.getSelectionStats();
    expect(stats.steps).toBe(steps);
    const sum = (k: 'pagesScanned' | 'pagesSelected' | 'kvBytesDense') => results.reduce((a, r) => a + r.selection[k], 0);
    expect(stats.cumulative.pagesScanned).toBe(sum('pagesScanned'));
    expect(stats.cumulative.kvHitRate).toBeCloseTo(sum('pagesSelected') / sum('pagesScanned'), 12);
    expect(stats.cumulative.kvBytesDense).toBe(sum('kvBytesDense'));
    // The collector keeps metadata apart from KV bytes; the step result adds them up.
    const kv = results.reduce((a, r) => a + r.selection.kvBytesRead, 0);
    expect(stats.cumulative.kvBytesRead + stats.cumulative.metadataBytesRead).toBe(kv);
    expect(stats.cumulative.metadataBytesRead).toBeGreaterThan(0);
    ex.resetSelectionStats();
    expect(ex.getSelectionStats().steps).toBe(0);
  });

  it('measures attention-mass recall when asked: 1 for covering selections, oracle >= quest', async () => {
    const recallOf = async (config: SelectionConfig) => {
      const ex = await make(config, 'wasm', 'fp32', { measureRecall: true });
      const { selections } = await run(ex, schedule().slice(0, 2));
      // A's first decode step at the first sparse layer: same query and keys for every policy.
      const rec = selections[1].find((r) => r.seqId === 1 && r.layer === 1);
      expect(ex.getSelectionStats().lastStep?.recallMean).not.toBeNull();
      return rec?.recall ?? NaN;
    };
    const quest = await recallOf(sel({ sinkPages: 0 }));
    const oracle = await recallOf(sel({ policy: 'oracle', sinkPages: 0 }));
    const full = await recallOf(sel({ selectionRatio: 1 }));
    expect(quest).toBeGreaterThan(0);
    expect(quest).toBeLessThan(1);
    expect(oracle).toBeGreaterThanOrEqual(quest - 1e-12);
    expect(full).toBe(1);
    const plain = await make(sel());
    await run(plain, schedule().slice(0, 2));
    expect(plain.getSelectionStats().cumulative.recallSamples).toBe(0);
    expect(plain.getLastSelections().every((r) => r.recall === null)).toBe(true);
  });
});

describe('page metadata', () => {
  const metadataOf = (ex: TfjsExecutor, page: number) =>
    ex.kvCache.metadata.layers.map((l) => {
      const row = 2 * 8;
      return [Array.from(l.min.subarray(page * row, (page + 1) * row)), Array.from(l.max.subarray(page * row, (page + 1) * row))];
    });

  it.each(['fp32', 'fp16', 'int8'] as const)('%s: rebuildPageMetadata after copyTokens equals the fresh append; a fork selects like its source', async (dtype) => {
    const ex = await make(sel({ denseLayers: 0 }), 'cpu', dtype);
    const pager = new TestPager(64, PS, 9);
    await ex.forward(pager.step([{ seqId: 1, tokens: promptA.slice(0, 30), logitsMode: 0 }]));
    const src = pager.pages.get(1) ?? [];
    const dst = pager.ensure(2, 30);
    const slots = Int32Array.from({ length: 30 }, (_, p) => p % PS);
    ex.copyTokens({
      srcPages: Int32Array.from({ length: 30 }, (_, p) => src[Math.floor(p / PS)]),
      srcSlots: slots,
      dstPages: Int32Array.from({ length: 30 }, (_, p) => dst[Math.floor(p / PS)]),
      dstSlots: slots,
    });
    // Full pages without fills; the partial last page (2 of 4 slots) with its fill.
    ex.rebuildPageMetadata(Int32Array.from(dst.slice(0, 7)));
    ex.rebuildPageMetadata(Int32Array.of(dst[7]), Int32Array.of(2));
    dst.forEach((page, i) => expect(metadataOf(ex, page)).toEqual(metadataOf(ex, src[i])));
    // Both decode the same token at position 30: same pages chosen, same logits.
    pager.lengths.set(2, 30);
    const a = await ex.forward(pager.step([{ seqId: 1, tokens: [decodeA[0]], logitsMode: 1 }]));
    const fromSource = ex.getLastSelections().map((r) => Array.from(r.selection.indices));
    const b = await ex.forward(pager.step([{ seqId: 2, tokens: [decodeA[0]], logitsMode: 1 }]));
    expect(ex.getLastSelections().map((r) => Array.from(r.selection.indices))).toEqual(fromSource);
    expect(Array.from(b.logits)).toEqual(Array.from(a.logits));
    expect(fromSource.some((indices) => indices.length < 2 * 8)).toBe(true);
  });

  it('rebuilds automatically when a step rewrites positions, so re-running a step under another policy is exact', async () => {
    const ex = await make(sel({ policy: 'dense' }));
    const fresh = await make(sel());
    const pager = new TestPager(64, PS, 3);
    const freshPager = new TestPager(64, PS, 3);
    await ex.forward(pager.step([{ seqId: 1, tokens: promptA, logitsMode: 0 }]));
    await fresh.forward(freshPager.step([{ seqId: 1, tokens: promptA, logitsMode: 0 }]));
    // A first decode at position 41 with another token, then the real one re-run at 41.
    await ex.forward(pager.step([{ seqId: 1, tokens: [decodeA[1]], logitsMode: 1 }]));
    ex.setSelection(sel());
    const rerun = await ex.forward(pager.step([{ seqId: 1, tokens: [decodeA[0]], startPos: 41, logitsMode: 1 }]));
    const once = await fresh.forward(freshPager.step([{ seqId: 1, tokens: [decodeA[0]], logitsMode: 1 }]));
    expect(Array.from(rerun.logits)).toEqual(Array.from(once.logits));
    const last = (pager.pages.get(1) ?? [])[10];
    expect(metadataOf(ex, last)).toEqual(metadataOf(fresh, (freshPager.pages.get(1) ?? [])[10]));
    expect(ex.selection.policy).toBe('quest');
  });

  it('validates rebuildPageMetadata arguments', async () => {
    const ex = await make(sel(), 'cpu');
    expect(() => ex.rebuildPageMetadata(Int32Array.of(64))).toThrow(/pages\[0\]: 64 is outside \[0, 64\)/);
    expect(() => ex.rebuildPageMetadata(Int32Array.of(1), Int32Array.of(5))).toThrow(/fills\[0\]: 5 is outside \[0, 4\]/);
    expect(() => ex.rebuildPageMetadata(Int32Array.of(1, 2), Int32Array.of(1))).toThrow(RequestValidationError);
    ex.rebuildPageMetadata(Int32Array.of(3), Int32Array.of(0));
    expect(ex.kvCache.metadata.isEmpty(0, 3)).toBe(true);
  });
});

describe('configuration', () => {
  it('rejects bad selection configs and KV formats with a ConfigError naming the field', async () => {
    const bad: [Partial<SelectionConfig> | { kvCacheDtype: string }, string, RegExp][] = [
      [{ policy: 'nope' }, 'selectionPolicy', /unknown selection policy 'nope' \(registered: dense, oracle, quest, random, streaming\)/],
      [{ selectionRatio: 0 }, 'selectionRatio', /\(0, 1\]/],
      [{ tokenBudget: 3 }, 'tokenBudget', /less than one page/],
      [{ tokenBudget: 4, sinkPages: 2 }, 'tokenBudget', /always keeps 3/],
      [{ sinkPages: -1 }, 'sinkPages', /non-negative integer/],
      [{ denseLayers: 1.5 }, 'denseLayers', /non-negative integer/],
      [{ useFusedKernel: 'yes' as unknown as boolean }, 'useFusedKernel', /must be a boolean/],
      [{ kvCacheDtype: 'bf16' }, 'kvCacheDtype', /one of 'fp32', 'fp16', 'int8', got 'bf16'/],
    ];
    for (const [override, field, message] of bad) {
      const opts =
        'kvCacheDtype' in override
          ? { ...options(sel()), kvCacheDtype: override.kvCacheDtype as KvCacheDtype }
          : options(sel(override as Partial<SelectionConfig>));
      const err = await createExecutor('wasm', opts).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).field).toBe(field);
      expect((err as Error).message).toMatch(message);
    }
    await expect(TfjsExecutor.create('cpu', options(sel()), { measureRecall: 1 as unknown as boolean })).rejects.toThrow(ConfigError);
    await expect(TfjsExecutor.create('cpu', options(sel()), { seed: -1 })).rejects.toThrow(/seed/);
  });

  it('setSelection validates and keeps the old selection on error', async () => {
    const ex = await make(sel(), 'cpu');
    expect(() => ex.setSelection(sel({ policy: 'streaming', selectionRatio: 2 }))).toThrow(ConfigError);
    expect(ex.selection.policy).toBe('quest');
    ex.setSelection(sel({ policy: 'random' }), { seed: 7, measureRecall: true });
    expect(ex.selection.policy).toBe('random');
    expect(ex.selectionOptions).toEqual({ seed: 7, measureRecall: true });
  });
});
