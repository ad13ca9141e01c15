#!/bin/bash
# Nsight Compute on the accelerator machine: the dense decode kernel of an addon bundled by
# tools/device/bundle.sh, and PyTorch SDPA's kernel on the same shape, with the sections and
# memory counters BENCHMARKS.md quotes (DRAM throughput, L2 hit rate, bytes moved from L2 to the
# SMs, occupancy, warp stalls). Clocks are left as they are (--clock-control none).
#
#   OUT=$OUT [ADDON=addon] [SHAPE=tinyllama] [BATCH=8] [CONTEXT=32768] bash tools/device/ncu-dense.sh
#
# SDPA's kernel name is the default dispatch's for the shape (cudnn_generated... on an H200 at
# TinyLlama heads, batch 8); set SDPA_KERNEL to another regex for other shapes.
set -uo pipefail
source .device/env.sh
NCU=$(ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
[ -x "$NCU" ] || { echo "ncu not found under /usr/local/cuda*/bin" >&2; exit 2; }
A=${ADDON:-addon} SHAPE=${SHAPE:-tinyllama} B=${BATCH:-8} N=${CONTEXT:-32768}
mkdir -p /tmp/ncu
xz -dc .device/$A.node.xz > /tmp/ncu/a.node && xz -dc .device/$A.mjs.xz > /tmp/ncu/run.mjs || exit 2
SECTIONS="--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats"
METRICS="dram__bytes_read.sum,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum,l1tex__m_xbar2l1tex_read_bytes.sum,gpu__time_duration.sum"
case "$SHAPE" in
  tinyllama) HEADS="--q-heads 32 --kv-heads 4 --head-dim 64" ;;
  gpt2) HEADS="--q-heads 16 --kv-heads 16 --head-dim 64" ;;
  *) echo "SHAPE must be tinyllama or gpt2" >&2; exit 2 ;;
esac
ours() {
  TINYSERVE_CUDA_ADDON=/tmp/ncu/a.node timeout 200 "$NCU" --clock-control none --kernel-name regex:denseDecode \
    --launch-skip 3 --launch-count 1 "$@" node /tmp/ncu/run.mjs --out /tmp/ncu/o --skip-checks --skip-sdpa \
    --shapes "$SHAPE" --batches "$B" --contexts "$N" --modes dense 2>&1 | grep -v '^\[\|^|'
}
echo "=== dense decode ($A, $SHAPE, batch $B, $N tokens): sections"
ours $SECTIONS | tee "$OUT/ncu-dense.txt"
echo "=== dense decode: memory counters"
ours --metrics "$METRICS" | tee -a "$OUT/ncu-dense.txt"
echo "=== PyTorch SDPA (${SDPA_KERNEL:-cudnn_generated})"
timeout 200 "$NCU" --clock-control none --kernel-name regex:"${SDPA_KERNEL:-cudnn_generated}" --launch-skip 3 --launch-count 1 \
  $SECTIONS --metrics "$METRICS" python3 tools/bench-sdpa.py --batch "$B" --context "$N" $HEADS 2>&1 \
  | grep -v '^{\|^ *"\|^}\|^ *[][{}]' | tee "$OUT/ncu-sdpa.txt"
