import { readFileSync } from 'node:fs';
import { CorruptModelFileError, ModelLoadError } from '../errors.js';

/** Reads a JSON file that must hold an object (config.json and friends). */
export function readJsonObject(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ModelLoadError(`cannot read '${path}': ${(err as Error).message}`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new CorruptModelFileError(path, `not valid JSON (${(err as Error).message})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new CorruptModelFileError(path, 'must hold a JSON object');
  }
  return parsed as Record<string, unknown>;
}
