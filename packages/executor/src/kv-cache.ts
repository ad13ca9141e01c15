import { ConfigError, RequestValidationError, kvElementIndex } from '@tinyserve/core';
import type { CopyTokensParams, KvLayout } from '@tinyserve/core';

const FP32_BYTES = 4;

/**
 * The paged KV cache of one executor: per layer one K and one V buffer in the token-major
 * layout of `KvLayout` (fp32). Pages are handed out by the kv-retriever's block pool; the
 * cache only stores them.
 */
export class PagedKvCache {
  readonly layout: KvLayout;
  readonly keys: Float32Array[];
  readonly values: Float32Array[];

  constructor(layout: KvLayout) {
    this.layout = { ...layout };
    const elements = layout.numPages * layout.pageSize * layout.numKvHeads * layout.headDim;
    this.keys = [];
    this.values = [];
    try {
      for (let l = 0; l < layout.numLayers; l++) {
        this.keys.push(new Float32Array(elements));
        this.values.push(new Float32Array(elements));
      }
    } catch (cause) {
      const mb = Math.round((2 * layout.numLayers * elements * FP32_BYTES) / 2 ** 20);
      throw new ConfigError(
        'numKvPages',
        `cannot allocate ${layout.numPages} KV pages (${mb} MiB in fp32): ${String(cause)}; lower numKvPages or pageSize`,
      );
    }
  }

  /** Bytes of one page across all layers, K and V. */
  get bytesPerPage(): number {
    const { numLayers, pageSize, numKvHeads, headDim } = this.layout;
    return 2 * numLayers * pageSize * numKvHeads * headDim * FP32_BYTES;
  }

  /** Bytes of one token's K and V in one layer. */
  get bytesPerTokenLayer(): number {
    return 2 * this.layout.numKvHeads * this.layout.headDim * FP32_BYTES;
  }

  /**
   * Copies token slots, all layers, K and V, in order: entry i copies (srcPages[i],
   * srcSlots[i]) to (dstPages[i], dstSlots[i]), so a left-compaction listed front to back
   * never reads a slot it already overwrote.
   */
  copyTokens(params: CopyTokensParams): void {
    validateCopyTokens(params, this.layout);
    const { srcPages, srcSlots, dstPages, dstSlots } = params;
    const row = this.layout.numKvHeads * this.layout.headDim;
    for (let i = 0; i < srcPages.length; i++) {
      const src = kvElementIndex(this.layout, srcPages[i], srcSlots[i], 0);
      const dst = kvElementIndex(this.layout, dstPages[i], dstSlots[i], 0);
      if (src === dst) continue;
      for (let l = 0; l < this.layout.numLayers; l++) {
        this.keys[l].copyWithin(dst, src, src + row);
        this.values[l].copyWithin(dst, src, src + row);
      }
    }
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
