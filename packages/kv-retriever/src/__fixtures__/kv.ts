import { mulberry32 } from '@tinyserve/core';
import type { KvLayout } from '@tinyserve/core';

/** Seeded uniform [0, 1) generator (mulberry32), so test data is reproducible. */
export function rng(seed: number): () => number {
  return mulberry32(seed);
}

/** Standard normal draws (Box-Muller) from a seeded generator. */
export function gaussian(rand: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

export function randomArray(n: number, rand: () => number, scale = 1): Float32Array {
  const g = gaussian(rand);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = g() * scale;
  return out;
}

/** Distinct physical pages in a shuffled order, so tests never rely on pages being contiguous. */
export function shuffledPages(count: number, numPages: number, rand: () => number): number[] {
  const all = Array.from({ length: numPages }, (_, i) => i);
  for (let i = all.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [all[i], all[j]] = [all[j], all[i]];
  }
  return all.slice(0, count);
}

export function cacheLength(layout: KvLayout): number {
  return layout.numPages * layout.pageSize * layout.numKvHeads * layout.headDim;
}
