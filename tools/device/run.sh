#!/bin/bash
# One device call: NEW addon's checks, then the attention benchmark (NEW with PyTorch SDPA, then
# BASE on the same shapes with the same SDPA numbers). Args: NEW BASE "BENCH ARGS" [CHECK ARGS]
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s] == $*"; }
NEW=$1; BASE=$2; BENCH=$3
source .device/env.sh  # from ../shared/device/prepare.sh
mkdir -p /tmp/dev $OUT/new $OUT/base
for n in $NEW $BASE; do xz -dc .device/$n.node.xz > /tmp/dev/$n.node; xz -dc .device/$n.mjs.xz > /tmp/dev/$n.mjs; done
el "setup done; $(node --version)"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
if [ "${SKIP_CHECKS:-0}" != 1 ]; then
  el "checks ($NEW)"
  TINYSERVE_CUDA_ADDON=/tmp/dev/$NEW.node timeout ${CHECK_TIMEOUT:-200} node /tmp/dev/$NEW.mjs --out $OUT/new --skip-bench 2>&1 | grep -v 'PASS'
  el "checks exit ${PIPESTATUS[0]}; $(grep -c '"ok": true' $OUT/new/checks.json) ok, $(grep -c '"ok": false' $OUT/new/checks.json) failed"
fi
el "bench ($NEW) + SDPA"
TINYSERVE_CUDA_ADDON=/tmp/dev/$NEW.node timeout ${BENCH_TIMEOUT:-200} node /tmp/dev/$NEW.mjs --out $OUT/new --skip-checks $BENCH 2>&1
el "bench exit $?"
rm -f $OUT/new/sdpa-shapes.json
if [ -n "$BASE" ]; then
  if [ -s $OUT/new/sdpa.json ]; then SD="--sdpa-from $OUT/new/sdpa.json"; else SD="--skip-sdpa"; fi
  el "bench ($BASE)"
  TINYSERVE_CUDA_ADDON=/tmp/dev/$BASE.node timeout ${BENCH_TIMEOUT:-200} node /tmp/dev/$BASE.mjs --out $OUT/base --skip-checks $BENCH $SD 2>&1
  el "base bench exit $?"
fi
if [ -n "$EXTRA" ]; then
  el "extra ($NEW): $EXTRA"
  mkdir -p $OUT/extra
  TINYSERVE_CUDA_ADDON=/tmp/dev/$NEW.node timeout ${BENCH_TIMEOUT:-200} node /tmp/dev/$NEW.mjs --out $OUT/extra --skip-checks --skip-sdpa $EXTRA 2>&1 | grep -v '^|'
  el "extra exit $?"
fi
el done
