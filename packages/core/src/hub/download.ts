import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, open, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
// Type-only: the client itself is imported lazily, when a download actually happens.
import type * as HubApi from '@huggingface/hub';
import { ModelLoadError } from '../errors.js';
import { SAFETENSORS_INDEX_FILE, SAFETENSORS_WEIGHTS_FILE } from '../model/checkpoint.js';
import { GENERATION_CONFIG_FILE, MODEL_CONFIG_FILE } from '../model/load-model.js';
import { TOKENIZER_CONFIG_FILE, TOKENIZER_FILE } from '../model/tokenizer.js';
import { repoCacheDir, shardFilesOfIndex } from './hub-cache.js';
import { isCommitHash } from './model-id.js';

/** Reported while a file downloads: at 0 bytes, after every chunk, and once complete. */
export interface DownloadProgressEvent {
  /** The file's path in the repo, e.g. `model.safetensors`. */
  file: string;
  loadedBytes: number;
  totalBytes: number;
}

export type DownloadProgressCallback = (event: DownloadProgressEvent) => void;

export interface DownloadModelParams {
  repoId: string;
  /** Branch, tag or commit hash. */
  revision: string;
  cacheDir: string;
  /** Hub base URL without a trailing slash, e.g. `https://huggingface.co`. */
  endpoint: string;
  /** Access token (`hf_...`) for private or gated repos. */
  token?: string;
  onProgress?: DownloadProgressCallback;
}

export interface DownloadModelResult {
  commit: string;
  /** `snapshots/<commit>` in the cache: a complete model directory. */
  dir: string;
  /** Files fetched over the network by this call (those already cached are not listed). */
  downloadedFiles: string[];
}

const CHAT_TEMPLATE_FILE = 'chat_template.jinja';
const OPTIONAL_FILES = [GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE];
// A repo path we are willing to join onto the cache: plain names, no '..', nothing absolute.
const SAFE_REPO_PATH = /^(?!.*(?:^|\/)\.\.?(?:\/|$))[\w.-]+(?:\/[\w.-]+)*$/;
const SAFE_ETAG = /^[\w.-]+$/;

type HubModule = typeof HubApi;
type FileInfo = NonNullable<Awaited<ReturnType<HubModule['fileDownloadInfo']>>>;

/** What the last hub response said beyond its body (the client does not surface these headers). */
interface LastResponse {
  commit: string | null;
  errorCode: string | null;
}

/** `W/"abc"` → `abc`: huggingface_hub names blobs by the bare etag. */
function normalizeEtag(etag: string): string {
  return etag.replace(/^W\//, '').replace(/"/g, '');
}

function errorText(error: unknown): string {
  if (error instanceof Error) {
    const cause = error.cause as { code?: unknown; message?: unknown } | undefined;
    const detail = typeof cause?.code === 'string' ? cause.code : typeof cause?.message === 'string' ? cause.message : null;
    return detail ? `${error.message} (${detail})` : error.message;
  }
  return String(error);
}

/**
 * Downloads the files a TinyServe model needs from a Hugging Face hub into the hub cache
 * layout (`refs/<revision>`, `snapshots/<commit>/<file>` symlinked into `blobs/<etag>`), so later
 * runs find it offline and other Hugging Face tools share it. Files already in the snapshot are
 * not fetched again. Fetches config.json, tokenizer.json and the safetensors weights (single
 * file, or the index and its shards), plus generation_config.json, tokenizer_config.json and
 * chat_template.jinja when the repo has them.
 */
export async function downloadModelToCache(params: DownloadModelParams): Promise<DownloadModelResult> {
  const { repoId, revision, endpoint, token, onProgress } = params;
  const hub: HubModule = await import('@huggingface/hub');
  const repoDir = repoCacheDir(params.cacheDir, repoId);
  const repo = { type: 'model' as const, name: repoId };
  const last: LastResponse = { commit: null, errorCode: null };
  const trackingFetch: typeof fetch = async (input, init) => {
    last.commit = null;
    last.errorCode = null;
    const response = await fetch(input, init);
    last.commit = response.headers.get('x-repo-commit');
    last.errorCode = response.headers.get('x-error-code');
    return response;
  };
  const where = `'${repoId}'${revision === 'main' ? '' : ` (revision ${revision})`} on ${endpoint}`;
  const missingOnHub = (file: string, extra = ''): ModelLoadError =>
    new ModelLoadError(`${where} has no ${file}${extra}; TinyServe needs config.json, tokenizer.json and safetensors weights`);

  const explain = (error: unknown, file: string): ModelLoadError => {
    if (error instanceof ModelLoadError) return error;
    if (error instanceof hub.HubApiError) {
      const status = error.statusCode;
      const tokenHint = token ? ' (the token in use was refused or lacks access)' : ': if it is private or gated, set HF_TOKEN';
      let message: string;
      if (last.errorCode === 'RepoNotFound') message = `model '${repoId}' was not found on ${endpoint}${tokenHint}`;
      else if (last.errorCode === 'RevisionNotFound') message = `revision '${revision}' of '${repoId}' was not found on ${endpoint}`;
      else if (last.errorCode === 'GatedRepo') message = `'${repoId}' is gated: accept its terms on its hub page, then set HF_TOKEN to a token of that account`;
      else if (status === 401 || status === 403) message = `access to ${where} was denied (HTTP ${status})${tokenHint}`;
      else if (status === 404) message = `${where} answered 404 for ${file}${tokenHint}`;
      else message = `${where} answered HTTP ${status} for ${file}: ${error.message}`;
      return new ModelLoadError(message, { cause: error });
    }
    if (error instanceof hub.InvalidApiResponseFormatError) {
      return new ModelLoadError(`unexpected answer from ${endpoint} for ${file} of '${repoId}': ${error.message}`, { cause: error });
    }
    const text = errorText(error);
    if (/fetch failed|ECONNREFUSED|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|ECONNRESET|terminated|socket/i.test(text)) {
      return new ModelLoadError(
        `could not download ${file} of ${where}: ${text}. Check the network (or HF_ENDPOINT / the endpoint option); ` +
          'files already downloaded stay in the cache and are not fetched again',
        { cause: error },
      );
    }
    return new ModelLoadError(`downloading ${file} of ${where} failed: ${text}`, { cause: error });
  };

  const probe = async (file: string, rev: string): Promise<FileInfo | null> => {
    try {
      return await hub.fileDownloadInfo({ repo, path: file, revision: rev, hubUrl: endpoint, accessToken: token, fetch: trackingFetch });
    } catch (error) {
      throw explain(error, file);
    }
  };

  // Pin every file to one commit, as huggingface_hub's snapshot_download does: a branch that
  // moves mid-download must not mix two versions. config.json is small and never redirected
  // to a CDN, so its answer carries X-Repo-Commit.
  let commit: string;
  let configInfo: FileInfo | null = null;
  if (isCommitHash(revision)) {
    commit = revision;
  } else {
    configInfo = await probe(MODEL_CONFIG_FILE, revision);
    if (!configInfo) throw missingOnHub(MODEL_CONFIG_FILE);
    if (!last.commit || !isCommitHash(last.commit)) {
      throw new ModelLoadError(`${endpoint} did not report which commit revision '${revision}' of '${repoId}' is (no X-Repo-Commit header)`);
    }
    commit = last.commit;
  }
  const snapshotDir = join(repoDir, 'snapshots', commit);
  const downloadedFiles: string[] = [];

  /** Makes `file` present in the snapshot; false when the repo has no such (optional) file. */
  const ensure = async (file: string, required: boolean, knownInfo: FileInfo | null = null): Promise<boolean> => {
    if (!SAFE_REPO_PATH.test(file)) throw new ModelLoadError(`${where}: refusing the file name '${file}' (it would leave the cache directory)`);
    const pointer = join(snapshotDir, file);
    if (existsSync(pointer)) return true;
    const noExist = join(repoDir, '.no_exist', commit, file);
    if (!required && existsSync(noExist)) return false;
    const info = knownInfo ?? (await probe(file, commit));
    if (!info) {
      if (required) throw missingOnHub(file);
      // huggingface_hub's marker for "the repo has no such file at this commit".
      await mkdir(dirname(noExist), { recursive: true });
      await writeFile(noExist, '');
      return false;
    }
    const etag = normalizeEtag(info.etag);
    if (!SAFE_ETAG.test(etag)) throw new ModelLoadError(`${endpoint} gave ${file} an unusable ETag '${info.etag}'`);
    const blobPath = join(repoDir, 'blobs', etag);
    if (!existsSync(blobPath)) {
      await mkdir(dirname(blobPath), { recursive: true });
      try {
        await fetchBlob(hub, { repo, file, commit, endpoint, token, fetch: trackingFetch, info, etag, blobPath, onProgress });
      } catch (error) {
        throw explain(error, file);
      }
      downloadedFiles.push(file);
    }
    await linkPointer(blobPath, pointer);
    return true;
  };

  await ensure(MODEL_CONFIG_FILE, true, configInfo);
  await ensure(TOKENIZER_FILE, true);
  for (const file of OPTIONAL_FILES) await ensure(file, false);
  const hasIndex = existsSync(join(snapshotDir, SAFETENSORS_INDEX_FILE));
  if (hasIndex || !(await ensure(SAFETENSORS_WEIGHTS_FILE, false))) {
    if (!(await ensure(SAFETENSORS_INDEX_FILE, false))) {
      throw missingOnHub(`${SAFETENSORS_WEIGHTS_FILE} or ${SAFETENSORS_INDEX_FILE}`, ' (PyTorch .bin checkpoints are not supported)');
    }
    const shards = shardFilesOfIndex(join(snapshotDir, SAFETENSORS_INDEX_FILE));
    if (!shards) throw new ModelLoadError(`${where}: ${SAFETENSORS_INDEX_FILE} has no readable weight_map`);
    for (const shard of shards) await ensure(shard, true);
  }

  // The ref is written last: a cache entry with a ref is one whose download finished.
  if (!isCommitHash(revision)) {
    const refPath = join(repoDir, 'refs', revision);
    await mkdir(dirname(refPath), { recursive: true });
    await writeFile(refPath, commit);
  }
  return { commit, dir: snapshotDir, downloadedFiles };
}

interface FetchBlobParams {
  repo: { type: 'model'; name: string };
  file: string;
  commit: string;
  endpoint: string;
  token: string | undefined;
  fetch: typeof fetch;
  info: FileInfo;
  etag: string;
  blobPath: string;
  onProgress: DownloadProgressCallback | undefined;
}

/** Streams one file into `blobs/<etag>` through a temporary name, checking its size and, for LFS files, its sha256. */
async function fetchBlob(hub: HubModule, p: FetchBlobParams): Promise<void> {
  const blob = await hub.downloadFile({
    repo: p.repo,
    path: p.file,
    revision: p.commit,
    hubUrl: p.endpoint,
    accessToken: p.token,
    fetch: p.fetch,
    downloadInfo: p.info,
  });
  if (!blob) throw new ModelLoadError(`${p.endpoint} no longer has ${p.file} of '${p.repo.name}' at ${p.commit}`);
  const total = p.info.size;
  // A unique name per process: two processes downloading the same model must not share a file.
  const temp = `${p.blobPath}.${process.pid}.${randomBytes(4).toString('hex')}.incomplete`;
  // LFS files are named by the sha256 of their content; xet files by a different hash.
  const sha256 = !p.info.xet && /^[0-9a-f]{64}$/.test(p.etag) ? createHash('sha256') : null;
  const handle = await open(temp, 'w');
  let loaded = 0;
  try {
    p.onProgress?.({ file: p.file, loadedBytes: 0, totalBytes: total });
    const reader = blob.stream().getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      await handle.write(value);
      sha256?.update(value);
      loaded += value.byteLength;
      p.onProgress?.({ file: p.file, loadedBytes: loaded, totalBytes: total });
    }
    await handle.close();
    if (loaded !== total) throw new ModelLoadError(`${p.file} of '${p.repo.name}': received ${loaded} bytes, expected ${total}`);
    if (sha256) {
      const digest = sha256.digest('hex');
      if (digest !== p.etag) throw new ModelLoadError(`${p.file} of '${p.repo.name}': sha256 ${digest} does not match the hub's ${p.etag}`);
    }
    await rename(temp, p.blobPath);
  } catch (error) {
    await handle.close().catch(() => {});
    await rm(temp, { force: true });
    throw error;
  }
}

/** `snapshots/<commit>/<file>` → `../../blobs/<etag>` (relative, so the cache can move); a copy where symlinks are not allowed. */
async function linkPointer(blobPath: string, pointer: string): Promise<void> {
  await mkdir(dirname(pointer), { recursive: true });
  await rm(pointer, { force: true });
  try {
    await symlink(relative(dirname(pointer), blobPath), pointer);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EACCES') throw error;
    await copyFile(blobPath, pointer);
  }
}
