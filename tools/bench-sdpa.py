#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention on decode shapes, the peer of TinyServe's CUDA
attention benchmark (packages/executor/bench/attention-cuda.ts runs both in one device run).

For each shape: one fp16 query per sequence and head, K/V of `context` tokens per sequence
laid out [batch, kv_heads, context, head_dim], GQA through `enable_gqa`. Times with CUDA
events: eager launches back to back, and the same calls replayed from a CUDA graph (no
Python launch overhead). Several copies of K/V are rotated when one fits in L2.

    python3 tools/bench-sdpa.py --shapes shapes.json --out sdpa.json
    python3 tools/bench-sdpa.py --batch 8 --context 32768 --q-heads 32 --kv-heads 4 --head-dim 64

shapes.json: [{"batch": 8, "context": 32768, "q_heads": 32, "kv_heads": 4, "head_dim": 64}, ...]
Output: one JSON object per shape with microseconds (eager, graph), bytes and GB/s, and the
SDPA backend that ran (the default dispatch, and flash forced when it accepts the shape).
"""
import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F


def kv_bytes(s):
    return 2 * s["batch"] * s["kv_heads"] * s["context"] * s["head_dim"] * 2 + 2 * s["batch"] * s["q_heads"] * s["head_dim"] * 2


def time_eager(fn, rotations, iters):
    for i in range(3):
        fn(i % rotations)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for i in range(iters):
        fn(i % rotations)
    e1.record()
    e1.synchronize()
    return e0.elapsed_time(e1) * 1000.0 / iters


def time_graph(fn, rotations, replays):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(rotations):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(rotations):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(replays):
        graph.replay()
    e1.record()
    e1.synchronize()
    return e0.elapsed_time(e1) * 1000.0 / (replays * rotations)


def bench_shape(s, iters, l2_bytes):
    b, n, hq, hk, d = s["batch"], s["context"], s["q_heads"], s["kv_heads"], s["head_dim"]
    set_bytes = 2 * b * hk * n * d * 2
    free, _ = torch.cuda.mem_get_info()
    rotations = max(1, min(16, math.ceil(3 * l2_bytes / set_bytes)))
    while rotations > 1 and rotations * set_bytes > 0.6 * free:
        rotations -= 1
    q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.float16)
    ks = [torch.randn(b, hk, n, d, device="cuda", dtype=torch.float16) for _ in range(rotations)]
    vs = [torch.randn(b, hk, n, d, device="cuda", dtype=torch.float16) for _ in range(rotations)]
    gqa = hq != hk

    def call(i):
        return F.scaled_dot_product_attention(q, ks[i], vs[i], enable_gqa=gqa)

    out = dict(s)
    out["rotations"] = rotations
    out["bytes"] = kv_bytes(s)
    out["us_eager"] = time_eager(call, rotations, iters)
    out["us_graph"] = time_graph(call, rotations, max(1, iters // rotations))
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            out["us_graph_flash"] = time_graph(call, rotations, max(1, iters // rotations))
    except Exception as e:  # flash may refuse the shape or dtype
        out["flash_error"] = str(e).split("\n")[0][:200]
    best = min(out["us_graph"], out.get("us_graph_flash", math.inf))
    out["us_best"] = best
    out["gb_per_s"] = out["bytes"] / (best * 1e-6) / 1e9
    del q, ks, vs
    torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", help="JSON file with a list of shapes")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--context", type=int)
    ap.add_argument("--q-heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", help="write the results as JSON here (default: stdout)")
    a = ap.parse_args()
    if a.shapes:
        with open(a.shapes) as f:
            shapes = json.load(f)
    elif a.batch and a.context and a.q_heads and a.kv_heads:
        shapes = [{"batch": a.batch, "context": a.context, "q_heads": a.q_heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim}]
    else:
        ap.error("give --shapes or --batch/--context/--q-heads/--kv-heads")
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    results = []
    for s in shapes:
        try:
            r = bench_shape(s, a.iters, l2)
        except torch.cuda.OutOfMemoryError as e:
            r = dict(s, error="out of memory: " + str(e).split("\n")[0][:200])
            torch.cuda.empty_cache()
        results.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    doc = {"device": props.name, "torch": torch.__version__, "results": results}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)
    else:
        json.dump(doc, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
