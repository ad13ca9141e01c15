import { ConfigError, RequestValidationError, kvElementIndex } from '@tinyserve/core';
import type { CopyTokensParams, KvCacheDtype, KvLayout } from '@tinyserve/core';
import {
  KvCacheStorage,
  PageMetadata,
  clearPageMetadata,
  kvBytesPerPage,
  rebuildPageMetadata,
  updatePageMetadata,
} from '@tinyserve/kv-retriever';
import type { PageMetadataLayer } from '@tinyserve/kv-retriever';
import type { CompactKeys, SelectionKvSource } from './decode-selection.js';
import type { KvBuffer } from './kernels/paged-attention-cpu.js';

/**
 * The paged KV cache of one executor: per layer one K and one V buffer in the token-major
 * layout of `KvLayout`, stored in `kvCacheDtype` by the kv-retriever's `KvCacheStorage`
 * (fp32; fp16 as IEEE half bits; int8 with one scale per token and KV head), plus the page
 * metadata (key bounding boxes) of every layer, computed from the keys as stored (decoded),
 * so that the bound holds for what attention reads. Pages are handed out by the
 * kv-retriever's block pool; the cache only stores them.
 */
export class PagedKvCache implements SelectionKvSource {
  readonly layout: KvLayout;
  readonly dtype: KvCacheDtype;
  readonly storage: KvCacheStorage;
  readonly metadata: PageMetadata;
  /**
   * Per page: how many leading slots its metadata covers, as far as this cache knows (-1
   * unknown, e.g. after `copyTokens` wrote into it). An append that does not continue a page
   * at exactly this slot rebuilds the page's boxes first (see {@link prepareAppend}).
   */
  readonly pageFill: Int32Array;

  constructor(layout: KvLayout, dtype: KvCacheDtype = 'fp32') {
    this.layout = { ...layout };
    this.dtype = dtype;
    try {
      this.storage = new KvCacheStorage({ layout, dtype });
      this.metadata = new PageMetadata(layout);
    } catch (cause) {
      if (cause instanceof ConfigError) throw cause;
      const mb = Math.round((layout.numPages * kvBytesPerPage({ ...layout, dtype })) / 2 ** 20);
      throw new ConfigError(
        'numKvPages',
        `cannot allocate ${layout.numPages} KV pages (${mb} MiB in ${dtype}): ${String(cause)}; lower numKvPages or pageSize`,
      );
    }
    this.pageFill = new Int32Array(layout.numPages);
  }

  /** Per layer K buffers (`Float32Array` for fp32, half bits for fp16, `Int8Array` for int8). */
  get keys(): KvBuffer[] {
    return this.storage.keys;
  }

  get values(): KvBuffer[] {
    return this.storage.values;
  }

  /** int8 only: per layer, one scale per (page, slot, KV head). Empty for fp32 and fp16. */
  get keyScales(): Float32Array[] {
    return this.storage.keyScales;
  }

  get valueScales(): Float32Array[] {
    return this.storage.valueScales;
  }

  /** Bytes of one page across all layers, K and V (int8 scales included). */
  get bytesPerPage(): number {
    return this.storage.bytesPerPage;
  }

  metadataLayer(layer: number): PageMetadataLayer {
    return this.metadata.layer(layer);
  }

  /** The layer's K buffer itself when it is fp32; null for fp16 and int8. */
  hostKeys(layer: number): Float32Array | null {
    return this.dtype === 'fp32' ? (this.storage.keys[layer] as Float32Array) : null;
  }

  /** One sequence's keys at `layer` decoded to fp32, in a layout of just its pages (ids 0..n-1). */
  compactKeys(layer: number, pages: Int32Array): CompactKeys {
    const { pageSize, numKvHeads, headDim } = this.layout;
    const row = numKvHeads * headDim;
    const kCache = new Float32Array(pages.length * pageSize * row);
    for (let i = 0; i < pages.length; i++) {
      for (let slot = 0; slot < pageSize; slot++) {
        const off = (i * pageSize + slot) * row;
        this.storage.readKey(layer, pages[i], slot, kCache.subarray(off, off + row));
      }
    }
    return { layout: { ...this.layout, numPages: pages.length }, kCache, pages: Int32Array.from({ length: pages.length }, (_, i) => i) };
  }

  /**
   * Copies token slots, all layers, K and V (and int8 scales), in order: entry i copies
   * (srcPages[i], srcSlots[i]) to (dstPages[i], dstSlots[i]), so a left-compaction listed
   * front to back never reads a slot it already overwrote. Page metadata is not touched:
   * call {@link rebuildMetadata} for the destination pages afterwards.
   */
  copyTokens(params: CopyTokensParams): void {
    validateCopyTokens(params, this.layout);
    const { srcPages, srcSlots, dstPages, dstSlots } = params;
    const { numLayers, numKvHeads, pageSize } = this.layout;
    const row = numKvHeads * this.layout.headDim;
    const int8 = this.dtype === 'int8';
    for (let i = 0; i < srcPages.length; i++) {
      const src = kvElementIndex(this.layout, srcPages[i], srcSlots[i], 0);
      const dst = kvElementIndex(this.layout, dstPages[i], dstSlots[i], 0);
      // The destination's boxes no longer describe it until rebuilt.
      this.pageFill[dstPages[i]] = -1;
      if (src === dst) continue;
      const srcScale = (srcPages[i] * pageSize + srcSlots[i]) * numKvHeads;
      const dstScale = (dstPages[i] * pageSize + dstSlots[i]) * numKvHeads;
      for (let l = 0; l < numLayers; l++) {
        this.storage.keys[l].copyWithin(dst, src, src + row);
        this.storage.values[l].copyWithin(dst, src, src + row);
        if (int8) {
          this.storage.keyScales[l].copyWithin(dstScale, srcScale, srcScale + numKvHeads);
          this.storage.valueScales[l].copyWithin(dstScale, srcScale, srcScale + numKvHeads);
        }
      }
    }
  }

  /**
   * Recomputes the metadata of `pages`, every layer, over each page's first `fills[i]` slots
   * (the whole page when `fills` is omitted; 0 marks it empty), from the keys as stored.
   */
  rebuildMetadata(pages: Int32Array, fills?: Int32Array): void {
    const { pageSize, numPages, numLayers } = this.layout;
    if (!(pages instanceof Int32Array)) throw new RequestValidationError('pages', 'must be an Int32Array');
    if (fills !== undefined) {
      if (!(fills instanceof Int32Array)) throw new RequestValidationError('fills', 'must be an Int32Array');
      if (fills.length !== pages.length) {
        throw new RequestValidationError('fills', `has length ${fills.length}, expected ${pages.length} (one per page)`);
      }
    }
    for (let i = 0; i < pages.length; i++) {
      if (pages[i] < 0 || pages[i] >= numPages) {
        throw new RequestValidationError(`pages[${i}]`, `${pages[i]} is outside [0, ${numPages}) (numKvPages = ${numPages})`);
      }
      const fill = fills ? fills[i] : pageSize;
      if (fill < 0 || fill > pageSize) throw new RequestValidationError(`fills[${i}]`, `${fill} is outside [0, ${pageSize}] (pageSize = ${pageSize})`);
    }
    const fillArray = fills ?? new Int32Array(pages.length).fill(pageSize);
    for (let l = 0; l < numLayers; l++) {
      const { min, max } = this.metadata.layer(l);
      if (this.dtype === 'fp32') {
        rebuildPageMetadata({ layout: this.layout, min, max, kCache: this.storage.keys[l] as Float32Array, pages, fills: fillArray });
      } else {
        for (let i = 0; i < pages.length; i++) this.rebuildDecoded(l, min, max, pages[i], fillArray[i]);
      }
    }
    for (let i = 0; i < pages.length; i++) this.pageFill[pages[i]] = fillArray[i];
  }

  /**
   * The quantised path of {@link rebuildMetadata}: decode the page's keys and fold them in
   * slot order (slot 0 restarts the box), which performs exactly the comparisons the fp32
   * rebuild performs on the decoded values.
   */
  private rebuildDecoded(layer: number, min: Float32Array, max: Float32Array, page: number, fill: number): void {
    if (fill === 0) {
      clearPageMetadata({ layout: this.layout, min, max, pages: [page] });
      return;
    }
    const row = this.layout.numKvHeads * this.layout.headDim;
    const keys = new Float32Array(fill * row);
    const slots = new Int32Array(fill);
    for (let s = 0; s < fill; s++) {
      this.storage.readKey(layer, page, s, keys.subarray(s * row, (s + 1) * row));
      slots[s] = s;
    }
    updatePageMetadata({ layout: this.layout, min, max, keys, pages: new Int32Array(fill).fill(page), slots });
  }

  /**
   * Before a step appends at `slot` of `page`: an in-order append continues the page at its
   * known fill. Otherwise (a step re-run at the same positions, a copy without a rebuild) the
   * page's boxes are rebuilt over its first `slot` slots, so they bound exactly the keys
   * that will be there. Slot 0 needs nothing: the append restarts the box.
   */
  prepareAppend(page: number, slot: number): void {
    if (slot > 0 && this.pageFill[page] !== slot) this.rebuildMetadata(Int32Array.of(page), Int32Array.of(slot));
  }

  /** Records that the step wrote `page` up to `slot` (inclusive). */
  appended(page: number, slot: number): void {
    this.pageFill[page] = slot + 1;
  }
}

function validateCopyTokens(params: CopyTokensParams, layout: KvLayout): void {
  const n = params.srcPages?.length;
  for (const field of ['srcPages', 'srcSlots', 'dstPages', 'dstSlots'] as const) {
    const arr = params[field];
    if (!(arr instanceof Int32Array)) throw new RequestValidationError(field, 'must be an Int32Array');
    if (arr.length !== n) {
      throw new RequestValidationError(field, `has length ${arr.length}, expected ${n} (the length of srcPages)`);
    }
  }
  for (const [field, limit, what] of [
    ['srcPages', layout.numPages, 'numKvPages'],
    ['dstPages', layout.numPages, 'numKvPages'],
    ['srcSlots', layout.pageSize, 'pageSize'],
    ['dstSlots', layout.pageSize, 'pageSize'],
  ] as const) {
    const arr = params[field];
    for (let i = 0; i < arr.length; i++) {
      if (arr[i] < 0 || arr[i] >= limit) {
        throw new RequestValidationError(`${field}[${i}]`, `${arr[i]} is outside [0, ${limit}) (${what} = ${limit})`);
      }
    }
  }
}
