import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { EvalResult, EvalRow } from './eval-types.js';
import { evalResultToJson, formatEvalMarkdown, renderEvalChartHtml, writeEvalReport } from './report.js';

function row(over: Partial<EvalRow>): EvalRow {
  return {
    task: 'passkey',
    policy: 'dense',
    selectionPolicy: 'dense',
    plugins: [],
    pageSize: 16,
    budget: null,
    selectionRatio: null,
    tokenBudget: null,
    budgetFraction: null,
    tokenBudgets: null,
    kvReadFraction: 1,
    attentionRecall: null,
    decodeSteps: 80,
    decodeMsPerStep: 2.5,
    passkeyAccuracy: 1,
    passkeyByContext: { '1024': 1, '2040': 1 },
    passkeyTrials: 20,
    tokensGenerated: 8,
    perplexity: null,
    klDivergence: null,
    top1Agreement: null,
    tokensScored: null,
    earlyExits: null,
    tokensPruned: null,
    note: null,
    ...over,
  };
}

const result: EvalResult = {
  model: { name: 'tiny <model>', dir: '/m', architecture: 'llama', parameters: 15e6, numLayers: 8, numKvHeads: 2, maxPositionEmbeddings: 2048 },
  executor: 'wasm',
  settings: {
    tasks: ['perplexity', 'passkey'],
    policies: ['quest', 'streaming', 'dense', 'dense+pruning'],
    budgets: [{ kind: 'fraction', value: 0.125 }],
    pageSizes: [16],
    sinkPages: 1,
    denseLayers: 2,
    kvCacheDtype: 'fp32',
    seed: 0,
    measureRecall: true,
    sharedPrefill: true,
    passkey: { targets: [1024, 2040], trials: 10, maxNewTokens: 8, format: 'tinyserve-passkey-v1' },
    perplexity: { contextTokens: 1024, windowTokens: 128, samples: 4, textSource: 'sotu' },
    plugins: { entropyThreshold: 0.5, minTokensBeforeExit: 10, entropySource: 'logits', pruningRatio: 0.1, minTokensAfterPruning: 100 },
  },
  rows: [
    row({ policy: 'quest', selectionPolicy: 'quest', budget: 'fraction 0.125', budgetFraction: 0.125, kvReadFraction: 0.34, passkeyAccuracy: 0.95, passkeyByContext: { '1024': 1, '2040': 0.9 }, tokenBudgets: { '1024': 128, '2040': 255 } }),
    row({ policy: 'streaming', selectionPolicy: 'streaming', budget: 'fraction 0.125', budgetFraction: 0.125, kvReadFraction: 0.33, passkeyAccuracy: 0.1, passkeyByContext: { '1024': 0.2, '2040': 0 } }),
    row({}),
    row({ policy: 'dense+pruning', plugins: ['pruning'], kvReadFraction: 0.9, passkeyAccuracy: 0.7, tokensPruned: 300, earlyExits: 0 }),
    row({ task: 'perplexity', policy: 'quest', selectionPolicy: 'quest', budget: 'fraction 0.125', passkeyAccuracy: null, passkeyByContext: null, passkeyTrials: null, tokensGenerated: null, perplexity: 12.5, klDivergence: 0.02, top1Agreement: 0.93, tokensScored: 512, kvReadFraction: 0.35 }),
    row({ task: 'perplexity', policy: 'dense', passkeyAccuracy: null, passkeyByContext: null, passkeyTrials: null, tokensGenerated: null, perplexity: 12.1, klDivergence: 0, top1Agreement: 1, tokensScored: 512 }),
  ],
  startedAt: '2026-11-27T00:00:00.000Z',
  durationSeconds: 12.5,
};

describe('eval report writers', () => {
  it('JSON: snake_case keys, rows with policy and passkey_accuracy, settings kept', () => {
    const json = evalResultToJson(result) as { rows: Record<string, unknown>[]; settings: Record<string, unknown> };
    const round = JSON.parse(JSON.stringify(json)) as typeof json;
    expect(round.rows).toHaveLength(6);
    expect(round.rows[0]).toMatchObject({ task: 'passkey', policy: 'quest', passkey_accuracy: 0.95, kv_read_fraction: 0.34, budget_fraction: 0.125 });
    expect(round.rows[0].passkey_by_context).toEqual({ '1024': 1, '2040': 0.9 });
    expect(round.rows[0].token_budgets).toEqual({ '1024': 128, '2040': 255 });
    expect(round.settings).toMatchObject({ page_sizes: [16], shared_prefill: true, passkey: { max_new_tokens: 8 } });
    for (const r of round.rows) for (const k of Object.keys(r)) expect(k).toMatch(/^[a-z0-9_]+$/);
  });

  it('markdown: one table per task with a row per result and per-length accuracy columns', () => {
    const md = formatEvalMarkdown(result);
    expect(md).toContain('### Passkey retrieval');
    expect(md).toContain('### Perplexity (held-out text)');
    expect(md).toContain('| policy | page | budget | acc@1024 | acc@2040 | accuracy | KV read |');
    expect(md).toContain('| quest | 16 | fraction 0.125 | 100.0% | 90.0% | 95.0% | 34.0% |');
    expect(md).toContain('| dense+pruning | 16 | all |');
    expect(md).toContain('300 tokens pruned');
    expect(md).toContain('| quest | 16 | fraction 0.125 | 12.500 | 0.0200 | 93.0% | 35.0% |');
    const tableLines = md.split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| policy') && !l.startsWith('| ---'));
    expect(tableLines).toHaveLength(6);
  });

  it('HTML: self-contained (inline SVG, no scripts, no external references), one point per charted row', () => {
    const html = renderEvalChartHtml(result);
    expect(html.startsWith('<!DOCTYPE html>')).toBe(true);
    expect(html).not.toMatch(/<script|<link|src=|href=/i);
    expect(html.match(/<svg /g)).toHaveLength(2);
    expect(html.match(/<circle /g)).toHaveLength(6);
    expect(html).toContain('tiny &lt;model&gt;');
    expect(html).not.toContain('tiny <model>');
  });

  const dir = mkdtempSync(join(tmpdir(), 'tinyserve-eval-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('writes table.md, results.json and chart.html', () => {
    const files = writeEvalReport(result, join(dir, 'out'));
    expect(readFileSync(files.table, 'utf8')).toBe(formatEvalMarkdown(result));
    expect(JSON.parse(readFileSync(files.json, 'utf8')).rows[2].policy).toBe('dense');
    expect(readFileSync(files.chart, 'utf8')).toContain('<svg');
  });
});
