/**
 * mulberry32: a small, fast 32-bit PRNG giving the same sequence on every platform. Returns a
 * function drawing uniform numbers in [0, 1). For reproducible choices (the `random` selection
 * policy, fixtures), not for sampling tokens (the scheduler's sampler has a longer period).
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
