import { describe, expect, it } from 'vitest';
import { ConfigError, DEFAULT_CONFIG, resolveConfig, resolveConfigFromRecord } from './index.js';

describe('resolveConfig', () => {
  it('returns the seed defaults when nothing is given', () => {
    const config = resolveConfig();
    expect(config.pageSize).toBe(16);
    expect(config.selectionRatio).toBe(0.3);
    expect(config.useFusedKernel).toBe(true);
    expect(config.attentionChunkSize).toBe(256);
    expect(config.entropyThreshold).toBe(0.5);
    expect(config.minTokensBeforeExit).toBe(10);
    expect(config.pruningRatio).toBe(0.1);
    expect(config.minTokensAfterPruning).toBe(100);
    expect(config.targetLatencyMs).toBe(50);
    expect(config.targetMemoryGb).toBe(4);
    expect(config.numGpus).toBe(1);
    expect(config.gpuIds).toEqual([0]);
  });

  it('does not share arrays with the defaults', () => {
    const config = resolveConfig();
    config.gpuIds.push(3);
    expect(DEFAULT_CONFIG.gpuIds).toEqual([0]);
  });

  it('names the field and the range of an out-of-range value', () => {
    expect(() => resolveConfig({ pageSize: 0 })).toThrow(/pageSize: must be in \[1, 4096\], got 0/);
    expect(() => resolveConfig({ selectionRatio: 1.5 })).toThrow(/selectionRatio: must be in \(0, 1\]/);
    expect(() => resolveConfig({ selectionRatio: 0 })).toThrow(/selectionRatio/);
    expect(() => resolveConfig({ pageSize: 3.5 })).toThrow(/pageSize: must be an integer/);
    expect(() => resolveConfig({ kvCacheDtype: 'fp64' as never })).toThrow(/kvCacheDtype: must be one of 'fp32', 'fp16', 'int8'/);
    expect(() => resolveConfig({ gpuIds: [0, -1], numGpus: 2 })).toThrow(/gpuIds\[1\]/);
    expect(() => resolveConfig({ numGpus: 2 })).toThrow(/gpuIds: has 1 entries but numGpus is 2/);
  });

  it('throws ConfigError with a stable code and field', () => {
    try {
      resolveConfig({ entropyThreshold: Number.NaN });
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as ConfigError).code).toBe('invalid_config');
      expect((error as ConfigError).field).toBe('entropyThreshold');
    }
  });

  it('rejects unknown fields instead of ignoring a typo', () => {
    expect(() => resolveConfig({ pagesize: 8 } as never)).toThrow(/pagesize: is not a TinyServe config field/);
  });

  it('accepts snake_case records like the seed', () => {
    const config = resolveConfigFromRecord({ page_size: 32, selection_ratio: 0.125, enable_token_pruning: true });
    expect(config.pageSize).toBe(32);
    expect(config.selectionRatio).toBe(0.125);
    expect(config.enableTokenPruning).toBe(true);
  });
});
