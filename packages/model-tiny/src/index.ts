import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The name the bundled model is listed under (`/v1/models`, statistics). */
export const MODEL_TINY_NAME = 'tinyserve/model-tiny';

// The model files sit in <package>/model: one level above both src/ and dist/.
const PACKAGE_DIR = dirname(dirname(fileURLToPath(import.meta.url)));

/** Absolute path of the bundled model directory (Hugging Face layout). */
export const MODEL_TINY_DIR = join(PACKAGE_DIR, 'model');

export function modelTinyDir(): string {
  return MODEL_TINY_DIR;
}
