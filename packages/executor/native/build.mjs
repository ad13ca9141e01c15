#!/usr/bin/env node
/**
 * Builds the CUDA addon (`tinyserve_cuda.node`) with nvcc: machine code for sm_80 and sm_90
 * plus PTX, Node-API headers from the `node-api-headers` package, CUDA's runtime linked
 * statically (no cuBLAS or other CUDA library needed at run time). Nothing is downloaded.
 *
 *   node packages/executor/native/build.mjs [--force] [--jobs N] [--verbose]
 *
 * Output: packages/executor/build/cuda/tinyserve_cuda.node, rebuilt only when a source file,
 * the flags or the nvcc version change (their hash is kept in build-info.json). Exit code 2
 * means nvcc was not found.
 */
import { createHash } from 'node:crypto';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const SOURCE_DIR = join(here, 'src');
export const OUT_DIR = resolve(here, '..', 'build', 'cuda');
export const ADDON_PATH = join(OUT_DIR, 'tinyserve_cuda.node');

/** The nvcc to use: $NVCC, $CUDA_HOME/bin/nvcc, $CUDA_PATH/bin/nvcc, then PATH; null when absent. */
export function findNvcc(env = process.env) {
  const candidates = [];
  if (env.NVCC) candidates.push(env.NVCC);
  for (const root of [env.CUDA_HOME, env.CUDA_PATH]) if (root) candidates.push(join(root, 'bin', 'nvcc'));
  for (const dir of (env.PATH ?? '').split(delimiter)) if (dir) candidates.push(join(dir, 'nvcc'));
  candidates.push('/usr/local/cuda/bin/nvcc');
  return candidates.find((c) => existsSync(c)) ?? null;
}

function napiInclude() {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve('node-api-headers/package.json')), 'include');
}

const ARCH_FLAGS = [
  '-gencode=arch=compute_80,code=sm_80',
  // sm_90 machine code and PTX from one front-end pass; newer GPUs JIT-compile the PTX at load.
  '-gencode=arch=compute_90,code=[sm_90,compute_90]',
];

function compileFlags(include) {
  return ['-x', 'cu', '-std=c++17', '-O3', '-DNAPI_VERSION=8', `-I${include}`, '-Xcompiler', '-fPIC', '-Xcompiler', '-fvisibility=hidden', ...ARCH_FLAGS];
}

// Static C++ and CUDA runtimes (the addon then needs only libc and the driver); their symbols
// stay private so they cannot clash with Node's own.
const LINK_FLAGS = ['-shared', '-cudart', 'static', '-Xcompiler', '-static-libstdc++', '-Xcompiler', '-static-libgcc', '-Xlinker', '--exclude-libs,ALL', ...ARCH_FLAGS];

function run(cmd, args, verbose) {
  return new Promise((resolvePromise, reject) => {
    if (verbose) console.log([cmd, ...args].join(' '));
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => {
      if (verbose && out) process.stdout.write(out);
      if (code === 0) resolvePromise(out);
      else reject(new Error(`${cmd} ${args.join(' ')}\nexited with ${code}:\n${out}`));
    });
  });
}

/**
 * Builds (or finds up to date) the addon. Resolves to { path, cached, seconds, hash };
 * rejects with code 'ENVCC' when nvcc is absent.
 */
export async function buildCudaAddon(options = {}) {
  const { force = false, verbose = false } = options;
  const jobs = options.jobs ?? Math.max(1, Math.min(availableParallelism(), 8));
  const nvcc = options.nvcc ?? findNvcc();
  if (nvcc === null) {
    const err = new Error('nvcc not found (set NVCC or CUDA_HOME, or put nvcc on PATH): the CUDA addon cannot be built');
    err.code = 'ENVCC';
    throw err;
  }
  const include = napiInclude();
  const sources = readdirSync(SOURCE_DIR)
    .filter((f) => /\.(cu|cpp|cuh|h)$/.test(f))
    .sort();
  const units = sources.filter((f) => /\.(cu|cpp)$/.test(f));
  const version = execFileSync(nvcc, ['--version'], { encoding: 'utf8' });
  const hash = createHash('sha256');
  hash.update(version);
  hash.update(JSON.stringify([compileFlags('<napi>'), LINK_FLAGS]));
  hash.update(readFileSync(join(include, 'node_api.h')));
  for (const f of sources) hash.update(f).update(readFileSync(join(SOURCE_DIR, f)));
  const digest = hash.digest('hex').slice(0, 16);
  const infoPath = join(OUT_DIR, 'build-info.json');
  if (!force && existsSync(ADDON_PATH) && existsSync(infoPath)) {
    const info = JSON.parse(readFileSync(infoPath, 'utf8'));
    if (info.hash === digest) return { path: ADDON_PATH, cached: true, seconds: 0, hash: digest };
  }
  const started = Date.now();
  const objDir = join(OUT_DIR, `obj-${digest}`);
  mkdirSync(objDir, { recursive: true });
  const flags = compileFlags(include);
  const queue = [...units];
  const objects = units.map((u) => join(objDir, `${u.replace(/\.(cu|cpp)$/, '')}.o`));
  const workers = Array.from({ length: Math.min(jobs, units.length) }, async () => {
    for (let u = queue.shift(); u !== undefined; u = queue.shift()) {
      const obj = join(objDir, `${u.replace(/\.(cu|cpp)$/, '')}.o`);
      await run(nvcc, [...flags, '-c', join(SOURCE_DIR, u), '-o', obj], verbose);
    }
  });
  await Promise.all(workers);
  const tmp = `${ADDON_PATH}.${process.pid}.tmp`;
  await run(nvcc, [...LINK_FLAGS, '-o', tmp, ...objects], verbose);
  renameSync(tmp, ADDON_PATH);
  writeFileSync(infoPath, JSON.stringify({ hash: digest, nvcc: version.trim().split('\n').pop(), builtAt: new Date().toISOString() }, null, 2));
  // Keep only the current objects.
  for (const d of readdirSync(OUT_DIR)) if (d.startsWith('obj-') && d !== `obj-${digest}`) rmSync(join(OUT_DIR, d), { recursive: true, force: true });
  return { path: ADDON_PATH, cached: false, seconds: (Date.now() - started) / 1000, hash: digest };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const jobsAt = args.indexOf('--jobs');
  buildCudaAddon({
    force: args.includes('--force'),
    verbose: args.includes('--verbose'),
    jobs: jobsAt >= 0 ? Number(args[jobsAt + 1]) : undefined,
  }).then(
    (r) => console.log(`${r.cached ? 'up to date' : `built in ${r.seconds.toFixed(1)} s`}: ${r.path}`),
    (err) => {
      console.error(err.message);
      process.exit(err.code === 'ENVCC' ? 2 : 1);
    },
  );
}
