import { ConfigError } from '@tinyserve/core';
import type { Tokenizer } from '@tinyserve/core';

/**
 * The passkey retrieval prompt of tools/train/passkey-format.json ("tinyserve-passkey-v1"),
 * the format the bundled model was trained and evaluated with in Hugging Face. Kept as a
 * constant because a published package cannot read the repository's tools/ folder; a test
 * checks it against the JSON file field by field.
 */
export const PASSKEY_FORMAT = Object.freeze({
  name: 'tinyserve-passkey-v1',
  prefix:
    'There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you about the important information there.',
  filler: ' The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.',
  needle: ' The pass key is {passkey}. Remember it. {passkey} is the pass key.',
  question: ' What is the pass key? The pass key is',
  addBos: true,
  numDepths: 10,
  keysPerDepth: 5,
  maxNewTokens: 8,
});

export interface PasskeyPromptParams {
  /** Prompt length to aim at, in tokens, special tokens included; the prompt never exceeds it. */
  targetTokens: number;
  /** Needle position in [0, 1]: 0 right after the prefix, 1 right before the question. */
  depth: number;
  /** The 5-digit key hidden in the filler. */
  passkey: number;
}

export interface PasskeyPrompt {
  text: string;
  /** Token ids of the whole prompt (BOS first when the tokenizer adds one). */
  ids: number[];
  passkey: number;
  depth: number;
  targetTokens: number;
  /** Filler repetitions in all (`n`) and before the needle (`a`). */
  fillerRepeats: number;
  fillerBefore: number;
  /** Token range of the needle in `ids`, `[needleStart, needleEnd)`. */
  needleStart: number;
  needleEnd: number;
}

function pieceTokens(tokenizer: Tokenizer, text: string): number {
  return tokenizer.encode(text, { addSpecialTokens: false }).length;
}

/**
 * Builds one passkey prompt as the format defines it: prefix + filler*a + needle +
 * filler*(n-a) + question, encoded as one string with the tokenizer's special tokens, with
 * `n = floor((target - S - P - N - Q) / F)` (S: special tokens the tokenizer adds, 1 for BOS)
 * and `a = floor(depth * n + 0.5)`. For the bundled model the pieces encode independently, so
 * the length is exactly `S + P + n*F + N + Q`; a tokenizer that merges across piece
 * boundaries could come out longer, so `n` shrinks until the prompt fits the target.
 */
export function buildPasskeyPrompt(tokenizer: Tokenizer, params: PasskeyPromptParams): PasskeyPrompt {
  const { targetTokens, depth, passkey } = params;
  if (!Number.isInteger(targetTokens) || targetTokens < 1) {
    throw new ConfigError('contexts', `a passkey target length must be a positive integer, got ${targetTokens}`);
  }
  if (!(depth >= 0 && depth <= 1)) throw new ConfigError('depth', `must be in [0, 1], got ${depth}`);
  if (!Number.isInteger(passkey) || passkey < 10000 || passkey > 99999) {
    throw new ConfigError('passkey', `must be a 5-digit integer, got ${passkey}`);
  }
  const f = PASSKEY_FORMAT;
  const needle = f.needle.replaceAll('{passkey}', String(passkey));
  const special = tokenizer.encode(f.prefix, { addSpecialTokens: f.addBos }).length - pieceTokens(tokenizer, f.prefix);
  const P = pieceTokens(tokenizer, f.prefix);
  const F = pieceTokens(tokenizer, f.filler);
  const N = pieceTokens(tokenizer, needle);
  const Q = pieceTokens(tokenizer, f.question);
  let n = Math.floor((targetTokens - special - P - N - Q) / F);
  if (n < 0) {
    throw new ConfigError(
      'contexts',
      `a passkey prompt needs at least ${special + P + N + Q} tokens with this tokenizer, target ${targetTokens} is too short`,
    );
  }
  for (; n >= 0; n--) {
    const a = Math.floor(depth * n + 0.5);
    const before = f.prefix + f.filler.repeat(a);
    const text = before + needle + f.filler.repeat(n - a) + f.question;
    const ids = tokenizer.encode(text, { addSpecialTokens: f.addBos });
    if (ids.length > targetTokens) continue;
    const needleStart = tokenizer.encode(before, { addSpecialTokens: f.addBos }).length;
    const needleEnd = tokenizer.encode(before + needle, { addSpecialTokens: f.addBos }).length;
    return { text, ids, passkey, depth, targetTokens, fillerRepeats: n, fillerBefore: a, needleStart, needleEnd };
  }
  throw new ConfigError('contexts', `no passkey prompt fits in ${targetTokens} tokens with this tokenizer`);
}

/** The format's key of trial `trial` (0-based) at a target length: always 5 digits. */
export function passkeyKey(trial: number, targetTokens: number): number {
  // (trial + 1) * 2654435761 stays an exact double far beyond any trial count used here.
  return 10000 + (((trial + 1) * 2654435761 + targetTokens * 40503) % 90000);
}

/**
 * The needle depth of trial `trial` out of `numTrials`, as tools/train/train.py does: with the
 * format's full set (numDepths * keysPerDepth trials) `keysPerDepth` keys per depth, depths in
 * order; with any other count, depths cycle so that every count spreads over the depths.
 */
export function passkeyDepth(trial: number, numTrials: number): number {
  const { numDepths, keysPerDepth } = PASSKEY_FORMAT;
  const level = numTrials === numDepths * keysPerDepth ? Math.floor(trial / keysPerDepth) : trial % numDepths;
  return level / (numDepths - 1);
}

/**
 * The format's scoring: the answer text (special tokens skipped) with leading whitespace
 * stripped is correct when its leading run of decimal digits equals the passkey exactly.
 */
export function scorePasskeyAnswer(answer: string, passkey: number): boolean {
  const m = /^\d+/.exec(answer.trimStart());
  return m !== null && m[0] === String(passkey);
}

/** A passkey context length: tokens, or 'full' for the model's whole trained context. */
export type PasskeyContext = number | 'full';

/**
 * Target lengths in tokens, each capped at `maxPositions - maxNewTokens` so that the prompt
 * and its answer fit the trained context ('full' is that cap); duplicates after capping drop.
 */
export function passkeyTargets(contexts: readonly PasskeyContext[], maxPositions: number, maxNewTokens: number): number[] {
  const cap = maxPositions - maxNewTokens;
  const out: number[] = [];
  for (const c of contexts) {
    if (c !== 'full' && !(Number.isInteger(c) && c > 0)) {
      throw new ConfigError('contexts', `must be positive integers or 'full', got ${String(c)}`);
    }
    const t = c === 'full' ? cap : Math.min(c, cap);
    if (!out.includes(t)) out.push(t);
  }
  return out.sort((a, b) => a - b);
}
