import { RequestValidationError } from '@tinyserve/core';

/**
 * What the CSR builder and the executors read from a page table: plain data, so a table
 * kept elsewhere (a snapshot, a test fixture) works as well as a {@link PageTable}.
 */
export interface PageTableView {
  readonly pageSize: number;
  /** Tokens held, the newest included. */
  readonly numTokens: number;
  /** Physical page ids, in token order. */
  readonly pageIds: ArrayLike<number>;
}

/**
 * Page tables of a batch in CSR form (FlashInfer's paged-KV convention): sequence `s` owns
 * pages `indices[indptr[s] .. indptr[s+1])` in token order, and its last page holds
 * `lastPageLen[s]` tokens (1..pageSize; 0 only for a sequence with no pages).
 */
export interface PageTableCsr {
  indptr: Int32Array;
  indices: Int32Array;
  lastPageLen: Int32Array;
}

/** Plain-data copy of a {@link PageTable}. */
export interface PageTableSnapshot {
  pageSize: number;
  numTokens: number;
  pageIds: number[];
}

/** Pages needed to hold `numTokens` tokens. */
export function pagesForTokens(numTokens: number, pageSize: number): number {
  return Math.floor((numTokens + pageSize - 1) / pageSize);
}

function checkPageId(field: string, id: number): void {
  if (!Number.isInteger(id) || id < 0 || id > 0x7fffffff) {
    throw new RequestValidationError(field, `must be a page id (integer in [0, 2^31-1]), got ${id}`);
  }
}

/**
 * One sequence's pages in token order. Invariant: the table holds exactly the pages its
 * tokens need (`numPages === ceil(numTokens / pageSize)`), so every page but the last is
 * full and the last holds `lastPageLen` tokens, 1..pageSize. Allocation is the block pool's
 * business: the caller asks {@link pagesNeededFor}, allocates, and hands the ids to
 * {@link append} together with the tokens.
 */
export class PageTable implements PageTableView {
  readonly pageSize: number;
  private readonly ids: number[];
  private tokens: number;

  constructor(pageSize: number, pageIds: ArrayLike<number> = [], numTokens = 0) {
    if (!Number.isInteger(pageSize) || pageSize < 1) {
      throw new RequestValidationError('pageSize', `must be a positive integer, got ${pageSize}`);
    }
    if (!Number.isInteger(numTokens) || numTokens < 0) {
      throw new RequestValidationError('numTokens', `must be a non-negative integer, got ${numTokens}`);
    }
    const ids = Array.from(pageIds);
    ids.forEach((id, i) => checkPageId(`pageIds[${i}]`, id));
    if (ids.length !== pagesForTokens(numTokens, pageSize)) {
      throw new RequestValidationError(
        'pageIds',
        `${numTokens} tokens at pageSize ${pageSize} need ${pagesForTokens(numTokens, pageSize)} pages, got ${ids.length}`,
      );
    }
    this.pageSize = pageSize;
    this.ids = ids;
    this.tokens = numTokens;
  }

  get pageIds(): readonly number[] {
    return this.ids;
  }

  get numTokens(): number {
    return this.tokens;
  }

  get numPages(): number {
    return this.ids.length;
  }

  /** Tokens in the last page (1..pageSize), 0 when the table is empty. */
  get lastPageLen(): number {
    return this.ids.length === 0 ? 0 : this.tokens - (this.ids.length - 1) * this.pageSize;
  }

  /** New pages that appending `count` tokens requires. */
  pagesNeededFor(count: number): number {
    return pagesForTokens(this.tokens + count, this.pageSize) - this.ids.length;
  }

  /**
   * Appends `count` tokens; `newPageIds` must be exactly the {@link pagesNeededFor}(count)
   * freshly allocated pages (none when the last page has room).
   */
  append(count: number, newPageIds: ArrayLike<number> = []): void {
    if (!Number.isInteger(count) || count < 0) {
      throw new RequestValidationError('count', `must be a non-negative integer, got ${count}`);
    }
    const need = this.pagesNeededFor(count);
    if (newPageIds.length !== need) {
      throw new RequestValidationError(
        'newPageIds',
        `appending ${count} tokens to ${this.tokens} (pageSize ${this.pageSize}) needs ${need} new pages, got ${newPageIds.length}`,
      );
    }
    for (let i = 0; i < newPageIds.length; i++) checkPageId(`newPageIds[${i}]`, newPageIds[i]);
    for (let i = 0; i < newPageIds.length; i++) this.ids.push(newPageIds[i]);
    this.tokens += count;
  }

  /** Physical page and slot of token `position`. */
  locate(position: number): { page: number; slot: number } {
    if (!Number.isInteger(position) || position < 0 || position >= this.tokens) {
      throw new RequestValidationError('position', `must be an integer in [0, ${this.tokens}), got ${position}`);
    }
    const index = Math.floor(position / this.pageSize);
    return { page: this.ids[index], slot: position - index * this.pageSize };
  }

  /**
   * (page, slot) of positions `[start, start + count)`: where an executor writes their K/V and
   * what it passes to the metadata update.
   */
  slotMapping(start: number, count: number): { pages: Int32Array; slots: Int32Array } {
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > this.tokens) {
      throw new RequestValidationError('slotMapping', `range [${start}, ${start + count}) is outside [0, ${this.tokens})`);
    }
    const pages = new Int32Array(count);
    const slots = new Int32Array(count);
    for (let i = 0; i < count; i++) {
      const pos = start + i;
      const index = Math.floor(pos / this.pageSize);
      pages[i] = this.ids[index];
      slots[i] = pos - index * this.pageSize;
    }
    return { pages, slots };
  }

  /**
   * Keeps the first `numTokens` tokens (pruning, rollback) and returns the page ids no
   * longer needed, for the caller to release to the pool.
   */
  truncate(numTokens: number): number[] {
    if (!Number.isInteger(numTokens) || numTokens < 0 || numTokens > this.tokens) {
      throw new RequestValidationError('numTokens', `must be an integer in [0, ${this.tokens}], got ${numTokens}`);
    }
    this.tokens = numTokens;
    return this.ids.splice(pagesForTokens(numTokens, this.pageSize));
  }

  /** Swaps the page at `index` (copy-on-write) and returns the id it replaced. */
  replacePage(index: number, pageId: number): number {
    if (!Number.isInteger(index) || index < 0 || index >= this.ids.length) {
      throw new RequestValidationError('index', `must be an integer in [0, ${this.ids.length}), got ${index}`);
    }
    checkPageId('pageId', pageId);
    const old = this.ids[index];
    this.ids[index] = pageId;
    return old;
  }

  clone(): PageTable {
    return new PageTable(this.pageSize, this.ids, this.tokens);
  }

  snapshot(): PageTableSnapshot {
    return { pageSize: this.pageSize, numTokens: this.tokens, pageIds: [...this.ids] };
  }
}

/** Packs the page tables of a batch, in order, into CSR typed arrays for the executors. */
export function buildPageTableCsr(tables: readonly PageTableView[]): PageTableCsr {
  const indptr = new Int32Array(tables.length + 1);
  const lastPageLen = new Int32Array(tables.length);
  let total = 0;
  for (let s = 0; s < tables.length; s++) {
    const t = tables[s];
    if (t.pageSize !== tables[0].pageSize) {
      throw new RequestValidationError(`tables[${s}].pageSize`, `is ${t.pageSize}, but tables[0] has ${tables[0].pageSize}`);
    }
    const n = t.pageIds.length;
    if (n !== pagesForTokens(t.numTokens, t.pageSize)) {
      throw new RequestValidationError(`tables[${s}]`, `holds ${t.numTokens} tokens in ${n} pages of ${t.pageSize}`);
    }
    total += n;
    indptr[s + 1] = total;
    lastPageLen[s] = n === 0 ? 0 : t.numTokens - (n - 1) * t.pageSize;
  }
  const indices = new Int32Array(total);
  for (let s = 0; s < tables.length; s++) {
    const ids = tables[s].pageIds;
    const base = indptr[s];
    for (let i = 0; i < ids.length; i++) indices[base + i] = ids[i];
  }
  return { indptr, indices, lastPageLen };
}
