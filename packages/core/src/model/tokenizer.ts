import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { ModelLoadError, TokenizerError } from '../errors.js';
import { readJsonObject } from './json-file.js';
import type { DecodeOptions, EncodeOptions, StreamDecoder, Tokenizer } from '../model-types.js';

export const TOKENIZER_FILE = 'tokenizer.json';
export const TOKENIZER_CONFIG_FILE = 'tokenizer_config.json';

export interface CreateTokenizerOptions {
  /** BOS id to use when tokenizer_config.json names no bos_token (e.g. config.json's bos_token_id). */
  bosTokenId?: number | null;
  /** EOS ids to use when tokenizer_config.json names no eos_token. */
  eosTokenIds?: readonly number[];
}

/**
 * transformers' `clean_up_tokenization`: drops the space before punctuation and English
 * contractions. Applied only where tokenizer_config.json sets clean_up_tokenization_spaces.
 */
export function cleanUpTokenizationSpaces(text: string): string {
  return text
    .replaceAll(' .', '.')
    .replaceAll(' ?', '?')
    .replaceAll(' !', '!')
    .replaceAll(' ,', ',')
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

/**
 * The largest cut c of `text` (the clean-up pending in a stream) such that
 * clean(text[0:c]) + clean(rest + anything) === clean(text + anything). Every clean-up pattern
 * starts with a space and is at most 4 characters long, and only " ' " has a space inside, so
 * a cut is safe (a) just before a space not preceded by a space or an apostrophe, or (b) after
 * four characters without a space. `text` itself starts at a safe cut.
 */
function lastSafeCleanupCut(text: string): number {
  for (let c = text.length; c > 0; c--) {
    if (c < text.length && text[c] === ' ' && text[c - 1] !== ' ' && text[c - 1] !== "'") return c;
    if (!text.slice(Math.max(0, c - 4), c).includes(' ')) return c;
  }
  return 0;
}

function specialTokenContent(value: unknown): string | null {
  if (typeof value === 'string') return value;
  // Serialised AddedToken: { "__type": "AddedToken", "content": "<s>", ... }
  if (typeof value === 'object' && value !== null && typeof (value as { content?: unknown }).content === 'string') {
    return (value as { content: string }).content;
  }
  return null;
}

function assertTokenId(id: unknown): asserts id is number {
  if (typeof id !== 'number' || !Number.isSafeInteger(id)) {
    throw new TokenizerError(`token ids must be integers, got ${JSON.stringify(id)}`);
  }
}

/**
 * A Hugging Face fast tokenizer (tokenizer.json) over @huggingface/tokenizers, with the
 * tokenizer_config.json behaviour the library leaves out: add_bos_token / add_eos_token,
 * special tokens and clean_up_tokenization_spaces (default false, as in transformers >= 4.45).
 */
class HuggingFaceTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  private readonly inner: HfTokenizer;
  private readonly cleanUp: boolean;
  /** true/false: make sure the special token is / is not there; null: as the post-processor does. */
  private readonly addBos: boolean | null;
  private readonly addEos: boolean | null;
  private readonly postAddsBos: boolean;
  private readonly postAddsEos: boolean;

  constructor(tokenizerJson: unknown, tokenizerConfig: Record<string, unknown>, options: CreateTokenizerOptions) {
    if (typeof tokenizerJson !== 'object' || tokenizerJson === null || Array.isArray(tokenizerJson)) {
      throw new TokenizerError('tokenizer.json must hold a JSON object');
    }
    const json = tokenizerJson as Record<string, unknown>;
    if (typeof json.model !== 'object' || json.model === null) throw new TokenizerError('tokenizer.json has no model');
    // The library insists on these keys; older files omit the null ones.
    const complete = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      ...json,
      added_tokens: json.added_tokens ?? [],
    };
    try {
      this.inner = new HfTokenizer(complete, { ...tokenizerConfig });
    } catch (err) {
      throw new TokenizerError(`cannot build the tokenizer from tokenizer.json: ${(err as Error).message}`, { cause: err });
    }
    let maxId = -1;
    for (const id of this.inner.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;

    this.bosTokenId = this.specialId(tokenizerConfig, 'bos_token') ?? options.bosTokenId ?? null;
    const eos = this.specialId(tokenizerConfig, 'eos_token');
    this.eosTokenIds = eos !== null ? [eos] : [...(options.eosTokenIds ?? [])];
    this.cleanUp = tokenizerConfig.clean_up_tokenization_spaces === true;
    this.addBos = typeof tokenizerConfig.add_bos_token === 'boolean' ? tokenizerConfig.add_bos_token : null;
    this.addEos = typeof tokenizerConfig.add_eos_token === 'boolean' ? tokenizerConfig.add_eos_token : null;

    // Whatever the post-processor type, a probe shows what it adds.
    const plain = this.rawEncode('a', false);
    const special = this.rawEncode('a', true);
    this.postAddsBos = this.bosTokenId !== null && special[0] === this.bosTokenId && plain[0] !== this.bosTokenId;
    const eos0 = this.eosTokenIds[0];
    this.postAddsEos = eos0 !== undefined && special.at(-1) === eos0 && plain.at(-1) !== eos0;
  }

  private specialId(config: Record<string, unknown>, key: string): number | null {
    if (config[key] === undefined || config[key] === null) return null;
    const content = specialTokenContent(config[key]);
    if (content === null) throw new TokenizerError(`tokenizer_config.json: '${key}' must be a token string, got ${JSON.stringify(config[key])}`);
    const id = this.inner.token_to_id(content);
    if (id === undefined) throw new TokenizerError(`tokenizer_config.json: ${key} '${content}' is not in the vocabulary`);
    return id;
  }

  private rawEncode(text: string, addSpecialTokens: boolean): number[] {
    try {
      return this.inner.encode(text, { add_special_tokens: addSpecialTokens }).ids;
    } catch (err) {
      throw new TokenizerError(`cannot encode text: ${(err as Error).message}`, { cause: err });
    }
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new TokenizerError(`text to encode must be a string, got ${typeof text}`);
    const addSpecial = options.addSpecialTokens ?? true;
    let ids = this.rawEncode(text, addSpecial);
    if (!addSpecial) return ids;
    const bos = this.bosTokenId;
    if (bos !== null) {
      if (this.addBos === true && !this.postAddsBos) ids = [bos, ...ids];
      else if (this.addBos === false && this.postAddsBos && ids[0] === bos) ids = ids.slice(1);
    }
    const eos = this.eosTokenIds[0];
    if (eos !== undefined) {
      if (this.addEos === true && !this.postAddsEos) ids = [...ids, eos];
      else if (this.addEos === false && this.postAddsEos && ids.at(-1) === eos) ids = ids.slice(0, -1);
    }
    return ids;
  }

  /** Decoding without the clean-up step; ids outside the vocabulary are skipped, as the Rust library does. */
  rawDecode(ids: readonly number[], skipSpecialTokens: boolean): string {
    const known: number[] = [];
    for (const id of ids) {
      assertTokenId(id);
      if (this.inner.id_to_token(id) !== undefined) known.push(id);
    }
    if (known.length === 0) return '';
    try {
      return this.inner.decode(known, { skip_special_tokens: skipSpecialTokens, clean_up_tokenization_spaces: false });
    } catch (err) {
      throw new TokenizerError(`cannot decode token ids: ${(err as Error).message}`, { cause: err });
    }
  }

  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    const text = this.rawDecode(Array.from(ids), options.skipSpecialTokens ?? false);
    return this.cleanUp ? cleanUpTokenizationSpaces(text) : text;
  }

  createStreamDecoder(options: DecodeOptions = {}): StreamDecoder {
    return new IncrementalDecoder(this, options.skipSpecialTokens ?? false, this.cleanUp);
  }

  idToToken(id: number): string | null {
    if (!Number.isSafeInteger(id) || id < 0) return null;
    return this.inner.id_to_token(id) ?? null;
  }
}

/**
 * Incremental detokenizer (the prefix-offset / read-offset technique of vLLM and TGI):
 * decode the tokens since `prefixOffset` with and without the ones since `readOffset`, and
 * emit the difference only when it is non-empty and does not end in U+FFFD (a UTF-8 character
 * still incomplete). Decoding from a token boundary that is already settled keeps
 * context-dependent decoders (SentencePiece's leading-space strip) right, and keeps the cost
 * per token proportional to the window, not the whole text.
 */
class IncrementalDecoder implements StreamDecoder {
  private readonly ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;
  /** Decoded text handed out so far, before clean-up. */
  private emitted = '';
  /** Decoded text not yet passed through the clean-up (only when clean-up is on). */
  private pendingCleanup = '';

  constructor(
    private readonly tokenizer: HuggingFaceTokenizer,
    private readonly skipSpecial: boolean,
    private readonly cleanUp: boolean,
  ) {}

  push(tokenId: number): string {
    assertTokenId(tokenId);
    this.ids.push(tokenId);
    const prefixText = this.tokenizer.rawDecode(this.ids.slice(this.prefixOffset, this.readOffset), this.skipSpecial);
    const newText = this.tokenizer.rawDecode(this.ids.slice(this.prefixOffset), this.skipSpecial);
    // A window that does not extend its prefix (a decoder that rewrites earlier text) is held
    // back; flush() then settles it against the full decode.
    if (newText.length <= prefixText.length || newText.endsWith('\uFFFD') || !newText.startsWith(prefixText)) return '';
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return this.out(newText.slice(prefixText.length), false);
  }

  flush(): string {
    const full = this.tokenizer.rawDecode(this.ids, this.skipSpecial);
    const rest = full.startsWith(this.emitted) ? full.slice(this.emitted.length) : '';
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return this.out(rest, true);
  }

  private out(delta: string, final: boolean): string {
    this.emitted += delta;
    if (!this.cleanUp) return delta;
    this.pendingCleanup += delta;
    const cut = final ? this.pendingCleanup.length : lastSafeCleanupCut(this.pendingCleanup);
    const ready = this.pendingCleanup.slice(0, cut);
    this.pendingCleanup = this.pendingCleanup.slice(cut);
    return cleanUpTokenizationSpaces(ready);
  }
}

/** Builds a tokenizer from parsed tokenizer.json and tokenizer_config.json contents. */
export function createTokenizer(
  tokenizerJson: unknown,
  tokenizerConfig: Record<string, unknown> = {},
  options: CreateTokenizerOptions = {},
): Tokenizer {
  return new HuggingFaceTokenizer(tokenizerJson, tokenizerConfig, options);
}

/** Reads tokenizer.json (required) and tokenizer_config.json (optional) from a model directory. */
export function loadTokenizer(dir: string, options: CreateTokenizerOptions = {}): Tokenizer {
  const jsonPath = join(dir, TOKENIZER_FILE);
  if (!existsSync(jsonPath)) {
    const slow = ['tokenizer.model', 'vocab.json'].find((f) => existsSync(join(dir, f)));
    throw new ModelLoadError(
      `'${dir}' has no ${TOKENIZER_FILE}` + (slow ? ` (found ${slow}; only the fast-tokenizer file tokenizer.json is supported)` : ''),
    );
  }
  const configPath = join(dir, TOKENIZER_CONFIG_FILE);
  const config = existsSync(configPath) ? readJsonObject(configPath) : {};
  return createTokenizer(readJsonObject(jsonPath), config, options);
}
