import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli } from './cli.js';
import { captureIo as capture } from './__fixtures__/capture-io.js';

const HF = fileURLToPath(new URL('../../../__fixtures__/hf/', import.meta.url));
const MODEL = `${HF}llama-tiny-gqa`;

// The fixtures have 2 layers and a 256-token context: no dense layers, short prompts.
const SMALL = ['--model', MODEL, '--contexts', '200', '--trials', '2', '--dense-layers', '0'];

describe('tinyserve eval', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tinyserve-eval-cli-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('--json prints one JSON object whose rows hold { policy, passkey_accuracy, ... } plus the settings', async () => {
    const io = capture();
    const code = await runCli(['eval', '--task', 'passkey', '--policies', 'quest,streaming,dense', '--budget-fraction', '0.25', '--json', ...SMALL], io);
    expect(code).toBe(0);
    const lines = io.out.trim().split('\n');
    expect(lines).toHaveLength(1);
    const out = JSON.parse(lines[0]);
    expect(out.rows.map((r: { policy: string }) => r.policy)).toEqual(['quest', 'streaming', 'dense']);
    for (const r of out.rows) {
      expect(r.task).toBe('passkey');
      expect(r.passkey_accuracy).toBeGreaterThanOrEqual(0);
      expect(r.passkey_accuracy).toBeLessThanOrEqual(1);
      expect(r.kv_read_fraction).toBeGreaterThan(0);
      expect(r.kv_read_fraction).toBeLessThanOrEqual(1);
      expect(r.passkey_trials).toBe(2);
    }
    expect(out.rows[0]).toMatchObject({ budget_fraction: 0.25, selection_policy: 'quest', page_size: 16 });
    expect(out.rows[2].kv_read_fraction).toBe(1);
    expect(out.settings).toMatchObject({
      tasks: ['passkey'],
      policies: ['quest', 'streaming', 'dense'],
      budgets: [{ kind: 'fraction', value: 0.25 }],
      page_sizes: [16],
      dense_layers: 0,
      passkey: { targets: [200], trials: 2, max_new_tokens: 8 },
    });
    expect(out.model.name).toBe('llama-tiny-gqa');
    expect(out.executor).toBe('wasm');
    // Progress goes to stderr, never into the JSON.
    expect(io.err).toContain('passkey 200 tokens, trial 1/2');
  });

  it('prints markdown tables and writes table.md, results.json and chart.html with --out-dir', async () => {
    const io = capture();
    const out = join(dir, 'report');
    const code = await runCli(
      ['eval', '--task', 'all', '--policies', 'quest,dense', '--ratios', '0.5', '--budgets', '32', '--context-tokens', '100', '--window-tokens', '16', '--samples', '1', '--out-dir', out, ...SMALL],
      io,
    );
    expect(code).toBe(0);
    expect(io.out).toContain('### Passkey retrieval');
    expect(io.out).toContain('### Perplexity (held-out text)');
    expect(io.out).toContain('| quest | 16 | ratio 0.5 |');
    expect(io.out).toContain('| quest | 16 | 32 tokens |');
    expect(readFileSync(join(out, 'table.md'), 'utf8')).toBe(io.out);
    const json = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'));
    expect(json.rows).toHaveLength(6);
    expect(readFileSync(join(out, 'chart.html'), 'utf8')).toContain('<svg');
  });

  it('reports bad flags with the field named', async () => {
    const io = capture();
    expect(await runCli(['eval', '--policies', 'quest+turbo', ...SMALL], io)).toBe(1);
    expect(io.err).toMatch(/invalid_config.*unknown plugin 'turbo'/);
    const io2 = capture();
    expect(await runCli(['eval', '--task', 'speed', ...SMALL], io2)).toBe(1);
    expect(io2.err).toMatch(/unknown task 'speed'/);
    const io3 = capture();
    expect(await runCli(['eval', '--contexts', '1k', '--model', MODEL], io3)).toBe(1);
    expect(io3.err).toMatch(/--contexts/);
  });

  it('--help lists the flags', async () => {
    const io = capture();
    expect(await runCli(['eval', '--help'], io)).toBe(0);
    for (const flag of ['--task', '--policies', '--budget-fraction', '--ratios', '--budgets', '--page-sizes', '--contexts', '--trials', '--out-dir', '--json', '--seed']) {
      expect(io.out).toContain(flag);
    }
  });
});
