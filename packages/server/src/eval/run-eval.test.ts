import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadModel } from '@tinyserve/core';
import type { LoadedModel } from '@tinyserve/core';
import type { EvalParams, EvalResult, EvalRow } from './eval-types.js';
import { parseEvalVariant, runEval } from './run-eval.js';

const HF = fileURLToPath(new URL('../../../../__fixtures__/hf/', import.meta.url));

// Random-weight fixtures: these tests check the mechanics (forking, metering, alignment), not accuracy.
let model: LoadedModel;
beforeAll(async () => {
  model = await loadModel(`${HF}llama-tiny-gqa`);
});

function base(over: Partial<EvalParams>): EvalParams {
  return {
    model,
    tasks: ['perplexity'],
    policies: ['dense'],
    pageSizes: [16],
    passkey: { contexts: [200], trials: 2 },
    perplexity: { contextTokens: 100, windowTokens: 24, samples: 2 },
    // The fixtures have 2 layers: with Quest's default of 2 dense layers nothing would be sparse.
    config: { denseLayers: 0, sinkPages: 1 },
    ...over,
  };
}

function find(result: EvalResult, task: string, policy: string, budget: string | null = null): EvalRow {
  const row = result.rows.find((r) => r.task === task && r.policy === policy && r.budget === budget);
  if (!row) throw new Error(`no ${task} row for ${policy} at ${budget}`);
  return row;
}

describe('runEval', () => {
  it('dense against dense: KL 0, top-1 agreement 1, KV read fraction 1, on both tasks', async () => {
    const progress: string[] = [];
    const result = await runEval(base({ tasks: ['passkey', 'perplexity'], onProgress: (m) => progress.push(m) }));
    const ppl = find(result, 'perplexity', 'dense');
    expect(ppl.klDivergence).toBe(0);
    expect(ppl.top1Agreement).toBe(1);
    expect(ppl.kvReadFraction).toBe(1);
    expect(ppl.tokensScored).toBe(2 * 24);
    expect(ppl.decodeSteps).toBe(2 * 24);
    expect(ppl.perplexity).toBeGreaterThan(1);
    const pk = find(result, 'passkey', 'dense');
    expect(pk.kvReadFraction).toBe(1);
    expect(pk.passkeyTrials).toBe(2);
    expect(pk.passkeyAccuracy).toBeGreaterThanOrEqual(0);
    expect(pk.passkeyAccuracy).toBeLessThanOrEqual(1);
    expect(Object.keys(pk.passkeyByContext ?? {})).toEqual(['200']);
    expect(pk.tokensGenerated).toBeGreaterThan(0);
    expect(pk.tokensGenerated).toBeLessThanOrEqual(8);
    expect(result.settings).toMatchObject({ sharedPrefill: true, passkey: { targets: [200], trials: 2, maxNewTokens: 8 } });
    expect(result.settings.perplexity?.textSource).toMatch(/datasets-sotu/);
    expect(progress.some((m) => m.includes('passkey 200 tokens, trial 2/2'))).toBe(true);
  });

  it('a sparse policy at ratio 1 equals dense; at a small budget it reads less, with measured recall', async () => {
    const result = await runEval(
      base({
        tasks: ['perplexity'],
        policies: ['quest', 'streaming', 'dense'],
        budgets: [
          { kind: 'ratio', value: 1 },
          { kind: 'tokens', value: 48 },
        ],
      }),
    );
    const dense = find(result, 'perplexity', 'dense');
    for (const policy of ['quest', 'streaming']) {
      const full = find(result, 'perplexity', policy, 'ratio 1');
      expect(full.klDivergence).toBe(0);
      expect(full.top1Agreement).toBe(1);
      expect(full.perplexity).toBe(dense.perplexity);
      expect(full.kvReadFraction).toBe(1);
      const small = find(result, 'perplexity', policy, '48 tokens');
      // 48 of about 110 tokens: 3 pages of 7-8, plus quest's metadata reads.
      expect(small.kvReadFraction).toBeGreaterThan(0.2);
      expect(small.kvReadFraction).toBeLessThan(0.6);
      expect(small.attentionRecall).toBeGreaterThan(0);
      expect(small.attentionRecall).toBeLessThanOrEqual(1);
      expect(small.klDivergence).toBeGreaterThan(0);
      expect(small.tokenBudget).toBe(48);
    }
    expect(result.rows.filter((r) => r.task === 'perplexity')).toHaveLength(5);
  });

  it('budget fractions become a token budget per context length; page sizes sweep with one row set each', async () => {
    const result = await runEval(
      base({ tasks: ['passkey'], policies: ['quest', 'dense'], budgets: [{ kind: 'fraction', value: 0.5 }], pageSizes: [8, 16], passkey: { contexts: [200, 'full'], trials: 1 } }),
    );
    expect(result.rows.map((r) => `${r.policy}@${r.pageSize}`)).toEqual(['quest@8', 'dense@8', 'quest@16', 'dense@16']);
    const quest = find(result, 'passkey', 'quest', 'fraction 0.5');
    expect(quest.tokenBudgets).toEqual({ '200': 100, '248': 124 });
    expect(Object.keys(quest.passkeyByContext ?? {})).toEqual(['200', '248']);
    expect(quest.kvReadFraction).toBeLessThan(1);
  });

  it('engine rows: teacher forcing lines up (pruning that never fires equals dense), pruning and early exit are measured', async () => {
    const quiet = await runEval(base({ tasks: ['perplexity'], policies: ['dense', 'dense+pruning'], config: { denseLayers: 0, minTokensAfterPruning: 100000 } }));
    const forced = find(quiet, 'perplexity', 'dense+pruning');
    expect(forced.klDivergence).toBe(0);
    expect(forced.top1Agreement).toBe(1);
    expect(forced.perplexity).toBe(find(quiet, 'perplexity', 'dense').perplexity);
    expect(forced.tokensPruned).toBe(0);
    expect(forced.decodeSteps).toBe(2 * 24);

    const result = await runEval(
      base({
        tasks: ['perplexity', 'passkey'],
        policies: ['dense+pruning', 'dense+early-exit'],
        config: { denseLayers: 0, minTokensAfterPruning: 50, pruningRatio: 0.2, minTokensBeforeExit: 1, entropyThreshold: 1000 },
      }),
    );
    const pruned = find(result, 'perplexity', 'dense+pruning');
    expect(pruned.tokensPruned).toBeGreaterThan(0);
    // Read against the unpruned context: pruning shows as less than all of the KV.
    expect(pruned.kvReadFraction).toBeLessThan(1);
    expect(pruned.plugins).toEqual(['pruning']);
    const exitPpl = find(result, 'perplexity', 'dense+early-exit');
    expect(exitPpl.perplexity).toBeNull();
    expect(exitPpl.note).toMatch(/not applicable/);
    const exitPk = find(result, 'passkey', 'dense+early-exit');
    // Any entropy is below 1000 nats: every answer stops after its first token.
    expect(exitPk.earlyExits).toBe(2);
    expect(exitPk.tokensGenerated).toBe(1);
  });

  it('rejects bad settings with the field named', async () => {
    await expect(runEval(base({ tasks: [] }))).rejects.toThrow(/tasks/);
    await expect(runEval(base({ policies: ['quest+turbo'] }))).rejects.toThrow(/unknown plugin 'turbo'/);
    await expect(runEval(base({ budgets: [{ kind: 'ratio', value: 2 }] }))).rejects.toThrow(ConfigError);
    await expect(runEval(base({ tasks: ['passkey'], passkey: { contexts: [64] } }))).rejects.toThrow(/too short/);
    await expect(runEval(base({ policies: ['nosuchpolicy'], budgets: [{ kind: 'ratio', value: 0.5 }] }))).rejects.toThrow(/nosuchpolicy/);
  });
});

describe('parseEvalVariant', () => {
  it('splits a policy from its plugins', () => {
    expect(parseEvalVariant('quest')).toEqual({ name: 'quest', policy: 'quest', plugins: [] });
    expect(parseEvalVariant('dense+pruning+early-exit')).toEqual({ name: 'dense+pruning+early-exit', policy: 'dense', plugins: ['early-exit', 'pruning'] });
    expect(() => parseEvalVariant('+pruning')).toThrow(ConfigError);
  });
});
