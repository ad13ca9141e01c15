import type { AttentionStats } from './executor-types.js';
import type { FinishReason } from './request-types.js';

/**
 * The engine's hook points, implemented by the plugin manager (`@tinyserve/plugins`) and
 * called by the engine loop (`@tinyserve/scheduler`). Neither package imports the other:
 * this interface is the contract. A hook that throws a PluginError fails only its own request.
 */
export interface RequestHookInfo {
  requestId: string;
  seqId: number;
  promptLength: number;
  sessionId?: string;
}

export interface LogitsHookContext extends RequestHookInfo {
  /** The next-token logits row (vocabSize floats); hooks may modify it in place. */
  logits: Float32Array;
  generatedTokens: readonly number[];
}

export interface TokenHookContext extends RequestHookInfo {
  tokenId: number;
  logprob: number;
  /** The processed logits row the token was sampled from (read-only by convention). */
  logits: Float32Array;
  /** Generated tokens so far, this one included. */
  generatedTokens: readonly number[];
  /** Tokens in the sequence's KV cache after this step (prompt + generated - pruned). */
  contextLength: number;
  /** Per-layer attention statistics of this step; present only when `wantsAttentionStats()`. */
  attention?: AttentionStats[];
}

/** What a token hook asks the engine to do. */
export interface TokenDecision {
  /** Finish the sequence now with this reason. */
  finish?: Extract<FinishReason, 'early_exit' | 'stop'>;
  /** Cache positions (0-based, in the current compacted cache) to drop from the KV cache. */
  prunePositions?: number[];
}

export interface PruneHookInfo extends RequestHookInfo {
  tokensPruned: number;
  pagesFreed: number;
  bytesFreed: number;
}

export interface FinishHookContext extends RequestHookInfo {
  finishReason: FinishReason;
  generatedTokens: readonly number[];
}

export interface EngineHooks {
  /** True when some enabled plugin needs attention statistics; they cost nothing otherwise. */
  wantsAttentionStats(): boolean;
  onRequestStart(info: RequestHookInfo): void;
  processLogits(ctx: LogitsHookContext): void;
  onTokenAccepted(ctx: TokenHookContext): TokenDecision | undefined;
  /** Reports a pruning the engine carried out (memory actually freed). */
  onPruned(info: PruneHookInfo): void;
  onRequestFinish(ctx: FinishHookContext): void;
}
