import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import type { Priority } from '@tinyserve/core';
import type { EngineHandle, EngineResult } from './engine-types.js';
import { SamplerRng, sampleToken } from './sampling.js';
import type { SamplingSettings } from './sampling.js';
import { RecordingHooks, createHarness, prompt, request } from './__fixtures__/engine-harness.js';
import { mockLogits } from './__fixtures__/mock-executor.js';
import { MOCK_EOS } from './__fixtures__/mock-tokenizer.js';

const VOCAB = 64;
/** Shared prompt heads, so that sessions and the prefix cache find something to reuse. */
const BASES = [[], prompt(100, 5), prompt(101, 9), prompt(102, 13)];
/** The step (generated tokens) at which a pruning request drops two cache positions. */
const PRUNE_AT = 2;

interface Submit {
  kind: 'submit';
  at: number;
  base: number;
  tail: number[];
  maxTokens: number;
  session: number;
  priority: Priority;
  cancelAt: number;
  /** null: greedy. */
  seed: number | null;
  prune: boolean;
}
type Command = Submit | { kind: 'close'; at: number; session: number };

const submit = fc.record({
  kind: fc.constant('submit' as const),
  at: fc.integer({ min: 0, max: 25 }),
  base: fc.integer({ min: 0, max: BASES.length - 1 }),
  tail: fc.array(fc.integer({ min: 1, max: 63 }), { minLength: 3, maxLength: 6 }),
  maxTokens: fc.integer({ min: 1, max: 10 }),
  // -1: no session
  session: fc.integer({ min: -1, max: 2 }),
  priority: fc.constantFrom<Priority>('high', 'normal', 'low'),
  // -1: never cancelled; else the step at which it is aborted
  cancelAt: fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 30 })),
  seed: fc.oneof(fc.constant(null), fc.integer({ min: 0, max: 1000 })),
  prune: fc.boolean(),
});
const close = fc.record({ kind: fc.constant('close' as const), at: fc.integer({ min: 0, max: 25 }), session: fc.integer({ min: 0, max: 2 }) });

const SAMPLED: SamplingSettings = { temperature: 0.8, topP: 0.9, topK: 12 };

/** What the mock model generates for a request, pruning included when the engine reported it. */
function reference(cmd: Submit, p: number[], pruned: boolean): number[] {
  const rng = new SamplerRng(cmd.seed ?? 0);
  const settings = cmd.seed === null ? { temperature: 0, topP: 1, topK: 0 } : SAMPLED;
  let history = [...p];
  const out: number[] = [];
  while (out.length < cmd.maxTokens) {
    const t = sampleToken(mockLogits(history, VOCAB), settings, rng);
    out.push(t);
    if (t === MOCK_EOS || out.length >= cmd.maxTokens) break;
    if (pruned && out.length === PRUNE_AT) {
      const drop = [1, history.length - 2];
      history = history.filter((_, i) => !drop.includes(i));
    }
    history.push(t);
  }
  return out;
}

describe('engine under random arrivals, cancellations and session closes', () => {
  it('serves correct tokens and ends with every page back in the pool', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof({ arbitrary: submit, weight: 4 }, { arbitrary: close, weight: 1 }), { minLength: 1, maxLength: 14 }),
        // 8 pages hold the longest request (19 + 10 tokens), so none fails for lack of room.
        fc.integer({ min: 8, max: 16 }),
        fc.integer({ min: 2, max: 12 }),
        async (generated: Command[], numKvPages, maxBatchTokens) => {
          // Consumed as they run; the generated array must stay intact for shrinking.
          const commands = [...generated];
          let now = 0;
          const hooks = new RecordingHooks();
          const pruning = new Set<string>();
          hooks.onToken = (ctx) =>
            pruning.has(ctx.requestId) && ctx.generatedTokens.length === PRUNE_AT ? { prunePositions: [1, ctx.contextLength - 2] } : undefined;
          const { engine, executor } = createHarness({
            pageSize: 4,
            numKvPages,
            hooks,
            config: { maxBatchTokens, maxNumSeqs: 4, sessionTimeout: 0.5, maxQueueSize: 64 },
            engine: { now: () => now, agingIntervalMs: 300 },
          });
          const submitted: { cmd: Submit; prompt: number[]; handle: EngineHandle }[] = [];
          const aborts: { at: number; controller: AbortController }[] = [];
          let step = 0;
          const runDue = (all: boolean): void => {
            for (let i = commands.length - 1; i >= 0; i--) {
              const cmd = commands[i];
              if (!all && cmd.at > step) continue;
              commands.splice(i, 1);
              if (cmd.kind === 'close') {
                engine.closeSession(`s${cmd.session}`);
                continue;
              }
              const p = [...BASES[cmd.base], ...cmd.tail];
              const controller = new AbortController();
              const sampling = cmd.seed === null ? { maxTokens: cmd.maxTokens } : { ...SAMPLED, seed: cmd.seed, maxTokens: cmd.maxTokens };
              const req = request(p, sampling, {
                priority: cmd.priority,
                signal: controller.signal,
                ...(cmd.session >= 0 ? { sessionId: `s${cmd.session}` } : {}),
              });
              if (cmd.prune) pruning.add(req.requestId);
              submitted.push({ cmd, prompt: p, handle: engine.submit(req) });
              if (cmd.cancelAt >= 0) aborts.push({ at: cmd.cancelAt, controller });
            }
          };
          executor.beforeForward = () => {
            step++;
            now += 100;
            runDue(false);
            for (const a of aborts) if (a.at <= step) a.controller.abort();
            engine.pool.verify();
          };
          runDue(false);
          // Commands due after the engine went idle start a new wave; requests submitted while
          // waiting are waited for too.
          for (;;) {
            const count = submitted.length;
            await Promise.allSettled(submitted.map((d) => d.handle.result));
            if (submitted.length > count) continue;
            if (commands.length === 0) break;
            runDue(true);
          }

          const prunedIds = new Set(hooks.pruned.map((x) => x.requestId));
          for (const d of submitted) {
            const result: EngineResult = await d.handle.result;
            const expected = reference(d.cmd, d.prompt, prunedIds.has(result.requestId));
            if (result.finishReason === 'cancelled') {
              expect(result.tokenIds).toEqual(expected.slice(0, result.tokenIds.length));
            } else {
              expect(result.tokenIds).toEqual(expected);
            }
          }
          for (const s of engine.listSessions()) engine.closeSession(s.sessionId);
          engine.pool.verify();
          expect(engine.pool.usedPages).toBe(0);
          for (let page = 0; page < numKvPages; page++) expect(engine.pool.refCount(page)).toBe(0);
          const stats = engine.getStats();
          expect(stats.numRunning + stats.numWaiting).toBe(0);
          expect(stats.requests.failed).toBe(0);
          // Every started request was reported finished exactly once.
          expect(hooks.finished.map((f) => f.requestId).sort()).toEqual(hooks.started.map((s) => s.requestId).sort());
        },
      ),
      { numRuns: 100 },
    );
  });
});
