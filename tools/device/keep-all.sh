#!/bin/bash
# The sixth session's device command (2026-11-27): steps whose every sequence keeps all its
# pages (contexts within a token budget) on the dense kernel (NEW) against the previous addon
# (BASE): checks, the attention benchmark at 1K / 2K / 32K in alternating rounds, greedy
# generations on cuda against cpu (tools/device/variants.sh), engine throughput with a
# 2048-token budget. Needs .device/{NEW,BASE}.node.xz, runner.mjs.xz, cli.mjs.xz.
#   OUT=$OUT bash tools/device/keep-all.sh NEW BASE
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] == $*"; }
NEW=$1; BASE=$2
source .device/env.sh
mkdir -p /tmp/dev; xz -dc .device/cli.mjs.xz > /tmp/dev/cli.mjs
el bench
bash tools/device/compare.sh "--shapes tinyllama,gpt2 --batches 1,8,32 --contexts 1024,2048,32768 --modes dense,budget:2048" $NEW $BASE $NEW $BASE > $OUT/bench.txt 2>&1
echo "checks: $(grep -c '"ok": true' $OUT/$NEW/checks.json) passed, $(grep -c '"ok": false' $OUT/$NEW/checks.json) failed"
export CLI=/tmp/dev/cli.mjs
el variants
TINYSERVE_CUDA_ADDON=/tmp/dev/$NEW.node timeout 200 bash tools/device/variants.sh cuda > $OUT/var-cuda.txt 2>&1
timeout 200 bash tools/device/variants.sh cpu > $OUT/var-cpu.txt 2>&1
cmp $OUT/var-cuda.txt $OUT/var-cpu.txt && echo "variants identical on cuda and cpu"
i=0
for a in $BASE $NEW $BASE $NEW; do i=$((i+1)); el "throughput $a"
  TINYSERVE_CUDA_ADDON=/tmp/dev/$a.node timeout 120 node $CLI bench throughput --model packages/model-tiny/model --executor cuda \
    --streams 1,8,32 --requests-per-stream 2 --prompt-tokens 64 --max-tokens 64 --token-budget 2048 > $OUT/tp-$i-$a.txt 2>&1
  tail -4 $OUT/tp-$i-$a.txt
done
el done
