/**
 * Builders for small but real tokenizer.json files, trained on a tiny corpus at test time so
 * that no large fixture is committed. The byte-level one has merges that cover only part of a
 * multi-byte character (e.g. the first two bytes of a CJK character or of an emoji), which is
 * exactly what streaming detokenization must cope with.
 */

/** A corpus with ASCII, accented Latin, CJK and emoji, so merges span partial UTF-8 sequences. */
export const TOKENIZER_CORPUS = [
  'the quick brown fox jumps over the lazy dog. the dog sleeps; the fox runs!',
  "naïve café crème brûlée déjà vu — résumé, über straße, ¿qué pasó? don't we're it's",
  '中文分词测试 中文文本 我们的中文 日本語のテキスト 한국어 텍스트',
  'emoji 😀😃😄 🎉🎉 👍🏽 👨‍👩‍👧 🚀 the rocket 🚀 flies ❤️ hearts ❤️',
  'numbers 12345 67890 and code: def f(x): return x * 2  # comment',
].join('\n');

/** GPT-2's reversible byte → printable character map. */
export function bytesToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const map: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    map[b] = printable.includes(b) ? String.fromCodePoint(b) : String.fromCodePoint(256 + extra++);
  }
  return map;
}

/** Greedy BPE training: repeatedly merge the most frequent adjacent pair (ties by name). */
function trainMerges(words: Map<string, number>, numMerges: number): [string, string][] {
  let state = [...words].map(([w, count]) => ({ symbols: w.split('\u0000'), count }));
  const merges: [string, string][] = [];
  for (let m = 0; m < numMerges; m++) {
    const pairs = new Map<string, number>();
    for (const { symbols, count } of state) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const key = `${symbols[i]}\u0000${symbols[i + 1]}`;
        pairs.set(key, (pairs.get(key) ?? 0) + count);
      }
    }
    let best: string | null = null;
    let bestCount = 1;
    for (const [key, count] of pairs) {
      if (count > bestCount || (count === bestCount && best !== null && key < best)) {
        best = key;
        bestCount = count;
      }
    }
    if (best === null) break;
    const [a, b] = best.split('\u0000') as [string, string];
    merges.push([a, b]);
    state = state.map(({ symbols, count }) => {
      const out: string[] = [];
      for (let i = 0; i < symbols.length; i++) {
        if (i + 1 < symbols.length && symbols[i] === a && symbols[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(symbols[i]);
      }
      return { symbols: out, count };
    });
  }
  return merges;
}

export interface ByteLevelTokenizerOptions {
  numMerges?: number;
  /** 'gpt2': ByteLevel post-processor (adds nothing); 'bos': TemplateProcessing adding <s>. */
  postProcessor?: 'gpt2' | 'bos';
}

export interface BuiltTokenizer {
  tokenizerJson: Record<string, unknown>;
  /** Highest id + 1, special tokens included. */
  vocabSize: number;
  specialTokens: Record<string, number>;
}

function addedToken(id: number, content: string) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

/** A GPT-2-style byte-level BPE tokenizer.json trained on {@link TOKENIZER_CORPUS}. */
export function buildByteLevelTokenizer(options: ByteLevelTokenizerOptions = {}): BuiltTokenizer {
  const byteChar = bytesToUnicode();
  const encoder = new TextEncoder();
  const words = new Map<string, number>();
  for (const word of TOKENIZER_CORPUS.match(/ ?\S+|\s+/gu) ?? []) {
    const symbols = [...encoder.encode(word)].map((b) => byteChar[b]);
    const key = symbols.join('\u0000');
    words.set(key, (words.get(key) ?? 0) + 1);
  }
  const merges = trainMerges(words, options.numMerges ?? 120);
  const vocab: Record<string, number> = {};
  byteChar.forEach((c, b) => (vocab[c] = b));
  for (const [a, b] of merges) if (vocab[a + b] === undefined) vocab[a + b] = Object.keys(vocab).length;
  let next = Object.keys(vocab).length;
  const specialTokens: Record<string, number> = { '<|endoftext|>': next++ };
  if (options.postProcessor === 'bos') specialTokens['<s>'] = next++;
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  const postProcessor =
    options.postProcessor === 'bos'
      ? {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [
            { SpecialToken: { id: '<s>', type_id: 0 } },
            { Sequence: { id: 'A', type_id: 0 } },
            { Sequence: { id: 'B', type_id: 1 } },
          ],
          special_tokens: { '<s>': { id: '<s>', ids: [specialTokens['<s>']], tokens: ['<s>'] } },
        }
      : byteLevel;
  return {
    tokenizerJson: {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: Object.entries(specialTokens).map(([content, id]) => addedToken(id, content)),
      normalizer: null,
      pre_tokenizer: byteLevel,
      post_processor: postProcessor,
      decoder: byteLevel,
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: null,
        continuing_subword_prefix: '',
        end_of_word_suffix: '',
        fuse_unk: false,
        byte_fallback: false,
        vocab,
        merges: merges.map(([a, b]) => `${a} ${b}`),
      },
    },
    vocabSize: next,
    specialTokens,
  };
}

export interface SentencePieceTokenizerOptions {
  numMerges?: number;
  /** Whether the post-processor adds <s> itself (newer LLaMA files) or leaves it to add_bos_token. */
  bosInPostProcessor?: boolean;
}

/**
 * A LLaMA-style (SentencePiece converted) tokenizer.json: ▁ for spaces, BPE over characters
 * with byte fallback (<0xE4>…) for everything outside the small alphabet.
 */
export function buildSentencePieceTokenizer(options: SentencePieceTokenizerOptions = {}): BuiltTokenizer {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  const alphabet = new Set('▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?;:\'"()-éèêàçüö');
  for (const c of alphabet) vocab[c] = Object.keys(vocab).length;
  const words = new Map<string, number>();
  const normalized = `▁${TOKENIZER_CORPUS.replace(/ /g, '▁')}`;
  for (const word of normalized.match(/▁?[^▁\n]+/gu) ?? []) {
    // Train only on runs of the alphabet: the rest falls back to bytes.
    for (const run of word.match(new RegExp(`[${[...alphabet].join('').replace(/[\]\\^-]/g, '\\$&')}]+`, 'gu')) ?? []) {
      const key = [...run].join('\u0000');
      words.set(key, (words.get(key) ?? 0) + 1);
    }
  }
  const merges = trainMerges(words, options.numMerges ?? 80);
  for (const [a, b] of merges) if (vocab[a + b] === undefined) vocab[a + b] = Object.keys(vocab).length;
  const vocabSize = Object.keys(vocab).length;
  const bosTemplate = {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [
      { SpecialToken: { id: '<s>', type_id: 0 } },
      { Sequence: { id: 'A', type_id: 0 } },
      { SpecialToken: { id: '<s>', type_id: 1 } },
      { Sequence: { id: 'B', type_id: 1 } },
    ],
    special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
  };
  return {
    tokenizerJson: {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [addedToken(0, '<unk>'), addedToken(1, '<s>'), addedToken(2, '</s>')],
      normalizer: {
        type: 'Sequence',
        normalizers: [
          { type: 'Prepend', prepend: '▁' },
          { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
        ],
      },
      pre_tokenizer: null,
      post_processor: options.bosInPostProcessor ? bosTemplate : null,
      decoder: {
        type: 'Sequence',
        decoders: [
          { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
          { type: 'ByteFallback' },
          { type: 'Fuse' },
          { type: 'Strip', content: ' ', start: 1, stop: 0 },
        ],
      },
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: '<unk>',
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: true,
        byte_fallback: true,
        vocab,
        merges: merges.map(([a, b]) => `${a} ${b}`),
      },
    },
    vocabSize,
    specialTokens: { '<unk>': 0, '<s>': 1, '</s>': 2 },
  };
}
