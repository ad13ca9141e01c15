import { OutOfPagesError, TinyServeError } from '@tinyserve/core';
import type { Executor, ForwardParams, SelectionConfig } from '@tinyserve/core';
import { BlockPool } from '@tinyserve/kv-retriever';

/** Settings of a selection switch beyond `SelectionConfig` (the tfjs executor's `SelectionOptions`). */
export interface SelectionSwitchOptions {
  /** Measure the attention-mass recall of each sparse selection (one extra dense pass per layer). */
  measureRecall?: boolean;
  /** Seed of the `random` policy. */
  seed?: number;
}

/**
 * An executor whose selection policy can be switched between steps (the tfjs executor's
 * `setSelection`). Feature-detected: an executor without it gets one instance per policy.
 */
export type SwitchableExecutor = Executor & { setSelection(config: SelectionConfig, options?: SelectionSwitchOptions): void };

export function canSwitchSelection(executor: Executor): executor is SwitchableExecutor {
  return typeof (executor as Partial<SwitchableExecutor>).setSelection === 'function';
}

/** The per-(sequence, layer) selections of the last step, where an executor exposes them (tfjs `getLastSelections`). */
type InspectableExecutor = Executor & { getLastSelections(): readonly { seqId: number; recall: number | null }[] };

/**
 * Sum and count of the attention-mass recall measured for `seqId` in the executor's last
 * step (one value per sparse layer), or null where nothing was measured.
 */
export function lastStepRecall(executor: Executor, seqId: number): { sum: number; count: number } | null {
  const inspect = (executor as Partial<InspectableExecutor>).getLastSelections;
  if (typeof inspect !== 'function') return null;
  let sum = 0;
  let count = 0;
  for (const r of inspect.call(executor)) {
    if (r.seqId !== seqId || r.recall === null) continue;
    sum += r.recall;
    count++;
  }
  return count > 0 ? { sum, count } : null;
}

/** Selection counters summed over the decode steps of one branch. */
export interface DecodeSelectionTotals {
  steps: number;
  pagesScanned: number;
  pagesSelected: number;
  kvBytesRead: number;
  kvBytesDense: number;
  /** Sum and count of the attention-mass recall measured per sparse layer (where the executor measures it). */
  recallSum: number;
  recallCount: number;
  /** Wall time of the decode forwards. */
  decodeMs: number;
}

export function emptyTotals(): DecodeSelectionTotals {
  return { steps: 0, pagesScanned: 0, pagesSelected: 0, kvBytesRead: 0, kvBytesDense: 0, recallSum: 0, recallCount: 0, decodeMs: 0 };
}

export function addTotals(into: DecodeSelectionTotals, from: DecodeSelectionTotals): void {
  for (const key of Object.keys(into) as (keyof DecodeSelectionTotals)[]) into[key] += from[key];
}

/** A context prefilled once: its full pages, shared read-only by every branch. */
export interface SharedPrefix {
  pages: number[];
  /** Tokens in the shared pages (a multiple of the page size). */
  numTokens: number;
}

/** What a branch's decode loop does with each step's logits: the next input token, or null to stop. */
export type NextToken = (logits: Float32Array, step: number) => number | null;

export interface BranchParams {
  /** Selection for the decode steps. */
  selection: SelectionConfig;
  /** Tokens after the shared prefix that precede the first decode input (prefilled densely in the branch). */
  tail: readonly number[];
  /** The first decode input: the last prompt token. */
  firstInput: number;
  next: NextToken;
}

/**
 * Runs one context under several selection policies on one executor, sharing the work: the
 * context's full pages are prefilled once, densely, and kept read-only; each branch prefills
 * the few tokens of the partial last page into a page of its own (densely), then runs every
 * later token (the last prompt token first) as a decode step under its policy, and gives its
 * pages back. Branches never write into shared pages: a step writes only at positions from
 * its start position on, which lie in the branch's own pages.
 */
export class ForkedDecoder {
  readonly executor: Executor;
  readonly pool: BlockPool;
  readonly pageSize: number;
  private readonly prefillChunk: number;
  private readonly dense: SelectionConfig;
  private readonly switchOptions: SelectionSwitchOptions;
  private nextSeqId = 1;

  /**
   * `dense` is the selection prefills run under (where the executor can switch); `prefillChunk`
   * bounds the tokens of one prefill step; `switchOptions` go with every policy switch.
   */
  constructor(executor: Executor, options: { prefillChunk: number; dense: SelectionConfig; switchOptions?: SelectionSwitchOptions }) {
    this.executor = executor;
    this.pageSize = executor.pageSize;
    this.pool = new BlockPool({ numPages: executor.numKvPages, pageSize: executor.pageSize, enablePrefixCaching: false });
    this.prefillChunk = options.prefillChunk;
    this.dense = { ...options.dense, policy: 'dense' };
    this.switchOptions = { ...options.switchOptions };
  }

  /** Prefills the full pages of `ids` (all but a partial last page) densely. */
  async prefill(ids: readonly number[]): Promise<SharedPrefix> {
    const numTokens = Math.floor(ids.length / this.pageSize) * this.pageSize;
    const pages = this.allocate(numTokens / this.pageSize, 'the shared prefix');
    try {
      this.switchTo(this.dense, {});
      await this.prefillTokens(this.nextSeqId++, ids.slice(0, numTokens), 0, pages);
    } catch (error) {
      this.pool.releaseAll(pages);
      throw error;
    }
    return { pages, numTokens };
  }

  release(prefix: SharedPrefix): void {
    this.pool.releaseAll(prefix.pages);
    prefix.pages = [];
  }

  /** Runs one branch from a shared prefix; returns its decode-step counters. */
  async branch(prefix: SharedPrefix, params: BranchParams): Promise<DecodeSelectionTotals> {
    const seqId = this.nextSeqId++;
    const own: number[] = [];
    const pages = [...prefix.pages];
    const totals = emptyTotals();
    try {
      let length = prefix.numTokens;
      if (params.tail.length > 0) {
        // A tail of one token would look like a decode step to the executor: keep it dense.
        this.switchTo(this.dense, {});
        const grow = this.allocate(Math.ceil((length + params.tail.length) / this.pageSize) - pages.length, 'a branch');
        own.push(...grow);
        pages.push(...grow);
        await this.prefillTokens(seqId, params.tail, length, pages);
        length += params.tail.length;
      }
      this.switchTo(params.selection, this.switchOptions);
      let input: number | null = params.firstInput;
      for (let step = 0; input !== null; step++) {
        if (pages.length * this.pageSize < length + 1) {
          const grow = this.allocate(1, 'a branch');
          own.push(...grow);
          pages.push(...grow);
        }
        const started = performance.now();
        const result = await this.executor.forward(this.step(seqId, [input], length, pages, 1));
        totals.decodeMs += performance.now() - started;
        totals.steps++;
        totals.pagesScanned += result.selection.pagesScanned;
        totals.pagesSelected += result.selection.pagesSelected;
        totals.kvBytesRead += result.selection.kvBytesRead;
        totals.kvBytesDense += result.selection.kvBytesDense;
        const recall = lastStepRecall(this.executor, seqId);
        if (recall) {
          totals.recallSum += recall.sum;
          totals.recallCount += recall.count;
        }
        length++;
        const v = this.executor.model.vocabSize;
        input = params.next(result.logits.subarray(0, v), step);
      }
    } finally {
      this.pool.releaseAll(own);
    }
    return totals;
  }

  private switchTo(selection: SelectionConfig, options: SelectionSwitchOptions): void {
    if (canSwitchSelection(this.executor)) this.executor.setSelection(selection, options);
  }

  private allocate(n: number, what: string): number[] {
    const pages = this.pool.allocate(n);
    if (pages === null) {
      throw new OutOfPagesError(
        `eval: ${n} KV pages for ${what} do not fit (${this.pool.availablePages} of ${this.pool.numPages} free); this is a bug in the page estimate`,
      );
    }
    return pages;
  }

  /** Prefills `tokens` at positions from `startPos` on, in chunks, no logits. */
  private async prefillTokens(seqId: number, tokens: readonly number[], startPos: number, pages: readonly number[]): Promise<void> {
    for (let i = 0; i < tokens.length; i += this.prefillChunk) {
      const chunk = tokens.slice(i, i + this.prefillChunk);
      await this.executor.forward(this.step(seqId, chunk, startPos + i, pages, 0));
    }
  }

  private step(seqId: number, tokens: readonly number[], startPos: number, pages: readonly number[], logitsMode: number): ForwardParams {
    const used = Math.ceil((startPos + tokens.length) / this.pageSize);
    if (used > pages.length) throw new TinyServeError('internal_error', `eval: step needs ${used} pages, has ${pages.length}`);
    return {
      tokenIds: Int32Array.from(tokens),
      queryIndptr: Int32Array.from([0, tokens.length]),
      startPos: Int32Array.from([startPos]),
      pageIndptr: Int32Array.from([0, used]),
      pageIndices: Int32Array.from(pages.slice(0, used)),
      logitsMode: Uint8Array.from([logitsMode]),
      seqIds: Int32Array.from([seqId]),
    };
  }
}
