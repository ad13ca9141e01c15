import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_CONFIG, loadModel } from '@tinyserve/core';
import type { Executor, LoadedModel, SelectionConfig } from '@tinyserve/core';
import { createExecutor } from '@tinyserve/executor';
import { ForkedDecoder, canSwitchSelection } from './forked-decode.js';

const HF = fileURLToPath(new URL('../../../../__fixtures__/hf/', import.meta.url));
const PAGE = 8;

const dense: SelectionConfig = { policy: 'dense', selectionRatio: 1, tokenBudget: null, sinkPages: 1, denseLayers: 0, useFusedKernel: true };

/** Only the core Executor contract: no selection switch, no inspection. */
function plain(executor: Executor): Executor {
  return {
    backend: executor.backend,
    model: executor.model,
    pageSize: executor.pageSize,
    numKvPages: executor.numKvPages,
    kvBytesPerPage: executor.kvBytesPerPage,
    forward: (p) => executor.forward(p),
    copyTokens: (p) => executor.copyTokens(p),
    dispose: () => executor.dispose(),
  };
}

describe('ForkedDecoder', () => {
  let model: LoadedModel;
  let executor: Executor;
  let tokens: number[];

  beforeAll(async () => {
    model = await loadModel(`${HF}llama-tiny-gqa`);
    executor = await createExecutor('wasm', {
      model,
      pageSize: PAGE,
      numKvPages: 64,
      kvCacheDtype: 'fp32',
      attentionChunkSize: DEFAULT_CONFIG.attentionChunkSize,
      selection: dense,
    });
    tokens = model.tokenizer.encode('Fellow-Citizens of the Senate and House of Representatives: the state of the Union is strong and');
  });
  afterAll(() => executor.dispose());

  /** Logits of every position from one dense prefill of the whole sequence. */
  async function fullPrefill(ids: number[]): Promise<Float32Array[]> {
    const n = ids.length;
    const pages = Array.from({ length: Math.ceil(n / PAGE) }, (_, i) => 40 + i);
    const result = await executor.forward({
      tokenIds: Int32Array.from(ids),
      queryIndptr: Int32Array.from([0, n]),
      startPos: Int32Array.from([0]),
      pageIndptr: Int32Array.from([0, pages.length]),
      pageIndices: Int32Array.from(pages),
      logitsMode: Uint8Array.from([2]),
      seqIds: Int32Array.from([999]),
    });
    const V = model.config.vocabSize;
    return Array.from({ length: n }, (_, i) => result.logits.slice(i * V, (i + 1) * V));
  }

  /** Teacher-forced decode of `ids[split..]` from a shared prefix of `ids[..split-1]`. */
  async function branchLogits(decoder: ForkedDecoder, split: number, ids: number[]): Promise<Float32Array[]> {
    const prefix = await decoder.prefill(ids.slice(0, split - 1));
    try {
      return await decodeFrom(decoder, prefix, split, ids);
    } finally {
      decoder.release(prefix);
    }
  }

  async function decodeFrom(decoder: ForkedDecoder, prefix: Awaited<ReturnType<ForkedDecoder['prefill']>>, split: number, ids: number[]) {
    const rows: Float32Array[] = [];
    const totals = await decoder.branch(prefix, {
      selection: dense,
      tail: ids.slice(prefix.numTokens, split - 1),
      firstInput: ids[split - 1],
      next: (logits, step) => {
        rows.push(logits.slice());
        return split + step < ids.length ? ids[split + step] : null;
      },
    });
    expect(totals.steps).toBe(ids.length - split + 1);
    expect(totals.kvBytesRead).toBe(totals.kvBytesDense);
    return rows;
  }

  function maxDiff(a: Float32Array, b: Float32Array): number {
    let m = 0;
    for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
    return m;
  }

  it('decodes from a shared prefix exactly as one full prefill computes (partial last page in the branch)', async () => {
    expect(tokens.length).toBeGreaterThan(20);
    const full = await fullPrefill(tokens);
    const decoder = new ForkedDecoder(executor, { prefillChunk: 5, dense });
    for (const split of [PAGE * 2 + 1, PAGE * 2 + 4]) {
      const rows = await branchLogits(decoder, split, tokens);
      rows.forEach((row, i) => expect(maxDiff(row, full[split - 1 + i])).toBeLessThan(1e-4));
    }
    expect(decoder.pool.usedPages).toBe(0);
  });

  it('branches do not disturb the shared prefix: two branches from one prefill agree bit for bit', async () => {
    const decoder = new ForkedDecoder(executor, { prefillChunk: 512, dense });
    const split = PAGE * 2 + 3;
    const prefix = await decoder.prefill(tokens.slice(0, split - 1));
    expect(prefix.numTokens).toBe(PAGE * 2);
    const a = await decodeFrom(decoder, prefix, split, tokens);
    const b = await decodeFrom(decoder, prefix, split, tokens);
    a.forEach((row, i) => expect(maxDiff(row, b[i])).toBe(0));
    decoder.release(prefix);
    expect(decoder.pool.usedPages).toBe(0);
  });

  it('works on an executor with only the core contract (no selection switch)', async () => {
    const bare = plain(executor);
    expect(canSwitchSelection(executor)).toBe(true);
    expect(canSwitchSelection(bare)).toBe(false);
    const split = PAGE + 2;
    const full = await fullPrefill(tokens);
    const rows = await branchLogits(new ForkedDecoder(bare, { prefillChunk: 512, dense }), split, tokens);
    rows.forEach((row, i) => expect(maxDiff(row, full[split - 1 + i])).toBeLessThan(1e-4));
  });
});
