import { mkdirSync, mkdtempSync, readlinkSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, ModelLoadError } from '../errors.js';
import { loadModel } from '../model/load-model.js';
import { readFixtureFiles, sha256Hex } from './__fixtures__/fake-hub.js';
import { hubCacheDir, missingModelFiles } from './hub-cache.js';
import { describeInvalidModelId, parseModelId, repoFolderName } from './model-id.js';
import { resolveModel } from './resolve-model.js';

const HF = fileURLToPath(new URL('../../../../__fixtures__/hf/', import.meta.url));
const COMMIT_A = 'a'.repeat(40);
const COMMIT_B = '0123456789abcdef0123456789abcdef01234567';

/** Lays a fixture model out as huggingface_hub does: blobs named by sha256, snapshot files symlinked to them. */
function addToCache(cacheDir: string, repoId: string, commit: string, fixture: string, ref: string | null = 'main'): string {
  const repoDir = join(cacheDir, repoFolderName(repoId));
  const snapshot = join(repoDir, 'snapshots', commit);
  mkdirSync(join(repoDir, 'blobs'), { recursive: true });
  mkdirSync(snapshot, { recursive: true });
  for (const [file, data] of readFixtureFiles(`${HF}${fixture}`)) {
    const sha = sha256Hex(data);
    writeFileSync(join(repoDir, 'blobs', sha), data);
    symlinkSync(`../../blobs/${sha}`, join(snapshot, file));
  }
  if (ref !== null) {
    mkdirSync(join(repoDir, 'refs', ...ref.split('/').slice(0, -1)), { recursive: true });
    writeFileSync(join(repoDir, 'refs', ref), commit);
  }
  return snapshot;
}

async function failure(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected a failure');
}

let cacheDir: string;
beforeEach(() => {
  cacheDir = mkdtempSync(join(tmpdir(), 'tinyserve-hub-cache-'));
});
afterEach(() => rmSync(cacheDir, { recursive: true, force: true }));

describe('model ids', () => {
  it('parses org/name, bare names and @revision', () => {
    expect(parseModelId('acme/tiny-model.v2')).toEqual({ repoId: 'acme/tiny-model.v2', revision: 'main' });
    expect(parseModelId('gpt2')).toEqual({ repoId: 'gpt2', revision: 'main' });
    expect(parseModelId('acme/tiny@v1.0')).toEqual({ repoId: 'acme/tiny', revision: 'v1.0' });
    expect(parseModelId('acme/tiny@refs/pr/3')).toEqual({ repoId: 'acme/tiny', revision: 'refs/pr/3' });
    expect(repoFolderName('acme/tiny')).toBe('models--acme--tiny');
  });

  it.each([
    ['acme//tiny', /empty/],
    ['acme/-tiny', /start or end/],
    ['acme/ti ny', /letters, digits/],
    ['acme/ti--ny', /'--'/],
    ['acme/tiny.git', /\.git/],
    ['acme/tiny@', /revision.*empty/],
    ['acme/tiny@../x', /start with '\.'/],
    ['acme/tiny@a b', /whitespace/],
  ])('rejects %s', (text, reason) => {
    expect(parseModelId(text)).toBeNull();
    expect(describeInvalidModelId(text)).toMatch(reason);
  });
});

describe('hubCacheDir', () => {
  it('follows HF_HUB_CACHE, then HF_HOME, then XDG_CACHE_HOME, then ~/.cache', () => {
    expect(hubCacheDir({ HF_HUB_CACHE: '/x/hub-cache', HF_HOME: '/y' })).toBe('/x/hub-cache');
    expect(hubCacheDir({ HF_HOME: '/y' })).toBe('/y/hub');
    expect(hubCacheDir({ XDG_CACHE_HOME: '/z' })).toBe('/z/huggingface/hub');
    expect(hubCacheDir({})).toBe(join(homedir(), '.cache', 'huggingface', 'hub'));
  });
});

describe('resolveModel from a local path or the hub cache', () => {
  it('uses an existing directory as is', async () => {
    const result = await resolveModel(`${HF}gpt2-tiny`, { env: { HF_HUB_CACHE: cacheDir } });
    expect(result).toMatchObject({ dir: `${HF}gpt2-tiny`.replace(/\/$/, ''), source: 'path', repoId: null });
  });

  it('finds org/name through refs/main and a snapshot of blob symlinks, and the model loads from there', async () => {
    const snapshot = addToCache(cacheDir, 'acme/gpt2-tiny', COMMIT_A, 'gpt2-tiny');
    expect(readlinkSync(join(snapshot, 'model.safetensors'))).toMatch(/^\.\.\/\.\.\/blobs\/[0-9a-f]{64}$/);
    const result = await resolveModel('acme/gpt2-tiny', { env: { HF_HUB_CACHE: cacheDir } });
    expect(result).toEqual({ dir: snapshot, source: 'cache', repoId: 'acme/gpt2-tiny', revision: 'main', commit: COMMIT_A, downloadedFiles: [] });
    const model = await loadModel(result.dir);
    expect(model.name).toBe('acme/gpt2-tiny');
    expect(model.config.architecture).toBe('gpt2');
  });

  it('takes the cache from HF_HOME and the options, and an explicit revision by tag or commit', async () => {
    const hub = join(cacheDir, 'home', 'hub');
    addToCache(hub, 'acme/llama', COMMIT_A, 'llama-tiny-gqa');
    const v1 = addToCache(hub, 'acme/llama', COMMIT_B, 'llama-tiny-mqa', 'v1');
    expect((await resolveModel('acme/llama', { env: { HF_HOME: join(cacheDir, 'home') } })).commit).toBe(COMMIT_A);
    const tagged = await resolveModel('acme/llama@v1', { cacheDir: hub, env: {} });
    expect(tagged).toMatchObject({ dir: v1, revision: 'v1', commit: COMMIT_B });
    const pinned = await resolveModel(`acme/llama@${COMMIT_B}`, { cacheDir: hub, env: {} });
    expect(pinned).toMatchObject({ dir: v1, revision: COMMIT_B, commit: COMMIT_B });
    expect((await loadModel(pinned.dir)).config.numKvHeads).toBe(1);
  });

  it('resolves a sharded checkpoint only when every shard is there', async () => {
    const snapshot = addToCache(cacheDir, 'acme/sharded', COMMIT_A, 'llama-tiny-gqa-sharded');
    expect(missingModelFiles(snapshot)).toEqual([]);
    expect((await resolveModel('acme/sharded', { cacheDir, env: {} })).source).toBe('cache');
    // A snapshot symlink whose blob was removed is as good as missing.
    const shard = join(snapshot, 'model-00003-of-00004.safetensors');
    unlinkSync(join(snapshot, readlinkSync(shard)));
    const error = await failure(resolveModel('acme/sharded', { cacheDir, env: {} }));
    expect(error).toBeInstanceOf(ModelLoadError);
    expect(error.message).toMatch(/without model-00003-of-00004\.safetensors.*--allow-download/);
  });

  it('explains how to get a model that is not in the cache', async () => {
    const error = await failure(resolveModel('acme/absent', { cacheDir, env: {} }));
    expect(error).toBeInstanceOf(ModelLoadError);
    expect(error.message).toContain(`is not in the cache at ${cacheDir}`);
    expect(error.message).toMatch(/--allow-download.*TINYSERVE_ALLOW_DOWNLOAD=1.*allowDownload: true.*hf download acme\/absent.*directory/);
    const offline = await failure(resolveModel('acme/absent', { cacheDir, env: { HF_HUB_OFFLINE: '1' }, allowDownload: true }));
    expect(offline.message).toMatch(/unset HF_HUB_OFFLINE/);
    addToCache(cacheDir, 'acme/other', COMMIT_A, 'gpt2-tiny');
    expect((await failure(resolveModel('acme/other@v2', { cacheDir, env: {} }))).message).toMatch(/'acme\/other' \(revision v2\) is not in the cache/);
  });

  it('tells paths, files and invalid ids apart', async () => {
    expect((await failure(resolveModel('/nonexistent/model', { cacheDir, env: {} }))).message).toBe("model directory '/nonexistent/model' does not exist");
    expect((await failure(resolveModel('models/a/b', { cacheDir, env: {} }))).message).toMatch(/model directory 'models\/a\/b' does not exist/);
    expect((await failure(resolveModel(`${HF}gpt2-tiny/config.json`, { cacheDir, env: {} }))).message).toMatch(/is a file; expected a model directory/);
    const invalid = await failure(resolveModel('acme/bad name', { cacheDir, env: {} }));
    expect(invalid).toBeInstanceOf(ModelLoadError);
    expect(invalid.message).toMatch(/neither an existing model directory nor a valid Hugging Face model id.*letters, digits/);
    expect((await failure(resolveModel('  ', { cacheDir, env: {} }))).message).toMatch(/empty/);
  });

  it('rejects a bad endpoint or token before any download', async () => {
    const endpoint = await failure(resolveModel('acme/absent', { cacheDir, env: { HF_ENDPOINT: 'ftp://mirror' }, allowDownload: true }));
    expect(endpoint).toBeInstanceOf(ConfigError);
    expect(endpoint.message).toMatch(/HF_ENDPOINT must be an http\(s\) URL/);
    const token = await failure(resolveModel('acme/absent', { cacheDir, env: { HF_ENDPOINT: 'http://127.0.0.1:9' }, token: 'secret', allowDownload: true }));
    expect(token).toBeInstanceOf(ConfigError);
    expect(token.message).toMatch(/must start with 'hf_'/);
    // The token file `hf auth login` writes is read when no variable is set.
    writeFileSync(join(cacheDir, 'token'), 'not-a-token\n');
    const fromFile = await failure(resolveModel('acme/absent', { cacheDir, env: { HF_HOME: cacheDir, HF_ENDPOINT: 'http://127.0.0.1:9' }, allowDownload: true }));
    expect(fromFile.message).toContain(join(cacheDir, 'token'));
  });
});
