/**
 * What the attention benchmark's front ends share: the issue's head shapes and modes, parsing
 * them from a command line, PyTorch SDPA on the same shapes (tools/bench-sdpa.py, run as a
 * child process) and the results as one markdown table.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BackendUnavailableError, ConfigError } from '@tinyserve/core';
import type { KvCacheDtype } from '@tinyserve/core';
import type { BenchmarkAttentionResult, BenchmarkMode, SparseTimeline } from './attention-benchmark-params.js';

export interface HeadShape {
  name: string;
  numQHeads: number;
  numKvHeads: number;
  headDim: number;
}

/** The head shapes of issue 8's grid. */
export const HEAD_SHAPES: Record<string, HeadShape> = {
  tinyllama: { name: 'TinyLlama-1.1B', numQHeads: 32, numKvHeads: 4, headDim: 64 },
  gpt2: { name: 'GPT2-345M', numQHeads: 16, numKvHeads: 16, headDim: 64 },
};

/** Issue 8's modes: dense, ratio 0.3, ratio 1/8, a 2048-token budget. */
export const DEFAULT_MODES: BenchmarkMode[] = [
  { kind: 'dense' },
  { kind: 'sparse', selectionRatio: 0.3 },
  { kind: 'sparse', selectionRatio: 1 / 8 },
  { kind: 'sparse', tokenBudget: 2048 },
];

/**
 * Modes from a command line: comma-separated `dense`, `ratio:R`, `budget:TOKENS`; absent:
 * DEFAULT_MODES. Rejections are `ConfigError`s naming `--modes` and the bad entry.
 */
export function parseModes(spec: string | undefined): BenchmarkMode[] {
  if (spec === undefined) return DEFAULT_MODES;
  return spec.split(',').map((m): BenchmarkMode => {
    if (m === 'dense') return { kind: 'dense' };
    const [kind, value] = m.split(':');
    const x = Number(value);
    if (kind === 'ratio' && x > 0 && x <= 1) return { kind: 'sparse', selectionRatio: x };
    if (kind === 'budget' && Number.isInteger(x) && x > 0) return { kind: 'sparse', tokenBudget: x };
    throw new ConfigError('--modes', `'${m}' is not dense, ratio:R (0 < R <= 1) or budget:TOKENS`);
  });
}

export type BenchKvDtype = KvCacheDtype;

/** A `--kv-dtype` value: fp16 (default), fp32 or int8. */
export function parseKvDtype(spec: string | undefined): BenchKvDtype {
  if (spec === undefined) return 'fp16';
  if (spec === 'fp16' || spec === 'fp32' || spec === 'int8') return spec;
  throw new ConfigError('--kv-dtype', `'${spec}' is not fp16, fp32 or int8`);
}

/**
 * Head shapes from a command line: comma-separated names of {@link HEAD_SHAPES} or
 * `Q/KV/D` (query heads, KV heads, head dim); `named` adds more names (e.g. the loaded model).
 */
export function parseHeadShapes(spec: string, named: Record<string, HeadShape> = {}): HeadShape[] {
  const known = { ...HEAD_SHAPES, ...named };
  return spec.split(',').map((s) => {
    const shape = known[s];
    if (shape) return shape;
    const m = /^(\d+)\/(\d+)\/(\d+)$/.exec(s);
    if (m) {
      const [q, kv, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
      if (q > 0 && kv > 0 && d > 0 && q % kv === 0) return { name: s, numQHeads: q, numKvHeads: kv, headDim: d };
    }
    throw new ConfigError('--shapes', `'${s}' is not ${Object.keys(known).join(', ')} or Q/KV/D (positive, Q a multiple of KV)`);
  });
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

/** What tools/bench-sdpa.py writes. */
export interface SdpaRun {
  device: string;
  torch: string;
  results: SdpaResult[];
}

export function sdpaShapes(shapes: HeadShape[], batches: number[], contexts: number[]): SdpaShape[] {
  const out: SdpaShape[] = [];
  for (const s of shapes) for (const b of batches) for (const n of contexts) out.push({ batch: b, context: n, q_heads: s.numQHeads, kv_heads: s.numKvHeads, head_dim: s.headDim });
  return out;
}

export interface RunSdpaOptions {
  shapes: SdpaShape[];
  /** Python interpreter (default python3). */
  python?: string;
  /** Default: tools/bench-sdpa.py of the TinyServe repository. */
  script?: string;
  /** Where sdpa-shapes.json and sdpa.json are written; default a temporary directory, removed after. */
  workDir?: string;
  /** The script's progress (one JSON line per shape, on its stderr) and any other output. */
  onOutput?: (text: string) => void;
}

/** tools/bench-sdpa.py in the repository this module sits in (src/ and dist/ are at the same depth). */
export function defaultSdpaScript(): string {
  return fileURLToPath(new URL('../../../tools/bench-sdpa.py', import.meta.url));
}

/**
 * Runs PyTorch's `scaled_dot_product_attention` on `shapes` through tools/bench-sdpa.py.
 * Checks first that the script exists and that the interpreter imports torch with a CUDA
 * device, rejecting with a `BackendUnavailableError` that says which is missing.
 */
export async function runSdpaBenchmark(options: RunSdpaOptions): Promise<SdpaRun> {
  const python = options.python ?? 'python3';
  const script = options.script ?? defaultSdpaScript();
  if (!existsSync(script)) {
    throw new BackendUnavailableError(`the PyTorch SDPA comparison needs ${script}, which does not exist (tools/bench-sdpa.py ships with the TinyServe repository)`);
  }
  const probe = spawnSync(python, ['-c', 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)'], { encoding: 'utf8' });
  if (probe.error) {
    throw new BackendUnavailableError(`the PyTorch SDPA comparison needs Python with torch: '${python}' cannot run (${probe.error.message})`);
  }
  if (probe.status === 3) throw new BackendUnavailableError(`the PyTorch SDPA comparison needs a GPU: torch in '${python}' sees no CUDA device`);
  if (probe.status !== 0) {
    const stderr = probe.stderr ?? '';
    if (/No module named '?torch'?/.test(stderr)) {
      throw new BackendUnavailableError(`the PyTorch SDPA comparison needs torch, which '${python}' cannot import (pip install torch)`);
    }
    const last = stderr.trim().split('\n').pop() ?? '';
    throw new BackendUnavailableError(`the PyTorch SDPA comparison cannot start: '${python}' exited ${probe.status} importing torch${last ? `: ${last}` : ''}`);
  }
  const temp = options.workDir === undefined;
  const dir = options.workDir ?? mkdtempSync(join(tmpdir(), 'tinyserve-sdpa-'));
  mkdirSync(dir, { recursive: true });
  try {
    const shapesFile = join(dir, 'sdpa-shapes.json');
    const outFile = join(dir, 'sdpa.json');
    writeFileSync(shapesFile, JSON.stringify(options.shapes));
    const onOutput = options.onOutput ?? (() => {});
    const code = await new Promise<number | null>((resolve, reject) => {
      const child = spawn(python, [script, '--shapes', shapesFile, '--out', outFile], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, PYTHONUNBUFFERED: '1' },
      });
      child.stdout.on('data', (b: Buffer) => onOutput(b.toString()));
      child.stderr.on('data', (b: Buffer) => onOutput(b.toString()));
      child.on('error', reject);
      child.on('close', resolve);
    });
    if (code !== 0 || !existsSync(outFile)) throw new BackendUnavailableError(`${script} exited ${code} without results`);
    return JSON.parse(readFileSync(outFile, 'utf8')) as SdpaRun;
  } finally {
    if (temp) rmSync(dir, { recursive: true, force: true });
  }
}

/** A row of {@link formatAttentionTable}: a result and, optionally, the name of its head shape. */
export type AttentionTableRow = BenchmarkAttentionResult & { shape?: string };

function findSdpa(sdpa: SdpaResult[], r: AttentionTableRow): SdpaResult | undefined {
  return sdpa.find((s) => s.batch === r.batchSize && s.context === r.inputSize && s.q_heads === r.numQHeads && s.kv_heads === r.numKvHeads && s.head_dim === r.headDim);
}

/** Three significant figures or so, whatever the scale (CPU and GPU figures differ by 1000x). */
function fig(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  return x.toFixed(a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3);
}

/** Whole percents from 10% up; small shares (a CPU kernel against memcpy) keep their digits. */
function percent(f: number): string {
  const p = 100 * f;
  return `${p >= 10 ? p.toFixed(0) : fig(p)}%`;
}

/**
 * Markdown table: ours (time, context tokens per ms, bytes, bandwidth and its share of the
 * copy bandwidth) and, with `sdpa` given, PyTorch SDPA dense on the same shape (CUDA graph
 * replay, best backend) and our speed against it.
 */
export function formatAttentionTable(rows: AttentionTableRow[], sdpa?: SdpaResult[]): string {
  const withSdpa = sdpa !== undefined;
  const lines = [
    `| heads | batch | context | mode | us/call | tokens/ms | MB read | GB/s | % of copy |${withSdpa ? ' SDPA us | SDPA GB/s | speed vs SDPA |' : ''}`,
    `|---|---:|---:|---|---:|---:|---:|---:|---:|${withSdpa ? '---:|---:|---:|' : ''}`,
  ];
  for (const r of rows) {
    let line =
      `| ${r.shape ?? `${r.numQHeads}/${r.numKvHeads}/${r.headDim}`} | ${r.batchSize} | ${r.inputSize} | ${r.mode} | ${r.microseconds.toFixed(1)} | ` +
      `${fig(r.throughputTokensPerMs)} | ${fig(r.bytes / 1e6)} | ${fig(r.gbPerSecond)} | ${percent(r.fractionOfCopy)} |`;
    if (withSdpa) {
      const s = findSdpa(sdpa, r);
      const sUs = s?.us_best;
      line +=
        ` ${sUs !== undefined ? sUs.toFixed(1) : (s?.error ?? 'n/a')} | ${s?.gb_per_s !== undefined ? s.gb_per_s.toFixed(0) : ''} |` +
        ` ${sUs !== undefined ? `${(sUs / r.microseconds).toFixed(2)}x` : ''} |`;
    }
    lines.push(line);
  }
  return lines.join('\n');
}

/** One line: each event's median time (us since the launch's first CTA started). */
export function formatTimeline(t: SparseTimeline): string {
  const f = (x: number) => x.toFixed(1);
  return (
    `scored ${f(t.scored)}, keys ${f(t.keysLoaded)}, threshold ${f(t.thresholdFound)} (${t.rounds} rounds, ${Math.round(100 * t.exactFraction)}% exact), ` +
    `written ${f(t.pagesWritten)}, published ${f(t.published)}, first attender ${f(t.firstAttender)}, attended ${f(t.attended)}, merged ${f(t.merged)}, end ${f(t.end)} us (${t.pairs} pairs)`
  );
}
