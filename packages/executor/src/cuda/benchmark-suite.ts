/**
 * The attention benchmark of issue 8 as one run: model head shapes x batch sizes x context
 * lengths x (dense, sparse modes), optionally several kernel tunings, merged with PyTorch SDPA
 * results on the same shapes (tools/bench-sdpa.py) into one table.
 */
import type { BenchmarkAttentionResult, BenchmarkMode } from '../attention-benchmark-params.js';
import { DEFAULT_MODES, formatAttentionTable, formatTimeline } from '../attention-benchmark-report.js';
import type { BenchKvDtype, HeadShape, SdpaResult } from '../attention-benchmark-report.js';
import type { CudaAddon, CudaDeviceInfo } from './addon-types.js';
import { benchmarkCudaAttention } from './benchmark-attention.js';
import type { BenchmarkTuning } from './benchmark-attention.js';

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
            results = benchmarkCudaAttention({
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
              ? ` [score ${row.scoreMicroseconds!.toFixed(1)}, +select ${row.selectMicroseconds.toFixed(1)}; attend ${row.attendMicroseconds!.toFixed(1)}` +
                (row.listedMicroseconds !== undefined ? `; as page lists ${row.listedMicroseconds.toFixed(1)}]` : ']')
              : '';
          log(
            `${row.shape} b${batchSize} n${inputSize} ${row.mode}: ${row.microseconds.toFixed(1)} us${split}, ${row.gbPerSecond.toFixed(0)} GB/s ` +
              `(${(100 * row.fractionOfCopy).toFixed(0)}% of copy) splits ${row.plan?.denseSplits}/${row.plan?.sparseSplits} grid ${row.plan?.sparseGrid}x${row.plan?.sparseWarps}w ` +
              `${JSON.stringify(row.tuning)} tried ${row.tried.map((t) => t.microseconds.toFixed(1)).join('/')}`,
          );
          if (row.sparseTimeline) log(`  timeline ${formatTimeline(row.sparseTimeline)}`);
        }
      }
    }
  }
  return { device, copyGbPerSecond: copy.gbPerSecond, rows };
}


/** Markdown table: ours, bytes, bandwidth, SDPA (CUDA graph replay, best backend) and the ratio. */
export function formatSuiteTable(suite: SuiteResult, sdpa: SdpaResult[]): string {
  return formatAttentionTable(suite.rows, sdpa);
}
