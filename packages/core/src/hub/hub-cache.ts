import { existsSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { SAFETENSORS_INDEX_FILE, SAFETENSORS_WEIGHTS_FILE } from '../model/checkpoint.js';
import { MODEL_CONFIG_FILE } from '../model/load-model.js';
import { TOKENIZER_FILE } from '../model/tokenizer.js';
import { isCommitHash, repoFolderName } from './model-id.js';

/** Environment variables the hub code reads (a subset of `process.env`). */
export type HubEnv = Record<string, string | undefined>;

/**
 * The Hugging Face hub cache directory, as huggingface_hub computes it: `$HF_HUB_CACHE`, else
 * `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
 */
export function hubCacheDir(env: HubEnv = process.env): string {
  if (env.HF_HUB_CACHE) return resolve(env.HF_HUB_CACHE);
  return join(hfHome(env), 'hub');
}

/** `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface` (where `hf auth login` keeps its token). */
export function hfHome(env: HubEnv = process.env): string {
  if (env.HF_HOME) return resolve(env.HF_HOME);
  return join(env.XDG_CACHE_HOME ? resolve(env.XDG_CACHE_HOME) : join(homedir(), '.cache'), 'huggingface');
}

/** Where one repo's refs/, snapshots/ and blobs/ live inside the cache. */
export function repoCacheDir(cacheDir: string, repoId: string): string {
  return join(cacheDir, repoFolderName(repoId));
}

export interface CachedSnapshot {
  /** The commit the revision points at (the revision itself when it is a commit hash). */
  commit: string;
  /** `snapshots/<commit>` (it may not exist yet). */
  dir: string;
}

/**
 * Which commit a revision names in the cache: a commit hash names itself; a branch or tag is
 * looked up in `refs/<revision>`. Null when the cache knows nothing of the revision.
 */
export function findCachedSnapshot(cacheDir: string, repoId: string, revision: string): CachedSnapshot | null {
  const repoDir = repoCacheDir(cacheDir, repoId);
  let commit: string;
  if (isCommitHash(revision)) {
    commit = revision;
  } else {
    try {
      commit = readFileSync(join(repoDir, 'refs', revision), 'utf8').trim();
    } catch {
      return null;
    }
    if (!isCommitHash(commit)) return null;
  }
  const dir = join(repoDir, 'snapshots', commit);
  return isDirectory(dir) ? { commit, dir } : null;
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** The shard files a `model.safetensors.index.json` names, or null when it cannot be read. */
export function shardFilesOfIndex(indexPath: string): string[] | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(indexPath, 'utf8'));
  } catch {
    return null;
  }
  const weightMap = (parsed as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) return null;
  const shards = new Set<string>();
  for (const shard of Object.values(weightMap as Record<string, unknown>)) if (typeof shard === 'string') shards.add(shard);
  return [...shards];
}

/**
 * The files a model directory needs and lacks: config.json, tokenizer.json and the weights
 * (model.safetensors, or the index and every shard it names). A symlink whose blob was deleted
 * counts as missing. An unreadable index is left for `loadModel` to report precisely.
 */
export function missingModelFiles(dir: string): string[] {
  const missing: string[] = [];
  for (const file of [MODEL_CONFIG_FILE, TOKENIZER_FILE]) if (!existsSync(join(dir, file))) missing.push(file);
  if (existsSync(join(dir, SAFETENSORS_WEIGHTS_FILE))) return missing;
  const indexPath = join(dir, SAFETENSORS_INDEX_FILE);
  if (!existsSync(indexPath)) return [...missing, SAFETENSORS_WEIGHTS_FILE];
  for (const shard of shardFilesOfIndex(indexPath) ?? []) if (!existsSync(join(dir, shard))) missing.push(shard);
  return missing;
}
