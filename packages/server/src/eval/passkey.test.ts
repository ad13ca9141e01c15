import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadModel } from '@tinyserve/core';
import type { Tokenizer } from '@tinyserve/core';
import {
  PASSKEY_FORMAT,
  buildPasskeyPrompt,
  passkeyDepth,
  passkeyKey,
  passkeyTargets,
  scorePasskeyAnswer,
} from './passkey.js';

const HF = fileURLToPath(new URL('../../../../__fixtures__/hf/', import.meta.url));
const FORMAT_FILE = fileURLToPath(new URL('../../../../tools/train/passkey-format.json', import.meta.url));

describe('PASSKEY_FORMAT', () => {
  it('is the format the bundled model was trained and evaluated with (tools/train/passkey-format.json)', () => {
    const json = JSON.parse(readFileSync(FORMAT_FILE, 'utf8'));
    expect(PASSKEY_FORMAT).toMatchObject({
      name: json.name,
      prefix: json.prefix,
      filler: json.filler,
      needle: json.needle,
      question: json.question,
      addBos: json.addBos,
      numDepths: json.trials.numDepths,
      keysPerDepth: json.trials.keysPerDepth,
      maxNewTokens: json.generation.maxNewTokens,
    });
  });
});

describe('passkey keys, depths, scoring and targets', () => {
  it('keys follow the format and always have 5 digits', () => {
    expect(passkeyKey(0, 1024)).toBe(10000 + ((1 * 2654435761 + 1024 * 40503) % 90000));
    for (let i = 0; i < 200; i++) {
      const k = passkeyKey(i, 2040);
      expect(k).toBeGreaterThanOrEqual(10000);
      expect(k).toBeLessThanOrEqual(99999);
    }
    expect(passkeyKey(3, 1024)).not.toBe(passkeyKey(3, 2048));
  });

  it('depths: keysPerDepth keys per depth with the full set, cycling otherwise', () => {
    expect([0, 4, 5, 49].map((i) => passkeyDepth(i, 50))).toEqual([0, 0, 1 / 9, 1]);
    expect([0, 1, 9, 10].map((i) => passkeyDepth(i, 10))).toEqual([0, 1 / 9, 1, 0]);
  });

  it('scores the leading digit run exactly', () => {
    expect(scorePasskeyAnswer(' 48213. Remember', 48213)).toBe(true);
    expect(scorePasskeyAnswer('48213', 48213)).toBe(true);
    expect(scorePasskeyAnswer(' 482130', 48213)).toBe(false);
    expect(scorePasskeyAnswer(' 4821', 48213)).toBe(false);
    expect(scorePasskeyAnswer('the key 48213', 48213)).toBe(false);
  });

  it('caps targets at the trained context minus the answer, full included, deduplicated', () => {
    expect(passkeyTargets([1024, 2048, 'full'], 2048, 8)).toEqual([1024, 2040]);
    expect(passkeyTargets([4096, 'full', 100], 256, 8)).toEqual([100, 248]);
    expect(() => passkeyTargets([0], 256, 8)).toThrow(ConfigError);
  });
});

describe.each(['llama-tiny-gqa', 'gpt2-tiny'])('buildPasskeyPrompt with the %s tokenizer', (name) => {
  let tokenizer: Tokenizer;
  beforeAll(async () => {
    tokenizer = (await loadModel(`${HF}${name}`)).tokenizer;
  });

  const filler = (): number => tokenizer.encode(PASSKEY_FORMAT.filler, { addSpecialTokens: false }).length;

  it('fills the target length to within one filler repetition, never over: within a page of 64 tokens', () => {
    // The fixtures' small vocabularies spend about 45 tokens on the filler (the bundled model about 20).
    expect(filler()).toBeLessThanOrEqual(64);
    for (const target of [160, 200, 231, 248, 400, 1000]) {
      const p = buildPasskeyPrompt(tokenizer, { targetTokens: target, depth: 0.5, passkey: 51738 });
      expect(p.ids.length).toBeLessThanOrEqual(target);
      expect(p.ids.length).toBeGreaterThan(target - filler());
      expect(target - p.ids.length).toBeLessThan(64);
      expect(p.ids).toEqual(tokenizer.encode(p.text));
    }
  });

  it('puts the needle at the asked depth and the key in the needle', () => {
    const target = 400;
    const at = (depth: number) => buildPasskeyPrompt(tokenizer, { targetTokens: target, depth, passkey: 51738 });
    const top = at(0);
    const bottom = at(1);
    const special = tokenizer.encode('x').length - tokenizer.encode('x', { addSpecialTokens: false }).length;
    // Depth 0: right after the prefix; depth 1: right before the question.
    expect(top.fillerBefore).toBe(0);
    expect(top.needleStart).toBe(special + tokenizer.encode(PASSKEY_FORMAT.prefix, { addSpecialTokens: false }).length);
    expect(bottom.fillerBefore).toBe(bottom.fillerRepeats);
    expect(bottom.ids.length - bottom.needleEnd).toBe(tokenizer.encode(PASSKEY_FORMAT.question, { addSpecialTokens: false }).length);
    const starts = [0, 0.25, 0.5, 0.75, 1].map((d) => at(d).needleStart);
    for (let i = 1; i < starts.length; i++) expect(starts[i]).toBeGreaterThan(starts[i - 1]);
    const mid = at(0.5);
    expect(mid.fillerBefore).toBe(Math.floor(0.5 * mid.fillerRepeats + 0.5));
    expect(tokenizer.decode(mid.ids.slice(mid.needleStart, mid.needleEnd))).toContain('The pass key is 51738.');
    expect(mid.text.endsWith(PASSKEY_FORMAT.question)).toBe(true);
  });

  it('rejects a target too short for the format, and bad keys', () => {
    expect(() => buildPasskeyPrompt(tokenizer, { targetTokens: 40, depth: 0.5, passkey: 51738 })).toThrow(/too short/);
    expect(() => buildPasskeyPrompt(tokenizer, { targetTokens: 400, depth: 0.5, passkey: 123 })).toThrow(ConfigError);
    expect(() => buildPasskeyPrompt(tokenizer, { targetTokens: 400, depth: 1.5, passkey: 51738 })).toThrow(ConfigError);
  });
});
