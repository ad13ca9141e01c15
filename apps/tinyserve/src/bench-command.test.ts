import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type { AttentionTableRow } from '@tinyserve/server';
import { runCli } from './cli.js';
import { captureIo as capture } from './__fixtures__/capture-io.js';

const HF = fileURLToPath(new URL('../../../__fixtures__/hf/', import.meta.url));

const SMALL = ['--batches', '1,2', '--contexts', '40', '--iterations', '2', '--warmup', '0'];

describe('tinyserve bench attention', () => {
  it('prints one JSON object with a row per shape, batch, context and mode; progress on stderr', async () => {
    const io = capture();
    const code = await runCli(['bench', 'attention', '--executor', 'cpu', '--shapes', '4/2/8', '--modes', 'dense,ratio:0.5', ...SMALL, '--json'], io);
    expect(code).toBe(0);
    const out = JSON.parse(io.out);
    expect(out).toMatchObject({ executor: 'cpu', kvDtype: 'fp16', pageSize: 16, model: null, failures: [], sdpa: null });
    expect(out.copyGbPerSecond).toBeGreaterThan(0);
    const rows = out.rows as AttentionTableRow[];
    expect(rows.map((r) => [r.shape, r.batchSize, r.inputSize, r.mode])).toEqual([
      ['4/2/8', 1, 40, 'dense'],
      ['4/2/8', 1, 40, 'sparse ratio 0.5'],
      ['4/2/8', 2, 40, 'dense'],
      ['4/2/8', 2, 40, 'sparse ratio 0.5'],
    ]);
    for (const r of rows) {
      expect(r).toMatchObject({ executor: 'cpu', numPages: 3, numQHeads: 4, numKvHeads: 2, headDim: 8, kvDtype: 'fp16' });
      expect(r.throughputTokensPerMs).toBeCloseTo((r.batchSize * 40) / (r.microseconds / 1000), 6);
    }
    // ceil(0.5 * 3) = 2 of 3 pages per (sequence, KV head).
    expect(rows[3].pagesAttended).toBe(2 * 2 * 2);
    expect(rows[3].pagesTotal).toBe(2 * 2 * 3);
    expect(io.err).toMatch(/^benchmarking attention on cpu: 4\/2\/8; batches 1, 2; contexts 40; dense, sparse ratio 0.5; fp16 KV, page size 16\n/);
    expect(io.err).toMatch(/bench attention: 2\/2 in \d+\.\ds\n$/);
  });

  it("prints a table, with the loaded --model's head shape by default, on the configured executor", async () => {
    const io = capture();
    const code = await runCli(['bench', 'attention', '--model', `${HF}llama-tiny-gqa`, '--kv-cache-dtype', 'fp32', '--page-size', '8', '--modes', 'dense', ...SMALL], io);
    expect(code).toBe(0);
    const lines = io.out.trimEnd().split('\n');
    expect(lines[0]).toMatch(/\(wasm\), copy [\d.]+ GB\/s, fp32 KV, page size 8, node v/);
    expect(lines[1]).toBe('| heads | batch | context | mode | us/call | tokens/ms | MB read | GB/s | % of copy |');
    expect(lines).toHaveLength(5);
    expect(lines[3]).toMatch(/^\| \S*llama-tiny-gqa \(4\/2\/16\) \| 1 \| 40 \| dense \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+% \|$/);
  });

  const bad: [string, string[], number, RegExp][] = [
    ['an unknown mode', ['--modes', 'dense,sparse'], 1, /error \[invalid_config\]: --modes: 'sparse' is not dense, ratio:R/],
    ['an unknown shape', ['--shapes', 'llama9'], 1, /error \[invalid_config\]: --shapes: 'llama9' is not /],
    ['an unknown KV format', ['--kv-dtype', 'bf16'], 1, /error \[invalid_config\]: --kv-dtype: 'bf16' is not fp16, fp32 or int8/],
    ['a zero batch', ['--batches', '0,8'], 1, /error \[invalid_config\]: --batches: must be a comma-separated list of positive integers, got '0,8'/],
    ['zero iterations', ['--iterations', '0'], 1, /error \[invalid_config\]: --iterations: must be an integer >= 1, got '0'/],
    ['a zero page size', ['--page-size', '0'], 1, /error \[invalid_config\]: pageSize: /],
    ['an executor without a benchmark', ['--executor', 'tpu'], 1, /error \[invalid_config\]: executor: no attention benchmark for executor 'tpu' \(registered: cpu, cuda, wasm\)/],
    ['--sdpa off the GPU', ['--executor', 'cpu', '--sdpa'], 1, /error \[invalid_config\]: --sdpa: compares against PyTorch SDPA on the GPU: run it with --executor cuda/],
    ['--trace off the GPU', ['--executor', 'cpu', '--trace'], 1, /error \[invalid_config\]: --trace: times the phases of the fused CUDA sparse kernel: run it with --executor cuda/],
    ['a --model its shapes leave out', ['--model', `${HF}gpt2-tiny`, '--shapes', 'gpt2'], 1, /error \[invalid_config\]: --shapes: 'gpt2' does not include 'model'/],
    ['an unknown flag', ['--bogus'], 2, /bogus.*see tinyserve bench --help/],
  ];
  it.each(bad)('rejects %s', async (_name, args, exitCode, message) => {
    const io = capture();
    expect(await runCli(['bench', 'attention', ...SMALL, ...args], io)).toBe(exitCode);
    expect(io.err).toMatch(message);
    expect(io.out).toBe('');
  });

  it('says clearly when Python or torch is missing for --sdpa, before timing anything', async () => {
    const io = capture();
    const code = await runCli(['bench', 'attention', '--executor', 'cuda', '--shapes', 'gpt2', '--sdpa', '--python', '/nonexistent/python3', ...SMALL], io);
    expect(code).toBe(1);
    expect(io.err).toMatch(/error \[backend_unavailable\]: the PyTorch SDPA comparison needs Python with torch: '\/nonexistent\/python3' cannot run/);
    expect(io.err).not.toMatch(/benchmarking attention/);
  });

  it('lists both benchmarks in the help and for an unknown one', async () => {
    let io = capture();
    expect(await runCli(['bench', '--help'], io)).toBe(0);
    expect(io.out).toMatch(/tinyserve bench attention \[options\]/);
    expect(io.out).toMatch(/--sdpa/);
    io = capture();
    expect(await runCli(['bench', 'attention', '--help'], io)).toBe(0);
    expect(io.out).toMatch(/--contexts <list>/);
    io = capture();
    expect(await runCli(['bench', 'latency'], io)).toBe(2);
    expect(io.err).toMatch(/unknown benchmark 'latency' \(benchmarks: throughput, attention\)/);
  });
});
