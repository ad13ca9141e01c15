#!/bin/bash
# End to end on the GPU with the bundled CLI (esbuild bundle of apps/tinyserve/src/main.ts) and
# the bundled model: greedy generations per policy (compare with the cpu executor's), passkey
# eval, the pruning plugin (attention statistics from the GPU), engine throughput.
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] == $*"; }
source .device/env.sh  # from ../shared/device/prepare.sh
mkdir -p /tmp/dev
ADDON=${ADDON:-addon}
xz -dc .device/$ADDON.node.xz > /tmp/dev/final.node; xz -dc .device/cli.mjs.xz > /tmp/dev/cli.mjs
export TINYSERVE_CUDA_ADDON=/tmp/dev/final.node CLI=/tmp/dev/cli.mjs
el generate; timeout 200 bash tools/device/variants.sh cuda 2>&1
el passkey; timeout 200 node $CLI eval --model packages/model-tiny/model --executor cuda --task passkey --policies quest,streaming,dense --contexts 1024,full --trials 10 --budget-fraction 0.125 --json > $OUT/eval.json 2> $OUT/eval.err; echo "exit $?"; tail -3 $OUT/eval.err
el pruning; timeout 200 node $CLI eval --model packages/model-tiny/model --executor cuda --task passkey --policies dense,dense+pruning --contexts 512 --trials 2 --json > $OUT/eval-pruning.json 2> $OUT/eval-pruning.err; echo "exit $?"; tail -2 $OUT/eval-pruning.err
el throughput; timeout 200 node $CLI bench throughput --model packages/model-tiny/model --executor cuda --streams 1,8,32 --requests-per-stream 2 --prompt-tokens 64 --max-tokens 64 2>&1 | tail -12
el done
