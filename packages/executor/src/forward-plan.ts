import { RequestValidationError } from '@tinyserve/core';
import type { ForwardParams } from '@tinyserve/core';

/** What {@link planForward} checks `ForwardParams` against. */
export interface ForwardLimits {
  vocabSize: number;
  pageSize: number;
  numKvPages: number;
  /** Longest context the positions may reach (learned position tables), or null for none. */
  maxPositions: number | null;
}

/** A validated step, flattened per token for the kernels. */
export interface ForwardPlan {
  numSeqs: number;
  numTokens: number;
  /** Per token: its sequence index. */
  tokenSeq: Int32Array;
  /** Per token: its absolute position. */
  tokenPos: Int32Array;
  /** Per sequence: context length after the step (`startPos + newTokens`). */
  contextLens: Int32Array;
  /** Rows (token indices) whose logits are returned, in output order. */
  logitRows: Int32Array;
  /** [numSeqs + 1] offsets into `logitRows` per sequence. */
  logitsIndptr: Int32Array;
}

const ARRAY_FIELDS = [
  ['tokenIds', Int32Array],
  ['queryIndptr', Int32Array],
  ['startPos', Int32Array],
  ['pageIndptr', Int32Array],
  ['pageIndices', Int32Array],
  ['logitsMode', Uint8Array],
  ['seqIds', Int32Array],
] as const;

function fail(field: string, message: string): never {
  throw new RequestValidationError(field, message);
}

function checkIndptr(field: string, indptr: Int32Array, total: number, totalName: string): void {
  if (indptr[0] !== 0) fail(`${field}[0]`, `must be 0, got ${indptr[0]}`);
  for (let s = 0; s + 1 < indptr.length; s++) {
    if (indptr[s + 1] < indptr[s]) fail(`${field}[${s + 1}]`, `${indptr[s + 1]} is less than ${field}[${s}] = ${indptr[s]}`);
  }
  const last = indptr[indptr.length - 1];
  if (last !== total) fail(`${field}[${indptr.length - 1}]`, `must equal ${totalName} = ${total}, got ${last}`);
}

/**
 * Validates one step's `ForwardParams` against the model and cache, so that the kernels
 * never read or write outside their buffers, and flattens it per token.
 */
export function planForward(params: ForwardParams, limits: ForwardLimits): ForwardPlan {
  if (params === null || typeof params !== 'object') fail('params', 'must be a ForwardParams object');
  for (const [field, type] of ARRAY_FIELDS) {
    if (!(params[field] instanceof type)) fail(field, `must be an ${type.name}`);
  }
  const { tokenIds, queryIndptr, startPos, pageIndptr, pageIndices, logitsMode, seqIds } = params;
  const numSeqs = seqIds.length;
  if (numSeqs === 0) fail('seqIds', 'a step needs at least one sequence');
  for (const [field, arr, expected] of [
    ['queryIndptr', queryIndptr, numSeqs + 1],
    ['pageIndptr', pageIndptr, numSeqs + 1],
    ['startPos', startPos, numSeqs],
    ['logitsMode', logitsMode, numSeqs],
  ] as const) {
    if (arr.length !== expected) {
      fail(field, `has length ${arr.length}, expected ${expected} (${numSeqs} sequences in seqIds)`);
    }
  }
  const numTokens = tokenIds.length;
  checkIndptr('queryIndptr', queryIndptr, numTokens, 'tokenIds.length');
  checkIndptr('pageIndptr', pageIndptr, pageIndices.length, 'pageIndices.length');

  const { vocabSize, pageSize, numKvPages, maxPositions } = limits;
  for (let t = 0; t < numTokens; t++) {
    const id = tokenIds[t];
    if (id < 0 || id >= vocabSize) fail(`tokenIds[${t}]`, `token id ${id} is outside the vocabulary [0, ${vocabSize})`);
  }
  for (let i = 0; i < pageIndices.length; i++) {
    const page = pageIndices[i];
    if (page < 0 || page >= numKvPages) {
      fail(`pageIndices[${i}]`, `page ${page} is outside the KV cache [0, ${numKvPages})`);
    }
  }

  const seen = new Set<number>();
  const written = new Set<number>();
  const contextLens = new Int32Array(numSeqs);
  let numLogitRows = 0;
  for (let s = 0; s < numSeqs; s++) {
    if (seen.has(seqIds[s])) fail(`seqIds[${s}]`, `sequence id ${seqIds[s]} appears twice in one step`);
    seen.add(seqIds[s]);
    const newTokens = queryIndptr[s + 1] - queryIndptr[s];
    if (newTokens === 0) fail(`queryIndptr[${s + 1}]`, `sequence ${seqIds[s]} has no new tokens`);
    const start = startPos[s];
    if (start < 0) fail(`startPos[${s}]`, `must be >= 0, got ${start}`);
    const ctx = start + newTokens;
    if (maxPositions !== null && ctx > maxPositions) {
      fail(`startPos[${s}]`, `sequence ${seqIds[s]} would reach ${ctx} tokens, beyond the model's ${maxPositions} positions`);
    }
    contextLens[s] = ctx;
    const needed = Math.ceil(ctx / pageSize);
    const owned = pageIndptr[s + 1] - pageIndptr[s];
    if (owned < needed) {
      fail(
        'pageIndices',
        `sequence ${seqIds[s]} needs ${needed} pages for ${ctx} positions (pageSize ${pageSize}) but has ${owned}`,
      );
    }
    // A page listed twice would alias two positions; pages shared across sequences (prefix
    // reuse) are fine, but no two sequences may write the same slot in one step.
    const own = new Set<number>();
    for (let i = pageIndptr[s]; i < pageIndptr[s] + needed; i++) {
      if (own.has(pageIndices[i])) fail(`pageIndices[${i}]`, `page ${pageIndices[i]} is listed twice for sequence ${seqIds[s]}`);
      own.add(pageIndices[i]);
    }
    for (let pos = start; pos < ctx; pos++) {
      const slot = pageIndices[pageIndptr[s] + Math.floor(pos / pageSize)] * pageSize + (pos % pageSize);
      if (written.has(slot)) {
        fail('pageIndices', `sequence ${seqIds[s]} writes position ${pos} into a page slot another sequence writes this step`);
      }
      written.add(slot);
    }
    const mode = logitsMode[s];
    if (mode > 2) fail(`logitsMode[${s}]`, `must be 0 (none), 1 (last token) or 2 (all new tokens), got ${mode}`);
    numLogitRows += mode === 0 ? 0 : mode === 1 ? 1 : newTokens;
  }

  const tokenSeq = new Int32Array(numTokens);
  const tokenPos = new Int32Array(numTokens);
  const logitRows = new Int32Array(numLogitRows);
  const logitsIndptr = new Int32Array(numSeqs + 1);
  let r = 0;
  for (let s = 0; s < numSeqs; s++) {
    const first = queryIndptr[s];
    const end = queryIndptr[s + 1];
    for (let t = first; t < end; t++) {
      tokenSeq[t] = s;
      tokenPos[t] = startPos[s] + (t - first);
    }
    if (logitsMode[s] === 1) logitRows[r++] = end - 1;
    else if (logitsMode[s] === 2) for (let t = first; t < end; t++) logitRows[r++] = t;
    logitsIndptr[s + 1] = r;
  }
  return { numSeqs, numTokens, tokenSeq, tokenPos, contextLens, logitRows, logitsIndptr };
}
