import type { SelectionConfig } from '@tinyserve/core';
import { ConfigError, Registry, RequestValidationError, mulberry32 } from '@tinyserve/core';
import { scorePages } from './page-score.js';
import {
  CHOSEN,
  EXCLUDED,
  checkBudgetFitsForcedPages,
  checkSelectParams,
  chooseTopK,
  denseSelection,
  selectionBudgetPages,
  selectionFromMask,
  validateSelectionConfig,
} from './selection-policy.js';
import type { SelectPagesParams, SelectPagesResult, SelectionPolicy, SelectionPolicyFactory, SelectionPolicyOptions } from './selection-policy.js';
import { computePageAttentionMass } from './sparse-attention.js';

/**
 * Budget bookkeeping shared by the sparse policies: a token budget is checked against the
 * page size once (at creation when the page size is known, else on first use).
 */
class Budget {
  private checkedPageSize = -1;
  constructor(
    private readonly config: Readonly<SelectionConfig>,
    private readonly forcedPages: number,
    pageSize: number | undefined,
  ) {
    if (pageSize !== undefined) this.check(pageSize);
  }

  private check(pageSize: number): void {
    if (pageSize === this.checkedPageSize) return;
    checkBudgetFitsForcedPages(this.config, pageSize, this.forcedPages);
    this.checkedPageSize = pageSize;
  }

  pages(numPages: number, pageSize: number): number {
    this.check(pageSize);
    return selectionBudgetPages(this.config, numPages, pageSize);
  }
}

function need<T>(value: T | undefined, field: string, policy: string): T {
  if (value === undefined) throw new RequestValidationError(field, `policy '${policy}' needs params.${field}`);
  return value;
}

/** Attends to every page: the reference every sparse policy is measured against. */
export function createDensePolicy(config: Readonly<SelectionConfig>): SelectionPolicy {
  return {
    name: 'dense',
    config,
    select(params) {
      const n = checkSelectParams(params);
      return denseSelection(params.layout.numKvHeads, n);
    },
  };
}

/**
 * Quest: per KV head, the current page and `sinkPages` leading pages, then the top pages by
 * bounding-box upper bound until the budget is spent. Layers below `denseLayers`, and any
 * budget covering every page, attend densely (so ratio 1 is exactly dense). Empty pages
 * (score -Infinity) are never selected, not even as sinks.
 */
export function createQuestPolicy(config: Readonly<SelectionConfig>, options: Readonly<SelectionPolicyOptions>): SelectionPolicy {
  const budget = new Budget(config, config.sinkPages + 1, options.pageSize);
  const aggregation = options.gqaAggregation ?? 'max';
  return {
    name: 'quest',
    config,
    select(params: SelectPagesParams): SelectPagesResult {
      const n = checkSelectParams(params);
      const { layout } = params;
      const { numKvHeads, pageSize } = layout;
      if (params.layer < config.denseLayers) return denseSelection(numKvHeads, n);
      const k = budget.pages(n, pageSize);
      if (k >= n) return denseSelection(numKvHeads, n);
      let scores = params.scores;
      if (scores === undefined) {
        scores = scorePages({
          layout,
          metadata: need(params.metadata, 'metadata', 'quest'),
          query: need(params.query, 'query', 'quest'),
          numQHeads: need(params.numQHeads, 'numQHeads', 'quest'),
          pages: params.pages,
          aggregation,
        });
      } else if (scores.length < numKvHeads * n) {
        throw new RequestValidationError('scores', `must hold numKvHeads*numPages = ${numKvHeads * n} floats, got ${scores.length}`);
      }
      const sinks = Math.min(config.sinkPages, n);
      const mask = new Uint8Array(numKvHeads * n);
      const scratch = new Float64Array(n);
      for (let j = 0; j < numKvHeads; j++) {
        const off = j * n;
        let kept = 0;
        const force = (p: number): void => {
          if (mask[off + p] !== 0) return;
          if (scores[off + p] > -Infinity) {
            mask[off + p] = CHOSEN;
            kept++;
          } else {
            mask[off + p] = EXCLUDED;
          }
        };
        for (let p = 0; p < sinks; p++) force(p);
        force(n - 1);
        chooseTopK(scores, off, n, k - kept, mask, scratch);
      }
      return selectionFromMask(numKvHeads, n, mask);
    },
  };
}

/**
 * StreamingLLM: the `sinkPages` leading pages and the most recent pages (the current one
 * always) within the same budget as quest; the same pages for every KV head.
 */
export function createStreamingPolicy(config: Readonly<SelectionConfig>, options: Readonly<SelectionPolicyOptions>): SelectionPolicy {
  const budget = new Budget(config, config.sinkPages + 1, options.pageSize);
  return {
    name: 'streaming',
    config,
    select(params) {
      const n = checkSelectParams(params);
      const { numKvHeads, pageSize } = params.layout;
      if (params.layer < config.denseLayers) return denseSelection(numKvHeads, n);
      const k = budget.pages(n, pageSize);
      if (k >= n) return denseSelection(numKvHeads, n);
      const sinks = Math.min(config.sinkPages, n);
      const recentFrom = Math.max(sinks, n - Math.max(k - sinks, 1));
      const mask = new Uint8Array(numKvHeads * n);
      for (let j = 0; j < numKvHeads; j++) {
        for (let p = 0; p < sinks; p++) mask[j * n + p] = CHOSEN;
        for (let p = recentFrom; p < n; p++) mask[j * n + p] = CHOSEN;
      }
      return selectionFromMask(numKvHeads, n, mask);
    },
  };
}

/** A 32-bit mix (murmur3 finalizer over an xor-in), to derive per-draw seeds. */
function mix32(h: number, v: number): number {
  h = Math.imul(h ^ v, 0x9e3779b1);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Random baseline: sinks and the current page, then pages drawn uniformly without
 * replacement up to the budget, independently per KV head. The draw depends only on
 * (seed, seqId, layer, KV head, numTokens), so a run is reproducible.
 */
export function createRandomPolicy(config: Readonly<SelectionConfig>, options: Readonly<SelectionPolicyOptions>): SelectionPolicy {
  const budget = new Budget(config, config.sinkPages + 1, options.pageSize);
  const seed = options.seed ?? 0;
  const seedLo = seed >>> 0;
  const seedHi = Math.floor(seed / 4294967296) >>> 0;
  return {
    name: 'random',
    config,
    select(params) {
      const n = checkSelectParams(params);
      const { numKvHeads, pageSize } = params.layout;
      if (params.layer < config.denseLayers) return denseSelection(numKvHeads, n);
      const k = budget.pages(n, pageSize);
      if (k >= n) return denseSelection(numKvHeads, n);
      const sinks = Math.min(config.sinkPages, n);
      const forced = sinks + (n - 1 >= sinks ? 1 : 0);
      const mask = new Uint8Array(numKvHeads * n);
      const candidates = new Int32Array(n);
      const base = mix32(mix32(mix32(seedLo, seedHi), (params.seqId ?? 0) >>> 0), params.layer);
      for (let j = 0; j < numKvHeads; j++) {
        const off = j * n;
        for (let p = 0; p < sinks; p++) mask[off + p] = CHOSEN;
        mask[off + n - 1] = CHOSEN;
        let m = 0;
        for (let p = sinks; p < n - 1; p++) candidates[m++] = p;
        const draws = Math.min(Math.max(k - forced, 0), m);
        const rand = mulberry32(mix32(mix32(base, j), params.numTokens));
        // Partial Fisher-Yates: the first `draws` slots end up a uniform sample.
        for (let i = 0; i < draws; i++) {
          const r = i + Math.floor(rand() * (m - i));
          const t = candidates[i];
          candidates[i] = candidates[r];
          candidates[r] = t;
          mask[off + candidates[i]] = CHOSEN;
        }
      }
      return selectionFromMask(numKvHeads, n, mask);
    },
  };
}

/**
 * Oracle: per KV head, the pages holding the most true attention mass of the current query
 * (summed over the group's query heads, each head's softmax over all keys), within the same
 * budget and with nothing forced. For any selection of the same size per head it maximises
 * the attention-mass recall, so it is the ceiling other policies are measured against.
 */
export function createOraclePolicy(config: Readonly<SelectionConfig>, options: Readonly<SelectionPolicyOptions>): SelectionPolicy {
  const budget = new Budget(config, 1, options.pageSize);
  return {
    name: 'oracle',
    config,
    select(params) {
      const n = checkSelectParams(params);
      const { layout } = params;
      const { numKvHeads, pageSize } = layout;
      if (params.layer < config.denseLayers) return denseSelection(numKvHeads, n);
      const k = budget.pages(n, pageSize);
      if (k >= n) return denseSelection(numKvHeads, n);
      const numQHeads = need(params.numQHeads, 'numQHeads', 'oracle');
      const mass = computePageAttentionMass({
        layout,
        kCache: need(params.kCache, 'kCache', 'oracle'),
        query: need(params.query, 'query', 'oracle'),
        numQHeads,
        pages: params.pages,
        numTokens: params.numTokens,
        scale: params.scale,
      });
      const group = numQHeads / numKvHeads;
      const groupMass = new Float64Array(numKvHeads * n);
      for (let h = 0; h < numQHeads; h++) {
        const off = Math.floor(h / group) * n;
        for (let p = 0; p < n; p++) groupMass[off + p] += mass[h * n + p];
      }
      const mask = new Uint8Array(numKvHeads * n);
      const scratch = new Float64Array(n);
      for (let j = 0; j < numKvHeads; j++) chooseTopK(groupMass, j * n, n, k, mask, scratch);
      return selectionFromMask(numKvHeads, n, mask);
    },
  };
}

/** Selection policies by name. Register more with `selectionPolicies.register(name, factory)`. */
export const selectionPolicies = new Registry<SelectionPolicyFactory>('selection policy');
selectionPolicies.register('dense', createDensePolicy);
selectionPolicies.register('quest', createQuestPolicy);
selectionPolicies.register('streaming', createStreamingPolicy);
selectionPolicies.register('random', createRandomPolicy);
selectionPolicies.register('oracle', createOraclePolicy);

/**
 * Validates a selection configuration and builds its policy. Rejections are `ConfigError`s
 * naming the field and the reason (an unknown policy lists the registered ones).
 */
export function createSelectionPolicy(config: SelectionConfig, options: SelectionPolicyOptions = {}): SelectionPolicy {
  validateSelectionConfig(config, options);
  if (!selectionPolicies.has(config.policy)) {
    throw new ConfigError(
      'selectionPolicy',
      `unknown selection policy '${config.policy}' (registered: ${selectionPolicies.names().sort().join(', ')})`,
    );
  }
  const frozen = Object.freeze({ ...config });
  return selectionPolicies.get(config.policy)(frozen, Object.freeze({ ...options }));
}
