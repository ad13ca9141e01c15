import type { KvLayout } from '@tinyserve/core';
import { RequestValidationError } from '@tinyserve/core';
import { pageMetadataLength } from './page-metadata.js';
import type { PageMetadataLayer } from './page-metadata.js';

/**
 * How the query heads of a GQA group combine their per-head upper bounds into the one score
 * that ranks pages for their shared KV head.
 *
 * - `max` (default): the largest per-head bound. It is an upper bound of every head's logits
 *   on the page, and it is what attention mass follows: mass is `exp(logit)`, and
 *   `log Σ_h exp(ub_h)` lies within `log G` of `max_h ub_h`, so ranking by the max ranks by
 *   the group's summed attention weight up to a constant. A page that one head needs
 *   sharply survives even when the other heads ignore it.
 * - `sum`: the sum of per-head bounds, an upper bound of the group's summed logits (a
 *   geometric-mean criterion); it favours pages the whole group agrees on and can drop a
 *   page that a single head relies on.
 */
export type GqaAggregation = 'max' | 'sum';

export const GQA_AGGREGATIONS: readonly GqaAggregation[] = ['max', 'sum'];

export interface ScorePagesParams {
  layout: KvLayout;
  /** This layer's page metadata (bounding boxes). */
  metadata: PageMetadataLayer;
  /** All query heads of one sequence at this layer: `[numQHeads, headDim]`. */
  query: Float32Array;
  numQHeads: number;
  /** The sequence's physical page ids, in order. */
  pages: ArrayLike<number>;
  aggregation?: GqaAggregation;
  /** Where to write the scores (`numKvHeads * pages.length` floats); allocated when absent. */
  out?: Float32Array;
}

/** Query heads per KV head; throws when they do not divide. */
export function gqaGroupSize(numQHeads: number, numKvHeads: number): number {
  if (!Number.isInteger(numQHeads) || numQHeads < 1 || numQHeads % numKvHeads !== 0) {
    throw new RequestValidationError('numQHeads', `must be a positive multiple of numKvHeads (${numKvHeads}), got ${numQHeads}`);
  }
  return numQHeads / numKvHeads;
}

/**
 * Quest's page relevance: for each (KV head, page) the upper bound of `q·k` over the page's
 * box, `Σ_i max(q_i·m_i, q_i·M_i)`, aggregated over the group's query heads. Returned as
 * `[numKvHeads, numPages]` (KV-head major). Empty pages score `-Infinity`.
 *
 * The bound holds in floating point too: rounding is monotonic, so each term is at least
 * `q_i·k_i` as computed, and a sum (in the same order) of larger terms is larger.
 */
export function scorePages(params: ScorePagesParams): Float32Array {
  const { layout, metadata, query, numQHeads, pages } = params;
  const { numKvHeads, headDim } = layout;
  const useMax = (params.aggregation ?? 'max') === 'max';
  if (params.aggregation !== undefined && !GQA_AGGREGATIONS.includes(params.aggregation)) {
    throw new RequestValidationError('aggregation', `must be 'max' or 'sum', got '${String(params.aggregation)}'`);
  }
  const group = gqaGroupSize(numQHeads, numKvHeads);
  if (query.length < numQHeads * headDim) {
    throw new RequestValidationError('query', `must hold numQHeads*headDim = ${numQHeads * headDim} floats, got ${query.length}`);
  }
  const numPages = pages.length;
  const out = params.out ?? new Float32Array(numKvHeads * numPages);
  if (out.length < numKvHeads * numPages) {
    throw new RequestValidationError('out', `must hold numKvHeads*numPages = ${numKvHeads * numPages} floats, got ${out.length}`);
  }
  const { min, max } = metadata;
  if (min.length !== pageMetadataLength(layout) || max.length !== min.length) {
    throw new RequestValidationError('metadata', `min and max must hold numPages*numKvHeads*headDim = ${pageMetadataLength(layout)} floats`);
  }
  for (let p = 0; p < numPages; p++) {
    const page = pages[p];
    if (!(page >= 0 && page < layout.numPages)) {
      throw new RequestValidationError(`pages[${p}]`, `must be a page in [0, ${layout.numPages}), got ${page}`);
    }
    for (let j = 0; j < numKvHeads; j++) {
      const box = (page * numKvHeads + j) * headDim;
      if (min[box] > max[box]) {
        out[j * numPages + p] = -Infinity;
        continue;
      }
      let agg = useMax ? -Infinity : 0;
      for (let g = 0; g < group; g++) {
        const q = (j * group + g) * headDim;
        let s = 0;
        for (let d = 0; d < headDim; d++) {
          const qd = query[q + d];
          const a = qd * min[box + d];
          const b = qd * max[box + d];
          s += a > b ? a : b;
        }
        if (useMax) {
          if (s > agg) agg = s;
        } else {
          agg += s;
        }
      }
      out[j * numPages + p] = agg;
    }
  }
  return out;
}
