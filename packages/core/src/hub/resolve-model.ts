import { readFileSync, statSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { ConfigError, ModelLoadError } from '../errors.js';
import { downloadModelToCache } from './download.js';
import type { DownloadProgressCallback } from './download.js';
import { findCachedSnapshot, hfHome, hubCacheDir, missingModelFiles } from './hub-cache.js';
import type { HubEnv } from './hub-cache.js';
import { DEFAULT_REVISION, describeInvalidModelId, parseModelId } from './model-id.js';

export const DEFAULT_HUB_ENDPOINT = 'https://huggingface.co';

export interface ResolveModelOptions {
  /**
   * Fetch a model that is not in the local cache from the hub (default false: a library call
   * or a test never touches the network unless asked to).
   */
  allowDownload?: boolean;
  /** Hub cache directory (default: `$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`). */
  cacheDir?: string;
  /** Hub base URL (default: `$HF_ENDPOINT`, else https://huggingface.co). */
  endpoint?: string;
  /** Access token for private or gated repos (default: `$HF_TOKEN`, else the token file `hf auth login` wrote). */
  token?: string;
  /** Where HF_* variables are read from (default `process.env`). */
  env?: HubEnv;
  /** Called while files download (not for models already on disk). */
  onProgress?: DownloadProgressCallback;
}

export interface ResolveModelResult {
  /** A model directory to hand to `loadModel`. */
  dir: string;
  /** `path`: a local directory given as is; `cache`: found in the hub cache; `download`: fetched now. */
  source: 'path' | 'cache' | 'download';
  /** `org/name` for hub models, null for paths. */
  repoId: string | null;
  revision: string | null;
  commit: string | null;
  /** Files this call fetched over the network. */
  downloadedFiles: string[];
}

const TRUE = /^(1|true|yes|on)$/i;

function statOrNull(path: string): ReturnType<typeof statSync> | null {
  try {
    return statSync(path);
  } catch {
    return null;
  }
}

/** Text that can only be meant as a filesystem path, never as `org/name`. */
function looksLikePath(text: string): boolean {
  return isAbsolute(text) || text.startsWith('.') || text.startsWith('~') || text.includes('\\') || text.endsWith('/') || text.split('/').length > 2;
}

function hubEndpoint(raw: string, source: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError('endpoint', `${source} must be an http(s) URL, got '${raw}'`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError('endpoint', `${source} must be an http(s) URL, got '${raw}'`);
  return raw.replace(/\/+$/, '');
}

function hubToken(options: ResolveModelOptions, env: HubEnv): string | undefined {
  let token = options.token ?? env.HF_TOKEN ?? env.HUGGING_FACE_HUB_TOKEN;
  let source = options.token !== undefined ? 'the token option' : 'HF_TOKEN';
  if (token === undefined) {
    const file = env.HF_TOKEN_PATH ? resolve(env.HF_TOKEN_PATH) : join(hfHome(env), 'token');
    try {
      token = readFileSync(file, 'utf8');
      source = file;
    } catch {
      return undefined;
    }
  }
  token = token.trim();
  if (token === '') return undefined;
  if (!token.startsWith('hf_')) throw new ConfigError('token', `the Hugging Face access token from ${source} must start with 'hf_'`);
  return token;
}

function downloadHint(repoId: string, offline: boolean): string {
  return (
    `To fetch it, allow downloads (--allow-download or TINYSERVE_ALLOW_DOWNLOAD=1 on the command line, ` +
    `{ allowDownload: true } in the library)${offline ? ' and unset HF_HUB_OFFLINE' : ''}, or run \`hf download ${repoId}\`, ` +
    'or put the files (config.json, tokenizer.json, model.safetensors) in a directory and pass its path'
  );
}

/**
 * Turns a `--model` value into a model directory. An existing directory is used as is.
 * Otherwise the text is a Hugging Face id, `org/name` or `org/name@revision` (branch, tag or
 * commit), looked up in the local hub cache (`models--org--name/refs/<revision>` →
 * `snapshots/<commit>/`); when it is missing or incomplete there and `allowDownload` is set
 * (and HF_HUB_OFFLINE is not), its files are downloaded into that cache.
 */
export async function resolveModel(pathOrId: string, options: ResolveModelOptions = {}): Promise<ResolveModelResult> {
  if (pathOrId.trim() === '') throw new ModelLoadError('the model path or Hugging Face id is empty');
  const local = statOrNull(pathOrId);
  if (local?.isDirectory()) {
    return { dir: resolve(pathOrId), source: 'path', repoId: null, revision: null, commit: null, downloadedFiles: [] };
  }
  if (local) throw new ModelLoadError(`'${pathOrId}' is a file; expected a model directory (config.json, *.safetensors, tokenizer.json) or a Hugging Face id`);
  if (looksLikePath(pathOrId)) throw new ModelLoadError(`model directory '${pathOrId}' does not exist`);
  const id = parseModelId(pathOrId);
  if (!id) {
    throw new ModelLoadError(
      `'${pathOrId}' is neither an existing model directory nor a valid Hugging Face model id ` +
        `(org/name or org/name@revision): ${describeInvalidModelId(pathOrId)}`,
    );
  }
  const { repoId, revision } = id;
  const env = options.env ?? process.env;
  const cacheDir = options.cacheDir !== undefined ? resolve(options.cacheDir) : hubCacheDir(env);
  const offline = TRUE.test(env.HF_HUB_OFFLINE ?? '');
  const revisionText = revision === DEFAULT_REVISION ? '' : ` (revision ${revision})`;

  const cached = findCachedSnapshot(cacheDir, repoId, revision);
  const missing = cached ? missingModelFiles(cached.dir) : null;
  if (cached && missing?.length === 0) {
    return { dir: cached.dir, source: 'cache', repoId, revision, commit: cached.commit, downloadedFiles: [] };
  }
  if (!options.allowDownload || offline) {
    const what = cached
      ? `the Hugging Face cache holds '${repoId}'${revisionText} at ${cached.dir}, but without ${missing!.join(', ')}`
      : `'${pathOrId}' is not a local directory, and Hugging Face model '${repoId}'${revisionText} is not in the cache at ${cacheDir}`;
    throw new ModelLoadError(`${what}. ${downloadHint(repoId, offline)}`);
  }

  const endpoint = options.endpoint !== undefined ? hubEndpoint(options.endpoint, 'the endpoint option') : hubEndpoint(env.HF_ENDPOINT || DEFAULT_HUB_ENDPOINT, 'HF_ENDPOINT');
  const result = await downloadModelToCache({
    repoId,
    revision,
    cacheDir,
    endpoint,
    token: hubToken(options, env),
    onProgress: options.onProgress,
  });
  return { dir: result.dir, source: 'download', repoId, revision, commit: result.commit, downloadedFiles: result.downloadedFiles };
}
