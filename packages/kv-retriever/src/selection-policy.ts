import type { KvLayout, SelectionConfig } from '@tinyserve/core';
import { ConfigError, RequestValidationError } from '@tinyserve/core';
import type { PageMetadataLayer } from './page-metadata.js';
import { GQA_AGGREGATIONS } from './page-score.js';
import type { GqaAggregation } from './page-score.js';
import { pagesForTokens } from './page-table.js';
import type { HeadSelection } from './sparse-attention.js';

/**
 * What a policy sees to choose the pages one sequence attends to at one layer, for its
 * current (newest) token. Policies read only what they need: `quest` the query and the
 * metadata (or precomputed `scores`), `oracle` the query and the K buffer, the others the
 * shape alone.
 */
export interface SelectPagesParams {
  layout: KvLayout;
  layer: number;
  /** The sequence's physical page ids, in order. */
  pages: ArrayLike<number>;
  /** Tokens in the sequence, the current one included (so its page is the last one). */
  numTokens: number;
  /** All query heads of the current token at this layer, `[numQHeads, headDim]`. */
  query?: Float32Array;
  numQHeads?: number;
  /** This layer's page metadata. */
  metadata?: PageMetadataLayer;
  /** Page scores from `scorePages` (`[numKvHeads, numPages]`), when already computed (e.g. by a kernel). */
  scores?: Float32Array;
  /** This layer's K buffer (fp32, core layout), for `oracle`. */
  kCache?: Float32Array;
  /** Attention logit scale for `oracle`; default `1 / sqrt(headDim)`. */
  scale?: number;
  /** Stable sequence id: part of `random`'s seed, so sequences draw independently. */
  seqId?: number;
}

/**
 * The pages chosen for each KV head, as logical page indices (positions in the sequence's
 * page list), ascending: head `j` attends to `indices[indptr[j] .. indptr[j+1])`.
 */
export interface SelectPagesResult extends HeadSelection {
  numKvHeads: number;
  numPages: number;
  /** Every head selected every page: callers may take the dense path. */
  dense: boolean;
}

export interface SelectionPolicy {
  readonly name: string;
  readonly config: Readonly<SelectionConfig>;
  select(params: SelectPagesParams): SelectPagesResult;
}

/** Settings beyond core's `SelectionConfig`. */
export interface SelectionPolicyOptions {
  /** When known up front, a token budget is checked against it at creation instead of on first use. */
  pageSize?: number;
  /** Seed of the `random` policy (default 0). */
  seed?: number;
  /** GQA score aggregation of `quest` (default 'max'; see `GqaAggregation`). */
  gqaAggregation?: GqaAggregation;
}

export type SelectionPolicyFactory = (config: Readonly<SelectionConfig>, options: Readonly<SelectionPolicyOptions>) => SelectionPolicy;

/**
 * Pages a sparse policy may attend to, forced pages included: `ceil(tokenBudget / pageSize)`
 * when a token budget is set, else `ceil(selectionRatio * numPages)`. The small epsilon keeps
 * a product like `0.7 * 100 = 70.00000000000001` from rounding up to 71.
 */
export function selectionBudgetPages(
  config: Pick<SelectionConfig, 'selectionRatio' | 'tokenBudget'>,
  numPages: number,
  pageSize: number,
): number {
  if (config.tokenBudget !== null) return Math.ceil(config.tokenBudget / pageSize);
  return Math.ceil(config.selectionRatio * numPages - 1e-9);
}

function isInt(v: unknown, min: number): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= min;
}

/** Checks the fields every policy reads; throws a `ConfigError` naming the field. */
export function validateSelectionConfig(config: Readonly<SelectionConfig>, options: Readonly<SelectionPolicyOptions> = {}): void {
  if (typeof config !== 'object' || config === null) {
    throw new ConfigError('selection', 'must be an object with policy, selectionRatio, tokenBudget, sinkPages, denseLayers');
  }
  if (typeof config.policy !== 'string' || config.policy.length === 0) {
    throw new ConfigError('selectionPolicy', `must be a non-empty policy name, got ${String(config.policy)}`);
  }
  const r = config.selectionRatio;
  if (typeof r !== 'number' || !(r > 0 && r <= 1)) {
    throw new ConfigError('selectionRatio', `must be a number in (0, 1], got ${String(r)}`);
  }
  if (config.tokenBudget !== null && !isInt(config.tokenBudget, 1)) {
    throw new ConfigError('tokenBudget', `must be a positive integer or null, got ${String(config.tokenBudget)}`);
  }
  if (!isInt(config.sinkPages, 0)) {
    throw new ConfigError('sinkPages', `must be a non-negative integer, got ${String(config.sinkPages)}`);
  }
  if (!isInt(config.denseLayers, 0)) {
    throw new ConfigError('denseLayers', `must be a non-negative integer, got ${String(config.denseLayers)}`);
  }
  if (options.pageSize !== undefined && !isInt(options.pageSize, 1)) {
    throw new ConfigError('pageSize', `must be a positive integer, got ${String(options.pageSize)}`);
  }
  if (options.seed !== undefined && !(isInt(options.seed, 0) && options.seed <= Number.MAX_SAFE_INTEGER)) {
    throw new ConfigError('seed', `must be a non-negative safe integer, got ${String(options.seed)}`);
  }
  if (options.gqaAggregation !== undefined && !GQA_AGGREGATIONS.includes(options.gqaAggregation)) {
    throw new ConfigError('gqaAggregation', `must be one of ${GQA_AGGREGATIONS.map((a) => `'${a}'`).join(', ')}, got '${String(options.gqaAggregation)}'`);
  }
}

/**
 * A token budget must leave room for the pages a policy always keeps (`forcedPages`: the
 * sinks and the current page); otherwise the budget could never be honoured.
 */
export function checkBudgetFitsForcedPages(config: Readonly<SelectionConfig>, pageSize: number, forcedPages: number): void {
  if (config.tokenBudget === null) return;
  if (config.tokenBudget < pageSize) {
    throw new ConfigError(
      'tokenBudget',
      `${config.tokenBudget} tokens is less than one page (pageSize ${pageSize}); the current page alone exceeds it`,
    );
  }
  const pages = selectionBudgetPages(config, 0, pageSize);
  if (pages < forcedPages) {
    throw new ConfigError(
      'tokenBudget',
      `${config.tokenBudget} tokens gives ${pages} pages of ${pageSize}, but policy '${config.policy}' always keeps ${forcedPages} ` +
        `(sinkPages ${config.sinkPages} + the current page); raise tokenBudget to at least ${forcedPages * pageSize} or lower sinkPages`,
    );
  }
}

/** Validates a select call's shape; returns the sequence's page count. */
export function checkSelectParams(params: SelectPagesParams): number {
  const { layout, layer, pages, numTokens } = params;
  if (!(Number.isInteger(layer) && layer >= 0 && layer < layout.numLayers)) {
    throw new RequestValidationError('layer', `must be an integer in [0, ${layout.numLayers}), got ${layer}`);
  }
  if (!(Number.isInteger(numTokens) && numTokens >= 1)) {
    throw new RequestValidationError('numTokens', `must be a positive integer (decode includes the current token), got ${numTokens}`);
  }
  const n = pages.length;
  if (n !== pagesForTokens(numTokens, layout.pageSize)) {
    throw new RequestValidationError('pages', `${numTokens} tokens at pageSize ${layout.pageSize} fill ${pagesForTokens(numTokens, layout.pageSize)} pages, got ${n}`);
  }
  return n;
}

/** Every page for every KV head. */
export function denseSelection(numKvHeads: number, numPages: number): SelectPagesResult {
  const indptr = new Int32Array(numKvHeads + 1);
  const indices = new Int32Array(numKvHeads * numPages);
  for (let j = 0; j < numKvHeads; j++) {
    indptr[j + 1] = (j + 1) * numPages;
    for (let p = 0; p < numPages; p++) indices[j * numPages + p] = p;
  }
  return { numKvHeads, numPages, indptr, indices, dense: true };
}

/** Marks in a choice mask: 0 candidate, {@link CHOSEN} selected, {@link EXCLUDED} neither. */
export const CHOSEN = 1;
export const EXCLUDED = 2;

/**
 * Builds the result from a `[numKvHeads, numPages]` choice mask, sweeping pages in order so
 * each head's indices come out ascending.
 */
export function selectionFromMask(numKvHeads: number, numPages: number, mask: Uint8Array): SelectPagesResult {
  let count = 0;
  for (let i = 0; i < mask.length; i++) if (mask[i] === CHOSEN) count++;
  const indptr = new Int32Array(numKvHeads + 1);
  const indices = new Int32Array(count);
  let k = 0;
  for (let j = 0; j < numKvHeads; j++) {
    const off = j * numPages;
    for (let p = 0; p < numPages; p++) if (mask[off + p] === CHOSEN) indices[k++] = p;
    indptr[j + 1] = k;
  }
  return { numKvHeads, numPages, indptr, indices, dense: count === numKvHeads * numPages };
}

/**
 * Marks as chosen the `k` best candidates (mask 0) of one head's row, best meaning higher
 * score, ties to the lower page index. Scores that are not above -Infinity (empty pages,
 * NaN) are never chosen. Finds the k-th best score by sorting a copy, then sweeps in page
 * order, which both keeps the result independent of the sort and breaks ties by index.
 */
export function chooseTopK(
  scores: ArrayLike<number>,
  offset: number,
  numPages: number,
  k: number,
  mask: Uint8Array,
  scratch: Float64Array,
): void {
  if (k <= 0) return;
  let m = 0;
  for (let p = 0; p < numPages; p++) {
    const s = scores[offset + p];
    if (mask[offset + p] === 0 && s > -Infinity) scratch[m++] = s;
  }
  if (k >= m) {
    for (let p = 0; p < numPages; p++) if (mask[offset + p] === 0 && scores[offset + p] > -Infinity) mask[offset + p] = CHOSEN;
    return;
  }
  const sorted = scratch.subarray(0, m).sort();
  const threshold = sorted[m - k];
  let above = 0;
  for (let i = m - k + 1; i < m; i++) if (sorted[i] > threshold) above++;
  let ties = k - above;
  for (let p = 0; p < numPages; p++) {
    if (mask[offset + p] !== 0) continue;
    const s = scores[offset + p];
    if (s > threshold) mask[offset + p] = CHOSEN;
    else if (s === threshold && ties > 0) {
      mask[offset + p] = CHOSEN;
      ties--;
    }
  }
}
