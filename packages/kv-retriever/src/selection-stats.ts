import type { KvCacheDtype, StepSelectionStats } from '@tinyserve/core';
import { RequestValidationError } from '@tinyserve/core';
import { kvElementBytes } from './kv-format.js';
import type { Int8ScaleGranularity } from './kv-format.js';
import type { SelectPagesResult } from './selection-policy.js';

export interface SelectionStatsOptions {
  pageSize: number;
  headDim: number;
  dtype: KvCacheDtype;
  int8Scales?: Int8ScaleGranularity;
}

export interface RecordSelectionParams {
  /** One (sequence, layer) decode selection. */
  selection: Pick<SelectPagesResult, 'indptr' | 'indices' | 'numPages' | 'numKvHeads'>;
  /** Tokens in the sequence, the current one included. */
  numTokens: number;
  /** The policy read page metadata to choose (quest): counted in `metadataBytesRead`. */
  readMetadata?: boolean;
}

/** Cumulative figures; ratios are null until there is something to divide by. */
export interface SelectionStatsTotals extends StepSelectionStats {
  /** Bytes of page metadata (min/max boxes) read to score pages: the price of selection. */
  metadataBytesRead: number;
  /** `kvBytesRead / kvBytesDense`. */
  kvReadFraction: number | null;
  /** See {@link SelectionStatsCollector}. */
  kvHitRate: number | null;
  /** Mean attention-mass recall over the measurements recorded. */
  recallMean: number | null;
  recallSamples: number;
}

export interface SelectionStepSnapshot extends StepSelectionStats {
  recallMean: number | null;
}

export interface SelectionStatsSnapshot {
  steps: number;
  lastStep: SelectionStepSnapshot | null;
  cumulative: SelectionStatsTotals;
}

interface Acc {
  pagesScanned: number;
  pagesSelected: number;
  kvBytesRead: number;
  kvBytesDense: number;
  metadataBytesRead: number;
  recallSum: number;
  recallCount: number;
}

function zero(): Acc {
  return { pagesScanned: 0, pagesSelected: 0, kvBytesRead: 0, kvBytesDense: 0, metadataBytesRead: 0, recallSum: 0, recallCount: 0 };
}

/**
 * Per-step and cumulative statistics of decode-time page selection.
 *
 * Units: a page is counted once per (sequence, layer, KV head) it is considered for, since
 * selection is made per KV head. `pagesScanned` counts the resident pages decode attention
 * could have read, `pagesSelected` those it did read; dense layers and dense policies count
 * as reading all. Bytes are K plus V (and int8 scales) of the tokens actually read, so a
 * partial last page counts its filled slots only; `kvBytesDense` is what dense attention
 * would have read for the same selections.
 *
 * `kvHitRate` = `pagesSelected / pagesScanned` over the decode steps recorded: the fraction
 * of resident KV pages that decode attention read. 1 means dense; Quest at ratio r gives
 * about r. Record decode selections only: prefill attends causally to everything.
 */
export class SelectionStatsCollector {
  private readonly pageSize: number;
  private readonly tokenBytes: number;
  private readonly pageBytes: number;
  private readonly metaBytesPerPageHead: number;
  private step = zero();
  private total = zero();
  private last: SelectionStepSnapshot | null = null;
  private steps = 0;

  constructor(options: SelectionStatsOptions) {
    const { pageSize, headDim, dtype } = options;
    if (!(Number.isInteger(pageSize) && pageSize >= 1 && Number.isInteger(headDim) && headDim >= 1)) {
      throw new RequestValidationError('options', `pageSize and headDim must be positive integers, got ${pageSize} and ${headDim}`);
    }
    this.pageSize = pageSize;
    // Per (layer, KV head): K and V rows of `headDim` elements, plus their int8 scales.
    const scales = dtype === 'int8' ? (options.int8Scales ?? 'token') : null;
    this.tokenBytes = 2 * (headDim * kvElementBytes(dtype) + (scales === 'token' ? 4 : 0));
    this.pageBytes = scales === 'page' ? 2 * 4 : 0;
    this.metaBytesPerPageHead = 2 * headDim * 4;
  }

  /** Adds one (sequence, layer) decode selection to the current step. */
  recordSelection(params: RecordSelectionParams): void {
    const { selection, numTokens } = params;
    const { indptr, indices, numPages, numKvHeads } = selection;
    const lastLen = numTokens - (numPages - 1) * this.pageSize;
    if (!(numPages >= 1 && lastLen >= 1 && lastLen <= this.pageSize) || indptr.length !== numKvHeads + 1) {
      throw new RequestValidationError('selection', `${numTokens} tokens, ${numPages} pages and ${indptr.length - 1} heads do not match (pageSize ${this.pageSize})`);
    }
    let tokens = 0;
    for (let i = 0; i < indices.length; i++) tokens += indices[i] === numPages - 1 ? lastLen : this.pageSize;
    const acc = this.step;
    acc.pagesScanned += numPages * numKvHeads;
    acc.pagesSelected += indices.length;
    acc.kvBytesRead += tokens * this.tokenBytes + indices.length * this.pageBytes;
    acc.kvBytesDense += numKvHeads * (numTokens * this.tokenBytes + numPages * this.pageBytes);
    if (params.readMetadata) acc.metadataBytesRead += numPages * numKvHeads * this.metaBytesPerPageHead;
  }

  /** Adds an attention-mass recall measurement (0..1) to the current step. */
  recordRecall(recall: number): void {
    if (!(recall >= 0 && recall <= 1 + 1e-9)) {
      throw new RequestValidationError('recall', `must be in [0, 1], got ${recall}`);
    }
    this.step.recallSum += recall;
    this.step.recallCount++;
  }

  /** Closes the current step, folds it into the totals and returns its counters. */
  endStep(): StepSelectionStats {
    const s = this.step;
    const out: StepSelectionStats = {
      pagesScanned: s.pagesScanned,
      pagesSelected: s.pagesSelected,
      kvBytesRead: s.kvBytesRead,
      kvBytesDense: s.kvBytesDense,
    };
    const t = this.total;
    t.pagesScanned += s.pagesScanned;
    t.pagesSelected += s.pagesSelected;
    t.kvBytesRead += s.kvBytesRead;
    t.kvBytesDense += s.kvBytesDense;
    t.metadataBytesRead += s.metadataBytesRead;
    t.recallSum += s.recallSum;
    t.recallCount += s.recallCount;
    this.last = { ...out, recallMean: s.recallCount > 0 ? s.recallSum / s.recallCount : null };
    this.steps++;
    this.step = zero();
    return out;
  }

  /** Closes a step counted elsewhere (an executor's `ForwardResult.selection`), merged with anything recorded since the last `endStep`. */
  addStep(stats: StepSelectionStats, recalls: readonly number[] = []): void {
    for (const [k, v] of Object.entries(stats)) {
      if (!(typeof v === 'number' && v >= 0 && Number.isFinite(v))) {
        throw new RequestValidationError(`stats.${k}`, `must be a non-negative number, got ${String(v)}`);
      }
    }
    this.step.pagesScanned += stats.pagesScanned;
    this.step.pagesSelected += stats.pagesSelected;
    this.step.kvBytesRead += stats.kvBytesRead;
    this.step.kvBytesDense += stats.kvBytesDense;
    for (const r of recalls) this.recordRecall(r);
    this.endStep();
  }

  snapshot(): SelectionStatsSnapshot {
    const t = this.total;
    return {
      steps: this.steps,
      lastStep: this.last === null ? null : { ...this.last },
      cumulative: {
        pagesScanned: t.pagesScanned,
        pagesSelected: t.pagesSelected,
        kvBytesRead: t.kvBytesRead,
        kvBytesDense: t.kvBytesDense,
        metadataBytesRead: t.metadataBytesRead,
        kvReadFraction: t.kvBytesDense > 0 ? t.kvBytesRead / t.kvBytesDense : null,
        kvHitRate: t.pagesScanned > 0 ? t.pagesSelected / t.pagesScanned : null,
        recallMean: t.recallCount > 0 ? t.recallSum / t.recallCount : null,
        recallSamples: t.recallCount,
      },
    };
  }

  reset(): void {
    this.step = zero();
    this.total = zero();
    this.last = null;
    this.steps = 0;
  }
}
