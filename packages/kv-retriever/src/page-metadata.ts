import type { KvLayout } from '@tinyserve/core';
import { RequestValidationError } from '@tinyserve/core';

/**
 * Page metadata: for each layer, the channel-wise bounding box of the keys in every
 * (page, KV head), laid out as core's `metadataIndex`:
 * element (page, kvHead, d) of `min` / `max` is at `(page * numKvHeads + kvHead) * headDim + d`.
 *
 * An empty page (no keys) is marked by an inverted box, `min = +Infinity` and `max = -Infinity`
 * in every channel. The test `min[row] > max[row]` on the row's first channel is how the
 * scorer and the policies recognise it; no key can produce it, so it needs no extra buffer.
 *
 * When the KV cache is quantized, feed the *dequantized* keys, so that the box bounds the
 * keys attention actually reads.
 */
export interface PageMetadataLayer {
  min: Float32Array;
  max: Float32Array;
}

function rowLength(layout: KvLayout): number {
  return layout.numKvHeads * layout.headDim;
}

/** Floats in one layer's `min` (or `max`) buffer. */
export function pageMetadataLength(layout: KvLayout): number {
  return layout.numPages * rowLength(layout);
}

/** One layer's metadata buffers, every page marked empty. */
export function createPageMetadataLayer(layout: KvLayout): PageMetadataLayer {
  const n = pageMetadataLength(layout);
  return { min: new Float32Array(n).fill(Infinity), max: new Float32Array(n).fill(-Infinity) };
}

/** Whether (page, kvHead) holds no key in this layer's metadata. */
export function isPageMetadataEmpty(layout: KvLayout, metadata: PageMetadataLayer, page: number, kvHead = 0): boolean {
  const base = (page * layout.numKvHeads + kvHead) * layout.headDim;
  return metadata.min[base] > metadata.max[base];
}

function checkBuffers(layout: KvLayout, min: Float32Array, max: Float32Array): void {
  const n = pageMetadataLength(layout);
  if (min.length !== n || max.length !== n) {
    throw new RequestValidationError(
      'min/max',
      `metadata buffers must hold numPages*numKvHeads*headDim = ${n} floats, got ${min.length} and ${max.length}`,
    );
  }
}

function checkPageSlot(layout: KvLayout, i: number, page: number, slot: number): void {
  if (!(page >= 0 && page < layout.numPages && Number.isInteger(page))) {
    throw new RequestValidationError(`pages[${i}]`, `must be a page in [0, ${layout.numPages}), got ${page}`);
  }
  if (!(slot >= 0 && slot < layout.pageSize && Number.isInteger(slot))) {
    throw new RequestValidationError(`slots[${i}]`, `must be a slot in [0, ${layout.pageSize}), got ${slot}`);
  }
}

export interface UpdatePageMetadataParams {
  layout: KvLayout;
  /** This layer's metadata buffers, updated in place. */
  min: Float32Array;
  max: Float32Array;
  /** The appended keys, token-major: `[numTokens, numKvHeads, headDim]`. */
  keys: Float32Array;
  /** Page and slot of each appended token (as written into the K buffer). */
  pages: ArrayLike<number>;
  slots: ArrayLike<number>;
}

/**
 * Folds appended keys into their pages' boxes. Pages fill in slot order, so a key written at
 * slot 0 starts its page's box afresh (a recycled page needs no separate reset) and any
 * later slot widens it: the box always covers exactly the page's filled slots, the partial
 * last page included. Out-of-order writes (copies, compaction) go through
 * {@link rebuildPageMetadata} instead.
 */
export function updatePageMetadata(params: UpdatePageMetadataParams): void {
  const { layout, min, max, keys, pages, slots } = params;
  checkBuffers(layout, min, max);
  const n = pages.length;
  const row = rowLength(layout);
  if (slots.length !== n) {
    throw new RequestValidationError('slots', `must have one entry per page entry (${n}), got ${slots.length}`);
  }
  if (keys.length < n * row) {
    throw new RequestValidationError('keys', `must hold ${n} tokens x ${row} floats = ${n * row}, got ${keys.length}`);
  }
  for (let t = 0; t < n; t++) {
    const page = pages[t];
    const slot = slots[t];
    checkPageSlot(layout, t, page, slot);
    const m = page * row;
    const k = t * row;
    if (slot === 0) {
      for (let i = 0; i < row; i++) {
        const v = keys[k + i];
        min[m + i] = v;
        max[m + i] = v;
      }
    } else {
      for (let i = 0; i < row; i++) {
        const v = keys[k + i];
        if (v < min[m + i]) min[m + i] = v;
        if (v > max[m + i]) max[m + i] = v;
      }
    }
  }
}

export interface RebuildPageMetadataParams {
  layout: KvLayout;
  min: Float32Array;
  max: Float32Array;
  /** This layer's K buffer in the core layout (fp32). */
  kCache: Float32Array;
  /** Pages to recompute. */
  pages: ArrayLike<number>;
  /** Filled slots of each page (0..pageSize); 0 marks the page empty. */
  fills: ArrayLike<number>;
}

/**
 * Recomputes pages' boxes from the K buffer over their first `fill` slots: after token
 * pruning, compaction, copy-on-write or any write that was not an in-order append.
 */
export function rebuildPageMetadata(params: RebuildPageMetadataParams): void {
  const { layout, min, max, kCache, pages, fills } = params;
  checkBuffers(layout, min, max);
  const row = rowLength(layout);
  if (fills.length !== pages.length) {
    throw new RequestValidationError('fills', `must have one entry per page (${pages.length}), got ${fills.length}`);
  }
  if (kCache.length !== layout.numPages * layout.pageSize * row) {
    throw new RequestValidationError('kCache', `must hold numPages*pageSize*numKvHeads*headDim floats, got ${kCache.length}`);
  }
  for (let p = 0; p < pages.length; p++) {
    const page = pages[p];
    const fill = fills[p];
    checkPageSlot(layout, p, page, 0);
    if (!(Number.isInteger(fill) && fill >= 0 && fill <= layout.pageSize)) {
      throw new RequestValidationError(`fills[${p}]`, `must be an integer in [0, ${layout.pageSize}], got ${fill}`);
    }
    const m = page * row;
    if (fill === 0) {
      min.fill(Infinity, m, m + row);
      max.fill(-Infinity, m, m + row);
      continue;
    }
    const first = page * layout.pageSize * row;
    for (let i = 0; i < row; i++) {
      const v = kCache[first + i];
      min[m + i] = v;
      max[m + i] = v;
    }
    for (let slot = 1; slot < fill; slot++) {
      const k = first + slot * row;
      for (let i = 0; i < row; i++) {
        const v = kCache[k + i];
        if (v < min[m + i]) min[m + i] = v;
        if (v > max[m + i]) max[m + i] = v;
      }
    }
  }
}

export interface ClearPageMetadataParams {
  layout: KvLayout;
  min: Float32Array;
  max: Float32Array;
  pages: ArrayLike<number>;
}

/** Marks pages empty (freed pages), so they are never scored as valid. */
export function clearPageMetadata(params: ClearPageMetadataParams): void {
  const { layout, min, max, pages } = params;
  checkBuffers(layout, min, max);
  const row = rowLength(layout);
  for (let p = 0; p < pages.length; p++) {
    checkPageSlot(layout, p, pages[p], 0);
    const m = pages[p] * row;
    min.fill(Infinity, m, m + row);
    max.fill(-Infinity, m, m + row);
  }
}

/** The metadata of every layer of a KV layout, with per-layer shorthands for the functions above. */
export class PageMetadata {
  readonly layout: KvLayout;
  readonly layers: PageMetadataLayer[];

  constructor(layout: KvLayout) {
    this.layout = { ...layout };
    this.layers = Array.from({ length: layout.numLayers }, () => createPageMetadataLayer(layout));
  }

  layer(index: number): PageMetadataLayer {
    const layer = this.layers[index];
    if (layer === undefined) {
      throw new RequestValidationError('layer', `must be in [0, ${this.layout.numLayers}), got ${index}`);
    }
    return layer;
  }

  isEmpty(layer: number, page: number): boolean {
    return isPageMetadataEmpty(this.layout, this.layer(layer), page);
  }

  update(layer: number, keys: Float32Array, pages: ArrayLike<number>, slots: ArrayLike<number>): void {
    updatePageMetadata({ layout: this.layout, ...this.layer(layer), keys, pages, slots });
  }

  rebuild(layer: number, kCache: Float32Array, pages: ArrayLike<number>, fills: ArrayLike<number>): void {
    rebuildPageMetadata({ layout: this.layout, ...this.layer(layer), kCache, pages, fills });
  }

  /** Marks pages empty in every layer. */
  clear(pages: ArrayLike<number>): void {
    for (const l of this.layers) clearPageMetadata({ layout: this.layout, ...l, pages });
  }
}
