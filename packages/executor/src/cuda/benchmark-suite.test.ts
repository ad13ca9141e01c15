import { describe, expect, it } from 'vitest';
import { DEFAULT_MODES, parseKvDtype, parseModes } from './benchmark-suite.js';

describe('parseModes', () => {
  it('reads dense, ratio and budget modes in order', () => {
    expect(parseModes('dense,budget:2048,ratio:0.125')).toEqual([
      { kind: 'dense' },
      { kind: 'sparse', tokenBudget: 2048 },
      { kind: 'sparse', selectionRatio: 0.125 },
    ]);
  });

  it('defaults to the issue grid', () => {
    expect(parseModes(undefined)).toBe(DEFAULT_MODES);
  });

  it('rejects unknown modes and out-of-range values, naming the bad entry', () => {
    expect(() => parseModes('dense,sparse')).toThrow(/'sparse'/);
    expect(() => parseModes('ratio:0')).toThrow(/'ratio:0'/);
    expect(() => parseModes('ratio:1.5')).toThrow(/'ratio:1.5'/);
    expect(() => parseModes('budget:12.5')).toThrow(/'budget:12.5'/);
  });
});

describe('parseKvDtype', () => {
  it('reads fp16, fp32 and int8, fp16 by default', () => {
    expect(parseKvDtype(undefined)).toBe('fp16');
    expect(['fp16', 'fp32', 'int8'].map(parseKvDtype)).toEqual(['fp16', 'fp32', 'int8']);
  });

  it('rejects other formats, naming the flag and the value', () => {
    expect(() => parseKvDtype('bf16')).toThrow(/--kv-dtype: 'bf16'/);
  });
});
