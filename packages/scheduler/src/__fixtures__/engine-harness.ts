import { resolveConfig } from '@tinyserve/core';
import type {
  EngineHooks,
  FinishHookContext,
  LogitsHookContext,
  PruneHookInfo,
  RequestHookInfo,
  TinyServeConfig,
  TokenDecision,
  TokenHookContext,
} from '@tinyserve/core';
import { Engine } from '../engine.js';
import type { EngineOptions, EngineRequest, EngineResult } from '../engine-types.js';
import type { SamplingParams } from '../sampling.js';
import { MockExecutor } from './mock-executor.js';
import { MOCK_EOS, MockTokenizer } from './mock-tokenizer.js';

export interface HarnessOptions {
  pageSize?: number;
  numKvPages?: number;
  config?: Partial<TinyServeConfig>;
  hooks?: EngineHooks;
  maxModelLen?: number;
  engine?: Partial<Pick<EngineOptions, 'agingIntervalMs' | 'enablePrefixCaching' | 'now'>>;
  stepDelayMs?: number;
}

export interface Harness {
  engine: Engine;
  executor: MockExecutor;
  tokenizer: MockTokenizer;
}

export function createHarness(options: HarnessOptions = {}): Harness {
  const pageSize = options.pageSize ?? 4;
  const executor = new MockExecutor({ pageSize, numKvPages: options.numKvPages ?? 256, stepDelayMs: options.stepDelayMs });
  const tokenizer = new MockTokenizer();
  const config = resolveConfig({ pageSize, maxBatchTokens: 64, maxNumSeqs: 16, ...options.config });
  const engine = new Engine({
    executor,
    tokenizer,
    config,
    hooks: options.hooks,
    maxModelLen: options.maxModelLen ?? 1024,
    eosTokenIds: [MOCK_EOS],
    ...options.engine,
  });
  return { engine, executor, tokenizer };
}

export function greedy(overrides: Partial<SamplingParams> = {}): SamplingParams {
  return {
    temperature: 0,
    topP: 1,
    topK: 0,
    maxTokens: 8,
    stop: [],
    stopTokenIds: [],
    ignoreEos: false,
    logprobs: false,
    promptLogprobs: false,
    ...overrides,
  };
}

let counter = 0;

export function request(prompt: number[], sampling: Partial<SamplingParams> = {}, extra: Partial<EngineRequest> = {}): EngineRequest {
  return { requestId: `r${counter++}`, promptTokenIds: prompt, sampling: greedy(sampling), priority: 'normal', ...extra };
}

/** A deterministic prompt of `length` non-EOS tokens. */
export function prompt(seed: number, length: number): number[] {
  let x = (seed * 2654435761) >>> 0 || 1;
  const out: number[] = [];
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.push(1 + (x % 63));
  }
  return out;
}

/** Runs one request alone on a fresh engine. */
export async function runAlone(req: EngineRequest, options: HarnessOptions = {}): Promise<EngineResult> {
  const { engine } = createHarness(options);
  const result = await engine.submit({ ...req, requestId: `${req.requestId}-alone` }).result;
  await engine.shutdown();
  return result;
}

/** Hooks that record every call; behaviour is injected per test. */
export class RecordingHooks implements EngineHooks {
  readonly started: RequestHookInfo[] = [];
  readonly finished: FinishHookContext[] = [];
  readonly accepted: TokenHookContext[] = [];
  readonly pruned: PruneHookInfo[] = [];
  wantsStats = false;
  onLogits: ((ctx: LogitsHookContext) => void) | null = null;
  onToken: ((ctx: TokenHookContext) => TokenDecision | undefined) | null = null;
  onStart: ((info: RequestHookInfo) => void) | null = null;

  wantsAttentionStats(): boolean {
    return this.wantsStats;
  }

  onRequestStart(info: RequestHookInfo): void {
    this.started.push(info);
    this.onStart?.(info);
  }

  processLogits(ctx: LogitsHookContext): void {
    this.onLogits?.(ctx);
  }

  onTokenAccepted(ctx: TokenHookContext): TokenDecision | undefined {
    this.accepted.push({ ...ctx, generatedTokens: [...ctx.generatedTokens], logits: ctx.logits.slice() });
    return this.onToken?.(ctx);
  }

  onPruned(info: PruneHookInfo): void {
    this.pruned.push(info);
  }

  onRequestFinish(ctx: FinishHookContext): void {
    this.finished.push({ ...ctx, generatedTokens: [...ctx.generatedTokens] });
  }
}
