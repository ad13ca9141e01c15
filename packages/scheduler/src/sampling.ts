import { RequestValidationError, TinyServeError } from '@tinyserve/core';
import type { StreamDecoder, Tokenizer } from '@tinyserve/core';

/** How one request picks its tokens and when it stops. */
export interface SamplingParams {
  /** 0 is greedy (argmax); otherwise logits are divided by it before the softmax. */
  temperature: number;
  /** Nucleus mass in (0, 1]; 1 keeps every token. */
  topP: number;
  /** Keep only the K most likely tokens; 0 keeps all. */
  topK: number;
  /** Seed of the request's own PRNG; the engine draws one when absent (or uses config `seed`). */
  seed?: number;
  /** Most tokens to generate; 0 only scores the prompt. */
  maxTokens: number;
  /** Generation stops before the first of these strings; the string is not returned. */
  stop: string[];
  /** Generation stops after any of these tokens (kept in tokenIds, not in the text). */
  stopTokenIds: number[];
  /** Keep going past the model's EOS tokens. */
  ignoreEos: boolean;
  /** Return the logprob of each generated token. */
  logprobs: boolean;
  /** Return the logprob of each prompt token (null for the first): OpenAI's `echo`. */
  promptLogprobs: boolean;
}

/** The subset of {@link SamplingParams} the token choice itself depends on. */
export interface SamplingSettings {
  temperature: number;
  topP: number;
  topK: number;
}

const MAX_STOP_STRINGS = 16;
const MAX_STOP_TOKEN_IDS = 1024;

/** Checks every sampling field; errors name it as `sampling.<field>`. */
export function checkSamplingParams(sampling: SamplingParams, vocabSize: number): void {
  if (sampling === null || typeof sampling !== 'object') {
    throw new RequestValidationError('sampling', 'must be an object');
  }
  const num = (field: keyof SamplingParams, lo: number, hi: number, integer: boolean, loExclusive = false): void => {
    const v: unknown = sampling[field];
    const name = `sampling.${field}`;
    if (typeof v !== 'number' || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
      throw new RequestValidationError(name, `must be ${integer ? 'an integer' : 'a finite number'}, got ${String(v)}`);
    }
    if ((loExclusive ? v <= lo : v < lo) || v > hi) {
      throw new RequestValidationError(name, `must be in ${loExclusive ? '(' : '['}${lo}, ${hi}], got ${v}`);
    }
  };
  num('temperature', 0, 100, false);
  num('topP', 0, 1, false, true);
  num('topK', 0, 2 ** 31 - 1, true);
  num('maxTokens', 0, 2 ** 31 - 1, true);
  if (sampling.seed !== undefined) num('seed', 0, 2 ** 53 - 1, true);
  for (const field of ['ignoreEos', 'logprobs', 'promptLogprobs'] as const) {
    if (typeof sampling[field] !== 'boolean') {
      throw new RequestValidationError(`sampling.${field}`, `must be true or false, got ${String(sampling[field])}`);
    }
  }
  if (!Array.isArray(sampling.stop)) throw new RequestValidationError('sampling.stop', 'must be an array of strings');
  if (sampling.stop.length > MAX_STOP_STRINGS) {
    throw new RequestValidationError('sampling.stop', `has ${sampling.stop.length} entries; at most ${MAX_STOP_STRINGS}`);
  }
  sampling.stop.forEach((s, i) => {
    if (typeof s !== 'string' || s.length === 0) throw new RequestValidationError(`sampling.stop[${i}]`, 'must be a non-empty string');
  });
  if (!Array.isArray(sampling.stopTokenIds)) {
    throw new RequestValidationError('sampling.stopTokenIds', 'must be an array of token ids');
  }
  if (sampling.stopTokenIds.length > MAX_STOP_TOKEN_IDS) {
    throw new RequestValidationError('sampling.stopTokenIds', `has ${sampling.stopTokenIds.length} entries; at most ${MAX_STOP_TOKEN_IDS}`);
  }
  sampling.stopTokenIds.forEach((id, i) => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new RequestValidationError(`sampling.stopTokenIds[${i}]`, `must be a token id in [0, ${vocabSize}), got ${String(id)}`);
    }
  });
}

// ---- PRNG -----------------------------------------------------------------------------------

function mix32(x: number): number {
  let z = x | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/**
 * xoshiro128** seeded from a 53-bit integer. Each request owns one, and draws exactly one
 * number per sampled (non-greedy) token, so its tokens depend only on its seed, prompt and
 * settings: never on batching or on other requests.
 */
export class SamplerRng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number) {
    if (!Number.isInteger(seed) || seed < 0 || seed > Number.MAX_SAFE_INTEGER) {
      throw new RequestValidationError('sampling.seed', `must be an integer in [0, 2^53-1], got ${seed}`);
    }
    const lo = seed >>> 0;
    const hi = Math.floor(seed / 2 ** 32) >>> 0;
    this.s0 = mix32(lo + 0x9e3779b9) ^ mix32(hi + 0x632be5ab);
    this.s1 = mix32(lo + 0x3c6ef372) ^ mix32(hi + 0x85ebca6b);
    this.s2 = mix32(lo + 0xdaa66d2b) ^ mix32(hi + 0xc2b2ae35);
    this.s3 = mix32(lo + 0x78dde6e4) ^ mix32(hi + 0x27d4eb2f);
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  nextUint32(): number {
    const s1 = this.s1;
    const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return r;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  nextFloat(): number {
    const a = this.nextUint32() >>> 5;
    const b = this.nextUint32() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

// ---- token choice ---------------------------------------------------------------------------

/** log Σ exp(row): the normaliser of the log-softmax. NaN entries count as -Infinity. */
export function logSumExp(row: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
  if (max === -Infinity || max === Infinity) return max;
  let sum = 0;
  for (let i = 0; i < row.length; i++) {
    const v = row[i];
    if (v === v) sum += Math.exp(v - max);
  }
  return max + Math.log(sum);
}

/** Index of the largest value (the first on ties); -1 when every value is -Infinity or NaN. */
export function argmax(row: Float32Array): number {
  let best = -1;
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) {
    if (row[i] > max) {
      max = row[i];
      best = i;
    }
  }
  return best;
}

/**
 * Picks the next token from (processed) logits. temperature 0 is greedy; otherwise the
 * softmax of logits / temperature, restricted to the top-k tokens (if topK > 0), then to the
 * smallest most-likely set of mass >= topP (renormalised over the top-k set). Candidates are
 * ordered by logit then token id, so the choice is a pure function of the logits and the
 * one PRNG draw.
 */
export function sampleToken(logits: Float32Array, settings: SamplingSettings, rng: SamplerRng): number {
  const vocab = logits.length;
  if (settings.temperature === 0) {
    const best = argmax(logits);
    if (best < 0) throw new TinyServeError('internal_error', 'every logit is -Infinity or NaN: nothing to sample');
    return best;
  }
  let max = -Infinity;
  for (let i = 0; i < vocab; i++) if (logits[i] > max) max = logits[i];
  if (max === -Infinity) throw new TinyServeError('internal_error', 'every logit is -Infinity or NaN: nothing to sample');
  const invT = 1 / settings.temperature;
  const weight = (i: number): number => {
    const v = logits[i];
    return v === v ? Math.exp((v - max) * invT) : 0;
  };
  const topK = settings.topK > 0 && settings.topK < vocab ? settings.topK : 0;
  const u = rng.nextFloat();

  if (topK === 0 && settings.topP >= 1) {
    let total = 0;
    for (let i = 0; i < vocab; i++) total += weight(i);
    let target = u * total;
    let last = -1;
    for (let i = 0; i < vocab; i++) {
      const w = weight(i);
      if (w <= 0) continue;
      last = i;
      target -= w;
      if (target < 0) return i;
    }
    return last;
  }

  let candidates: number[];
  let norm: number;
  if (topK > 0) {
    candidates = topKIndices(logits, topK);
    norm = 0;
    for (const i of candidates) norm += weight(i);
  } else {
    const weights = new Float64Array(vocab);
    norm = 0;
    for (let i = 0; i < vocab; i++) norm += weights[i] = weight(i);
    candidates = nucleusCandidates(weights, norm * settings.topP);
  }
  candidates.sort((a, b) => logits[b] - logits[a] || a - b);
  let keep = candidates.length;
  if (settings.topP < 1) {
    const need = settings.topP * norm;
    let cum = 0;
    for (let j = 0; j < candidates.length; j++) {
      cum += weight(candidates[j]);
      if (cum >= need) {
        keep = j + 1;
        break;
      }
    }
  }
  let total = 0;
  for (let j = 0; j < keep; j++) total += weight(candidates[j]);
  let target = u * total;
  for (let j = 0; j < keep; j++) {
    target -= weight(candidates[j]);
    if (target < 0) return candidates[j];
  }
  return candidates[keep - 1];
}

/**
 * A superset of the nucleus without sorting the vocabulary: the tokens whose weight is at
 * least a threshold chosen so that their mass reaches `need`. The nucleus (most likely
 * first, until the mass reaches `need`) ends inside that set, ties at the threshold included.
 */
function nucleusCandidates(weights: Float64Array, need: number): number[] {
  // Weights are relative to the max (which is 1): try ever lower thresholds.
  for (const threshold of [0.5, 0.25, 2 ** -4, 2 ** -8, 2 ** -16, 2 ** -32, 2 ** -64, 0]) {
    let mass = 0;
    for (let i = 0; i < weights.length; i++) if (weights[i] >= threshold) mass += weights[i];
    if (mass >= need || threshold === 0) {
      const out: number[] = [];
      for (let i = 0; i < weights.length; i++) if (weights[i] >= threshold && weights[i] > 0) out.push(i);
      return out;
    }
  }
  return [];
}

/** The indices of the k largest logits (NaN as -Infinity; ties to the lower index), unordered. */
function topKIndices(logits: Float32Array, k: number): number[] {
  const values = new Float32Array(logits.length);
  for (let i = 0; i < logits.length; i++) values[i] = logits[i] === logits[i] ? logits[i] : -Infinity;
  const kth = selectKthLargest(values.slice(), k);
  const out: number[] = [];
  for (let i = 0; i < values.length; i++) if (values[i] > kth) out.push(i);
  for (let i = 0; i < values.length && out.length < k; i++) if (values[i] === kth) out.push(i);
  return out;
}

/** The k-th largest value (1-based) by quickselect; reorders `a`. */
function selectKthLargest(a: Float32Array, k: number): number {
  let lo = 0;
  let hi = a.length - 1;
  const target = k - 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    // Median of three as the pivot, descending order.
    const x = a[lo];
    const y = a[mid];
    const z = a[hi];
    const pivot = x >= y ? (y >= z ? y : x >= z ? z : x) : x >= z ? x : y >= z ? z : y;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else return a[target];
  }
  return a[target];
}

// ---- text and stop strings ------------------------------------------------------------------

export interface TextDelta {
  /** Text that became final with this token (possibly ''). */
  delta: string;
  /** A stop string completed: the text was cut before it and generation must stop. */
  stopped: boolean;
}

/**
 * Detokenizes a generated stream incrementally and applies stop strings. Text that could be
 * the start of a stop string is held back until it is known not to be one, so the streamed
 * deltas never contain (a piece of) a stop string and concatenate to the final text.
 */
export class StopStringDetokenizer {
  private readonly decoder: StreamDecoder;
  private readonly stop: readonly string[];
  private held = '';
  private emitted = '';
  private done = false;

  constructor(tokenizer: Tokenizer, stop: readonly string[]) {
    this.decoder = tokenizer.createStreamDecoder({ skipSpecialTokens: true });
    this.stop = stop;
  }

  /** The text released so far. */
  get text(): string {
    return this.emitted;
  }

  /** Adds a generated token's text. */
  push(tokenId: number): TextDelta {
    if (this.done) return { delta: '', stopped: true };
    return this.consume(this.decoder.push(tokenId), false);
  }

  /** End of generation: releases what the decoder and the stop check still hold. */
  finish(): TextDelta {
    if (this.done) return { delta: '', stopped: false };
    const tail = this.decoder.flush();
    const out = this.consume(tail, true);
    this.done = true;
    return out;
  }

  private consume(piece: string, final: boolean): TextDelta {
    this.held += piece;
    let cut = -1;
    for (const s of this.stop) {
      const at = this.held.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      const delta = this.held.slice(0, cut);
      this.emitted += delta;
      this.held = '';
      this.done = true;
      return { delta, stopped: true };
    }
    const keep = final ? 0 : this.partialStopSuffix();
    const delta = this.held.slice(0, this.held.length - keep);
    this.held = this.held.slice(this.held.length - keep);
    this.emitted += delta;
    return { delta, stopped: false };
  }

  /** Length of the longest suffix of the held text that is a proper prefix of a stop string. */
  private partialStopSuffix(): number {
    let best = 0;
    for (const s of this.stop) {
      for (let len = Math.min(s.length - 1, this.held.length); len > best; len--) {
        if (this.held.endsWith(s.slice(0, len))) {
          best = len;
          break;
        }
      }
    }
    return best;
  }
}
