import type {
  AttentionStats,
  CopyTokensParams,
  Executor,
  ForwardParams,
  ForwardResult,
  ModelConfig,
} from '@tinyserve/core';

/**
 * A deterministic stand-in for a model executor. Its "KV cache" stores the token id of every
 * (page, slot); a query's logits are a pure function of the token history it reads back from
 * its pages through the CSR page table, followed by the token itself. So any page-table
 * mistake (a wrong page, a page shared while written, a slot never written, a bad copy)
 * changes the tokens generated, and tests compare against {@link mockGreedy}.
 */

const FNV_OFFSET = 0x811c9dc5;

/** Folds one token into a history hash (FNV-1a over the id's 4 bytes). */
export function foldToken(hash: number, token: number): number {
  let h = hash;
  for (let b = 0; b < 4; b++) {
    h ^= (token >>> (8 * b)) & 0xff;
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

function mix32(x: number): number {
  let z = x | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** Writes the logits row for a history hash: values in [-4, 4), a pure function of (hash, token id). */
export function logitsFromHash(hash: number, out: Float32Array): void {
  for (let v = 0; v < out.length; v++) out[v] = (mix32(hash ^ mix32(v * 0x9e3779b9 + 1)) / 2 ** 32) * 8 - 4;
}

/** The logits after reading `history` (every token so far, the current one last). */
export function mockLogits(history: ArrayLike<number>, vocabSize: number): Float32Array {
  let h = FNV_OFFSET;
  for (let i = 0; i < history.length; i++) h = foldToken(h, history[i]);
  const out = new Float32Array(vocabSize);
  logitsFromHash(h, out);
  return out;
}

function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/**
 * The greedy continuation the mock model gives `prompt`: up to `maxTokens` tokens, stopping
 * after an EOS token unless none are given.
 */
export function mockGreedy(prompt: readonly number[], maxTokens: number, vocabSize: number, eosTokenIds: readonly number[] = []): number[] {
  const history = [...prompt];
  const out: number[] = [];
  while (out.length < maxTokens) {
    const t = argmax(mockLogits(history, vocabSize));
    out.push(t);
    history.push(t);
    if (eosTokenIds.includes(t)) break;
  }
  return out;
}

export interface MockExecutorOptions {
  pageSize: number;
  numKvPages: number;
  vocabSize?: number;
  numLayers?: number;
  maxPositionEmbeddings?: number;
  /** Simulated compute: the forward resolves after a timer of this many ms (0: at once). */
  stepDelayMs?: number;
  /** Simulated compute: busy-wait this many microseconds per query token. */
  busyUsPerToken?: number;
}

/** What one forward call asked for, for tests that check the engine's batching. */
export interface ForwardCallRecord {
  seqIds: number[];
  newTokens: number[];
  startPos: number[];
  logitsMode: number[];
  collectAttentionStats: boolean;
}

export class MockExecutor implements Executor {
  readonly backend = 'mock';
  readonly model: ModelConfig;
  readonly pageSize: number;
  readonly numKvPages: number;
  readonly kvBytesPerPage: number;
  /** Token id stored in each (page, slot); -1 where nothing was ever written. */
  readonly slots: Int32Array;
  /** Page metadata: min and max token id over each page's slots, maintained like key bounding boxes. */
  readonly pageMin: Int32Array;
  readonly pageMax: Int32Array;
  readonly calls: ForwardCallRecord[] = [];
  copyCalls = 0;
  rebuildCalls = 0;
  /** Runs before each forward (tests pause or inspect the engine here). */
  beforeForward: ((params: ForwardParams) => Promise<void> | void) | null = null;
  /** When set, the next forward throws it. */
  failNext: Error | null = null;
  private readonly stepDelayMs: number;
  private readonly busyUsPerToken: number;
  private disposed = false;

  constructor(options: MockExecutorOptions) {
    const vocabSize = options.vocabSize ?? 64;
    const numLayers = options.numLayers ?? 2;
    this.pageSize = options.pageSize;
    this.numKvPages = options.numKvPages;
    this.kvBytesPerPage = 2 * numLayers * options.pageSize * 8 * 4;
    this.stepDelayMs = options.stepDelayMs ?? 0;
    this.busyUsPerToken = options.busyUsPerToken ?? 0;
    this.slots = new Int32Array(options.numKvPages * options.pageSize).fill(-1);
    this.pageMin = new Int32Array(options.numKvPages);
    this.pageMax = new Int32Array(options.numKvPages);
    this.model = {
      architecture: 'llama',
      vocabSize,
      hiddenSize: 16,
      numLayers,
      numHeads: 2,
      numKvHeads: 1,
      headDim: 8,
      intermediateSize: 32,
      maxPositionEmbeddings: options.maxPositionEmbeddings ?? 4096,
      normEps: 1e-5,
      ropeTheta: 10000,
      hiddenAct: 'silu',
      attentionBias: false,
      mlpBias: false,
      tieWordEmbeddings: true,
      bosTokenId: null,
      eosTokenIds: [0],
      padTokenId: null,
      torchDtype: 'float32',
    };
  }

  async forward(params: ForwardParams): Promise<ForwardResult> {
    if (this.disposed) throw new Error('mock executor: disposed');
    if (this.beforeForward) await this.beforeForward(params);
    if (this.failNext) {
      const error = this.failNext;
      this.failNext = null;
      throw error;
    }
    const numSeqs = params.seqIds.length;
    const { tokenIds, queryIndptr, startPos, pageIndptr, pageIndices, logitsMode } = params;
    if (queryIndptr.length !== numSeqs + 1 || pageIndptr.length !== numSeqs + 1 || startPos.length !== numSeqs || logitsMode.length !== numSeqs) {
      throw new Error('mock executor: CSR arrays disagree on the number of sequences');
    }
    if (queryIndptr[numSeqs] !== tokenIds.length) throw new Error('mock executor: queryIndptr does not cover tokenIds');
    this.calls.push({
      seqIds: [...params.seqIds],
      newTokens: Array.from({ length: numSeqs }, (_, s) => queryIndptr[s + 1] - queryIndptr[s]),
      startPos: [...startPos],
      logitsMode: [...logitsMode],
      collectAttentionStats: params.collectAttentionStats === true,
    });

    // No slot may be written twice, nor a page written by one sequence be read by another.
    const writer = new Map<number, number>();
    for (let s = 0; s < numSeqs; s++) {
      const n = queryIndptr[s + 1] - queryIndptr[s];
      const start = startPos[s];
      const pages = pageIndices.subarray(pageIndptr[s], pageIndptr[s + 1]);
      if (pages.length < Math.ceil((start + n) / this.pageSize)) {
        throw new Error(`mock executor: seq ${params.seqIds[s]} has ${pages.length} pages for ${start + n} positions`);
      }
      for (let p = start; p < start + n; p++) {
        const page = pages[Math.floor(p / this.pageSize)];
        if (page < 0 || page >= this.numKvPages) throw new Error(`mock executor: page ${page} out of range`);
        const key = page * this.pageSize + (p % this.pageSize);
        if (writer.has(key)) throw new Error(`mock executor: slot ${key} written twice in one step`);
        writer.set(key, params.seqIds[s]);
      }
    }
    const writtenPages = new Map<number, number>();
    for (const [key, seq] of writer) writtenPages.set(Math.floor(key / this.pageSize), seq);
    for (let s = 0; s < numSeqs; s++) {
      const pages = pageIndices.subarray(pageIndptr[s], pageIndptr[s + 1]);
      for (const page of pages) {
        const w = writtenPages.get(page);
        if (w !== undefined && w !== params.seqIds[s]) {
          throw new Error(`mock executor: page ${page} written by seq ${w} is in seq ${params.seqIds[s]}'s table`);
        }
      }
    }

    const vocab = this.model.vocabSize;
    const logitsIndptr = new Int32Array(numSeqs + 1);
    for (let s = 0; s < numSeqs; s++) {
      const n = queryIndptr[s + 1] - queryIndptr[s];
      logitsIndptr[s + 1] = logitsIndptr[s] + (logitsMode[s] === 2 ? n : logitsMode[s] === 1 && n > 0 ? 1 : 0);
    }
    const logits = new Float32Array(logitsIndptr[numSeqs] * vocab);
    const attention: AttentionStats[] = [];
    let pagesScanned = 0;
    for (let s = 0; s < numSeqs; s++) {
      const n = queryIndptr[s + 1] - queryIndptr[s];
      const start = startPos[s];
      const pages = pageIndices.subarray(pageIndptr[s], pageIndptr[s + 1]);
      const slotOf = (p: number): number => pages[Math.floor(p / this.pageSize)] * this.pageSize + (p % this.pageSize);
      let h = FNV_OFFSET;
      let lo = Infinity;
      let hi = -Infinity;
      for (let p = 0; p < start; p++) {
        const t = this.slots[slotOf(p)];
        if (t < 0) throw new Error(`mock executor: seq ${params.seqIds[s]} reads unwritten position ${p} (page ${pages[Math.floor(p / this.pageSize)]})`);
        h = foldToken(h, t);
        // Every page read must carry exact metadata (as query-aware selection relies on it).
        lo = Math.min(lo, t);
        hi = Math.max(hi, t);
        if (p % this.pageSize === this.pageSize - 1 || p === start - 1) {
          const page = pages[Math.floor(p / this.pageSize)];
          if (this.pageMin[page] !== lo || this.pageMax[page] !== hi) {
            throw new Error(`mock executor: stale metadata on page ${page} of seq ${params.seqIds[s]} (have [${this.pageMin[page]}, ${this.pageMax[page]}], want [${lo}, ${hi}])`);
          }
          lo = Infinity;
          hi = -Infinity;
        }
      }
      let row = logitsIndptr[s];
      for (let j = 0; j < n; j++) {
        const token = tokenIds[queryIndptr[s] + j];
        const p = start + j;
        const slot = slotOf(p);
        this.slots[slot] = token;
        const page = pages[Math.floor(p / this.pageSize)];
        // Metadata is appended in slot order, as a real executor's bounding boxes are.
        if (p % this.pageSize === 0) {
          this.pageMin[page] = token;
          this.pageMax[page] = token;
        } else {
          this.pageMin[page] = Math.min(this.pageMin[page], token);
          this.pageMax[page] = Math.max(this.pageMax[page], token);
        }
        h = foldToken(h, token);
        if (logitsMode[s] === 2 || (logitsMode[s] === 1 && j === n - 1)) {
          logitsFromHash(h, logits.subarray(row * vocab, (row + 1) * vocab));
          row++;
        }
      }
      pagesScanned += pages.length;
      if (params.collectAttentionStats && n > 0) {
        const ctx = start + n;
        for (let layer = 0; layer < this.model.numLayers; layer++) {
          const mass = new Float32Array(ctx);
          let total = 0;
          for (let p = 0; p < ctx; p++) total += mass[p] = 1 + ((this.slots[slotOf(p)] + layer) % 7);
          for (let p = 0; p < ctx; p++) mass[p] /= total;
          attention.push({ seqId: params.seqIds[s], layer, entropy: Math.log(ctx) / (layer + 1), positionMass: mass });
        }
      }
    }
    if (this.busyUsPerToken > 0) {
      const until = performance.now() + (this.busyUsPerToken * tokenIds.length) / 1000;
      while (performance.now() < until) {
        /* simulated compute */
      }
    }
    if (this.stepDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.stepDelayMs));
    const bytes = pagesScanned * this.kvBytesPerPage;
    const result: ForwardResult = {
      logits,
      logitsIndptr,
      selection: { pagesScanned, pagesSelected: pagesScanned, kvBytesRead: bytes, kvBytesDense: bytes },
    };
    if (params.collectAttentionStats) result.attention = attention;
    return result;
  }

  copyTokens(params: CopyTokensParams): void {
    this.copyCalls++;
    const { srcPages, srcSlots, dstPages, dstSlots } = params;
    // In order, as the contract says (a front-to-back compaction relies on it).
    for (let i = 0; i < srcPages.length; i++) {
      this.slots[dstPages[i] * this.pageSize + dstSlots[i]] = this.slots[srcPages[i] * this.pageSize + srcSlots[i]];
    }
  }

  rebuildPageMetadata(pages: Int32Array, fills?: Int32Array): void {
    this.rebuildCalls++;
    for (let i = 0; i < pages.length; i++) {
      const fill = fills ? fills[i] : this.pageSize;
      let lo = Infinity;
      let hi = -Infinity;
      for (let slot = 0; slot < fill; slot++) {
        const t = this.slots[pages[i] * this.pageSize + slot];
        lo = Math.min(lo, t);
        hi = Math.max(hi, t);
      }
      this.pageMin[pages[i]] = fill > 0 ? lo : 0;
      this.pageMax[pages[i]] = fill > 0 ? hi : 0;
    }
  }

  /** The token ids held at positions [0, numTokens) of a page table. */
  readPositions(pages: readonly number[], numTokens: number): number[] {
    const out: number[] = [];
    for (let p = 0; p < numTokens; p++) out.push(this.slots[pages[Math.floor(p / this.pageSize)] * this.pageSize + (p % this.pageSize)]);
    return out;
  }

  /** Whether each page's metadata is exactly the min/max over its filled slots. */
  metadataExact(pages: readonly number[], numTokens: number): boolean {
    for (let i = 0; i < pages.length; i++) {
      const fill = Math.min(this.pageSize, numTokens - i * this.pageSize);
      if (fill <= 0) break;
      const ids = Array.from({ length: fill }, (_, slot) => this.slots[pages[i] * this.pageSize + slot]);
      if (this.pageMin[pages[i]] !== Math.min(...ids) || this.pageMax[pages[i]] !== Math.max(...ids)) return false;
    }
    return true;
  }

  dispose(): void {
    this.disposed = true;
  }
}
