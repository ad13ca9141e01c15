import type { ForwardParams } from '@tinyserve/core';
import { makeRng } from './random-model.js';

/** One sequence's part of a step in {@link TestPager.step}. */
export interface StepEntry {
  seqId: number;
  tokens: number[];
  /** Defaults to the tokens already fed for this sequence. */
  startPos?: number;
  logitsMode?: 0 | 1 | 2;
}

/**
 * A minimal page allocator for tests: pages come from a shuffled free list, so page tables
 * are non-contiguous and out of order.
 */
export class TestPager {
  readonly pages = new Map<number, number[]>();
  readonly lengths = new Map<number, number>();
  private readonly free: number[];

  constructor(
    numPages: number,
    readonly pageSize: number,
    seed = 7,
  ) {
    const rng = makeRng(seed);
    this.free = Array.from({ length: numPages }, (_, i) => i);
    for (let i = this.free.length - 1; i > 0; i--) {
      const j = Math.floor(rng() * (i + 1));
      [this.free[i], this.free[j]] = [this.free[j], this.free[i]];
    }
  }

  /** Allocates pages so that `seqId` covers `length` positions. */
  ensure(seqId: number, length: number): number[] {
    const list = this.pages.get(seqId) ?? [];
    while (list.length * this.pageSize < length) {
      const page = this.free.pop();
      if (page === undefined) throw new Error('TestPager: out of pages');
      list.push(page);
    }
    this.pages.set(seqId, list);
    return list;
  }

  /** Builds ForwardParams for one step and records the new lengths. */
  step(entries: StepEntry[], collectAttentionStats = false): ForwardParams {
    const tokenIds: number[] = [];
    const queryIndptr = [0];
    const startPos: number[] = [];
    const pageIndptr = [0];
    const pageIndices: number[] = [];
    for (const e of entries) {
      const start = e.startPos ?? this.lengths.get(e.seqId) ?? 0;
      const pages = this.ensure(e.seqId, start + e.tokens.length);
      tokenIds.push(...e.tokens);
      queryIndptr.push(tokenIds.length);
      startPos.push(start);
      pageIndices.push(...pages);
      pageIndptr.push(pageIndices.length);
      this.lengths.set(e.seqId, start + e.tokens.length);
    }
    return {
      tokenIds: Int32Array.from(tokenIds),
      queryIndptr: Int32Array.from(queryIndptr),
      startPos: Int32Array.from(startPos),
      pageIndptr: Int32Array.from(pageIndptr),
      pageIndices: Int32Array.from(pageIndices),
      logitsMode: Uint8Array.from(entries.map((e) => e.logitsMode ?? 2)),
      seqIds: Int32Array.from(entries.map((e) => e.seqId)),
      collectAttentionStats,
    };
  }
}

/** Random token ids in [0, vocab). */
export function randomTokens(n: number, vocab: number, seed: number): number[] {
  const rng = makeRng(seed);
  return Array.from({ length: n }, () => Math.floor(rng() * vocab));
}
