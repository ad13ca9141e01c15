#!/bin/bash
# One device call comparing addons on the same shapes, in alternating rounds (these machines are
# noisy): the first addon's GPU checks, then the attention benchmark for each NAME in order, SDPA
# measured once with the first and reused for the rest. Each NAME is .device/NAME.node.xz (built
# by tools/device/bundle.sh NAME, or any build of the sources), all run by one device-run bundle,
# .device/runner.mjs.xz. Optional ENV=VALUE after a colon sets the environment of that round.
#
#   OUT=$OUT bash tools/device/compare.sh "BENCH ARGS" NEW BASE NEW BASE
#   SKIP_CHECKS=1 / SKIP_SDPA=1: leave those out. Tables: $OUT/NAME/bench.md (the last round of each); the checks log: $OUT/NEW/checks.txt.
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] == $*"; }
source .device/env.sh  # from ../shared/device/prepare.sh
BENCH=$1; shift
mkdir -p /tmp/dev; xz -dc .device/runner.mjs.xz > /tmp/dev/runner.mjs
first=1
for spec in "$@"; do
  n=${spec%%:*}; envs=""; [ "$spec" != "$n" ] && envs=${spec#*:}
  [ -f /tmp/dev/$n.node ] || xz -dc .device/$n.node.xz > /tmp/dev/$n.node
  o=$OUT/$(echo $spec | tr ':=' '__'); mkdir -p $o
  if [ $first = 1 ] && [ "${SKIP_CHECKS:-0}" != 1 ]; then
    el "checks $n"
    TINYSERVE_CUDA_ADDON=/tmp/dev/$n.node timeout 200 node /tmp/dev/runner.mjs --out $o --skip-bench 2>&1 | tee $o/checks.txt | grep -v PASS | tail -5
  fi
  if [ $first = 1 ]; then SD=""; SDF=$o/sdpa.json; else SD="--sdpa-from $SDF"; fi
  [ "${SKIP_SDPA:-0}" = 1 ] && SD="--skip-sdpa"
  el "bench $spec"
  env $envs TINYSERVE_CUDA_ADDON=/tmp/dev/$n.node timeout 200 node /tmp/dev/runner.mjs --out $o --skip-checks $BENCH $SD 2>&1 | grep "^|"
  first=0
done
el done
