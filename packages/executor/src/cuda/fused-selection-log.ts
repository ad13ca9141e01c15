import type { StepSelection } from '../decode-selection.js';
import type { CudaAddon, DeviceBuffer } from './addon-types.js';
import { selectionFromLog } from './selection-lists.js';
import type { CudaStepPlan } from './step-plan.js';

/**
 * The choices of one step's fused sparse launches (quest on the GPU): after each layer's launch
 * its selection (and, when recall is measured, its queries) is copied on the device into the
 * layer's slot, without waiting; at the end of the step one download records every layer's
 * choice in the step's selection, as the JavaScript route records its own.
 */
export class FusedSelectionLog {
  private buffer: DeviceBuffer | null = null;
  private capacity = 0;
  private queries: DeviceBuffer | null = null;
  private queryCapacity = 0;
  private saved: number[] = [];
  private pairs = 0;
  private rowPages = 0;
  private queryFloats = 0;

  constructor(
    private readonly addon: CudaAddon,
    private readonly plan: CudaStepPlan,
    private readonly numLayers: number,
    private readonly numKvHeads: number,
  ) {}

  /** Int32 elements of one layer's slot. */
  private get slot(): number {
    return this.pairs * (1 + this.rowPages);
  }

  /**
   * Starts a step of `numSeqs` decode sequences choosing at most `rowPages` pages per KV head
   * (`selectionRowPages`); `queryFloats` > 0 also keeps each layer's rotated queries
   * (`[numSeqs, numQHeads * headDim]`) for recall.
   */
  begin(numSeqs: number, rowPages: number, queryFloats: number): void {
    this.pairs = numSeqs * this.numKvHeads;
    this.rowPages = rowPages;
    this.queryFloats = queryFloats;
    this.saved = [];
    const ints = this.numLayers * this.slot;
    if (ints > this.capacity) {
      if (this.buffer !== null) this.addon.free(this.buffer);
      this.buffer = null;
      this.capacity = Math.max(ints, Math.ceil(1.5 * this.capacity));
      this.buffer = this.addon.alloc(this.capacity * 4);
    }
    const floats = this.numLayers * queryFloats;
    if (floats > this.queryCapacity) {
      if (this.queries !== null) this.addon.free(this.queries);
      this.queries = null;
      this.queryCapacity = Math.max(floats, Math.ceil(1.5 * this.queryCapacity));
      this.queries = this.addon.alloc(this.queryCapacity * 4);
    }
  }

  /** After `layer`'s fused launch: queues the copies of its selection (and of `qRot`, for recall). */
  save(layer: number, qRot: DeviceBuffer): void {
    if (this.buffer === null) throw new Error('FusedSelectionLog.save before begin');
    this.addon.copySelection(this.plan.handle, { dst: this.buffer, dstOffset: layer * this.slot, rowPages: this.rowPages });
    if (this.queryFloats > 0) this.addon.copy(this.queries as DeviceBuffer, layer * this.queryFloats * 4, qRot, 0, this.queryFloats * 4);
    this.saved.push(layer);
  }

  /** Downloads the saved layers once and records their choices in `selection`. */
  flush(selection: StepSelection): void {
    const layers = this.saved;
    this.saved = [];
    if (layers.length === 0 || this.buffer === null) return;
    const lo = Math.min(...layers);
    const span = Math.max(...layers) - lo + 1;
    const slot = this.slot;
    const log = new Int32Array(span * slot);
    this.addon.download(this.buffer, lo * slot * 4, log);
    let queries: Float32Array | null = null;
    if (this.queryFloats > 0) {
      queries = new Float32Array(span * this.queryFloats);
      this.addon.download(this.queries as DeviceBuffer, lo * this.queryFloats * 4, queries);
    }
    for (const layer of layers) {
      const base = (layer - lo) * slot;
      const q = queries === null ? null : queries.subarray((layer - lo) * this.queryFloats, (layer - lo + 1) * this.queryFloats);
      selection.recordChosen(layer, (s, numPages) => selectionFromLog(log, base, this.pairs, this.rowPages, s, this.numKvHeads, numPages), q);
    }
  }

  dispose(): void {
    if (this.buffer !== null) this.addon.free(this.buffer);
    if (this.queries !== null) this.addon.free(this.queries);
    this.buffer = null;
    this.queries = null;
    this.capacity = 0;
    this.queryCapacity = 0;
  }
}
