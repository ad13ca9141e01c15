import { RequestValidationError } from '@tinyserve/core';
import type { SelectionConfig } from '@tinyserve/core';
import { selectionBudgetPages } from '@tinyserve/kv-retriever';
import type { CudaAddon, PlanInfo, PlanUpdateParams, StepPlanHandle } from './addon-types.js';

/**
 * Keeps of each sequence's pages exactly those that hold its `seqLens[s]` tokens (callers may
 * have allocated ahead), which is what the kernels' page tables mean.
 */
export function trimPageTable(
  pageIndptr: Int32Array,
  pageIndices: Int32Array,
  seqLens: Int32Array,
  pageSize: number,
): { pageIndptr: Int32Array; pageIndices: Int32Array } {
  const n = seqLens.length;
  if (pageIndptr.length !== n + 1) {
    throw new RequestValidationError('pageIndptr', `must have numSeqs + 1 = ${n + 1} entries, got ${pageIndptr.length}`);
  }
  const indptr = new Int32Array(n + 1);
  let total = 0;
  let trimmed = false;
  for (let s = 0; s < n; s++) {
    const need = Math.ceil(seqLens[s] / pageSize);
    const have = pageIndptr[s + 1] - pageIndptr[s];
    if (have < need) {
      throw new RequestValidationError('pageIndices', `sequence ${s} has ${seqLens[s]} tokens, needing ${need} pages of ${pageSize}, but owns ${have}`);
    }
    trimmed ||= have !== need;
    total += need;
    indptr[s + 1] = total;
  }
  if (!trimmed) return { pageIndptr, pageIndices };
  const indices = new Int32Array(total);
  for (let s = 0; s < n; s++) indices.set(pageIndices.subarray(pageIndptr[s], pageIndptr[s] + indptr[s + 1] - indptr[s]), indptr[s]);
  return { pageIndptr: indptr, pageIndices: indices };
}

/** Per sequence, the pages query-aware selection keeps (as the kv-retriever's policies count them). */
export function selectionTopK(
  seqLens: Int32Array,
  pageSize: number,
  config: Pick<SelectionConfig, 'selectionRatio' | 'tokenBudget'>,
): Int32Array {
  const out = new Int32Array(seqLens.length);
  for (let s = 0; s < seqLens.length; s++) out[s] = selectionBudgetPages(config, Math.ceil(seqLens[s] / pageSize), pageSize);
  return out;
}

/**
 * The most pages the fused selection can keep for one (sequence, KV head): the top-K, or the
 * forced pages (sinks and the current page) when they are more, never more than the sequence
 * has. Bounds the rows of a selection log.
 */
export function selectionRowPages(seqLens: Int32Array, pageSize: number, topK: Int32Array, sinkPages: number): number {
  let rows = 1;
  for (let s = 0; s < seqLens.length; s++) {
    const np = Math.ceil(seqLens[s] / pageSize);
    rows = Math.max(rows, Math.min(np, Math.max(topK[s], Math.min(sinkPages, np) + 1)));
  }
  return rows;
}

/** A reusable plan: device scratch grows as needed and is kept between steps. */
export class CudaStepPlan {
  readonly handle: StepPlanHandle;
  info: PlanInfo | null = null;

  constructor(private readonly addon: CudaAddon) {
    this.handle = addon.createPlan();
  }

  update(params: PlanUpdateParams): PlanInfo {
    this.info = this.addon.planUpdate(this.handle, params);
    return this.info;
  }

  /** Frees the device scratch now rather than when the handle is collected. */
  release(): void {
    this.addon.releasePlan(this.handle);
    this.info = null;
  }
}
