"""Draws the planner's crossover from a `dsattn bench` JSON with a "crossover" section.

Two panels: layer time per path against context length (prompts without a prefix; batches of
about 16K tokens) and against prefix length for a fixed extend, measured (solid, markers) and as
the cost profile auto plans with predicts (dashed), with the path auto took at each point. The
cost model predicts the stages where the paths differ, not the projections every path runs
alike, so a predicted line sits below its measured one by about that shared time; auto compares
the paths by their differences.

  python bench/plot_crossover.py BENCH.json [OUT.png]   (default: BENCH.json with .png)
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PATHS = [  # (measured key, predicted key, label, colour)
    ("mha_ms", "dense_mha_ms", "dense MHA", "tab:blue"),
    ("mla_ms", "sparse_mla_ms", "sparse MLA", "tab:orange"),
    (None, "row_split_ms", "row split", "tab:green"),
    ("masked_ms", "masked_mha_ms", "masked MHA", "tab:red"),
]


def panel(ax, rows, x_key, x_label, title):
    xs = [r[x_key] for r in rows]
    for measured, predicted, label, colour in PATHS:
        if measured is not None:
            pts = [(x, r[measured]) for x, r in zip(xs, rows) if r.get(measured) is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color=colour, label=f"{label} (measured)")
        pts = [
            (x, r["predicted"][predicted])
            for x, r in zip(xs, rows)
            if r.get("predicted") and r["predicted"].get(predicted) is not None
        ]
        if pts:
            ax.plot(*zip(*pts), "--", color=colour, label=f"{label} (predicted, path stages)")
    ax.plot(xs, [r["auto_ms"] for r in rows], "k:", marker="x", label="auto (measured)")
    for x, r in zip(xs, rows):
        ax.annotate(r["auto_path"], (x, r["auto_ms"]), fontsize=6, rotation=30,
                    textcoords="offset points", xytext=(3, 6))
    ax.set_xlabel(x_label)
    ax.set_ylabel("forward time (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def main(argv):
    if len(argv) not in (2, 3):
        sys.exit(__doc__)
    src = Path(argv[1])
    bench = json.loads(src.read_text())
    if "crossover" not in bench:
        sys.exit(f"{src}: no 'crossover' section (run dsattn bench --stages crossover)")
    cross = bench["crossover"]
    out = Path(argv[2]) if len(argv) == 3 else src.with_suffix(".png")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    by_context, by_prefix = cross["by_context"], cross["by_prefix"]
    panel(axes[0], by_context, "extend_len", "prompt length (tokens, no prefix)",
          f"prompts of each length, {by_context[0]['requests'] * by_context[0]['extend_len']} "
          "tokens a forward")
    axes[0].set_xscale("log", base=2)
    axes[0].set_yscale("log")
    panel(axes[1], by_prefix, "prefix_len", "cached prefix (tokens)",
          f"{by_prefix[0]['requests']} request(s) x {by_prefix[0]['extend_len']} new tokens")
    profile = cross.get("profile") or {}
    fig.suptitle(f"dsattn planner crossover on {bench['device']}, {bench['date']}, "
                 f"commit {bench['commit']}; profile: {profile.get('source', 'none')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv)
