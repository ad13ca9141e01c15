import { describe, expect, it } from 'vitest';
import { OutOfPagesError, OverloadedError, PluginError, RequestValidationError, TinyServeError } from '@tinyserve/core';
import type { EngineRequest, EngineResult } from './engine-types.js';
import { RecordingHooks, createHarness, prompt, request, runAlone } from './__fixtures__/engine-harness.js';
import { mockGreedy, mockLogits } from './__fixtures__/mock-executor.js';
import { MOCK_EOS } from './__fixtures__/mock-tokenizer.js';

const VOCAB = 64;

function logSoftmaxAt(row: Float32Array, token: number): number {
  let max = -Infinity;
  for (const v of row) max = Math.max(max, v);
  let sum = 0;
  for (const v of row) sum += Math.exp(v - max);
  return row[token] - max - Math.log(sum);
}

async function collect(handle: AsyncIterable<{ text: string; tokenId: number }>): Promise<{ text: string; ids: number[] }> {
  let text = '';
  const ids: number[] = [];
  for await (const e of handle) {
    text += e.text;
    ids.push(e.tokenId);
  }
  return { text, ids };
}

describe('continuous batching', () => {
  it('gives batched greedy outputs equal to one-at-a-time outputs and to the reference', async () => {
    const { engine, executor } = createHarness({ config: { maxBatchTokens: 16, maxNumSeqs: 8 } });
    const reqs = Array.from({ length: 12 }, (_, i) => request(prompt(i + 1, 1 + ((i * 7) % 40)), { maxTokens: 1 + ((i * 5) % 20) }));
    const batched = await Promise.all(reqs.map((r) => engine.submit(r).result));
    for (let i = 0; i < reqs.length; i++) {
      const alone = await runAlone(reqs[i]);
      expect(batched[i].tokenIds).toEqual(alone.tokenIds);
      expect(batched[i].tokenIds).toEqual(mockGreedy(reqs[i].promptTokenIds, reqs[i].sampling.maxTokens, VOCAB, [MOCK_EOS]));
    }
    const stats = engine.getStats();
    expect(stats.batchSize.max).toBeGreaterThan(1);
    expect(Math.max(...executor.calls.map((c) => c.newTokens.reduce((a, b) => a + b, 0)))).toBeLessThanOrEqual(16);
    expect(Math.max(...executor.calls.map((c) => c.seqIds.length))).toBeLessThanOrEqual(8);
    expect(stats.tokensDecoded).toBe(batched.reduce((a, r) => a + r.tokenIds.length, 0));
    expect(stats.tokensPrefilled).toBe(reqs.reduce((a, r) => a + r.promptTokenIds.length, 0));
    expect(stats.steps).toBe(executor.calls.length);
    expect(Object.values(stats.batchSize.histogram).reduce((a, b) => a + b, 0)).toBe(stats.steps);
    expect(stats.batchSize.mean).toBeCloseTo(executor.calls.reduce((a, c) => a + c.seqIds.length, 0) / stats.steps, 9);
    expect(stats.queueTimeMs.count).toBe(12);
    expect(stats.requests).toEqual({ submitted: 12, finished: 12, cancelled: 0, failed: 0, rejected: 0 });
    expect(stats.kv).toMatchObject({ totalPages: 256, usedPages: 0, pageSize: 4, usage: 0 });
    expect(stats.selection.kvHitRate).toBe(1);
    expect(stats.numRunning + stats.numWaiting).toBe(0);
    expect(engine.pool.usedPages).toBe(0);
  });

  it('never stalls a running decode while a long prompt is prefilled in chunks', async () => {
    const hooks = new RecordingHooks();
    const { engine, executor } = createHarness({ hooks, config: { maxBatchTokens: 8 } });
    const a = engine.submit(request(prompt(1, 3), { maxTokens: 40, ignoreEos: true }));
    const it = a[Symbol.asyncIterator]();
    await it.next();
    const firstCall = executor.calls.length;
    const b = engine.submit(request(prompt(2, 50), { maxTokens: 2, ignoreEos: true }));
    const rest = (async () => {
      for (let r = await it.next(); !r.done; r = await it.next()) {
        /* drain */
      }
    })();
    const [ra, rb] = await Promise.all([a.result, b.result, rest]);
    const seqA = hooks.started.find((s) => s.requestId === a.requestId)!.seqId;
    const seqB = hooks.started.find((s) => s.requestId === b.requestId)!.seqId;
    const calls = executor.calls.slice(firstCall);
    const lastA = calls.findLastIndex((c) => c.seqIds.includes(seqA));
    // Every step while A runs carries its decode token.
    for (const call of calls.slice(0, lastA + 1)) {
      const i = call.seqIds.indexOf(seqA);
      expect(i).toBeGreaterThanOrEqual(0);
      expect(call.newTokens[i]).toBe(1);
    }
    // B's 50-token prompt went in chunks of at most 7 (8 minus A's decode).
    const bChunks = calls.filter((c) => c.seqIds.includes(seqB)).map((c) => c.newTokens[c.seqIds.indexOf(seqB)]);
    expect(bChunks.filter((n) => n > 1).length).toBeGreaterThanOrEqual(7);
    expect(Math.max(...bChunks)).toBeLessThanOrEqual(7);
    // 50 prompt tokens, then one decode token for the second generated token.
    expect(bChunks.reduce((x, y) => x + y, 0)).toBe(51);
    expect(ra.tokenIds).toEqual(mockGreedy(prompt(1, 3), 40, VOCAB));
    expect(rb.tokenIds).toEqual(mockGreedy(prompt(2, 50), 2, VOCAB));
  });

  it('yields to I/O between steps', async () => {
    const { engine, executor } = createHarness();
    // A chain of setImmediate callbacks stands for I/O: it only advances if the loop yields.
    let ticks = 0;
    let done = false;
    const tick = (): void => {
      ticks++;
      if (!done) setImmediate(tick);
    };
    setImmediate(tick);
    await engine.submit(request(prompt(3, 4), { maxTokens: 30, ignoreEos: true })).result;
    done = true;
    expect(executor.calls.length).toBe(30);
    expect(ticks).toBeGreaterThanOrEqual(25);
  });
});

describe('priorities and aging', () => {
  it('admits high before normal before low, first come first served within a priority', async () => {
    const hooks = new RecordingHooks();
    const { engine } = createHarness({ hooks, config: { maxNumSeqs: 1 } });
    const order = ['low', 'normal', 'high', 'normal', 'high'] as const;
    const handles = order.map((priority, i) => engine.submit(request(prompt(10 + i, 3), { maxTokens: 2 }, { priority, requestId: `p${i}` })));
    await Promise.all(handles.map((h) => h.result));
    expect(hooks.started.map((s) => s.requestId)).toEqual(['p2', 'p4', 'p1', 'p3', 'p0']);
  });

  it('ages a waiting request past newer higher-priority ones', async () => {
    let now = 0;
    const hooks = new RecordingHooks();
    const { engine } = createHarness({ hooks, config: { maxNumSeqs: 1 }, engine: { agingIntervalMs: 1000, now: () => now } });
    engine.submit(request(prompt(1, 3), { maxTokens: 2 }, { priority: 'low', requestId: 'old-low' }));
    now = 3500; // waited 3.5 intervals: ranks above a fresh 'high'
    engine.submit(request(prompt(2, 3), { maxTokens: 2 }, { priority: 'high', requestId: 'new-high' }));
    const last = engine.submit(request(prompt(3, 3), { maxTokens: 2 }, { priority: 'normal', requestId: 'new-normal' }));
    await last.result;
    expect(hooks.started.map((s) => s.requestId)).toEqual(['old-low', 'new-high', 'new-normal']);
  });

  it('does not age within one interval', async () => {
    let now = 0;
    const hooks = new RecordingHooks();
    const { engine } = createHarness({ hooks, config: { maxNumSeqs: 1 }, engine: { agingIntervalMs: 1000, now: () => now } });
    engine.submit(request(prompt(1, 3), { maxTokens: 2 }, { priority: 'low', requestId: 'low' }));
    now = 900;
    await engine.submit(request(prompt(2, 3), { maxTokens: 2 }, { priority: 'normal', requestId: 'normal' })).result;
    expect(hooks.started[0].requestId).toBe('normal');
  });
});

describe('cancellation', () => {
  it('frees a running request\'s pages at once and finishes it as cancelled', async () => {
    const hooks = new RecordingHooks();
    const { engine } = createHarness({ hooks });
    const controller = new AbortController();
    const handle = engine.submit(request(prompt(4, 10), { maxTokens: 200, ignoreEos: true }, { signal: controller.signal }));
    let seen = 0;
    for await (const _ of handle) {
      if (++seen === 3) {
        expect(engine.pool.usedPages).toBeGreaterThan(0);
        controller.abort();
        expect(engine.pool.usedPages).toBe(0);
        expect(engine.getStats().numRunning).toBe(0);
      }
    }
    const result = await handle.result;
    expect(result.finishReason).toBe('cancelled');
    expect(result.tokenIds.length).toBeGreaterThanOrEqual(3);
    expect(result.tokenIds).toEqual(mockGreedy(prompt(4, 10), result.tokenIds.length, VOCAB));
    expect(hooks.finished.map((f) => f.finishReason)).toEqual(['cancelled']);
  });

  it('cancels mid-step without disturbing the other sequences of the batch', async () => {
    const { engine, executor } = createHarness();
    const controller = new AbortController();
    const victim = engine.submit(request(prompt(5, 9), { maxTokens: 50, ignoreEos: true }, { signal: controller.signal }));
    const other = engine.submit(request(prompt(6, 9), { maxTokens: 20, ignoreEos: true }));
    let steps = 0;
    executor.beforeForward = () => {
      if (++steps === 4) controller.abort();
    };
    const [rv, ro] = await Promise.all([victim.result, other.result]);
    expect(rv.finishReason).toBe('cancelled');
    expect(rv.tokenIds).toEqual(mockGreedy(prompt(5, 9), rv.tokenIds.length, VOCAB));
    expect(ro.tokenIds).toEqual(mockGreedy(prompt(6, 9), 20, VOCAB));
    expect(engine.pool.usedPages).toBe(0);
  });

  it('cancels a waiting request before it starts, and an already-aborted one at once', async () => {
    const hooks = new RecordingHooks();
    const { engine } = createHarness({ hooks });
    const controller = new AbortController();
    const waiting = engine.submit(request(prompt(7, 4), {}, { signal: controller.signal }));
    controller.abort();
    expect((await waiting.result).finishReason).toBe('cancelled');
    const pre = engine.submit(request(prompt(7, 4), {}, { signal: AbortSignal.abort() }));
    expect((await pre.result).tokenIds).toEqual([]);
    expect(hooks.started).toEqual([]);
    expect(engine.cancel('nope')).toBe(false);
  });
});

describe('backpressure and validation', () => {
  it('rejects beyond maxQueueSize with an overloaded error', () => {
    const { engine } = createHarness({ config: { maxQueueSize: 2 } });
    engine.submit(request(prompt(1, 3)));
    engine.submit(request(prompt(2, 3)));
    let error: unknown;
    try {
      engine.submit(request(prompt(3, 3)));
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(OverloadedError);
    expect((error as OverloadedError).code).toBe('overloaded');
    expect(engine.getStats().requests.rejected).toBe(1);
    return engine.shutdown();
  });

  it('names the bad field', () => {
    const { engine } = createHarness({ maxModelLen: 32, numKvPages: 4 });
    const bad = (r: Partial<EngineRequest>): unknown => {
      try {
        engine.submit({ ...request(prompt(1, 3)), ...r });
      } catch (e) {
        return e;
      }
      return null;
    };
    expect(bad({ promptTokenIds: [] })).toBeInstanceOf(RequestValidationError);
    expect(String(bad({ promptTokenIds: [1, 64] }))).toMatch(/promptTokenIds\[1\]: must be a token id in \[0, 64\)/);
    expect(String(bad({ promptTokenIds: prompt(1, 32) }))).toMatch(/promptTokenIds: the prompt has 32 tokens but the context holds 32/);
    expect(bad({ promptTokenIds: prompt(1, 20) })).toBeInstanceOf(OutOfPagesError);
    expect(String(bad({ priority: 'urgent' as never }))).toMatch(/priority/);
    expect(String(bad({ requestId: '' }))).toMatch(/requestId/);
    expect(String(bad({ sampling: { ...request([1]).sampling, topK: -1 } }))).toMatch(/sampling.topK/);
    expect(String(bad({ sessionId: '' }))).toMatch(/sessionId/);
  });

  it('refuses new work while draining and finishes what it accepted', async () => {
    const { engine } = createHarness();
    const h = engine.submit(request(prompt(1, 5), { maxTokens: 6, ignoreEos: true }));
    const drained = engine.drain();
    expect(() => engine.submit(request(prompt(2, 3)))).toThrow(OverloadedError);
    await drained;
    expect((await h.result).tokenIds).toHaveLength(6);
  });

  it('shutdown cancels what is in flight', async () => {
    const { engine } = createHarness();
    const h = engine.submit(request(prompt(1, 5), { maxTokens: 500, ignoreEos: true }));
    await h[Symbol.asyncIterator]().next();
    await engine.shutdown();
    expect((await h.result).finishReason).toBe('cancelled');
    expect(engine.pool.usedPages).toBe(0);
  });
});

describe('preemption', () => {
  it('gives the same outputs under a tiny pool as with a big one', async () => {
    const reqs = Array.from({ length: 6 }, (_, i) => request(prompt(20 + i, 8 + i), { maxTokens: 12, ignoreEos: true }));
    const tiny = createHarness({ numKvPages: 10, config: { maxNumSeqs: 6 } });
    const results = await Promise.all(reqs.map((r) => tiny.engine.submit(r).result));
    for (let i = 0; i < reqs.length; i++) expect(results[i].tokenIds).toEqual(mockGreedy(reqs[i].promptTokenIds, 12, VOCAB));
    expect(tiny.engine.getStats().preemptions).toBeGreaterThan(0);
    expect(tiny.engine.pool.usedPages).toBe(0);
    tiny.engine.pool.verify();
  });

  it('preempts the lowest priority first', async () => {
    const hooks = new RecordingHooks();
    const { engine, executor } = createHarness({ hooks, numKvPages: 8 });
    const low = engine.submit(request(prompt(1, 6), { maxTokens: 14, ignoreEos: true }, { priority: 'low' }));
    const high = engine.submit(request(prompt(2, 6), { maxTokens: 14, ignoreEos: true }, { priority: 'high' }));
    const [rl, rh] = await Promise.all([low.result, high.result]);
    expect(rl.tokenIds).toEqual(mockGreedy(prompt(1, 6), 14, VOCAB));
    expect(rh.tokenIds).toEqual(mockGreedy(prompt(2, 6), 14, VOCAB));
    const seqOf = (id: string): number => hooks.started.find((s) => s.requestId === id)!.seqId;
    const starts = (seq: number): number[] => executor.calls.filter((c) => c.seqIds.includes(seq)).map((c) => c.startPos[c.seqIds.indexOf(seq)]);
    const restarted = (xs: number[]): boolean => xs.some((x, i) => i > 0 && x <= xs[i - 1]);
    expect(restarted(starts(seqOf(high.requestId)))).toBe(false);
    expect(restarted(starts(seqOf(low.requestId)))).toBe(true);
    expect(engine.getStats().preemptions).toBeGreaterThan(0);
  });

  it('fails alone a request that can never fit', async () => {
    const { engine } = createHarness({ numKvPages: 4 });
    const big = engine.submit(request(prompt(1, 8), { maxTokens: 100, ignoreEos: true }));
    const small = engine.submit(request(prompt(2, 2), { maxTokens: 3, ignoreEos: true }));
    await expect(big.result).rejects.toThrow(OutOfPagesError);
    await expect(big.result).rejects.toThrow(/needs 5 KV pages of 4 tokens .* the pool has 4/);
    expect((await small.result).tokenIds).toEqual(mockGreedy(prompt(2, 2), 3, VOCAB));
    expect(engine.pool.usedPages).toBe(0);
  });
});

describe('stopping', () => {
  it('cuts at a stop string, streams nothing of it, and finishes with stop', async () => {
    const { engine, tokenizer } = createHarness();
    const p = prompt(30, 5);
    const full = mockGreedy(p, 30, VOCAB);
    const fullText = tokenizer.decode(full, { skipSpecialTokens: true });
    const stop = fullText.slice(12, 14);
    const cut = fullText.indexOf(stop);
    const h = engine.submit(request(p, { maxTokens: 30, ignoreEos: true, stop: [stop] }));
    const streamed = await collect(h);
    const result = await h.result;
    expect(result.finishReason).toBe('stop');
    expect(result.text).toBe(fullText.slice(0, cut));
    expect(streamed.text).toBe(result.text);
    expect(result.tokenIds).toEqual(full.slice(0, result.tokenIds.length));
  });

  it('stops on EOS unless ignoreEos, keeping EOS out of the text', async () => {
    const { engine, tokenizer } = createHarness();
    // Find a prompt whose greedy continuation reaches EOS.
    let p: number[] = [];
    let withEos: number[] = [];
    for (let seed = 1; seed < 500; seed++) {
      p = prompt(seed, 4);
      withEos = mockGreedy(p, 40, VOCAB, [MOCK_EOS]);
      if (withEos[withEos.length - 1] === MOCK_EOS && withEos.length < 40) break;
    }
    const r = await engine.submit(request(p, { maxTokens: 40 })).result;
    expect(r.finishReason).toBe('stop');
    expect(r.tokenIds).toEqual(withEos);
    expect(r.text).toBe(tokenizer.decode(withEos, { skipSpecialTokens: true }));
    const ignoring = await engine.submit(request(p, { maxTokens: 40, ignoreEos: true })).result;
    expect(ignoring.finishReason).toBe('length');
    expect(ignoring.tokenIds).toHaveLength(40);
  });

  it('stops after a stop token id and at maxModelLen', async () => {
    const { engine } = createHarness({ maxModelLen: 12 });
    const p = prompt(31, 5);
    const full = mockGreedy(p, 6, VOCAB);
    const r = await engine.submit(request(p, { maxTokens: 6, ignoreEos: true, stopTokenIds: [full[2]] })).result;
    expect(r.finishReason).toBe('stop');
    expect(r.tokenIds).toEqual(full.slice(0, full.indexOf(full[2]) + 1));
    const long = await engine.submit(request(p, { maxTokens: 100, ignoreEos: true })).result;
    expect(long.finishReason).toBe('length');
    expect(long.tokenIds).toHaveLength(12 - 5);
  });
});

describe('sampling through the engine', () => {
  it('is reproducible for a seed, whatever else is in the batch', async () => {
    const sampled = { temperature: 0.9, topP: 0.95, topK: 20, seed: 123, maxTokens: 30, ignoreEos: true };
    const alone = await runAlone(request(prompt(40, 7), sampled));
    const { engine } = createHarness({ config: { maxBatchTokens: 12 } });
    const others = Array.from({ length: 5 }, (_, i) =>
      engine.submit(request(prompt(50 + i, 3 + i * 4), { ...sampled, seed: i, temperature: 1.2 })),
    );
    const batched = await engine.submit(request(prompt(40, 7), sampled)).result;
    await Promise.all(others.map((h) => h.result));
    expect(batched.tokenIds).toEqual(alone.tokenIds);
    const otherSeed = await runAlone(request(prompt(40, 7), { ...sampled, seed: 124 }));
    expect(otherSeed.tokenIds).not.toEqual(alone.tokenIds);
  });

  it('reports raw-logit logprobs of generated and prompt tokens, across prefill chunks', async () => {
    const { engine } = createHarness({ config: { maxBatchTokens: 8 } });
    const p = prompt(41, 21);
    const r = await engine.submit(request(p, { maxTokens: 5, ignoreEos: true, logprobs: true, promptLogprobs: true })).result;
    const history = [...p];
    r.tokenIds.forEach((t, i) => {
      expect(r.logprobs![i]).toBeCloseTo(logSoftmaxAt(mockLogits(history, VOCAB), t), 5);
      history.push(t);
    });
    expect(r.promptLogprobs![0]).toBeNull();
    for (let i = 1; i < p.length; i++) {
      expect(r.promptLogprobs![i]).toBeCloseTo(logSoftmaxAt(mockLogits(p.slice(0, i), VOCAB), p[i]), 5);
    }
  });

  it('scores a prompt with maxTokens 0', async () => {
    const { engine } = createHarness();
    const p = prompt(42, 9);
    const r = await engine.submit(request(p, { maxTokens: 0, promptLogprobs: true })).result;
    expect(r.tokenIds).toEqual([]);
    expect(r.finishReason).toBe('length');
    expect(r.promptLogprobs!.filter((x) => x !== null)).toHaveLength(8);
  });
});

describe('plugin hooks', () => {
  it('lets processLogits steer sampling while logprobs stay raw', async () => {
    const hooks = new RecordingHooks();
    hooks.onLogits = (ctx) => {
      for (let i = 0; i < ctx.logits.length; i++) if (i !== 5) ctx.logits[i] = -Infinity;
    };
    const { engine } = createHarness({ hooks });
    const p = prompt(43, 4);
    const r = await engine.submit(request(p, { maxTokens: 3, logprobs: true, ignoreEos: true })).result;
    expect(r.tokenIds).toEqual([5, 5, 5]);
    expect(r.logprobs![0]).toBeCloseTo(logSoftmaxAt(mockLogits(p, VOCAB), 5), 5);
    expect(hooks.accepted[0].contextLength).toBe(4);
    expect(hooks.accepted[1].contextLength).toBe(5);
  });

  it('honours an early exit and reports the finish', async () => {
    const hooks = new RecordingHooks();
    hooks.onToken = (ctx) => (ctx.generatedTokens.length === 3 ? { finish: 'early_exit' } : undefined);
    const { engine } = createHarness({ hooks });
    const r = await engine.submit(request(prompt(44, 4), { maxTokens: 10, ignoreEos: true })).result;
    expect(r.finishReason).toBe('early_exit');
    expect(r.tokenIds).toHaveLength(3);
    expect(hooks.finished[0].finishReason).toBe('early_exit');
    expect(hooks.finished[0].generatedTokens).toEqual(r.tokenIds);
  });

  it('fails only the request whose hook throws', async () => {
    const hooks = new RecordingHooks();
    hooks.onToken = (ctx) => {
      if (ctx.requestId === 'bad' && ctx.generatedTokens.length === 2) throw new Error('boom');
      return undefined;
    };
    const { engine } = createHarness({ hooks });
    const bad = engine.submit(request(prompt(45, 5), { maxTokens: 6, ignoreEos: true }, { requestId: 'bad' }));
    const good = engine.submit(request(prompt(46, 5), { maxTokens: 6, ignoreEos: true }));
    await expect(bad.result).rejects.toThrow(PluginError);
    await expect(collect(bad)).rejects.toThrow(/boom/);
    expect((await good.result).tokenIds).toEqual(mockGreedy(prompt(46, 5), 6, VOCAB));
    expect(hooks.finished.find((f) => f.requestId === 'bad')!.finishReason).toBe('error');
    expect(engine.pool.usedPages).toBe(0);
  });

  it('asks for attention statistics only when a hook wants them', async () => {
    const hooks = new RecordingHooks();
    const { engine, executor } = createHarness({ hooks });
    await engine.submit(request(prompt(47, 4), { maxTokens: 2, ignoreEos: true })).result;
    expect(executor.calls.some((c) => c.collectAttentionStats)).toBe(false);
    expect(hooks.accepted[0].attention).toBeUndefined();
    hooks.wantsStats = true;
    const r = await engine.submit(request(prompt(48, 4), { maxTokens: 2, ignoreEos: true })).result;
    expect(executor.calls.at(-1)!.collectAttentionStats).toBe(true);
    const ctx = hooks.accepted.at(-1)!;
    expect(ctx.attention!.length).toBe(2);
    expect(ctx.attention!.every((a) => a.seqId === ctx.seqId && a.positionMass!.length === ctx.contextLength)).toBe(true);
    expect(r.tokenIds).toHaveLength(2);
  });

  it('prunes positions by compacting pages, frees emptied ones and continues on the compacted cache', async () => {
    const hooks = new RecordingHooks();
    const prunePositions = [1, 2, 5, 9, 10];
    hooks.onToken = (ctx) => (ctx.generatedTokens.length === 4 ? { prunePositions } : undefined);
    const { engine, executor } = createHarness({ hooks, pageSize: 4 });
    const p = prompt(49, 13);
    const r = await engine.submit(request(p, { maxTokens: 9, ignoreEos: true })).result;
    // Reference: greedy until the 4th token, then the cache (prompt + 3 generated) loses the positions.
    const before = mockGreedy(p, 4, VOCAB);
    const cache = [...p, ...before.slice(0, 3)].filter((_, i) => !prunePositions.includes(i));
    const after = mockGreedy([...cache, before[3]], 5, VOCAB);
    expect(r.tokenIds).toEqual([...before, ...after]);
    expect(hooks.pruned).toHaveLength(1);
    expect(hooks.pruned[0].tokensPruned).toBe(5);
    // 16 cached tokens (4 pages) became 11 (3 pages).
    expect(hooks.pruned[0].pagesFreed).toBe(1);
    expect(hooks.pruned[0].bytesFreed).toBe(executor.kvBytesPerPage);
    expect(hooks.accepted[4].contextLength).toBe(16 - 5 + 1);
    expect(executor.rebuildCalls).toBeGreaterThan(0);
    expect(engine.getStats().pruning.tokensPruned).toBe(5);
    expect(engine.pool.usedPages).toBe(0);
  });

  it('copies shared prefix pages before pruning them, leaving the other sequence intact', async () => {
    const hooks = new RecordingHooks();
    hooks.onToken = (ctx) => (ctx.requestId === 'pruner' && ctx.generatedTokens.length === 2 ? { prunePositions: [1, 6] } : undefined);
    const { engine } = createHarness({ hooks, pageSize: 4 });
    const p = prompt(50, 12);
    const first = engine.submit(request([...p, 7], { maxTokens: 16, ignoreEos: true }));
    await first[Symbol.asyncIterator]().next();
    const pruner = engine.submit(request([...p, 9], { maxTokens: 6, ignoreEos: true }, { requestId: 'pruner' }));
    const [r1, r2] = await Promise.all([first.result, pruner.result]);
    expect(r2.usage.cachedTokens).toBe(12);
    expect(r1.tokenIds).toEqual(mockGreedy([...p, 7], 16, VOCAB));
    const before = mockGreedy([...p, 9], 2, VOCAB);
    const cache = [...p, 9, before[0]].filter((_, i) => i !== 1 && i !== 6);
    expect(r2.tokenIds).toEqual([...before, ...mockGreedy([...cache, before[1]], 4, VOCAB)]);
    expect(engine.getStats().copyOnWrites).toBeGreaterThan(0);
    expect(engine.pool.usedPages).toBe(0);
    engine.pool.verify();
  });
});

describe('executor failures', () => {
  it('fails the requests of the failing step and keeps serving', async () => {
    const { engine, executor } = createHarness();
    const a = engine.submit(request(prompt(60, 4), { maxTokens: 5, ignoreEos: true }));
    await a[Symbol.asyncIterator]().next();
    executor.failNext = new Error('device lost');
    await expect(a.result).rejects.toThrow(TinyServeError);
    await expect(a.result).rejects.toThrow(/device lost/);
    const b: EngineResult = await engine.submit(request(prompt(61, 4), { maxTokens: 5, ignoreEos: true })).result;
    expect(b.tokenIds).toEqual(mockGreedy(prompt(61, 4), 5, VOCAB));
    expect(engine.pool.usedPages).toBe(0);
    expect(engine.getStats().requests.failed).toBe(1);
  });
});
