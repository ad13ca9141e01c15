import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ModelLoadError, TokenizerError } from '../errors.js';
import type { Tokenizer } from '../model-types.js';
import { cleanUpTokenizationSpaces, createTokenizer, loadTokenizer } from './tokenizer.js';
import { buildByteLevelTokenizer, buildSentencePieceTokenizer } from './__fixtures__/tiny-tokenizers.js';
import { seededRandom } from './__fixtures__/tiny-checkpoints.js';

const MULTIBYTE_TEXTS = [
  'the quick brown fox',
  'naïve café crème brûlée, déjà vu',
  '中文分词测试 我们的中文 日本語のテキスト 한국어',
  'emoji 😀😃 🎉🎉 👍🏽 👨‍👩‍👧 🚀 ❤️',
  'mixed: café 中文 😀 — ok? don\'t',
  '  leading and  double  spaces\nand a newline',
  '🚀',
];

/** A UTF-16 surrogate without its partner: half of a non-BMP character such as an emoji. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

const byteLevel = buildByteLevelTokenizer();
const gpt2Config = { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>' };
const sentencePiece = buildSentencePieceTokenizer();
const llamaConfig = { add_bos_token: true, add_eos_token: false, bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' };

function streamAll(tok: Tokenizer, ids: number[], skipSpecialTokens = false): string[] {
  const decoder = tok.createStreamDecoder({ skipSpecialTokens });
  const chunks = ids.map((id) => decoder.push(id));
  chunks.push(decoder.flush());
  return chunks;
}

describe('byte-level BPE tokenizer', () => {
  const tok = createTokenizer(byteLevel.tokenizerJson, gpt2Config);

  it('round-trips multi-byte text and reports vocabulary facts', () => {
    expect(tok.vocabSize).toBe(byteLevel.vocabSize);
    expect(tok.bosTokenId).toBe(byteLevel.specialTokens['<|endoftext|>']);
    expect(tok.eosTokenIds).toEqual([byteLevel.specialTokens['<|endoftext|>']]);
    for (const text of MULTIBYTE_TEXTS) {
      const ids = tok.encode(text);
      // GPT-2's post-processor adds nothing.
      expect(tok.encode(text, { addSpecialTokens: false })).toEqual(ids);
      expect(tok.decode(ids)).toBe(text);
    }
    // Merges shorten the text (the tokenizer is really BPE, not bytes).
    expect(tok.encode('the quick brown fox').length).toBeLessThan('the quick brown fox'.length);
  });

  it('maps ids to token strings', () => {
    const ids = tok.encode(' the');
    expect(ids).toHaveLength(1);
    expect(tok.idToToken(ids[0])).toBe('Ġthe');
    expect(tok.idToToken(byteLevel.specialTokens['<|endoftext|>'])).toBe('<|endoftext|>');
    expect(tok.idToToken(tok.vocabSize)).toBeNull();
    expect(tok.idToToken(-1)).toBeNull();
    expect(tok.idToToken(1.5)).toBeNull();
  });

  it('handles special tokens in text and when skipping them', () => {
    const eos = byteLevel.specialTokens['<|endoftext|>'];
    const ids = tok.encode('hi<|endoftext|>there');
    expect(ids).toContain(eos);
    expect(tok.decode(ids)).toBe('hi<|endoftext|>there');
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('hithere');
  });

  it('decodes empty input and skips ids outside the vocabulary, but rejects non-integers', () => {
    expect(tok.decode([])).toBe('');
    expect(tok.decode(new Uint32Array([...tok.encode('ab'), 99999]))).toBe('ab');
    expect(() => tok.decode([1.5])).toThrow(TokenizerError);
    expect(() => tok.createStreamDecoder().push(Number.NaN)).toThrow(TokenizerError);
  });

  it('has tokens that hold only part of a UTF-8 character (so the stream tests mean something)', () => {
    const partial = tok.encode('中文 😀🎉').filter((id) => tok.decode([id]).includes('\uFFFD'));
    expect(partial.length).toBeGreaterThan(0);
  });

  it('streams multi-byte text without ever emitting half a character', () => {
    for (const text of MULTIBYTE_TEXTS) {
      const chunks = streamAll(tok, tok.encode(text));
      for (const chunk of chunks) {
        expect(chunk).not.toContain('\uFFFD');
        expect(chunk, JSON.stringify(chunk)).not.toMatch(LONE_SURROGATE);
      }
      expect(chunks.join('')).toBe(text);
    }
  });

  it('emits text as soon as a character is complete', () => {
    const decoder = tok.createStreamDecoder();
    const ids = tok.encode('a😀');
    const out = ids.map((id) => decoder.push(id));
    expect(out[0]).toBe('a');
    expect(out.at(-1)).toBe('😀');
    expect(out.slice(1, -1).every((s) => s === '')).toBe(true);
    expect(decoder.flush()).toBe('');
  });

  it('stream output equals decode(all) for random id sequences, incomplete UTF-8 included', () => {
    const rand = seededRandom(21);
    for (let trial = 0; trial < 250; trial++) {
      const n = 1 + Math.floor(rand() * 24);
      // Mostly in-vocabulary ids (many single bytes that never form valid UTF-8), some beyond it.
      const ids = Array.from({ length: n }, () => Math.floor(rand() * (tok.vocabSize + 4)));
      const skip = trial % 2 === 0;
      const chunks = streamAll(tok, ids, skip);
      expect(chunks.join(''), JSON.stringify(ids)).toBe(tok.decode(ids, { skipSpecialTokens: skip }));
      // Only flush() may hand out a replacement character that ends the text.
      for (const chunk of chunks.slice(0, -1)) expect(chunk.endsWith('\uFFFD')).toBe(false);
    }
  });

  it('respects add_bos_token / add_eos_token when the post-processor does not add them', () => {
    const eos = byteLevel.specialTokens['<|endoftext|>'];
    const withBos = createTokenizer(byteLevel.tokenizerJson, { ...gpt2Config, add_bos_token: true, add_eos_token: true });
    const plain = tok.encode('hello');
    expect(withBos.encode('hello')).toEqual([eos, ...plain, eos]);
    expect(withBos.encode('hello', { addSpecialTokens: false })).toEqual(plain);
    const noFlags = createTokenizer(byteLevel.tokenizerJson, { ...gpt2Config, add_bos_token: false });
    expect(noFlags.encode('hello')).toEqual(plain);
  });

  it('does not double a BOS the post-processor already adds, and removes it when add_bos_token is false', () => {
    const built = buildByteLevelTokenizer({ postProcessor: 'bos' });
    const bos = built.specialTokens['<s>'];
    const config = { bos_token: '<s>', eos_token: '<|endoftext|>' };
    const byPost = createTokenizer(built.tokenizerJson, config);
    const plain = byPost.encode('hello', { addSpecialTokens: false });
    expect(byPost.encode('hello')).toEqual([bos, ...plain]);
    expect(createTokenizer(built.tokenizerJson, { ...config, add_bos_token: true }).encode('hello')).toEqual([bos, ...plain]);
    expect(createTokenizer(built.tokenizerJson, { ...config, add_bos_token: false }).encode('hello')).toEqual(plain);
  });

  it('takes bos/eos from options when tokenizer_config.json names none', () => {
    const bare = createTokenizer(byteLevel.tokenizerJson, {}, { bosTokenId: 5, eosTokenIds: [7, 8] });
    expect(bare.bosTokenId).toBe(5);
    expect(bare.eosTokenIds).toEqual([7, 8]);
    const none = createTokenizer(byteLevel.tokenizerJson);
    expect(none.bosTokenId).toBeNull();
    expect(none.eosTokenIds).toEqual([]);
  });
});

describe('clean_up_tokenization_spaces', () => {
  const tok = createTokenizer(byteLevel.tokenizerJson, { ...gpt2Config, clean_up_tokenization_spaces: true });
  const raw = createTokenizer(byteLevel.tokenizerJson, gpt2Config);

  it('applies the transformers clean-up only when the config asks for it', () => {
    const text = "hello , world . do n't we 're ok ? yes !";
    expect(cleanUpTokenizationSpaces(text)).toBe("hello, world. don't we're ok? yes!");
    expect(tok.decode(tok.encode(text))).toBe("hello, world. don't we're ok? yes!");
    expect(raw.decode(raw.encode(text))).toBe(text);
  });

  it('streams the cleaned text identically to decode(all)', () => {
    const texts = ["hello , world . do n't we 're ok ? yes !", "it ' s x  ' s a 'm b 've c ' d", 'no  ,  spaces  .', '中文 , 😀 .'];
    for (const text of texts) {
      const ids = tok.encode(text);
      expect(streamAll(tok, ids).join('')).toBe(tok.decode(ids));
    }
    const rand = seededRandom(33);
    const pieces = [' ', ' .', ',', " '", 's', ' n', "'t", 'm', 've', 're', 'a', '😀', '?', '!'];
    for (let trial = 0; trial < 200; trial++) {
      const text = Array.from({ length: 1 + Math.floor(rand() * 12) }, () => pieces[Math.floor(rand() * pieces.length)]).join('');
      const ids = tok.encode(text);
      expect(streamAll(tok, ids).join(''), JSON.stringify(text)).toBe(tok.decode(ids));
    }
  });
});

describe('SentencePiece-style (LLaMA) tokenizer', () => {
  const tok = createTokenizer(sentencePiece.tokenizerJson, llamaConfig);

  it('adds BOS from add_bos_token, round-trips multi-byte text via byte fallback', () => {
    expect(tok.bosTokenId).toBe(1);
    expect(tok.eosTokenIds).toEqual([2]);
    for (const text of MULTIBYTE_TEXTS) {
      const ids = tok.encode(text);
      expect(ids[0]).toBe(1);
      expect(ids.filter((id) => id === 1)).toHaveLength(1);
      expect(tok.encode(text, { addSpecialTokens: false })[0]).not.toBe(1);
      expect(tok.decode(ids, { skipSpecialTokens: true })).toBe(text);
    }
    expect(tok.idToToken(tok.encode('中', { addSpecialTokens: false }).at(-1)!)).toMatch(/^<0x[0-9A-F]{2}>$/);
  });

  it('gives the same ids whether the post-processor or add_bos_token adds BOS', () => {
    const viaPost = createTokenizer(buildSentencePieceTokenizer({ bosInPostProcessor: true }).tokenizerJson, llamaConfig);
    for (const text of MULTIBYTE_TEXTS) expect(viaPost.encode(text)).toEqual(tok.encode(text));
  });

  it('streams without half characters and keeps the leading-space strip right', () => {
    for (const text of MULTIBYTE_TEXTS) {
      const ids = tok.encode(text);
      for (const skip of [true, false]) {
        const chunks = streamAll(tok, ids, skip);
        for (const chunk of chunks) expect(chunk).not.toContain('\uFFFD');
        expect(chunks.join('')).toBe(tok.decode(ids, { skipSpecialTokens: skip }));
      }
    }
    const rand = seededRandom(44);
    for (let trial = 0; trial < 200; trial++) {
      const ids = Array.from({ length: 1 + Math.floor(rand() * 20) }, () => Math.floor(rand() * tok.vocabSize));
      expect(streamAll(tok, ids, trial % 2 === 0).join(''), JSON.stringify(ids)).toBe(tok.decode(ids, { skipSpecialTokens: trial % 2 === 0 }));
    }
  });
});

describe('tokenizer errors and files', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tinyserve-tokenizer-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('rejects malformed tokenizer.json and unknown special tokens', () => {
    expect(() => createTokenizer([])).toThrow(TokenizerError);
    expect(() => createTokenizer({ version: '1.0' })).toThrow(/tokenizer.json has no model/);
    expect(() => createTokenizer({ model: { type: 'Nonsense' } })).toThrow(TokenizerError);
    expect(() => createTokenizer(byteLevel.tokenizerJson, { bos_token: '<nope>' })).toThrow(/bos_token '<nope>' is not in the vocabulary/);
    expect(() => createTokenizer(byteLevel.tokenizerJson, { eos_token: 5 })).toThrow(/'eos_token' must be a token string/);
  });

  it('loads tokenizer.json and tokenizer_config.json from a directory', () => {
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(sentencePiece.tokenizerJson));
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(llamaConfig));
    const tok = loadTokenizer(dir);
    expect(tok.encode('hi')[0]).toBe(1);
  });

  it('explains a missing tokenizer.json', () => {
    const empty = join(dir, 'empty');
    rmSync(empty, { recursive: true, force: true });
    expect(() => loadTokenizer(empty)).toThrow(ModelLoadError);
    const slow = join(dir, 'slow');
    rmSync(slow, { recursive: true, force: true });
    mkdirSync(slow);
    writeFileSync(join(slow, 'tokenizer.model'), '');
    expect(() => loadTokenizer(slow)).toThrow(/found tokenizer.model; only the fast-tokenizer file tokenizer.json is supported/);
  });
});
