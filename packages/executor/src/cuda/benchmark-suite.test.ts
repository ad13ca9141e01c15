import { describe, expect, it } from 'vitest';
import { DEFAULT_MODES, parseModes } from './benchmark-suite.js';

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
