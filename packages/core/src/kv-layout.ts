/**
 * The paged KV cache layout shared by the executors, the kv-retriever reference kernels
 * and (later) the CUDA addon. For each layer there is one K and one V buffer of
 * `numPages * pageSize * numKvHeads * headDim` elements, token-major ("NHD"):
 *
 *   element (page, slot, kvHead, d) is at ((page * pageSize + slot) * numKvHeads + kvHead) * headDim + d
 *
 * Page metadata (the channel-wise bounding box of keys) is, per layer, one `min` and one
 * `max` buffer of `numPages * numKvHeads * headDim` floats:
 *
 *   element (page, kvHead, d) is at (page * numKvHeads + kvHead) * headDim + d
 */
export interface KvLayout {
  numLayers: number;
  numPages: number;
  pageSize: number;
  numKvHeads: number;
  headDim: number;
}

export function kvElementIndex(layout: KvLayout, page: number, slot: number, kvHead: number): number {
  return ((page * layout.pageSize + slot) * layout.numKvHeads + kvHead) * layout.headDim;
}

export function metadataIndex(layout: KvLayout, page: number, kvHead: number): number {
  return (page * layout.numKvHeads + kvHead) * layout.headDim;
}
