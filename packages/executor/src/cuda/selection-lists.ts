import type { SelectPagesResult } from '@tinyserve/kv-retriever';
import type { PageSelection } from '../kernels/paged-attention-cpu.js';

/** The page lists of the addon's `decodeSelected`: per listed sequence and KV head, logical pages. */
export interface SelectedLists {
  seqs: Int32Array;
  indptr: Int32Array;
  pages: Int32Array;
}

/**
 * The addon's page lists for a selection already checked against the step
 * (`checkPageSelection`): every sequence it marks sparse, with its lists as given. With
 * `densePageCounts` (per sequence, pages in its table), every other sequence too, listing all
 * its pages for every KV head: a decode-only step then attends all sequences in one launch.
 */
export function selectedLists(sel: PageSelection, numKvHeads: number, densePageCounts: Int32Array | null): SelectedLists {
  const H = numKvHeads;
  const numSeqs = sel.sparse.length;
  const seqs: number[] = [];
  let total = 0;
  for (let s = 0; s < numSeqs; s++) {
    if (sel.sparse[s] === 1) total += sel.indptr[(s + 1) * H] - sel.indptr[s * H];
    else if (densePageCounts !== null) total += H * densePageCounts[s];
    else continue;
    seqs.push(s);
  }
  const indptr = new Int32Array(seqs.length * H + 1);
  const pages = new Int32Array(total);
  let k = 0;
  for (let i = 0; i < seqs.length; i++) {
    const s = seqs[i];
    for (let j = 0; j < H; j++) {
      if (sel.sparse[s] === 1) {
        const lo = sel.indptr[s * H + j];
        const hi = sel.indptr[s * H + j + 1];
        pages.set(sel.pages.subarray(lo, hi), k);
        k += hi - lo;
      } else {
        const np = (densePageCounts as Int32Array)[s];
        for (let p = 0; p < np; p++) pages[k++] = p;
      }
      indptr[i * H + j + 1] = k;
    }
  }
  return { seqs: Int32Array.from(seqs), indptr, pages };
}

/**
 * One decode sequence's selection from a fused-launch log slot (the addon's `copySelection`
 * layout): counts `[pairs]` from `base`, then rows `[pairs, rowPages]` of logical pages; the
 * sequence's pairs are `s * numKvHeads + j`.
 */
export function selectionFromLog(
  log: Int32Array,
  base: number,
  pairs: number,
  rowPages: number,
  s: number,
  numKvHeads: number,
  numPages: number,
): SelectPagesResult {
  const indptr = new Int32Array(numKvHeads + 1);
  for (let j = 0; j < numKvHeads; j++) {
    const count = log[base + s * numKvHeads + j];
    if (!(count >= 0 && count <= numPages && count <= rowPages)) {
      throw new Error(`fused selection log: sequence ${s}, KV head ${j} lists ${count} pages (${numPages} in the sequence, rows of ${rowPages})`);
    }
    indptr[j + 1] = indptr[j] + count;
  }
  const indices = new Int32Array(indptr[numKvHeads]);
  for (let j = 0; j < numKvHeads; j++) {
    const row = base + pairs + (s * numKvHeads + j) * rowPages;
    indices.set(log.subarray(row, row + indptr[j + 1] - indptr[j]), indptr[j]);
  }
  return { numKvHeads, numPages, indptr, indices, dense: indices.length === numKvHeads * numPages };
}

/** Pages per sequence of a CSR page table. */
export function pageCounts(pageIndptr: Int32Array): Int32Array {
  return Int32Array.from({ length: pageIndptr.length - 1 }, (_, s) => pageIndptr[s + 1] - pageIndptr[s]);
}
