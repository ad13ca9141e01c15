/**
 * The attention benchmark of issue 8 as one run: model head shapes x batch sizes x context
 * lengths x (dense, sparse modes), optionally several kernel tunings, merged with PyTorch SDPA
 * results on the same shapes (tools/bench-sdpa.py) into one table.
 */
import type { CudaAddon, CudaDeviceInfo } from './addon-types.js';
import { benchmarkAttention } from './benchmark-attention.js';
import type { BenchmarkAttentionResult, BenchmarkMode, BenchmarkTuning, SparseTimeline } from './benchmark-attention.js';

export interface HeadShape {
  name: string;
  numQHeads: number;
  numKvHeads: number;
  headDim: number;
}

export const HEAD_SHAPES: Record<string, HeadShape> = {
  tinyllama: { name: 'TinyLlama-1.1B', numQHeads: 32, numKvHeads: 4, headDim: 64 },
  gpt2: { name: 'GPT2-345M', numQHeads: 16, numKvHeads: 16, headDim: 64 },
};

export const DEFAULT_MODES: BenchmarkMode[] = [
  { kind: 'dense' },
  { kind: 'sparse', selectionRatio: 0.3 },
  { kind: 'sparse', selectionRatio: 1 / 8 },
  { kind: 'sparse', tokenBudget: 2048 },
];

/**
 * Modes from a command line: comma-separated `dense`, `ratio:R`, `budget:TOKENS`; absent:
 * DEFAULT_MODES.
 */
export function parseModes(spec: string | undefined): BenchmarkMode[] {
  if (spec === undefined) return DEFAULT_MODES;
  return spec.split(',').map((m): BenchmarkMode => {
    if (m === 'dense') return { kind: 'dense' };
    const [kind, value] = m.split(':');
    const x = Number(value);
    if (kind === 'ratio' && x > 0 && x <= 1) return { kind: 'sparse', selectionRatio: x };
    if (kind === 'budget' && Number.isInteger(x) && x > 0) return { kind: 'sparse', tokenBudget: x };
    throw new Error(`--modes: '${m}' is not dense, ratio:R (0 < R <= 1) or budget:TOKENS`);
  });
}

export type BenchKvDtype = 'fp16' | 'fp32' | 'int8';

/** A `--kv-dtype` value: fp16 (default), fp32 or int8. */
export function parseKvDtype(spec: string | undefined): BenchKvDtype {
  if (spec === undefined) return 'fp16';
  if (spec === 'fp16' || spec === 'fp32' || spec === 'int8') return spec;
  throw new Error(`--kv-dtype: '${spec}' is not fp16, fp32 or int8`);
}

/** One shape as tools/bench-sdpa.py reads it, and its result. */
export interface SdpaShape {
  batch: number;
  context: number;
  q_heads: number;
  kv_heads: number;
  head_dim: number;
}
export interface SdpaResult extends SdpaShape {
  us_eager?: number;
  us_graph?: number;
  us_graph_flash?: number;
  us_best?: number;
  gb_per_s?: number;
  error?: string;
}

export interface SuiteOptions {
  addon: CudaAddon;
  shapes: HeadShape[];
  batches: number[];
  contexts: number[];
  modes?: BenchmarkMode[];
  pageSize?: number;
  /** KV element format (default fp16); int8 bytes include the per-token scales. */
  kvDtype?: BenchKvDtype;
  metaDtype?: 'fp16' | 'fp32';
  iterations?: number;
  /**
   * Kernel tunings to run: rows report the first (default: the plan's own choice); the others
   * are recorded in each row's `tried`, for comparison.
   */
  tunings?: BenchmarkTuning[];
  /** Sparse modes: one traced launch each, its timeline in the row and the log. */
  traceSparse?: boolean;
  log?: (line: string) => void;
}

export interface SuiteRow extends BenchmarkAttentionResult {
  shape: string;
  tuning: BenchmarkTuning;
  /** Every tuning tried: microseconds each. */
  tried: { tuning: BenchmarkTuning; microseconds: number }[];
}

export interface SuiteResult {
  device: CudaDeviceInfo;
  copyGbPerSecond: number;
  rows: SuiteRow[];
}

export function sdpaShapes(shapes: HeadShape[], batches: number[], contexts: number[]): SdpaShape[] {
  const out: SdpaShape[] = [];
  for (const s of shapes) for (const b of batches) for (const n of contexts) out.push({ batch: b, context: n, q_heads: s.numQHeads, kv_heads: s.numKvHeads, head_dim: s.headDim });
  return out;
}

export function runAttentionSuite(opts: SuiteOptions): SuiteResult {
  const { addon } = opts;
  const log = opts.log ?? (() => {});
  const device = addon.deviceInfo();
  const copy = addon.copyBandwidth(1 << 30, 20);
  log(`${device.name}: device-to-device copy ${copy.gbPerSecond.toFixed(0)} GB/s (read + write)`);
  const tunings = opts.tunings ?? [{}];
  const rows: SuiteRow[] = [];
  for (const shape of opts.shapes) {
    for (const batchSize of opts.batches) {
      for (const inputSize of opts.contexts) {
        const byMode = new Map<string, SuiteRow>();
        const seen = new Set<string>();
        for (const tuning of tunings) {
          const effective = { ...tuning };
          const key = JSON.stringify(effective);
          if (seen.has(key)) continue;
          seen.add(key);
          let results: BenchmarkAttentionResult[];
          try {
            results = benchmarkAttention({
              addon,
              batchSize,
              inputSize,
              numQHeads: shape.numQHeads,
              numKvHeads: shape.numKvHeads,
              headDim: shape.headDim,
              pageSize: opts.pageSize ?? 16,
              kvDtype: opts.kvDtype ?? 'fp16',
              metaDtype: opts.metaDtype ?? 'fp16',
              modes: opts.modes ?? DEFAULT_MODES,
              iterations: opts.iterations ?? 40,
              traceSparse: opts.traceSparse ?? false,
              tuning: effective,
              copyGbPerSecond: copy.gbPerSecond,
            });
          } catch (err) {
            log(`${shape.name} batch ${batchSize} context ${inputSize} ${key}: ${err instanceof Error ? err.message : String(err)}`);
            continue;
          }
          for (const r of results) {
            const prev = byMode.get(r.mode);
            if (prev === undefined) byMode.set(r.mode, { ...r, shape: shape.name, tuning: effective, tried: [{ tuning: effective, microseconds: r.microseconds }] });
            else prev.tried.push({ tuning: effective, microseconds: r.microseconds });
          }
        }
        for (const row of byMode.values()) {
          rows.push(row);
          const split =
            row.selectMicroseconds !== undefined
              ? ` [score ${row.scoreMicroseconds!.toFixed(1)}, +select ${row.selectMicroseconds.toFixed(1)}; attend ${row.attendMicroseconds!.toFixed(1)}]`
              : '';
          log(
            `${row.shape} b${batchSize} n${inputSize} ${row.mode}: ${row.microseconds.toFixed(1)} us${split}, ${row.gbPerSecond.toFixed(0)} GB/s ` +
              `(${(100 * row.fractionOfCopy).toFixed(0)}% of copy) splits ${row.plan.denseSplits}/${row.plan.sparseSplits} grid ${row.plan.sparseGrid} ` +
              `${JSON.stringify(row.tuning)} tried ${row.tried.map((t) => t.microseconds.toFixed(1)).join('/')}`,
          );
          if (row.sparseTimeline) log(`  timeline ${formatTimeline(row.sparseTimeline)}`);
        }
      }
    }
  }
  return { device, copyGbPerSecond: copy.gbPerSecond, rows };
}

/** One line: each event's median time (us since the launch's first CTA started). */
export function formatTimeline(t: SparseTimeline): string {
  const f = (x: number) => x.toFixed(1);
  return (
    `scored ${f(t.scored)}, keys ${f(t.keysLoaded)}, threshold ${f(t.thresholdFound)} (${t.rounds} rounds, ${Math.round(100 * t.exactFraction)}% exact), ` +
    `written ${f(t.pagesWritten)}, published ${f(t.published)}, first attender ${f(t.firstAttender)}, attended ${f(t.attended)}, merged ${f(t.merged)}, end ${f(t.end)} us (${t.pairs} pairs)`
  );
}

function findSdpa(sdpa: SdpaResult[], r: SuiteRow): SdpaResult | undefined {
  return sdpa.find((s) => s.batch === r.batchSize && s.context === r.inputSize && s.q_heads === r.numQHeads && s.kv_heads === r.numKvHeads && s.head_dim === r.headDim);
}

/** Markdown table: ours, bytes, bandwidth, SDPA (CUDA graph replay, best backend) and the ratio. */
export function formatSuiteTable(suite: SuiteResult, sdpa: SdpaResult[]): string {
  const lines = [
    `| heads | batch | context | mode | us/call | MB read | GB/s | % of copy | SDPA us | SDPA GB/s | speed vs SDPA |`,
    `|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|`,
  ];
  for (const r of suite.rows) {
    const s = findSdpa(sdpa, r);
    const sUs = s?.us_best;
    lines.push(
      `| ${r.shape} | ${r.batchSize} | ${r.inputSize} | ${r.mode} | ${r.microseconds.toFixed(1)} | ${(r.bytes / 1e6).toFixed(1)} | ${r.gbPerSecond.toFixed(0)} | ${(100 * r.fractionOfCopy).toFixed(0)}% | ` +
        `${sUs !== undefined ? sUs.toFixed(1) : (s?.error ?? 'n/a')} | ${s?.gb_per_s !== undefined ? s.gb_per_s.toFixed(0) : ''} | ${sUs !== undefined ? `${(sUs / r.microseconds).toFixed(2)}x` : ''} |`,
    );
  }
  return lines.join('\n');
}
