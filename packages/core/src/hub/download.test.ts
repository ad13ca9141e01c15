import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ModelLoadError } from '../errors.js';
import { loadModel } from '../model/load-model.js';
import { readFixtureFiles, sha256Hex, startFakeHub } from './__fixtures__/fake-hub.js';
import type { FakeHub } from './__fixtures__/fake-hub.js';
import type { DownloadProgressEvent } from './download.js';
import { repoFolderName } from './model-id.js';
import { resolveModel } from './resolve-model.js';

const HF = fileURLToPath(new URL('../../../../__fixtures__/hf/', import.meta.url));
const COMMIT_1 = '1111111111111111111111111111111111111111';
const COMMIT_2 = '2222222222222222222222222222222222222222';
const TOKEN = 'hf_loopbacktesttoken';

let hub: FakeHub;
let cacheDir: string;

beforeAll(async () => {
  hub = await startFakeHub();
  hub.addCommit('acme/gpt2-tiny', COMMIT_1, readFixtureFiles(`${HF}gpt2-tiny`));
  hub.addCommit('acme/sharded', COMMIT_1, readFixtureFiles(`${HF}llama-tiny-gqa-sharded`));
  hub.addCommit('acme/llama', COMMIT_1, readFixtureFiles(`${HF}llama-tiny-gqa`));
  hub.addCommit('acme/llama', COMMIT_2, readFixtureFiles(`${HF}llama-tiny-mqa`), { ref: 'v2' });
  hub.addCommit('acme/private', COMMIT_1, readFixtureFiles(`${HF}gpt2-tiny`), { token: TOKEN });
  const noTokenizer = readFixtureFiles(`${HF}gpt2-tiny`);
  noTokenizer.delete('tokenizer.json');
  hub.addCommit('acme/no-tokenizer', COMMIT_1, noTokenizer);
  const pickle = readFixtureFiles(`${HF}gpt2-tiny`);
  pickle.delete('model.safetensors');
  hub.addCommit('acme/pickle', COMMIT_1, pickle);
});
afterAll(() => hub.close());
beforeEach(() => {
  cacheDir = mkdtempSync(join(tmpdir(), 'tinyserve-hub-dl-'));
  hub.requests.length = 0;
});
afterEach(() => rmSync(cacheDir, { recursive: true, force: true }));

function options(extra: Record<string, unknown> = {}) {
  return { cacheDir, endpoint: hub.endpoint, env: {}, allowDownload: true, ...extra };
}

async function failure(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected a failure');
}

/** Every file under a directory, relative, for "nothing was left behind" checks. */
function tree(dir: string, prefix = ''): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? tree(join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`],
  );
}

describe('resolveModel downloads from a hub into the cache layout', () => {
  it('fetches a model, lays it out as huggingface_hub does, and it loads like the original', async () => {
    const events: DownloadProgressEvent[] = [];
    const result = await resolveModel('acme/gpt2-tiny', options({ onProgress: (e: DownloadProgressEvent) => events.push(e) }));
    const repoDir = join(cacheDir, repoFolderName('acme/gpt2-tiny'));
    expect(result).toMatchObject({ source: 'download', repoId: 'acme/gpt2-tiny', revision: 'main', commit: COMMIT_1, dir: join(repoDir, 'snapshots', COMMIT_1) });
    expect(result.downloadedFiles.sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    expect(readFileSync(join(repoDir, 'refs', 'main'), 'utf8')).toBe(COMMIT_1);

    const weights = readFileSync(`${HF}gpt2-tiny/model.safetensors`);
    const pointer = join(result.dir, 'model.safetensors');
    expect(lstatSync(pointer).isSymbolicLink()).toBe(true);
    expect(readlinkSync(pointer)).toBe(`../../blobs/${sha256Hex(weights)}`);
    expect(readFileSync(pointer).equals(weights)).toBe(true);
    // The hub has no chat template for this model: remembered as huggingface_hub does.
    expect(existsSync(join(repoDir, '.no_exist', COMMIT_1, 'chat_template.jinja'))).toBe(true);
    expect(tree(join(repoDir, 'blobs')).some((f) => f.endsWith('.incomplete'))).toBe(false);

    const weightEvents = events.filter((e) => e.file === 'model.safetensors');
    expect(weightEvents[0]).toEqual({ file: 'model.safetensors', loadedBytes: 0, totalBytes: weights.length });
    expect(weightEvents.at(-1)).toEqual({ file: 'model.safetensors', loadedBytes: weights.length, totalBytes: weights.length });
    weightEvents.slice(1).forEach((e, i) => expect(e.loadedBytes).toBeGreaterThan(weightEvents[i].loadedBytes));

    const downloaded = await loadModel(result.dir);
    const original = await loadModel(`${HF}gpt2-tiny`);
    expect(downloaded.name).toBe('acme/gpt2-tiny');
    expect(downloaded.config).toEqual(original.config);
    expect(Array.from(downloaded.weights.get('transformer.wte.weight')!.data)).toEqual(Array.from(original.weights.get('transformer.wte.weight')!.data));
    expect(downloaded.tokenizer.encode('Hello world')).toEqual(original.tokenizer.encode('Hello world'));

    // A second run finds it offline: no request reaches the hub, downloads allowed or not.
    const before = hub.requests.length;
    expect(await resolveModel('acme/gpt2-tiny', options({ allowDownload: false }))).toMatchObject({ source: 'cache', dir: result.dir });
    expect(await resolveModel('acme/gpt2-tiny', options())).toMatchObject({ source: 'cache', dir: result.dir });
    expect(hub.requests.length).toBe(before);
  });

  it('fetches the index and every shard of a sharded checkpoint, pinned to one commit', async () => {
    const result = await resolveModel('acme/sharded', options());
    expect(result.downloadedFiles).toEqual(expect.arrayContaining(['model.safetensors.index.json', 'chat_template.jinja', 'model-00001-of-00004.safetensors', 'model-00004-of-00004.safetensors']));
    // Only config.json is asked for by branch; everything after by the commit it resolved to.
    const resolves = hub.requests.filter((r) => r.url.includes('/resolve/'));
    expect(resolves.filter((r) => r.url.includes('/resolve/main/')).every((r) => r.url.endsWith('/config.json'))).toBe(true);
    expect(resolves.some((r) => r.url.includes(`/resolve/${COMMIT_1}/model-00002-of-00004.safetensors`))).toBe(true);
    const model = await loadModel(result.dir);
    expect(model.chatTemplate).toContain('{');
    expect(model.weights.size).toBe((await loadModel(`${HF}llama-tiny-gqa`)).weights.size);
  });

  it('downloads an explicit revision by tag or commit, and only the files a partial snapshot lacks', async () => {
    const tagged = await resolveModel('acme/llama@v2', options());
    expect(tagged).toMatchObject({ revision: 'v2', commit: COMMIT_2 });
    expect((await loadModel(tagged.dir)).config.numKvHeads).toBe(1);
    expect(readFileSync(join(cacheDir, repoFolderName('acme/llama'), 'refs', 'v2'), 'utf8')).toBe(COMMIT_2);

    const pinned = await resolveModel(`acme/llama@${COMMIT_1}`, options());
    expect((await loadModel(pinned.dir)).config.numKvHeads).toBe(2);
    // A commit hash needs no ref, and never a request by branch name.
    expect(hub.requests.some((r) => r.url.includes('/resolve/main/'))).toBe(false);

    rmSync(join(pinned.dir, 'tokenizer.json'));
    hub.requests.length = 0;
    const repaired = await resolveModel(`acme/llama@${COMMIT_1}`, options());
    expect(repaired.downloadedFiles).toEqual([]);
    expect(existsSync(join(pinned.dir, 'tokenizer.json'))).toBe(true);
    // The blob was still there: one probe for its etag, no transfer.
    expect(hub.requests.map((r) => [r.url.split('/').at(-1), r.range])).toEqual([['tokenizer.json', 'bytes=0-0']]);
  });

  it('sends HF_TOKEN to private repos and explains a refusal', async () => {
    const denied = await failure(resolveModel('acme/private', options()));
    expect(denied).toBeInstanceOf(ModelLoadError);
    expect(denied.message).toMatch(/'acme\/private' was not found on http:\/\/127\.0\.0\.1:\d+: if it is private or gated, set HF_TOKEN/);
    hub.requests.length = 0;
    const result = await resolveModel('acme/private', options({ env: { HF_TOKEN: TOKEN } }));
    expect(result.source).toBe('download');
    expect(hub.requests.filter((r) => r.url.includes('/resolve/')).every((r) => r.authorization === `Bearer ${TOKEN}`)).toBe(true);
    const wrong = await failure(resolveModel('acme/private@v9', options({ token: 'hf_wrong' })));
    expect(wrong.message).toMatch(/the token in use was refused/);
  });

  it('honours HF_ENDPOINT and names what the hub lacks', async () => {
    const env = { HF_ENDPOINT: `${hub.endpoint}/` };
    const noTokenizer = await failure(resolveModel('acme/no-tokenizer', { cacheDir, env, allowDownload: true }));
    expect(noTokenizer.message).toBe(`'acme/no-tokenizer' on ${hub.endpoint} has no tokenizer.json; TinyServe needs config.json, tokenizer.json and safetensors weights`);
    const pickle = await failure(resolveModel('acme/pickle', { cacheDir, env, allowDownload: true }));
    expect(pickle.message).toMatch(/has no model\.safetensors or model\.safetensors\.index\.json \(PyTorch \.bin checkpoints are not supported\)/);
    expect((await failure(resolveModel('acme/llama@nope', { cacheDir, env, allowDownload: true }))).message).toBe(
      `revision 'nope' of 'acme/llama' was not found on ${hub.endpoint}`,
    );
    // A failed download writes no ref, so the cache never claims a model it does not hold.
    expect(existsSync(join(cacheDir, repoFolderName('acme/no-tokenizer'), 'refs'))).toBe(false);
  });

  it('reports network failures and corrupt transfers clearly, and resumes without fetching finished files again', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const deadPort = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const unreachable = await failure(resolveModel('acme/gpt2-tiny', options({ endpoint: `http://127.0.0.1:${deadPort}` })));
    expect(unreachable).toBeInstanceOf(ModelLoadError);
    expect(unreachable.message).toMatch(/could not download config\.json of 'acme\/gpt2-tiny' on http:\/\/127\.0\.0\.1:\d+: fetch failed \(ECONNREFUSED\)\. Check the network/);

    hub.truncateNext('model.safetensors');
    const cut = await failure(resolveModel('acme/gpt2-tiny', options()));
    expect(cut).toBeInstanceOf(ModelLoadError);
    expect(cut.message).toMatch(/model\.safetensors of 'acme\/gpt2-tiny'/);
    const repoDir = join(cacheDir, repoFolderName('acme/gpt2-tiny'));
    expect(tree(repoDir).filter((f) => f.includes('incomplete') || f.startsWith('refs/') || f.endsWith('model.safetensors'))).toEqual([]);
    await expect(resolveModel('acme/gpt2-tiny', options({ allowDownload: false }))).rejects.toThrow(/not in the cache/);

    hub.corruptNext('model.safetensors');
    expect((await failure(resolveModel('acme/gpt2-tiny', options()))).message).toMatch(/model\.safetensors of 'acme\/gpt2-tiny': sha256 [0-9a-f]{64} does not match the hub's [0-9a-f]{64}/);
    const weightsBlob = sha256Hex(readFileSync(`${HF}gpt2-tiny/model.safetensors`));
    expect(tree(join(repoDir, 'blobs')).filter((f) => f.includes('incomplete') || f === weightsBlob)).toEqual([]);

    hub.requests.length = 0;
    const retried = await resolveModel('acme/gpt2-tiny', options());
    expect(retried.downloadedFiles).toEqual(['model.safetensors']);
    expect(hub.requests.some((r) => r.url.endsWith('/tokenizer.json'))).toBe(false);
    expect((await loadModel(retried.dir)).config.architecture).toBe('gpt2');
  });
});
