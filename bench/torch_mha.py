"""cuDNN's fused attention (PyTorch SDPA, causal) on the shapes `dsattn bench --stages mha` times.

DeepSeek-V3.2's dense MHA prefill: 128 heads, q/k 192, v 128, batch = 16384 // s requests of s
tokens. TFLOPS count the causal pairs as the bench does: batch · s · (s + 1) · heads · (192 +
128). Timed with CUDA events, median of 50 runs after warm-up, in the same call as the bench so
that ratios come from one machine state.

    python3 bench/torch_mha.py [--json FILE] [--seqs 256 512 ...]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, D_QK, D_V, TOKENS = 128, 192, 128, 16384


def median_ms(fn, reps: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--seqs", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    args = parser.parse_args()
    rows = []
    for s in args.seqs:
        batch = max(1, TOKENS // s)
        q = torch.randn(batch, HEADS, s, D_QK, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(batch, HEADS, s, D_QK, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(batch, HEADS, s, D_V, device="cuda", dtype=torch.bfloat16)
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        flops = batch * s * (s + 1) * HEADS * (D_QK + D_V)
        rows.append({"seq": s, "batch": batch, "us": ms * 1e3, "tflops": flops / (ms * 1e9)})
        print(json.dumps(rows[-1]), flush=True)
        del q, k, v
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
