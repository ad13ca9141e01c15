import { readFileSync } from 'node:fs';
import { CONFIG_FIELDS, ConfigError, DEFAULT_CONFIG, snakeToCamel } from '@tinyserve/core';
import type { ModelType, TinyServeConfig } from '@tinyserve/core';

/** `pageSize` -> `page-size`. */
export function camelToKebab(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** `pageSize` -> `TINYSERVE_PAGE_SIZE`. */
export function envName(field: string): string {
  return `TINYSERVE_${camelToKebab(field).replace(/-/g, '_').toUpperCase()}`;
}

/** Parses a flag or environment string into the type of the config field's default. */
export function parseConfigValue(field: keyof TinyServeConfig, raw: string, source: string): unknown {
  const def = DEFAULT_CONFIG[field];
  const text = raw.trim();
  if (typeof def === 'boolean') {
    if (/^(1|true|yes|on)$/i.test(text)) return true;
    if (/^(0|false|no|off)$/i.test(text)) return false;
    throw new ConfigError(field, `${source}: expected true or false, got '${raw}'`);
  }
  if (Array.isArray(def)) {
    return text === '' ? [] : text.split(',').map((s) => Number(s.trim()));
  }
  if (typeof def === 'number' || def === null) {
    if (def === null && /^(null|none|)$/i.test(text)) return null;
    const n = Number(text);
    if (text === '' || Number.isNaN(n)) {
      // Nullable string-free fields are numeric; anything else is a name.
      if (typeof def === 'number' || field !== 'executor') throw new ConfigError(field, `${source}: expected a number, got '${raw}'`);
    }
    return n;
  }
  return text;
}

/**
 * Config from, lowest to highest precedence: a JSON file (camelCase or the seed's snake_case keys),
 * TINYSERVE_* environment variables, then command-line flags.
 */
export function collectConfig(options: {
  file?: string;
  env?: NodeJS.ProcessEnv;
  flags?: Record<string, string | undefined>;
}): Partial<TinyServeConfig> {
  const out: Record<string, unknown> = {};
  if (options.file) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(options.file, 'utf8'));
    } catch (error) {
      throw new ConfigError('config', `cannot read config file ${options.file}: ${(error as Error).message}`);
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new ConfigError('config', `config file ${options.file} must hold a JSON object`);
    }
    for (const [key, value] of Object.entries(parsed)) out[snakeToCamel(key)] = value;
  }
  const env = options.env ?? {};
  for (const field of CONFIG_FIELDS) {
    const raw = env[envName(field)];
    if (raw !== undefined) out[field] = parseConfigValue(field, raw, envName(field));
  }
  for (const field of CONFIG_FIELDS) {
    const raw = options.flags?.[camelToKebab(field)];
    if (raw !== undefined) out[field] = parseConfigValue(field, raw, `--${camelToKebab(field)}`);
  }
  return out as Partial<TinyServeConfig>;
}

/** parseArgs option specs for every config field, as `--kebab-case` string flags. */
export function configFlagSpecs(): Record<string, { type: 'string' }> {
  const specs: Record<string, { type: 'string' }> = {};
  for (const field of CONFIG_FIELDS) specs[camelToKebab(field)] = { type: 'string' };
  return specs;
}

const MODEL_TYPES: readonly ModelType[] = ['auto', 'gpt2', 'llama'];

/** The `--model-type` flag's value, or null (after saying why on stderr) when it is not one. */
export function modelTypeFlag(raw: string | undefined, stderr: (text: string) => void): ModelType | null {
  const value = raw ?? 'auto';
  if ((MODEL_TYPES as readonly string[]).includes(value)) return value as ModelType;
  stderr(`error: --model-type must be auto, gpt2 or llama, got '${value}'\n`);
  return null;
}
