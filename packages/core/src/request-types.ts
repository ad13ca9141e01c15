export type Priority = 'high' | 'normal' | 'low';
export type FinishReason = 'stop' | 'length' | 'early_exit' | 'cancelled' | 'error';

/** A generation request: the seed's `TinyServeRequest`, camelCased, plus serving extensions. */
export interface TinyServeRequest {
  /** Text, or token ids when the caller tokenized already. */
  prompt: string | number[];
  /** Default 100 (the seed's example). */
  maxTokens?: number;
  /** 0 means greedy. Default 0.7 (the seed's example). */
  temperature?: number;
  /** Nucleus sampling mass, (0, 1]. Default 1. */
  topP?: number;
  /** Keep the K most likely tokens; 0 keeps all. Default 0. */
  topK?: number;
  /** Sampling seed: the same seed, prompt and settings give the same tokens. */
  seed?: number;
  /** Generation stops before any of these strings; they are not part of the output. */
  stop?: string | string[];
  /** Return the logprob of each generated token. */
  logprobs?: boolean;
  /** Also return the prompt and its tokens' logprobs (teacher forcing), as OpenAI's `echo`. */
  echo?: boolean;
  /** Keep generating past EOS (benchmarks). */
  ignoreEos?: boolean;
  /** Add the tokenizer's special tokens (BOS) to a text prompt. Default true. */
  addSpecialTokens?: boolean;
  sessionId?: string;
  priority?: Priority;
  signal?: AbortSignal;
  requestId?: string;
}

export interface Usage {
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
  /** Prompt tokens served from cached KV pages (sessions, prefix cache). */
  cachedTokens: number;
}

export interface TinyServeResponse {
  requestId: string;
  generatedText: string;
  /** Generated token ids. */
  tokens: number[];
  finishReason: FinishReason;
  /** Logprob of each generated token, when asked for. */
  logprobs?: number[];
  /** With `echo`: the prompt's token ids and their logprobs (null for the first). */
  promptTokens?: number[];
  promptLogprobs?: (number | null)[];
  latencyMs: number;
  timeToFirstTokenMs: number;
  usage: Usage;
  sessionId?: string;
}

/** One step of a streamed generation. */
export type StreamEvent =
  | { type: 'token'; text: string; tokenId: number; logprob?: number }
  | { type: 'done'; response: TinyServeResponse };
