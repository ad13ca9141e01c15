import { createHash } from 'node:crypto';
import { ConfigError, RequestValidationError, TinyServeError } from '@tinyserve/core';

/**
 * The KV block pool: a fixed set of `numPages` pages of `pageSize` tokens, handed out to
 * sequences by id. Pages are refcounted so that sequences and sessions can share a cached
 * prefix; a shared page is never written in place (see {@link BlockPool.prepareWrite}).
 *
 * Prefix caching follows vLLM: every FULL page whose content is a pure prefix of some token
 * sequence is named by a chain hash, `hash(parentHash, the page's token ids)`, and registered
 * with {@link BlockPool.commitFullPage}. A page whose last reference goes away stays cached
 * (and findable by {@link BlockPool.lookupPrefix}) until an allocation needs the room; such
 * pages are then evicted least recently released first.
 *
 * A page is in exactly one of three states:
 *   - used: refcount > 0 (hashed or not);
 *   - cached: refcount 0, hashed, in the eviction LRU;
 *   - free: refcount 0, no hash, in the free list.
 */

/** The chain hash of the empty prefix: the parent of a sequence's first page. */
export const ROOT_PREFIX_HASH = '';

/**
 * The chain hash of a full page: SHA-256 over the parent page's hash and the page's token ids
 * (int32, little-endian). A cryptographic hash because a collision would silently serve one
 * prompt's KV to another; its cost (about a microsecond a page) is paid once per full page.
 */
export function hashPageTokens(parentHash: string, tokenIds: ArrayLike<number>, start = 0, end = tokenIds.length): string {
  const ids = new Int32Array(end - start);
  for (let i = start; i < end; i++) ids[i - start] = tokenIds[i];
  return createHash('sha256').update(parentHash).update(new Uint8Array(ids.buffer)).digest('base64');
}

export interface BlockPoolOptions {
  numPages: number;
  pageSize: number;
  /** Keep hashed pages findable after release (default true). Off: released pages go straight back to the free list. */
  enablePrefixCaching?: boolean;
}

/** The longest cached full-page prefix of a token sequence. */
export interface PrefixMatch {
  /** Cached pages, in token order (not retained: call `retain` on the ones you keep). */
  pages: number[];
  /** The chain hash of each matched page. */
  hashes: string[];
  /** Tokens covered: `pages.length * pageSize`. */
  numTokens: number;
}

/** One page-to-page copy the engine must carry out (all slots that hold data) before writing `dst`. */
export interface PageCopy {
  src: number;
  dst: number;
}

export interface PrepareWriteResult {
  /** The pages to write, in the order given: the same id where the page was private, a fresh copy where it was shared. */
  pages: number[];
  /** Copies to perform through `executor.copyTokens` before writing. */
  copies: PageCopy[];
}

export interface LookupPrefixOptions {
  /** Consider only the first `maxTokens` tokens (default all). */
  maxTokens?: number;
  /** Count this lookup in the query/hit counters (default true). */
  recordStats?: boolean;
}

export interface BlockPoolStats {
  numPages: number;
  pageSize: number;
  /** Pages with refcount > 0. */
  usedPages: number;
  /** Pages an allocation can take now: the free list plus unreferenced cached pages. */
  availablePages: number;
  /** Unreferenced pages still holding a cached prefix (evictable). */
  cachedFreePages: number;
  /** Pages registered under a prefix hash, referenced or not. */
  hashedPages: number;
  /** usedPages / numPages. */
  usage: number;
  prefixQueries: number;
  prefixQueryTokens: number;
  prefixHitTokens: number;
  prefixHitPages: number;
  /** prefixHitTokens / prefixQueryTokens (0 before any query). */
  prefixHitRate: number;
  evictions: number;
  allocations: number;
  /** Allocations refused for lack of room. */
  allocationFailures: number;
}

export class BlockPool {
  readonly numPages: number;
  readonly pageSize: number;
  readonly enablePrefixCaching: boolean;
  private readonly refs: Int32Array;
  private readonly hashOf: (string | undefined)[];
  private readonly pageOfHash = new Map<string, number>();
  /** Unreferenced free pages without a hash; popped from the end. */
  private readonly freeList: number[];
  /** Unreferenced hashed pages, least recently released first (Map keeps insertion order). */
  private readonly lru = new Map<number, true>();
  private used = 0;
  private queries = 0;
  private queryTokens = 0;
  private hitTokens = 0;
  private hitPages = 0;
  private evictions = 0;
  private allocations = 0;
  private allocationFailures = 0;

  constructor(options: BlockPoolOptions) {
    const { numPages, pageSize } = options;
    if (!Number.isInteger(numPages) || numPages < 1 || numPages > 0x7fffffff) {
      throw new ConfigError('numKvPages', `must be an integer in [1, 2^31-1], got ${numPages}`);
    }
    if (!Number.isInteger(pageSize) || pageSize < 1) {
      throw new ConfigError('pageSize', `must be a positive integer, got ${pageSize}`);
    }
    this.numPages = numPages;
    this.pageSize = pageSize;
    this.enablePrefixCaching = options.enablePrefixCaching ?? true;
    this.refs = new Int32Array(numPages);
    this.hashOf = new Array<string | undefined>(numPages).fill(undefined);
    // Low ids first out, so a fresh pool hands out 0, 1, 2, ...
    this.freeList = Array.from({ length: numPages }, (_, i) => numPages - 1 - i);
  }

  /** Pages with refcount > 0. */
  get usedPages(): number {
    return this.used;
  }

  /** Pages an allocation can take now (free plus evictable cached ones). */
  get availablePages(): number {
    return this.freeList.length + this.lru.size;
  }

  refCount(page: number): number {
    this.checkPage(page);
    return this.refs[page];
  }

  /** The prefix hash a page is registered under, if any. */
  pageHash(page: number): string | undefined {
    this.checkPage(page);
    return this.hashOf[page];
  }

  /**
   * `n` pages with refcount 1, or null when fewer than `n` can be had (nothing changes then).
   * Free pages go first; cached unreferenced pages are evicted (LRU) only when needed.
   */
  allocate(n: number): number[] | null {
    if (!Number.isInteger(n) || n < 0) throw new RequestValidationError('n', `must be a non-negative integer, got ${n}`);
    if (n > this.availablePages) {
      this.allocationFailures++;
      return null;
    }
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      let page = this.freeList.pop();
      if (page === undefined) {
        page = this.lru.keys().next().value as number;
        this.lru.delete(page);
        this.pageOfHash.delete(this.hashOf[page] as string);
        this.hashOf[page] = undefined;
        this.evictions++;
      }
      this.refs[page] = 1;
      out.push(page);
    }
    this.used += n;
    this.allocations += n;
    return out;
  }

  /** Adds a reference to a used page, or revives a cached unreferenced one (a prefix hit). */
  retain(page: number): void {
    this.checkPage(page);
    if (this.refs[page] === 0) {
      if (!this.lru.delete(page)) {
        throw new TinyServeError('internal_error', `block pool: retain of free page ${page}`);
      }
      this.used++;
    }
    this.refs[page]++;
  }

  /** Drops a reference; at zero a hashed page stays cached (evictable), any other page is freed. */
  release(page: number): void {
    this.checkPage(page);
    if (this.refs[page] === 0) throw new TinyServeError('internal_error', `block pool: release of unreferenced page ${page}`);
    if (--this.refs[page] > 0) return;
    this.used--;
    if (this.hashOf[page] !== undefined && this.enablePrefixCaching) {
      this.lru.set(page, true);
    } else {
      this.dropHash(page);
      this.freeList.push(page);
    }
  }

  /**
   * Releases a sequence's pages, last page first: the tail of a prefix is less likely to be
   * shared than its head, so it should be evicted first.
   */
  releaseAll(pages: readonly number[]): void {
    for (let i = pages.length - 1; i >= 0; i--) this.release(pages[i]);
  }

  /**
   * The cached pages of the longest full-page prefix of `tokenIds` (hash chain from the root).
   * Pages are not retained.
   */
  lookupPrefix(tokenIds: ArrayLike<number>, options: LookupPrefixOptions = {}): PrefixMatch {
    const limit = Math.min(tokenIds.length, options.maxTokens ?? tokenIds.length);
    const fullPages = Math.floor(limit / this.pageSize);
    const pages: number[] = [];
    const hashes: string[] = [];
    let parent = ROOT_PREFIX_HASH;
    for (let i = 0; i < fullPages && this.pageOfHash.size > 0; i++) {
      const hash = hashPageTokens(parent, tokenIds, i * this.pageSize, (i + 1) * this.pageSize);
      const page = this.pageOfHash.get(hash);
      if (page === undefined) break;
      pages.push(page);
      hashes.push(hash);
      parent = hash;
    }
    const numTokens = pages.length * this.pageSize;
    if (options.recordStats ?? true) this.recordPrefixQuery(limit, numTokens);
    return { pages, hashes, numTokens };
  }

  /** Counts a prefix-cache query whose hit was decided elsewhere (e.g. only once a request is admitted). */
  recordPrefixQuery(queryTokens: number, hitTokens: number): void {
    this.queries++;
    this.queryTokens += queryTokens;
    this.hitTokens += hitTokens;
    this.hitPages += Math.floor(hitTokens / this.pageSize);
  }

  /**
   * Registers a used, full page under its chain hash. Returns false (and changes nothing) when
   * the hash already names another page (the same prefix computed twice) or the page already
   * has a hash, or prefix caching is off.
   */
  commitFullPage(page: number, hash: string): boolean {
    this.checkPage(page);
    if (this.refs[page] === 0) throw new TinyServeError('internal_error', `block pool: commit of unreferenced page ${page}`);
    if (!this.enablePrefixCaching || this.hashOf[page] !== undefined || this.pageOfHash.has(hash)) return false;
    this.hashOf[page] = hash;
    this.pageOfHash.set(hash, page);
    return true;
  }

  /**
   * Makes `pages` (all used, held by the caller) safe to write. A page only the caller
   * references is written in place, after dropping its prefix hash (its content is about to
   * change); a shared page is replaced by a fresh one and the caller's reference moves to it,
   * with a copy to perform. With `keepCached`, a hashed page is copied too, so that the cached
   * prefix survives the write. All or nothing: null, with nothing changed, when there is no
   * room for the copies.
   */
  prepareWrite(pages: readonly number[], options: { keepCached?: boolean } = {}): PrepareWriteResult | null {
    const mustCopy = (page: number): boolean =>
      this.refs[page] > 1 || (options.keepCached === true && this.hashOf[page] !== undefined);
    let copied = 0;
    for (const page of pages) {
      this.checkPage(page);
      if (this.refs[page] === 0) throw new TinyServeError('internal_error', `block pool: write to unreferenced page ${page}`);
      if (mustCopy(page)) copied++;
    }
    const fresh = this.allocate(copied);
    if (fresh === null) return null;
    const out: number[] = [];
    const copies: PageCopy[] = [];
    let next = 0;
    for (const page of pages) {
      if (mustCopy(page)) {
        const dst = fresh[next++];
        copies.push({ src: page, dst });
        this.release(page);
        out.push(dst);
      } else {
        this.dropHash(page);
        out.push(page);
      }
    }
    return { pages: out, copies };
  }

  stats(): BlockPoolStats {
    return {
      numPages: this.numPages,
      pageSize: this.pageSize,
      usedPages: this.used,
      availablePages: this.availablePages,
      cachedFreePages: this.lru.size,
      hashedPages: this.pageOfHash.size,
      usage: this.used / this.numPages,
      prefixQueries: this.queries,
      prefixQueryTokens: this.queryTokens,
      prefixHitTokens: this.hitTokens,
      prefixHitPages: this.hitPages,
      prefixHitRate: this.queryTokens === 0 ? 0 : this.hitTokens / this.queryTokens,
      evictions: this.evictions,
      allocations: this.allocations,
      allocationFailures: this.allocationFailures,
    };
  }

  /** Drops every unreferenced cached page (e.g. after a model reload); returns how many. */
  evictAllCached(): number {
    const n = this.lru.size;
    for (const page of this.lru.keys()) {
      this.dropHash(page);
      this.freeList.push(page);
    }
    this.lru.clear();
    this.evictions += n;
    return n;
  }

  /** Checks the pool's invariants (tests, debugging); throws an internal error naming the first broken one. */
  verify(): void {
    const fail = (msg: string): never => {
      throw new TinyServeError('internal_error', `block pool inconsistent: ${msg}`);
    };
    const inFree = new Uint8Array(this.numPages);
    for (const page of this.freeList) {
      if (inFree[page]) fail(`page ${page} twice in the free list`);
      inFree[page] = 1;
      if (this.refs[page] !== 0) fail(`free page ${page} has refcount ${this.refs[page]}`);
      if (this.hashOf[page] !== undefined) fail(`free page ${page} still has a hash`);
    }
    let used = 0;
    for (let page = 0; page < this.numPages; page++) {
      const ref = this.refs[page];
      if (ref < 0) fail(`page ${page} has refcount ${ref}`);
      if (ref > 0) used++;
      const inLru = this.lru.has(page);
      if (ref > 0 && (inLru || inFree[page])) fail(`used page ${page} is also free`);
      if (ref === 0 && inLru === Boolean(inFree[page])) fail(`unreferenced page ${page} is in ${inLru ? 'both' : 'neither'} free list and LRU`);
      if (inLru && this.hashOf[page] === undefined) fail(`cached page ${page} has no hash`);
      const hash = this.hashOf[page];
      if (hash !== undefined && this.pageOfHash.get(hash) !== page) fail(`hash of page ${page} maps elsewhere`);
    }
    if (used !== this.used) fail(`used count ${this.used} but ${used} pages are referenced`);
    for (const [hash, page] of this.pageOfHash) if (this.hashOf[page] !== hash) fail(`hash index names page ${page} wrongly`);
  }

  private dropHash(page: number): void {
    const hash = this.hashOf[page];
    if (hash === undefined) return;
    this.pageOfHash.delete(hash);
    this.hashOf[page] = undefined;
  }

  private checkPage(page: number): void {
    if (!Number.isInteger(page) || page < 0 || page >= this.numPages) {
      throw new RequestValidationError('page', `must be a page id in [0, ${this.numPages}), got ${page}`);
    }
  }
}
