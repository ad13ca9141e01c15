import { describe, expect, it } from 'vitest';
import { BackendUnavailableError, ConfigError } from '@tinyserve/core';
import { modeLabel } from './attention-benchmark-params.js';
import type { BenchmarkAttentionResult } from './attention-benchmark-params.js';
import { DEFAULT_MODES, HEAD_SHAPES, formatAttentionTable, formatTimeline, parseHeadShapes, parseKvDtype, parseModes, runSdpaBenchmark, sdpaShapes } from './attention-benchmark-report.js';
import { formatSuiteTable } from './cuda/benchmark-suite.js';
import type { SuiteResult } from './cuda/benchmark-suite.js';

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

  it('rejects unknown modes and out-of-range values, naming the flag and the bad entry', () => {
    expect(() => parseModes('dense,sparse')).toThrow(/--modes: 'sparse'/);
    expect(() => parseModes('dense,sparse')).toThrow(ConfigError);
    expect(() => parseModes('ratio:0')).toThrow(/'ratio:0'/);
    expect(() => parseModes('ratio:1.5')).toThrow(/'ratio:1.5'/);
    expect(() => parseModes('budget:12.5')).toThrow(/'budget:12.5'/);
  });
});

describe('formatTimeline', () => {
  it('prints every event of a traced launch in order, with the selection rounds', () => {
    const line = formatTimeline({
      scored: 10.75, keysLoaded: 13.1, thresholdFound: 19, pagesWritten: 21.4, published: 22.1, firstAttender: 22.7,
      attended: 29.6, merged: 35.5, end: 39.1, rounds: 12, exactFraction: 0.5, pairs: 32,
    });
    expect(line).toBe(
      'scored 10.8, keys 13.1, threshold 19.0 (12 rounds, 50% exact), written 21.4, published 22.1, first attender 22.7, attended 29.6, merged 35.5, end 39.1 us (32 pairs)',
    );
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

describe('parseHeadShapes', () => {
  it('reads named shapes, Q/KV/D and extra names', () => {
    const model = { name: 'my-model', numQHeads: 6, numKvHeads: 2, headDim: 64 };
    expect(parseHeadShapes('tinyllama,8/2/16,model', { model })).toEqual([
      HEAD_SHAPES.tinyllama,
      { name: '8/2/16', numQHeads: 8, numKvHeads: 2, headDim: 16 },
      model,
    ]);
  });

  it('rejects unknown names and query heads that do not group over KV heads', () => {
    expect(() => parseHeadShapes('llama9')).toThrow(/--shapes: 'llama9' is not tinyllama, gpt2 or Q\/KV\/D/);
    expect(() => parseHeadShapes('6/4/64')).toThrow(/'6\/4\/64'/);
    expect(() => parseHeadShapes('8/2/0')).toThrow(/'8\/2\/0'/);
  });
});

describe('benchmark reporting', () => {
  it('labels modes and lists the SDPA shapes', () => {
    expect(modeLabel({ kind: 'dense' })).toBe('dense');
    expect(modeLabel({ kind: 'sparse', tokenBudget: 2048 })).toBe('sparse budget 2048');
    expect(modeLabel({ kind: 'sparse', selectionRatio: 1 / 8 })).toBe('sparse ratio 0.125');
    const shapes = sdpaShapes([{ name: 'x', numQHeads: 32, numKvHeads: 4, headDim: 64 }], [1, 8], [4096]);
    expect(shapes).toEqual([
      { batch: 1, context: 4096, q_heads: 32, kv_heads: 4, head_dim: 64 },
      { batch: 8, context: 4096, q_heads: 32, kv_heads: 4, head_dim: 64 },
    ]);
  });

  const row: BenchmarkAttentionResult = {
    executor: 'cuda', device: 'GPU', mode: 'dense', batchSize: 8, inputSize: 32768, numPages: 2048, numQHeads: 32, numKvHeads: 4, headDim: 64, pageSize: 16,
    kvDtype: 'fp16', metaDtype: 'fp16', microseconds: 100, microsecondsEager: 110, throughputTokensPerMs: 2621440, bytes: 268e6, gbPerSecond: 2680,
    copyGbPerSecond: 2977, fractionOfCopy: 0.9, pagesAttended: 1, pagesTotal: 1, rotations: 1, iterations: 40,
  };

  it('puts SDPA beside each row and the speed ratio', () => {
    const suite: SuiteResult = { device: {} as never, copyGbPerSecond: 3000, rows: [{ ...row, shape: 'TinyLlama-1.1B', tuning: {}, tried: [] }] };
    const md = formatSuiteTable(suite, [{ batch: 8, context: 32768, q_heads: 32, kv_heads: 4, head_dim: 64, us_best: 120, gb_per_s: 2233 }]);
    expect(md).toContain('| TinyLlama-1.1B | 8 | 32768 | dense | 100.0 | 2621440 | 268 | 2680 | 90% | 120.0 | 2233 | 1.20x |');
  });

  it('leaves the SDPA columns out unless asked, and names unnamed shapes by their heads', () => {
    const cpu = { ...row, executor: 'cpu', microseconds: 1234.5, throughputTokensPerMs: 4.321, bytes: 5.5e6, gbPerSecond: 4.4554, fractionOfCopy: 0.123 };
    const md = formatAttentionTable([cpu, { ...cpu, fractionOfCopy: 0.0033 }]).split('\n');
    expect(md[0]).not.toMatch(/SDPA/);
    expect(md[2]).toBe('| 32/4/64 | 8 | 32768 | dense | 1234.5 | 4.32 | 5.50 | 4.46 | 12% |');
    expect(md[3]).toMatch(/\| 0\.330% \|$/);
  });
});

describe('runSdpaBenchmark', () => {
  it('says what is missing when the script or the interpreter is absent', async () => {
    const shapes = sdpaShapes([HEAD_SHAPES.gpt2], [1], [4096]);
    await expect(runSdpaBenchmark({ shapes, script: '/nonexistent/bench-sdpa.py' })).rejects.toThrow(/bench-sdpa\.py, which does not exist/);
    await expect(runSdpaBenchmark({ shapes, python: '/nonexistent/python3' })).rejects.toThrow(BackendUnavailableError);
    await expect(runSdpaBenchmark({ shapes, python: '/nonexistent/python3' })).rejects.toThrow(/needs Python with torch: '\/nonexistent\/python3' cannot run/);
  });
});
