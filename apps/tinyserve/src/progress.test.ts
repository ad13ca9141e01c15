import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './cli.js';
import { captureIo as capture } from './__fixtures__/capture-io.js';
import { allowDownloadFrom, createProgressBar, downloadProgress, formatBytes, formatDuration, modelLoadingProgress, stderrWriter } from './progress.js';
import type { ProgressWriter } from './progress.js';

const HF = fileURLToPath(new URL('../../../__fixtures__/hf/', import.meta.url));
const CLEAR = '\r\x1b[K';

function fakeWriter(isTTY: boolean, columns = 80): ProgressWriter & { chunks: string[] } {
  const chunks: string[] = [];
  return { chunks, isTTY, columns, write: (text) => void chunks.push(text) };
}

function fakeClock(): { now: () => number; set(ms: number): void } {
  let t = 0;
  return { now: () => t, set: (ms) => void (t = ms) };
}

describe('progress bar on a TTY', () => {
  it('redraws one line in place with percentage, amounts, rate and eta, and ends it with a summary', () => {
    const w = fakeWriter(true);
    const clock = fakeClock();
    const bar = createProgressBar(w, { label: 'downloading model.safetensors', total: 100_000, unit: 'bytes', now: clock.now });
    bar.update(0);
    expect(w.chunks).toEqual([`${CLEAR}downloading model.safetensors [........]   0% 0 B/100.0 kB`]);
    clock.set(1000);
    bar.update(50_000);
    expect(w.chunks[1]).toBe(`${CLEAR}downloading model.safetensors [####....]  50% 50.0/100.0 kB 50.0 kB/s eta 1.0s`);
    // Redraws are throttled, except for the last one.
    clock.set(1050);
    bar.update(60_000);
    expect(w.chunks).toHaveLength(2);
    clock.set(2000);
    bar.update(100_000);
    expect(w.chunks[2]).toBe(`${CLEAR}downloading model.safetensors [########] 100% 100.0/100.0 kB 50.0 kB/s`);
    bar.done();
    expect(w.chunks[3]).toBe(`${CLEAR}downloading model.safetensors: 100.0 kB in 2.0s\n`);
    bar.update(5);
    bar.done();
    expect(w.chunks).toHaveLength(4);
  });

  it('sizes the bar by the terminal and keeps every line within its width', () => {
    const w = fakeWriter(true, 50);
    const clock = fakeClock();
    const bar = createProgressBar(w, { label: 'bench throughput', total: 4, now: clock.now });
    clock.set(1500);
    bar.update(1, '16 streams running');
    expect(w.chunks[0]).toBe(`${CLEAR}bench throughput [##......]  25% 1/4 1.5s  16 st…`);
    const wide = fakeWriter(true, 120);
    createProgressBar(wide, { label: 'bench throughput', total: 4, now: clock.now }).update(3, '64 streams running');
    expect(wide.chunks[0]).toBe(`${CLEAR}bench throughput [#######################.......]  75% 3/4 0.0s  64 streams running`);
    const narrow = fakeWriter(true, 30);
    createProgressBar(narrow, { label: 'a very long label that does not fit', total: 2 }).update(1);
    expect(narrow.chunks[0]).toBe(`${CLEAR}a very long label that does …`);
  });

  it('shows elapsed time for a task of unknown size, interjects log lines and erases itself', () => {
    const w = fakeWriter(true);
    const clock = fakeClock();
    const bar = createProgressBar(w, { label: 'loading acme/tiny', now: clock.now });
    bar.interject('before\n');
    clock.set(2500);
    bar.update(0);
    bar.interject('loaded acme/tiny\n');
    bar.clear();
    expect(w.chunks).toEqual(['before\n', `${CLEAR}loading acme/tiny … 2.5s`, `${CLEAR}loaded acme/tiny\nloading acme/tiny … 2.5s`, CLEAR]);
  });
});

describe('progress without a TTY', () => {
  it('prints occasional plain lines and a closing line, never escape codes', () => {
    const w = fakeWriter(false);
    const clock = fakeClock();
    const bar = createProgressBar(w, { label: 'downloading model.safetensors', total: 2_000_000, unit: 'bytes', plainIntervalMs: 5000, now: clock.now });
    for (let t = 0; t <= 12_000; t += 1000) {
      clock.set(t);
      bar.update(t * 100);
    }
    bar.done();
    expect(w.chunks).toEqual([
      'downloading model.safetensors: 25% (500.0 kB of 2.00 MB)\n',
      'downloading model.safetensors: 50% (1.00 MB of 2.00 MB)\n',
      'downloading model.safetensors: 60% (1.20 MB of 2.00 MB) in 12.0s\n',
    ]);
  });

  it('stays silent when asked to, and a quick task prints only its closing line', () => {
    const silent = fakeWriter(false);
    const loading = createProgressBar(silent, { label: 'loading', plain: 'silent' });
    loading.update(0);
    loading.done();
    loading.clear();
    expect(silent.chunks).toEqual([]);
    const w = fakeWriter(false);
    const bar = createProgressBar(w, { label: 'bench throughput', total: 2, now: () => 0 });
    bar.update(1, '1 streams: 5.0 tokens/s');
    bar.done();
    expect(w.chunks).toEqual(['bench throughput: 1/2 in 0.0s\n']);
  });

  it('is not a TTY unless it is the process stderr', () => {
    expect(stderrWriter(capture()).isTTY).toBe(false);
  });
});

describe('download progress', () => {
  it('draws one bar per file and closes each when complete', () => {
    const w = fakeWriter(false);
    const report = downloadProgress(w, { now: () => 0 });
    report({ file: 'config.json', loadedBytes: 0, totalBytes: 700 });
    report({ file: 'config.json', loadedBytes: 700, totalBytes: 700 });
    report({ file: 'model.safetensors', loadedBytes: 0, totalBytes: 3_000_000 });
    report({ file: 'model.safetensors', loadedBytes: 1_000_000, totalBytes: 3_000_000 });
    // A file whose stream broke off is closed when the next one starts.
    report({ file: 'tokenizer.json', loadedBytes: 0, totalBytes: 10 });
    expect(w.chunks).toEqual([
      'downloading config.json: 700 B in 0.0s\n',
      'downloading model.safetensors: 33% (1.00 MB of 3.00 MB) in 0.0s\n',
    ]);
  });

  it('formats sizes and durations', () => {
    expect([formatBytes(0), formatBytes(999), formatBytes(1500), formatBytes(12_345_678), formatBytes(2.5e9)]).toEqual(['0 B', '999 B', '1.50 kB', '12.3 MB', '2.50 GB']);
    expect([formatDuration(400), formatDuration(59_940), formatDuration(65_000), formatDuration(3_600_000)]).toEqual(['0.4s', '59.9s', '1m05s', '60m00s']);
  });
});

describe('model loading in commands', () => {
  it('reads --allow-download and TINYSERVE_ALLOW_DOWNLOAD', () => {
    expect(allowDownloadFrom(true, {})).toBe(true);
    expect(allowDownloadFrom(false, {})).toBe(false);
    expect(allowDownloadFrom(false, { TINYSERVE_ALLOW_DOWNLOAD: '1' })).toBe(true);
    expect(allowDownloadFrom(false, { TINYSERVE_ALLOW_DOWNLOAD: 'off' })).toBe(false);
    expect(() => allowDownloadFrom(false, { TINYSERVE_ALLOW_DOWNLOAD: 'maybe' })).toThrow(/allowDownload: TINYSERVE_ALLOW_DOWNLOAD: expected true or false, got 'maybe'/);
  });

  it('shows a transient loading line and download bars on a TTY', async () => {
    const w = fakeWriter(true);
    const loading = modelLoadingProgress(capture({ HF_HOME: '/x' }), 'acme/tiny', true, w);
    expect(loading.options).toMatchObject({ allowDownload: true, env: { HF_HOME: '/x' } });
    const result = await loading.run(async () => {
      loading.options.onProgress!({ file: 'config.json', loadedBytes: 10, totalBytes: 10 });
      return 42;
    });
    expect(result).toBe(42);
    expect(w.chunks[0].startsWith(CLEAR)).toBe(true);
    expect(w.chunks[0].slice(CLEAR.length)).toMatch(/^loading acme\/tiny … \d+\.\ds$/);
    expect(w.chunks.slice(1, -1).join('')).toMatch(/downloading config\.json: 10 B in \d+\.\ds\n$/);
    expect(w.chunks.at(-1)).toBe(CLEAR);
    await expect(loading.run(() => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
  });
});

describe('commands with hub ids and progress', () => {
  let cache: string;
  beforeAll(() => {
    // The Hugging Face cache layout, as `hf download acme/gpt2-tiny` leaves it.
    cache = mkdtempSync(join(tmpdir(), 'tinyserve-cli-hub-'));
    const repo = join(cache, 'models--acme--gpt2-tiny');
    const commit = 'c'.repeat(40);
    mkdirSync(join(repo, 'blobs'), { recursive: true });
    mkdirSync(join(repo, 'snapshots', commit), { recursive: true });
    mkdirSync(join(repo, 'refs'));
    writeFileSync(join(repo, 'refs', 'main'), commit);
    for (const file of readdirSync(`${HF}gpt2-tiny`)) {
      const data = readFileSync(`${HF}gpt2-tiny/${file}`);
      const sha = createHash('sha256').update(data).digest('hex');
      writeFileSync(join(repo, 'blobs', sha), data);
      symlinkSync(`../../blobs/${sha}`, join(repo, 'snapshots', commit, file));
    }
  });
  afterAll(() => rmSync(cache, { recursive: true, force: true }));

  it('generate loads a hub id from the cache, with stdout and stderr clean for --json', async () => {
    const io = capture({ HF_HUB_CACHE: cache });
    const code = await runCli(['generate', '--model', 'acme/gpt2-tiny', '--prompt', 'Hello', '--max-tokens', '3', '--temperature', '0', '--json'], io);
    expect(io.err).toBe('');
    expect(code).toBe(0);
    expect(JSON.parse(io.out)).toMatchObject({ model: 'acme/gpt2-tiny', usage: { completion_tokens: 3 } });
  });

  it('explains an id missing from the cache, and passes the download switch through', async () => {
    let io = capture({ HF_HUB_CACHE: cache });
    expect(await runCli(['generate', '--model', 'acme/absent', '--prompt', 'x'], io)).toBe(1);
    expect(io.err).toMatch(/model_load_error.*'acme\/absent' is not in the cache at .*--allow-download or TINYSERVE_ALLOW_DOWNLOAD=1/);
    // Downloads on, but HF_HUB_OFFLINE wins: proves the switch reached the resolver, with no network.
    io = capture({ HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '1' });
    expect(await runCli(['serve', '--model', 'acme/absent', '--allow-download', '--port', '0'], io)).toBe(1);
    expect(io.err).toMatch(/unset HF_HUB_OFFLINE/);
    io = capture({ HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '1', TINYSERVE_ALLOW_DOWNLOAD: 'yes' });
    expect(await runCli(['bench', 'throughput', '--model', 'acme/absent'], io)).toBe(1);
    expect(io.err).toMatch(/unset HF_HUB_OFFLINE/);
  });

  it('bench throughput reports its levels on stderr and keeps --json on stdout', async () => {
    const io = capture({ HF_HUB_CACHE: cache });
    const args = ['bench', 'throughput', '--model', 'acme/gpt2-tiny', '--streams', '1,2', '--requests-per-stream', '1', '--prompt-tokens', '4', '--max-tokens', '2', '--json'];
    expect(await runCli(args, io)).toBe(0);
    const out = JSON.parse(io.out);
    expect(out.model).toBe('acme/gpt2-tiny');
    expect(out.rows.map((r: { concurrency: number }) => r.concurrency)).toEqual([1, 2]);
    expect(io.err).toMatch(/bench throughput: 2\/2 in \d+\.\ds\n$/);
  });
});
