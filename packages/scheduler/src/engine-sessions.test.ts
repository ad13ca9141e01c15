import { describe, expect, it } from 'vitest';
import { RecordingHooks, createHarness, prompt, request } from './__fixtures__/engine-harness.js';
import { mockGreedy } from './__fixtures__/mock-executor.js';

const VOCAB = 64;

describe('sessions', () => {
  it('reuses the session\'s pages on the next turn and prefills only the new tokens', async () => {
    const { engine, executor } = createHarness({ pageSize: 4 });
    const p1 = prompt(1, 10);
    const t1 = await engine.submit(request(p1, { maxTokens: 6, ignoreEos: true }, { sessionId: 'chat' })).result;
    expect(t1.sessionId).toBe('chat');
    // The last generated token was never run through the model, so 10 + 6 - 1 tokens are held.
    let info = engine.getSessionInfo('chat')!;
    expect(info).toMatchObject({ requestCount: 1, numTokens: 15, pagesHeld: 4, active: false, queuedRequests: 0 });
    expect(engine.pool.usedPages).toBe(4);

    const prefilledBefore = engine.getStats().tokensPrefilled;
    const callsBefore = executor.calls.length;
    const p2 = [...p1, ...t1.tokenIds, ...prompt(2, 5)];
    const t2 = await engine.submit(request(p2, { maxTokens: 4, ignoreEos: true }, { sessionId: 'chat' })).result;
    expect(t2.usage.cachedTokens).toBe(15);
    expect(engine.getStats().tokensPrefilled - prefilledBefore).toBe(p2.length - 15);
    expect(executor.calls[callsBefore].startPos).toEqual([15]);
    expect(t2.tokenIds).toEqual(mockGreedy(p2, 4, VOCAB));
    expect(engine.getStats().sessionReusedTokens).toBe(15);
    info = engine.getSessionInfo('chat')!;
    expect(info.requestCount).toBe(2);
    expect(info.numTokens).toBe(p2.length + 3);
    expect(info.promptTokens).toBe(p1.length + p2.length);
    expect(info.completionTokens).toBe(10);
    expect(info.lastActiveAt).toBeGreaterThanOrEqual(info.createdAt);
  });

  it('copes with a turn that diverges mid-page (copy-on-write, metadata rebuilt)', async () => {
    const { engine, executor } = createHarness({ pageSize: 4 });
    const p1 = prompt(3, 12);
    const t1 = await engine.submit(request(p1, { maxTokens: 4, ignoreEos: true }, { sessionId: 's' })).result;
    // Edited history: keep 6 tokens, then something else.
    const p2 = [...p1.slice(0, 6), ...prompt(4, 7)];
    const t2 = await engine.submit(request(p2, { maxTokens: 5, ignoreEos: true }, { sessionId: 's' })).result;
    expect(t2.usage.cachedTokens).toBe(6);
    expect(t2.tokenIds).toEqual(mockGreedy(p2, 5, VOCAB));
    // The page holding positions 4..7 was a cached full page: it was copied, not overwritten.
    expect(engine.getStats().copyOnWrites).toBe(1);
    expect(executor.rebuildCalls).toBeGreaterThan(0);
    // The original conversation's pages are still found by the prefix cache.
    const again = await engine.submit(request([...p1, ...t1.tokenIds.slice(0, 3), 1], { maxTokens: 2, ignoreEos: true })).result;
    expect(again.usage.cachedTokens).toBe(12);
    expect(again.tokenIds).toEqual(mockGreedy([...p1, ...t1.tokenIds.slice(0, 3), 1], 2, VOCAB));
  });

  it('overwrites a private partial page in place after rebuilding its metadata', async () => {
    const { engine, executor } = createHarness({ pageSize: 8 });
    const p1 = prompt(5, 5);
    await engine.submit(request(p1, { maxTokens: 2, ignoreEos: true }, { sessionId: 's' })).result;
    const rebuilds = executor.rebuildCalls;
    const p2 = [...p1.slice(0, 3), ...prompt(6, 4)];
    const t2 = await engine.submit(request(p2, { maxTokens: 3, ignoreEos: true }, { sessionId: 's' })).result;
    expect(t2.usage.cachedTokens).toBe(3);
    expect(t2.tokenIds).toEqual(mockGreedy(p2, 3, VOCAB));
    expect(engine.getStats().copyOnWrites).toBe(0);
    expect(executor.rebuildCalls).toBe(rebuilds + 1);
  });

  it('queues a second request of a busy session behind the first', async () => {
    const hooks = new RecordingHooks();
    const { engine, executor } = createHarness({ hooks });
    const p1 = prompt(7, 10);
    const first = engine.submit(request(p1, { maxTokens: 5, ignoreEos: true }, { sessionId: 'q', requestId: 'turn1' }));
    const second = engine.submit(request([...p1, ...prompt(8, 3)], { maxTokens: 3, ignoreEos: true }, { sessionId: 'q', requestId: 'turn2' }));
    const other = engine.submit(request(prompt(9, 4), { maxTokens: 3, ignoreEos: true }, { requestId: 'other' }));
    await new Promise((resolve) => setImmediate(resolve));
    const busy = engine.getSessionInfo('q')!;
    expect(busy.active).toBe(true);
    expect(busy.queuedRequests).toBe(1);
    const [r1, r2] = await Promise.all([first.result, second.result, other.result]);
    const seq = (id: string): number => hooks.started.find((s) => s.requestId === id)!.seqId;
    const lastOf1 = executor.calls.findLastIndex((c) => c.seqIds.includes(seq('turn1')));
    const firstOf2 = executor.calls.findIndex((c) => c.seqIds.includes(seq('turn2')));
    const firstOfOther = executor.calls.findIndex((c) => c.seqIds.includes(seq('other')));
    expect(firstOf2).toBeGreaterThan(lastOf1);
    expect(firstOfOther).toBe(0);
    expect(r2.usage.cachedTokens).toBeGreaterThanOrEqual(10);
    expect(r2.tokenIds).toEqual(mockGreedy([...p1, ...prompt(8, 3)], 3, VOCAB));
    expect(r1.tokenIds).toEqual(mockGreedy(p1, 5, VOCAB));
  });

  it('lists, closes and expires sessions, releasing their pages', async () => {
    let now = 0;
    const { engine } = createHarness({ config: { sessionTimeout: 1 }, engine: { now: () => now } });
    await engine.submit(request(prompt(10, 6), { maxTokens: 2 }, { sessionId: 'a' })).result;
    await engine.submit(request(prompt(11, 6), { maxTokens: 2 }, { sessionId: 'b' })).result;
    expect(engine.listSessions().map((s) => s.sessionId).sort()).toEqual(['a', 'b']);
    const held = engine.pool.usedPages;
    expect(held).toBeGreaterThan(0);
    expect(engine.closeSession('a')).toBe(true);
    expect(engine.closeSession('a')).toBe(false);
    expect(engine.pool.usedPages).toBeLessThan(held);
    expect(engine.getSessionInfo('a')).toBeUndefined();
    now = 900;
    expect(engine.listSessions()).toHaveLength(1);
    now = 1500;
    expect(engine.listSessions()).toHaveLength(0);
    expect(engine.pool.usedPages).toBe(0);
  });

  it('lets a request outlive the session closed under it, then frees its pages', async () => {
    const { engine } = createHarness();
    const h = engine.submit(request(prompt(12, 6), { maxTokens: 8, ignoreEos: true }, { sessionId: 'gone' }));
    await h[Symbol.asyncIterator]().next();
    expect(engine.closeSession('gone')).toBe(true);
    const r = await h.result;
    expect(r.tokenIds).toEqual(mockGreedy(prompt(12, 6), 8, VOCAB));
    expect(engine.pool.usedPages).toBe(0);
    expect(engine.listSessions()).toEqual([]);
  });

  it('gives up idle sessions\' pages before preempting running sequences', async () => {
    const { engine } = createHarness({ numKvPages: 8 });
    await engine.submit(request(prompt(13, 12), { maxTokens: 4, ignoreEos: true }, { sessionId: 'idle' })).result;
    expect(engine.getSessionInfo('idle')!.pagesHeld).toBe(4);
    const big = await engine.submit(request(prompt(14, 10), { maxTokens: 18, ignoreEos: true })).result;
    expect(big.tokenIds).toEqual(mockGreedy(prompt(14, 10), 18, VOCAB));
    expect(engine.getSessionInfo('idle')!.pagesHeld).toBe(0);
    expect(engine.getStats().preemptions).toBe(0);
  });
});

describe('prefix caching across requests', () => {
  it('serves a shared prompt prefix from cached full pages', async () => {
    const { engine } = createHarness({ pageSize: 4 });
    const shared = prompt(20, 13);
    const a = await engine.submit(request([...shared, 1, 2], { maxTokens: 3, ignoreEos: true })).result;
    expect(a.usage.cachedTokens).toBe(0);
    const b = await engine.submit(request([...shared, 3], { maxTokens: 3, ignoreEos: true })).result;
    expect(b.usage.cachedTokens).toBe(12);
    expect(b.tokenIds).toEqual(mockGreedy([...shared, 3], 3, VOCAB));
    const stats = engine.getStats().prefixCache;
    expect(stats.queries).toBe(2);
    expect(stats.hitTokens).toBe(12);
    expect(stats.hitPages).toBe(3);
    expect(stats.queryTokens).toBe(15 + 14);
    expect(engine.pool.usedPages).toBe(0);
  });

  it('always leaves at least the last prompt token to compute', async () => {
    const { engine } = createHarness({ pageSize: 4 });
    const p = prompt(21, 12);
    await engine.submit(request(p, { maxTokens: 1 })).result;
    const again = await engine.submit(request(p, { maxTokens: 3, ignoreEos: true })).result;
    expect(again.usage.cachedTokens).toBe(8);
    expect(again.tokenIds).toEqual(mockGreedy(p, 3, VOCAB));
  });

  it('shares pages between running sequences without corrupting either', async () => {
    const { engine } = createHarness({ pageSize: 4, config: { maxBatchTokens: 6 } });
    const shared = prompt(22, 16);
    const first = engine.submit(request([...shared, 5], { maxTokens: 20, ignoreEos: true }));
    await first[Symbol.asyncIterator]().next();
    const later = Array.from({ length: 3 }, (_, i) => engine.submit(request([...shared, 6 + i], { maxTokens: 10, ignoreEos: true })));
    const results = await Promise.all([first.result, ...later.map((h) => h.result)]);
    expect(results[0].tokenIds).toEqual(mockGreedy([...shared, 5], 20, VOCAB));
    later.forEach((_, i) => {
      expect(results[i + 1].usage.cachedTokens).toBe(16);
      expect(results[i + 1].tokenIds).toEqual(mockGreedy([...shared, 6 + i], 10, VOCAB));
    });
  });

  it('can be turned off', async () => {
    const { engine } = createHarness({ engine: { enablePrefixCaching: false } });
    const p = prompt(23, 12);
    await engine.submit(request(p, { maxTokens: 1 })).result;
    expect((await engine.submit(request([...p, 1], { maxTokens: 1 })).result).usage.cachedTokens).toBe(0);
    expect(engine.getStats().prefixCache.queries).toBe(0);
  });

  it('does not reuse cached KV for prompt tokens still to be scored (echo)', async () => {
    const { engine } = createHarness();
    const p = prompt(24, 12);
    await engine.submit(request(p, { maxTokens: 1 })).result;
    const echo = await engine.submit(request(p, { maxTokens: 1, promptLogprobs: true })).result;
    expect(echo.usage.cachedTokens).toBe(0);
    expect(echo.promptLogprobs!.every((x, i) => (i === 0 ? x === null : typeof x === 'number'))).toBe(true);
  });
});
