import type { AttentionStats, TokenDecision, TokenHookContext } from '@tinyserve/core';
import { meanAttentionEntropy, nextTokenEntropy } from './entropy.js';
import type { TinyServePlugin } from './plugin.js';

/**
 * What a seed-style function plugin receives once per accepted token, and returns (possibly
 * modified). Read-only fields describe the step; `stop`, `finishReason`, `prunePositions`
 * and `state` are the plugin's to set.
 */
export interface PluginContext {
  readonly requestId: string;
  readonly seqId: number;
  readonly sessionId?: string;
  readonly promptLength: number;
  /** Generated token ids so far, this one included. */
  readonly generatedTokens: readonly number[];
  /** The token just accepted, and its logprob. */
  readonly tokenId: number;
  readonly logprob: number;
  /**
   * Entropy (nats) of the next-token distribution this token was sampled from. Computed on
   * first read (one pass over the vocabulary), shared with the other plugins of the step.
   */
  readonly entropy: number;
  /** Tokens in the sequence's KV cache after this step (prompt + generated - pruned). */
  readonly contextLength: number;
  /** The processed logits row the token was sampled from. */
  readonly logits: Float32Array;
  /** Per-layer attention statistics, only for plugins registered with `needsAttentionStats`. */
  readonly attention?: readonly AttentionStats[];
  /** Mean attention entropy over layers (nats), when `attention` is present. */
  readonly attentionEntropy?: number;
  /** Set to true to finish the sequence now (reason `finishReason`, default 'early_exit'). */
  stop: boolean;
  finishReason?: 'early_exit' | 'stop';
  /** Cache positions (current coordinates) to drop from the KV cache. */
  prunePositions?: number[];
  /** Scratch space kept for this request across calls, dropped when it finishes. */
  state: Record<string, unknown>;
}

/** The seed's plugin form: `(context) => context`. */
export type PluginFunction = (context: PluginContext) => PluginContext;

export interface FunctionPluginOptions {
  order?: number;
  /** Ask the engine for attention statistics (fills `context.attention`). */
  needsAttentionStats?: boolean;
}

/** The manager's default `{}` state; `data` is made on first use (no start hook to call). */
interface FunctionPluginState {
  data?: Record<string, unknown>;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object' && typeof (value as { then?: unknown }).then === 'function') return 'a Promise';
  return typeof value === 'object' ? 'an object' : `a ${typeof value} (${String(value)})`;
}

function buildContext(ctx: TokenHookContext, state: FunctionPluginState, withAttention: boolean): PluginContext {
  const context = {
    requestId: ctx.requestId,
    seqId: ctx.seqId,
    sessionId: ctx.sessionId,
    promptLength: ctx.promptLength,
    generatedTokens: ctx.generatedTokens,
    tokenId: ctx.tokenId,
    logprob: ctx.logprob,
    entropy: 0,
    contextLength: ctx.contextLength,
    logits: ctx.logits,
    attention: withAttention ? ctx.attention : undefined,
    attentionEntropy: withAttention ? meanAttentionEntropy(ctx.attention, ctx.seqId) : undefined,
    stop: false,
    state: (state.data ??= {}),
  } as PluginContext;
  // Lazy: most plugins never read it, and it costs a pass over the vocabulary.
  Object.defineProperty(context, 'entropy', { enumerable: true, configurable: true, get: () => nextTokenEntropy(ctx) });
  return context;
}

/**
 * Wraps a seed-style function as a plugin called once per accepted token. The returned
 * context's `stop`/`finishReason` finish the sequence and `prunePositions` asks for pruning;
 * returning anything but an object is an error of this plugin (recorded, never a crash).
 */
export function functionPlugin(
  name: string,
  fn: PluginFunction,
  options: FunctionPluginOptions = {},
): TinyServePlugin<FunctionPluginState> {
  const withAttention = options.needsAttentionStats === true;
  return {
    name,
    order: options.order,
    needsAttentionStats: withAttention,
    onTokenAccepted(ctx, state): TokenDecision | undefined {
      const result: unknown = fn(buildContext(ctx, state, withAttention));
      if (result === null || typeof result !== 'object' || Array.isArray(result) || typeof (result as { then?: unknown }).then === 'function') {
        throw new TypeError(
          `returned ${describe(result)}; a plugin function must synchronously return the context it was given (possibly modified)`,
        );
      }
      const out = result as Partial<PluginContext>;
      if (out.state !== null && typeof out.state === 'object') state.data = out.state;
      const { finishReason } = out;
      if (finishReason !== undefined && finishReason !== 'early_exit' && finishReason !== 'stop') {
        throw new TypeError(`set finishReason to ${describe(finishReason)}; use 'early_exit' or 'stop'`);
      }
      const decision: TokenDecision = {};
      if (out.stop === true || finishReason !== undefined) decision.finish = finishReason ?? 'early_exit';
      if (out.prunePositions !== undefined) decision.prunePositions = out.prunePositions;
      return decision.finish === undefined && decision.prunePositions === undefined ? undefined : decision;
    },
  };
}
