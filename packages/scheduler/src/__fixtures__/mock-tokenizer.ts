import type { DecodeOptions, EncodeOptions, StreamDecoder, Tokenizer } from '@tinyserve/core';

/**
 * A 64-token vocabulary for engine tests: id 0 is the special `<eos>`, then single characters
 * and a few two-letter pieces, so that stop strings can straddle token boundaries.
 */
const PIECES: string[] = [
  '<eos>',
  ...'abcdefghijklmnopqrstuvwxyz'.split(''),
  ' ',
  ...'0123456789'.split(''),
  '.',
  ',',
  ...['th', 'he', 'in', 'er', 'an', 're', 'on', 'at', 'en', 'nd', 'ti', 'es', 'or', 'te', 'of', 'ed', 'is', 'it', 'al', 'ar', 'st', 'to', 'nt', 'ng'],
];

export const MOCK_EOS = 0;

export class MockTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId = null;
  readonly eosTokenIds = [MOCK_EOS];

  /** A larger `vocabSize` (benchmarks) adds ids that decode to ` w<id>`. */
  constructor(vocabSize = PIECES.length) {
    this.vocabSize = Math.max(vocabSize, PIECES.length);
  }

  encode(text: string, _options?: EncodeOptions): number[] {
    const out: number[] = [];
    let i = 0;
    while (i < text.length) {
      const two = PIECES.indexOf(text.slice(i, i + 2), 40);
      if (two >= 0) {
        out.push(two);
        i += 2;
        continue;
      }
      const one = PIECES.indexOf(text[i], 1);
      if (one < 0) throw new Error(`mock tokenizer: no token for '${text[i]}'`);
      out.push(one);
      i += 1;
    }
    return out;
  }

  decode(ids: ArrayLike<number>, options?: DecodeOptions): string {
    let s = '';
    for (let i = 0; i < ids.length; i++) s += this.piece(ids[i], options?.skipSpecialTokens ?? false);
    return s;
  }

  createStreamDecoder(options?: DecodeOptions): StreamDecoder {
    return {
      push: (id: number) => this.piece(id, options?.skipSpecialTokens ?? false),
      flush: () => '',
    };
  }

  idToToken(id: number): string | null {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) return null;
    return PIECES[id] ?? ` w${id}`;
  }

  private piece(id: number, skipSpecial: boolean): string {
    if (id === MOCK_EOS) return skipSpecial ? '' : PIECES[0];
    const p = this.idToToken(id);
    if (p === null) throw new Error(`mock tokenizer: unknown id ${id}`);
    return p;
  }
}
