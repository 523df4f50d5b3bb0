"""The DeepSeek-V3.2 attention layer written plainly in PyTorch, beside dsattn's, on one GPU.

The peer uses the very weights dsattn runs (dsattn.LayerWeights.tensors("torch"), zero-copy),
cuBLAS GEMMs, cuDNN SDPA for the dense path and torch.topk for the sparse one. It computes a
prefill batch the way an engine without dsattn would: every request's latents and indexer keys
are written to a cache, and a request whose context is at most index_topk takes dense causal
attention (top-k would keep every key); a longer one runs the indexer, torch.topk and attention
over the selected keys. For each prompt length it checks the two layers' outputs against each
other and times both (CUDA events, median of several runs) in one process.

    python3 bench/torch_layer.py [--requests 100] [--lens 512,1024,2000] [--json FILE]
                                 [--max-batch-tokens 16384] [--commit SHA] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import dsattn


def rope_inv_freq(config: dsattn.AttentionConfig) -> tuple[torch.Tensor, float]:
    """YaRN's per-pair frequencies of the rotary part and its magnitude correction."""
    dim = config.qk_rope_head_dim
    inv = 1.0 / config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    mscale = 1.0
    if config.use_yarn:
        def correction(rotations: float) -> float:
            orig = config.yarn_original_max_position_embeddings
            return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(config.rope_theta))

        low = max(math.floor(correction(config.yarn_beta_fast)), 0)
        high = min(math.ceil(correction(config.yarn_beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        inv = inv / config.yarn_factor * ramp + inv * (1 - ramp)

        def yarn_mscale(m: float) -> float:
            return 1.0 if config.yarn_factor <= 1 else 0.1 * m * math.log(config.yarn_factor) + 1.0

        mscale = yarn_mscale(config.yarn_mscale) / yarn_mscale(config.yarn_mscale_all_dim)
    return inv, mscale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool):
    """Rotates x [..., tokens, (heads,) 2 * pairs] in place-free style; cos/sin [tokens, pairs]."""
    if x.dim() == 3:
        cos, sin = cos[:, None, :], sin[:, None, :]
    xf = x.float()
    if interleaved:
        x0, x1 = xf[..., 0::2], xf[..., 1::2]
    else:
        half = xf.shape[-1] // 2
        x0, x1 = xf[..., :half], xf[..., half:]
    r0, r1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    out = torch.stack((r0, r1), dim=-1).flatten(-2) if interleaved else torch.cat((r0, r1), -1)
    return out.to(torch.bfloat16)


def hadamard_matrix(d: int, device) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float32)
    while h.shape[0] < d:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return (h / math.sqrt(d)).to(device=device, dtype=torch.bfloat16)


def fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (last dim 128) e4m3 quantisation: values and f32 scales, as the indexer keeps them."""
    amax = x.float().abs().amax(-1, keepdim=True).clamp_min(1e-4)
    scale = amax / 448.0
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


class TorchLayer:
    """One attention layer over dsattn's weights (a dict of torch tensors by checkpoint name)."""

    def __init__(self, config: dsattn.AttentionConfig, weights: dict[str, torch.Tensor]):
        self.c = config
        self.w = weights
        dev = weights["q_a_proj.weight"].device
        inv, self.mscale = rope_inv_freq(config)
        self.inv_freq = inv.to(dev)
        self.hadamard = hadamard_matrix(config.index_head_dim, dev)

    def rope_tables(self, positions: torch.Tensor):
        angles = positions.double()[:, None] * self.inv_freq[None, :]
        return (torch.cos(angles) * self.mscale).float(), (torch.sin(angles) * self.mscale).float()

    def rms_norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.w[name].float(), self.c.rms_norm_eps).to(
            torch.bfloat16
        )

    def forward(self, hidden: torch.Tensor, lens: list[int]) -> tuple[torch.Tensor, dict]:
        """Prefill of fresh prompts packed by request (hidden [sum(lens), D] bf16). Returns the
        layer's output and the cache it wrote (latents [T, 576] bf16, indexer keys fp8 + scales)."""
        c, w = self.c, self.w
        T, H = hidden.shape[0], c.num_heads
        dn, dr, dv, r = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank
        positions = torch.cat([torch.arange(n, device=hidden.device) for n in lens])
        cos, sin = self.rope_tables(positions)

        cq = self.rms_norm(hidden @ w["q_a_proj.weight"].T, "q_a_layernorm.weight")
        q = (cq @ w["q_b_proj.weight"].T).view(T, H, dn + dr)
        q = torch.cat((q[..., :dn], apply_rope(q[..., dn:], cos, sin, True)), -1)
        kv_a = hidden @ w["kv_a_proj_with_mqa.weight"].T
        c_kv = self.rms_norm(kv_a[:, :r], "kv_a_layernorm.weight")
        k_pe = apply_rope(kv_a[:, r:], cos, sin, True)
        latent = torch.cat((c_kv, k_pe), -1)  # the cache row of every token

        # Indexer keys: LayerNorm, rope on the first d_rope columns (halves), Hadamard, e4m3.
        k_idx = hidden @ w["indexer.wk.weight"].T
        k_idx = F.layer_norm(
            k_idx.float(), (k_idx.shape[-1],), w["indexer.k_norm.weight"].float(),
            w["indexer.k_norm.bias"].float(), c.index_layer_norm_eps,
        ).to(torch.bfloat16)
        k_idx = torch.cat((apply_rope(k_idx[:, :dr], cos, sin, False), k_idx[:, dr:]), -1)
        k_idx_q, k_idx_scale = fp8_rows(k_idx @ self.hadamard)
        cache = {"latent": latent, "index_keys": k_idx_q, "index_key_scales": k_idx_scale}

        kv = (c_kv @ w["kv_b_proj.weight"].T).view(T, H, dn + dv)
        k = torch.cat((kv[..., :dn], k_pe[:, None, :].expand(T, H, dr)), -1)
        v = kv[..., dn:]
        out = torch.empty(T, H, dv, dtype=torch.bfloat16, device=hidden.device)
        for n, group in self._groups(lens):
            rows = torch.cat([torch.arange(s, s + n, device=hidden.device) for s in group])
            if len(group) * n == T:  # the whole batch: views, no gathered copies
                qg, kg, vg = (t.view(len(group), n, H, -1).transpose(1, 2) for t in (q, k, v))
            else:
                qg, kg, vg = (t[rows].view(len(group), n, H, -1).transpose(1, 2)
                              for t in (q, k, v))
            if n <= c.index_topk:
                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                    og = F.scaled_dot_product_attention(
                        qg, kg, vg, is_causal=True, scale=c.softmax_scale
                    )
            else:
                mask = self._topk_mask(hidden, cq, k_idx_q, k_idx_scale, cos, sin, rows,
                                       len(group), n)
                og = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask[:, None],
                                                    scale=c.softmax_scale)
            out[rows] = og.transpose(1, 2).reshape(len(group) * n, H, dv)
        return out.view(T, H * dv) @ w["o_proj.weight"].T, cache

    @staticmethod
    def _groups(lens: list[int]):
        """Requests of equal length together: (length, [first row of each])."""
        starts, s = [], 0
        for n in lens:
            starts.append(s)
            s += n
        by_len: dict[int, list[int]] = {}
        for n, s in zip(lens, starts):
            by_len.setdefault(n, []).append(s)
        return sorted(by_len.items())

    def _topk_mask(self, hidden, cq, k_q, k_scale, cos, sin, rows, b, n, chunk=256):
        """The indexer's top-k per query of b requests of n tokens: [b, n, n] bool keep-mask.
        Scores are formed a chunk of queries at a time ([chunk, heads, n] f32 at most)."""
        c, w = self.c, self.w
        HI, d, dr = c.index_n_heads, c.index_head_dim, c.qk_rope_head_dim
        qi = (cq[rows] @ w["indexer.wq_b.weight"].T).view(-1, HI, d)
        qi = torch.cat((apply_rope(qi[..., :dr], cos[rows], sin[rows], False), qi[..., dr:]), -1)
        qi_q, qi_scale = fp8_rows(qi @ self.hadamard)
        weights = (hidden[rows] @ w["indexer.weights_proj.weight"].T).float()
        weights = (weights / math.sqrt(HI) / math.sqrt(d)).view(b, n, HI)
        qd = (qi_q.float() * qi_scale).view(b, n, HI, d)
        kd = (k_q[rows].float() * k_scale[rows]).view(b, n, d)
        keep = torch.zeros(b, n, n, dtype=torch.bool, device=hidden.device)
        pos = torch.arange(n, device=hidden.device)
        for i in range(b):
            for q0 in range(0, n, chunk):
                q1 = min(n, q0 + chunk)
                logits = torch.einsum("qhd,kd->qhk", qd[i, q0:q1], kd[i]).relu_()
                scores = torch.einsum("qhk,qh->qk", logits, weights[i, q0:q1])
                visible = pos[None, :] <= pos[q0:q1, None]
                scores = scores.masked_fill(~visible, float("-inf"))
                idx = scores.topk(c.index_topk, dim=-1).indices
                keep[i, q0:q1].scatter_(-1, idx, True)
                keep[i, q0:q1] &= visible
        return keep


def time_ms(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--lens", default="512,1024,2000")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--json", default="")
    parser.add_argument("--quick", action="store_true", help="4 requests, 3 repetitions")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("torch_layer.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.quick:
        args.requests, args.reps = 4, 3
    lens = [int(x) for x in args.lens.split(",")]

    config = dsattn.AttentionConfig.deepseek_v32()
    weights = dsattn.LayerWeights.synthetic(config, seed=args.seed, device="cuda")
    peer = TorchLayer(config, weights.tensors("torch"))
    rows = []
    for n in lens:
        # Engines prefill in batches of a token budget; both layers get the same batches.
        per_batch = max(1, args.max_batch_tokens // n)
        batches = [min(per_batch, args.requests - i) for i in range(0, args.requests, per_batch)]
        gen = torch.Generator(device="cuda").manual_seed(args.seed + n)
        inputs = [torch.randn(b * n, config.hidden_size, device="cuda", generator=gen)
                  .to(torch.bfloat16) for b in batches]
        layer = dsattn.AttentionLayer(config, weights, policy="per-request",
                                      num_pages=-(-n // 64) * max(batches) + 8)
        tables = [layer.allocate(n) for _ in range(max(batches))]
        outs = [torch.empty_like(x) for x in inputs]

        def ours():
            paths = set()
            for x, o, b in zip(inputs, outs, batches):
                paths.update(layer.prefill(x, [0] * b, [n] * b, tables[:b], out=o).paths)
            return paths

        def theirs():
            return [peer.forward(x, [n] * b)[0] for x, b in zip(inputs, batches)]

        paths = ours()
        diff = 0.0
        for o, t in zip(outs, theirs()):
            # A NaN or Inf on either side is a disagreement (Python's max would drop a NaN).
            if not (torch.isfinite(o.float()).all() and torch.isfinite(t.float()).all()):
                diff = math.inf
                break
            diff = max(diff, ((o.float() - t.float()).abs().max() / t.float().abs().max()).item())
        torch.cuda.synchronize()

        t_ours = time_ms(ours, args.reps)
        layer.policy = "mla"
        t_mla = time_ms(ours, args.reps)
        t_torch = time_ms(theirs, args.reps)
        row = {
            "requests": args.requests,
            "prompt_len": n,
            "batches": len(batches),
            "paths": sorted(paths),
            "dsattn_per_request_ms": t_ours,
            "dsattn_mla_ms": t_mla,
            "torch_ms": t_torch,
            "speedup_vs_torch": t_torch / t_ours,
            "per_request_speedup_vs_mla": t_mla / t_ours,
            "max_relative_difference_vs_torch": diff,
        }
        rows.append(row)
        print(f"{args.requests} x {n:5d} in {len(batches)} batches: dsattn per-request "
              f"{t_ours:8.2f} ms, dsattn mla {t_mla:8.2f} ms, torch {t_torch:8.2f} ms, "
              f"torch/dsattn {t_torch / t_ours:5.2f}x, max rel diff {diff:.2e}", flush=True)
        del layer, inputs, outs
        torch.cuda.empty_cache()

    record = {
        "device": torch.cuda.get_device_name(),
        "date": datetime.date.today().isoformat(),
        "commit": args.commit,
        "torch": torch.__version__,
        "what": "whole-layer prefill of fresh prompts, in batches of at most "
                f"{args.max_batch_tokens} tokens: dsattn per-request (and mla) against the PyTorch "
                "peer of bench/torch_layer.py on the same weights and inputs, median of "
                f"{args.reps} runs timed with CUDA events",
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
