import type { FinishReason, Tokenizer, TinyServeResponse } from '@tinyserve/core';

export interface OpenAiUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

/** Legacy completions logprobs. `top_logprobs` is always null: alternatives are not computed. */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: null;
  text_offset: number[];
}

/** Chat logprobs entry. `top_logprobs` is always empty: alternatives are not computed. */
export interface ChatLogprobEntry {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: never[];
}

/**
 * OpenAI finish reasons are 'stop' and 'length'; an entropy early exit is a 'stop' whose
 * `stop_reason` (vLLM's extension field) says 'early_exit'.
 */
export function openAiFinish(reason: FinishReason): { finish_reason: string; stop_reason: string | null } {
  if (reason === 'early_exit') return { finish_reason: 'stop', stop_reason: 'early_exit' };
  return { finish_reason: reason, stop_reason: null };
}

export function usageOf(responses: readonly { response: TinyServeResponse; countPrompt: boolean }[]): OpenAiUsage {
  let prompt = 0;
  let completion = 0;
  let cached = 0;
  for (const { response, countPrompt } of responses) {
    completion += response.usage.completionTokens;
    // A prompt shared by n choices is billed once, as OpenAI does.
    if (countPrompt) {
      prompt += response.usage.promptTokens;
      cached += response.usage.cachedTokens;
    }
  }
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion, prompt_tokens_details: { cached_tokens: cached } };
}

export function tokenText(tokenizer: Tokenizer, id: number): string {
  return tokenizer.decode([id]);
}

export function completionLogprobs(
  tokenizer: Tokenizer,
  ids: readonly number[],
  logprobs: readonly (number | null)[],
  textOffsetStart: number,
): CompletionLogprobs {
  const tokens: string[] = [];
  const offsets: number[] = [];
  let offset = textOffsetStart;
  for (const id of ids) {
    const t = tokenText(tokenizer, id);
    tokens.push(t);
    offsets.push(offset);
    offset += t.length;
  }
  return { tokens, token_logprobs: ids.map((_, i) => logprobs[i] ?? null), top_logprobs: null, text_offset: offsets };
}

export function chatLogprobEntry(tokenizer: Tokenizer, id: number, logprob: number): ChatLogprobEntry {
  const token = tokenText(tokenizer, id);
  return { token, logprob, bytes: [...Buffer.from(token, 'utf8')], top_logprobs: [] };
}
