import type { SelectionConfig } from '@tinyserve/core';
import type { SelectionStatsSnapshot } from '@tinyserve/kv-retriever';
import type { ExecutorSelection, LayerSelectionRecord, SelectionOptions } from './decode-selection.js';

/**
 * The decode-time selection surface the tfjs and cuda executors share: both keep one
 * `ExecutorSelection` (policy, statistics, last step's records) and differ only in how a step
 * runs, so the accessors live here once.
 */
export abstract class SelectingExecutor {
  protected constructor(protected readonly selectionState: ExecutorSelection) {}

  /** Throws once the executor is disposed. */
  protected abstract live(): unknown;

  /** The selection configuration in force. */
  get selection(): Readonly<SelectionConfig> {
    return this.selectionState.selector.config;
  }

  /** The settings beyond `SelectionConfig` in force. */
  get selectionOptions(): Readonly<SelectionOptions> {
    return this.selectionState.selector.options;
  }

  /**
   * Switches the decode-time selection (policy, ratio or budget, sinks, dense layers, fused
   * kernel) and its options, keeping the KV cache and its metadata: the cheap way to decode
   * one cached context under several policies. Validated at once (`ConfigError` naming the
   * field; the old selection stays on error). Applies to steps that start after the call:
   * await pending `forward` calls first. Statistics keep accumulating; see
   * {@link resetSelectionStats}.
   */
  setSelection(config: SelectionConfig, options: SelectionOptions = {}): void {
    this.live();
    this.selectionState.set(config, options);
  }

  /**
   * Cumulative selection statistics of this executor's decode steps (the kv-retriever's
   * `SelectionStatsCollector` snapshot: `kvHitRate` = pagesSelected / pagesScanned,
   * `kvReadFraction`, `metadataBytesRead`, `recallMean` when recall is measured). Unlike
   * `ForwardResult.selection`, its `kvBytesRead` counts KV bytes only; metadata bytes are in
   * `metadataBytesRead`.
   */
  getSelectionStats(): SelectionStatsSnapshot {
    return this.selectionState.stats();
  }

  resetSelectionStats(): void {
    this.selectionState.resetStats();
  }

  /** Every (decode sequence, layer) page selection of the last step, dense layers included, in layer order. */
  getLastSelections(): readonly LayerSelectionRecord[] {
    return this.selectionState.lastSelections();
  }
}
