import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { EvalResult, EvalRow, EvalTask } from './eval-types.js';

function snake(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** Deep copy with camelCase keys turned to snake_case (JSON is snake_case, as over HTTP); data keys such as lengths stay. */
function toSnake(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(toSnake);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[snake(k)] = toSnake(v);
    return out;
  }
  if (typeof value === 'number' && !Number.isFinite(value)) return null;
  return value;
}

/**
 * The result as one plain JSON object with snake_case keys: `rows` hold
 * `{ task, policy, passkey_accuracy, kv_read_fraction, perplexity, kl_divergence, ... }`
 * (accuracies and fractions in 0..1, null where not applicable), beside `model`, `executor`,
 * `settings`, `started_at` and `duration_seconds`.
 */
export function evalResultToJson(result: EvalResult): Record<string, unknown> {
  return toSnake(result) as Record<string, unknown>;
}

function fmt(v: number | null, digits: number): string {
  return v === null ? '-' : v.toFixed(digits);
}

function pct(v: number | null): string {
  return v === null ? '-' : `${(v * 100).toFixed(1)}%`;
}

function escapeCell(text: string): string {
  return text.replace(/\|/g, '\\|');
}

const TASK_TITLE: Record<EvalTask, string> = { passkey: 'Passkey retrieval', perplexity: 'Perplexity (held-out text)' };

/** Markdown: a settings line, then one table per task. */
export function formatEvalMarkdown(result: EvalResult): string {
  const s = result.settings;
  const lines: string[] = [];
  lines.push(
    `Model \`${result.model.name}\` (${result.model.architecture}, ${(result.model.parameters / 1e6).toFixed(1)}M parameters, ` +
      `${result.model.numLayers} layers), executor \`${result.executor}\`, KV ${s.kvCacheDtype}, sink pages ${s.sinkPages}, ` +
      `dense layers ${s.denseLayers}, ${s.sharedPrefill ? 'one shared dense prefill per context' : 'one prefill per policy'}.`,
  );
  for (const task of s.tasks) {
    const rows = result.rows.filter((r) => r.task === task);
    lines.push('', `### ${TASK_TITLE[task]}`, '');
    if (task === 'passkey' && s.passkey) {
      lines.push(
        `Format ${s.passkey.format}; ${s.passkey.trials} trials per length over needle depths; greedy, ${s.passkey.maxNewTokens} new tokens; exact match.`,
        '',
      );
      const targets = s.passkey.targets;
      const head = ['policy', 'page', 'budget', ...targets.map((t) => `acc@${t}`), 'accuracy', 'KV read', 'recall', 'tokens gen.', 'notes'];
      lines.push(`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`);
      for (const r of rows) {
        const cells = [
          r.policy,
          String(r.pageSize),
          r.budget ?? 'all',
          ...targets.map((t) => pct(r.passkeyByContext?.[String(t)] ?? null)),
          pct(r.passkeyAccuracy),
          pct(r.kvReadFraction),
          pct(r.attentionRecall),
          fmt(r.tokensGenerated, 2),
          notes(r),
        ];
        lines.push(`| ${cells.map(escapeCell).join(' | ')} |`);
      }
    }
    if (task === 'perplexity' && s.perplexity) {
      lines.push(
        `${s.perplexity.samples} samples of ${s.perplexity.contextTokens} context + ${s.perplexity.windowTokens} scored tokens from ${s.perplexity.textSource}.`,
        '',
      );
      const head = ['policy', 'page', 'budget', 'perplexity', 'KL(dense‖policy)', 'top-1 agree', 'KV read', 'recall', 'notes'];
      lines.push(`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`);
      for (const r of rows) {
        const cells = [
          r.policy,
          String(r.pageSize),
          r.budget ?? 'all',
          fmt(r.perplexity, 3),
          fmt(r.klDivergence, 4),
          pct(r.top1Agreement),
          pct(r.kvReadFraction),
          pct(r.attentionRecall),
          notes(r),
        ];
        lines.push(`| ${cells.map(escapeCell).join(' | ')} |`);
      }
    }
  }
  return lines.join('\n') + '\n';
}

function notes(r: EvalRow): string {
  const out: string[] = [];
  if (r.earlyExits !== null && r.earlyExits > 0) out.push(`${r.earlyExits} early exits`);
  if (r.tokensPruned !== null && r.tokensPruned > 0) out.push(`${r.tokensPruned} tokens pruned`);
  if (r.note) out.push(r.note);
  return out.join('; ');
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];

/** The y value charted for a row: passkey accuracy, or top-1 agreement with dense for perplexity. */
function chartY(r: EvalRow): number | null {
  return r.task === 'passkey' ? r.passkeyAccuracy : r.top1Agreement;
}

function chartSvg(result: EvalResult, task: EvalTask): string {
  const rows = result.rows.filter((r) => r.task === task && r.kvReadFraction !== null && chartY(r) !== null);
  const W = 640;
  const H = 400;
  const m = { left: 60, right: 180, top: 20, bottom: 50 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const x = (v: number): number => m.left + v * pw;
  const y = (v: number): number => m.top + (1 - v) * ph;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img">`);
  for (let i = 0; i <= 10; i += 2) {
    const v = i / 10;
    parts.push(`<line x1="${x(0)}" y1="${y(v)}" x2="${x(1)}" y2="${y(v)}" stroke="#ddd"/>`);
    parts.push(`<line x1="${x(v)}" y1="${y(0)}" x2="${x(v)}" y2="${y(1)}" stroke="#ddd"/>`);
    parts.push(`<text x="${m.left - 8}" y="${y(v) + 4}" text-anchor="end" font-size="11">${(v * 100).toFixed(0)}%</text>`);
    parts.push(`<text x="${x(v)}" y="${y(0) + 16}" text-anchor="middle" font-size="11">${(v * 100).toFixed(0)}%</text>`);
  }
  parts.push(`<rect x="${x(0)}" y="${y(1)}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  parts.push(`<text x="${x(0.5)}" y="${H - 10}" text-anchor="middle" font-size="12">fraction of KV read (decode steps)</text>`);
  const yLabel = task === 'passkey' ? 'passkey accuracy' : 'top-1 agreement with dense';
  parts.push(`<text transform="translate(14 ${y(0.5)}) rotate(-90)" text-anchor="middle" font-size="12">${yLabel}</text>`);
  // One series per policy and page size, points in order of KV read.
  const series = new Map<string, EvalRow[]>();
  for (const r of rows) {
    const key = result.settings.pageSizes.length > 1 ? `${r.policy} (page ${r.pageSize})` : r.policy;
    series.set(key, [...(series.get(key) ?? []), r]);
  }
  [...series.entries()].forEach(([name, points], i) => {
    const color = COLORS[i % COLORS.length];
    points.sort((a, b) => (a.kvReadFraction as number) - (b.kvReadFraction as number));
    const path = points.map((p) => `${x(p.kvReadFraction as number).toFixed(1)},${y(chartY(p) as number).toFixed(1)}`).join(' ');
    if (points.length > 1) parts.push(`<polyline points="${path}" fill="none" stroke="${color}" stroke-width="2"/>`);
    for (const p of points) {
      const title = `${p.policy}, page ${p.pageSize}, ${p.budget ?? 'dense'}: ${((chartY(p) as number) * 100).toFixed(1)}% at ${(
        (p.kvReadFraction as number) * 100
      ).toFixed(1)}% KV`;
      parts.push(
        `<circle cx="${x(p.kvReadFraction as number).toFixed(1)}" cy="${y(chartY(p) as number).toFixed(1)}" r="4" fill="${color}"><title>${escapeHtml(title)}</title></circle>`,
      );
    }
    const ly = m.top + 10 + i * 18;
    parts.push(`<rect x="${W - m.right + 14}" y="${ly - 8}" width="12" height="12" fill="${color}"/>`);
    parts.push(`<text x="${W - m.right + 32}" y="${ly + 2}" font-size="12">${escapeHtml(name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

/** A self-contained HTML page (inline SVG, no scripts): accuracy against the fraction of KV read, one chart per task, then the tables. */
export function renderEvalChartHtml(result: EvalResult): string {
  const s = result.settings;
  const sections = s.tasks.map((task) => `<h2>${escapeHtml(TASK_TITLE[task])}</h2>\n${chartSvg(result, task)}`).join('\n');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>TinyServe eval: ${escapeHtml(result.model.name)}</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}pre{background:#f6f6f6;padding:1em;overflow:auto}</style>
</head>
<body>
<h1>TinyServe eval: ${escapeHtml(result.model.name)}</h1>
<p>Executor ${escapeHtml(result.executor)}, policies ${escapeHtml(s.policies.join(', '))}, page sizes ${s.pageSizes.join(', ')}, started ${escapeHtml(
    result.startedAt,
  )}, ${result.durationSeconds.toFixed(1)} s.</p>
${sections}
<h2>Tables</h2>
<pre>${escapeHtml(formatEvalMarkdown(result))}</pre>
</body>
</html>
`;
}

export interface EvalReportFiles {
  table: string;
  json: string;
  chart: string;
}

/** Writes table.md, results.json and chart.html into `outDir` (created if missing). */
export function writeEvalReport(result: EvalResult, outDir: string): EvalReportFiles {
  mkdirSync(outDir, { recursive: true });
  const files = { table: join(outDir, 'table.md'), json: join(outDir, 'results.json'), chart: join(outDir, 'chart.html') };
  writeFileSync(files.table, formatEvalMarkdown(result));
  writeFileSync(files.json, JSON.stringify(evalResultToJson(result), null, 2) + '\n');
  writeFileSync(files.chart, renderEvalChartHtml(result));
  return files;
}
