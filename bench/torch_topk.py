"""torch.topk (k = 2048, unsorted) on the score shapes `dsattn bench` times for top-k.

The shared anchors time top-k only on square s x s scores; this adds the few-long-rows shapes
of decode. Timed with CUDA events, median of 50 runs after warm-up, in the same call as the
bench so that ratios come from one machine state.

    python3 bench/torch_topk.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

SHAPES = [(8192, 8192), (32768, 32768), (16, 131072), (128, 65536)]
K = 2048


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
    args = parser.parse_args()
    rows = []
    for r, c in SHAPES:
        scores = torch.rand(r, c, device="cuda") * 2 - 1
        ms = median_ms(lambda: torch.topk(scores, K, dim=-1, sorted=False))
        rows.append({"rows": r, "cols": c, "k": K, "us": ms * 1e3})
        print(json.dumps(rows[-1]), flush=True)
        del scores
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
