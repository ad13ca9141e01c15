#!/bin/bash
# Bundles what the accelerator machine runs into .device/ (carried by the device tool; Node.js
# itself comes from ../shared/device/prepare.sh as .device/node.xz): the CUDA addon built here,
# and device-run.mjs, the esbuild bundle of packages/executor/src/cuda/device-run.ts (GPU checks,
# the attention benchmark, and tools/bench-sdpa.py for PyTorch SDPA on the same shapes), and
# cli.mjs, the bundle of the tinyserve CLI (apps/tinyserve/src/main.ts) for end-to-end runs.
#
#   tools/device/bundle.sh [NAME]     # .device/NAME.node.xz (default: addon), .device/NAME.mjs.xz, .device/cli.mjs.xz
#
# Then, on the device (the `run` tool, carrying .device; see tools/device/run.sh and e2e.sh):
#   OUT=$OUT bash tools/device/run.sh NAME "" "--shapes tinyllama,gpt2 --batches 1,8,32 --trace"
#   OUT=$OUT ADDON=NAME bash tools/device/e2e.sh
#   OUT=$OUT ADDON=NAME bash tools/device/ncu-dense.sh      # Nsight Compute: dense decode and SDPA
#
# On the device: source .device/env.sh; xz -dc .device/NAME.node.xz > /tmp/a.node;
#   xz -dc .device/NAME.mjs.xz > /tmp/run.mjs; TINYSERVE_CUDA_ADDON=/tmp/a.node node /tmp/run.mjs --out $OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
name="${1:-addon}"
node packages/executor/native/build.mjs
mkdir -p .device
npx esbuild packages/executor/src/cuda/device-run.ts --bundle --platform=node --format=esm --target=node20 \
  --conditions=@tinyserve/source --log-level=warning \
  "--banner:js=import { createRequire as __cr } from 'module'; const require = __cr(import.meta.url);" \
  --outfile=".device/$name.mjs"
npx esbuild apps/tinyserve/src/main.ts --bundle --platform=node --format=esm --target=node20 \
  --conditions=@tinyserve/source --log-level=warning \
  "--banner:js=import { createRequire as __cr } from 'module'; const require = __cr(import.meta.url);" \
  --outfile=.device/cli.mjs
xz -T0 -9e -f .device/cli.mjs
xz -T0 -9e -c packages/executor/build/cuda/tinyserve_cuda.node > ".device/$name.node.xz"
xz -T0 -9e -f ".device/$name.mjs"
ls -la ".device/$name.node.xz" ".device/$name.mjs.xz"
