"""A minimal serving loop over dsattn in PyTorch, as an inference engine would drive one attention
layer: the engine owns the paged caches (FlashMLA's FP8 rows or bf16 rows, and the indexer keys)
and a page allocator; requests share the pages of a common prompt prefix; the prefix is
prefilled once, then every request's own prompt in one batch on top of it; decode runs as a
DecodeStep captured in a CUDA graph and replayed step after step with new lengths written into
the same device tensors. Every output is checked against the plain API (a second layer on its
own cache, policy "mla": decode bit for bit, prefill within bf16 rounding).

    python examples/engine_loop.py                       # CUDA when there is one
    python examples/engine_loop.py --device cpu --small  # eager steps, no graph

The attention layer's output is not fed back (there is no model around it): each step's hidden
states are fresh random rows.
"""

from __future__ import annotations

import argparse
import time

import torch

import dsattn


class PageAllocator:
    """The engine's own pages: a free list; pages of a shared prefix are refcounted."""

    def __init__(self, num_pages: int) -> None:
        self.free = list(range(num_pages - 1, -1, -1))
        self.refs = [0] * num_pages

    def take(self, count: int) -> list[int]:
        if count > len(self.free):
            raise RuntimeError(f"out of pages: {count} wanted, {len(self.free)} free")
        pages = [self.free.pop() for _ in range(count)]
        for p in pages:
            self.refs[p] = 1
        return pages

    def share(self, pages: list[int]) -> list[int]:
        for p in pages:
            self.refs[p] += 1
        return list(pages)

    def release(self, pages: list[int]) -> None:
        for p in pages:
            self.refs[p] -= 1
            if self.refs[p] == 0:
                self.free.append(p)


def config_for(small: bool) -> dsattn.AttentionConfig:
    if not small:
        return dsattn.AttentionConfig()  # DeepSeek-V3.2's attention
    return dsattn.AttentionConfig(hidden_size=256, num_heads=8, q_lora_rank=128, kv_lora_rank=128,
                                  qk_nope_head_dim=32, qk_rope_head_dim=64, v_head_dim=32,
                                  index_n_heads=8, index_head_dim=128, index_topk=64)


def bf16_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (inf on a NaN or Inf)."""
    a, b = a.float(), b.float()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="a shrunk config (fast on the CPU)")
    parser.add_argument("--kv-cache", choices=["bf16", "fp8"], default="fp8")
    parser.add_argument("--page-size", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--shared-prefix", type=int, default=128,
                        help="tokens of the prompt prefix every request shares (whole pages)")
    parser.add_argument("--prompt", type=int, default=40, help="each request's own prompt tokens")
    parser.add_argument("--steps", type=int, default=8, help="decode steps")
    args = parser.parse_args()
    if args.shared_prefix % args.page_size:
        parser.error("--shared-prefix must be a multiple of --page-size (shared pages are whole)")
    device = torch.device(args.device)
    use_graph = device.type == "cuda"
    config = config_for(args.small)
    weights = dsattn.LayerWeights.synthetic(config, 7, device=str(device))
    gen = torch.Generator().manual_seed(3)

    def hidden(rows: int) -> torch.Tensor:
        x = torch.rand((rows, config.hidden_size), generator=gen) * 2 - 1
        return x.to(torch.bfloat16).to(device)

    # The engine's caches: [pages, page_size, row] in FlashMLA's and vLLM's byte layout.
    R, P, T, S = args.requests, args.shared_prefix, args.prompt, args.steps
    max_context = P + T + S
    pages_each = -(-max_context // args.page_size) - P // args.page_size
    num_pages = P // args.page_size + R * pages_each
    row = {"bf16": (config.kv_lora_rank + config.qk_rope_head_dim, torch.bfloat16),
           "fp8": (config.kv_lora_rank + 4 * (config.kv_lora_rank // 128)
                   + 2 * config.qk_rope_head_dim, torch.uint8)}[args.kv_cache]
    latent_cache = torch.empty((num_pages, args.page_size, row[0]), dtype=row[1], device=device)
    index_cache = torch.empty((num_pages, args.page_size, config.index_head_dim + 4),
                              dtype=torch.uint8, device=device)
    layer = dsattn.AttentionLayer(config, weights, latent_cache=latent_cache,
                                  index_key_cache=index_cache)
    reference = dsattn.AttentionLayer(config, weights, kv_cache=args.kv_cache, policy="mla",
                                      num_pages=R * -(-max_context // args.page_size),
                                      page_size=args.page_size)
    pages = PageAllocator(num_pages)

    # The shared prefix, once; then each request's own prompt on top of it, in one batch.
    prefix_pages = pages.take(P // args.page_size)
    prefix_tokens = hidden(P)
    layer.prefill(prefix_tokens, [0], [P], [prefix_pages])
    tables = [pages.share(prefix_pages) + pages.take(pages_each) for _ in range(R)]
    pages.release(prefix_pages)  # the requests hold them now
    prompts = hidden(R * T)
    out = layer.prefill(prompts, [P] * R, [T] * R, tables)
    # The plain API on its own cache: each request's copy of the prefix, then the same batch of
    # prompts (the same call shapes, so that the cached rows are the same bits: a GEMM's rounding
    # may depend on how many rows it multiplies).
    ref_tables = [reference.allocate(max_context) for _ in range(R)]
    for t in ref_tables:
        reference.prefill(prefix_tokens, [0], [P], [t])
    ref_out = reference.prefill(prompts, [P] * R, [T] * R, ref_tables).out
    print(f"prefill: {R} requests x {T} tokens on a shared {P}-token prefix "
          f"({len(prefix_pages)} shared pages), paths {out.paths}, "
          f"difference to the plain API (policy mla) {bf16_difference(out.out, ref_out):.1e}")

    # Decode: a step of fixed shape reading lengths and tables from these tensors.
    step = layer.decode_step(R, max_context)
    static_hidden = torch.empty((R, config.hidden_size), dtype=torch.bfloat16, device=device)
    static_lens = torch.full((R,), P + T, dtype=torch.int32, device=device)
    static_tables = torch.tensor(tables, dtype=torch.int32, device=device)
    static_out = torch.empty_like(static_hidden)
    graph = None
    worst = 0.0
    start = time.perf_counter()
    for s in range(S):
        context = P + T + s
        x = hidden(R)
        static_hidden.copy_(x)
        static_lens.fill_(context)
        if graph is None:
            if use_graph:  # the warm-up on a side stream, then the capture (torch's recipe)
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    step.run(static_hidden, static_lens, static_tables, out=static_out)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    step.run(static_hidden, static_lens, static_tables, out=static_out)
            else:
                step.run(static_hidden, static_lens, static_tables, out=static_out)
        elif use_graph:
            graph.replay()
        else:
            step.run(static_hidden, static_lens, static_tables, out=static_out)
        expected = reference.decode(x, [context] * R, ref_tables).out
        if not torch.equal(static_out.view(torch.int16), expected.view(torch.int16)):
            print(f"step {s}: the graph's output differs from the plain API "
                  f"({bf16_difference(static_out, expected):.1e})")
            return 1
        worst = max(worst, bf16_difference(static_out, expected))
    step.check()  # no length or page outside the cache was met
    if use_graph:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    print(f"decode: {S} steps ({'one CUDA graph, replayed' if use_graph else 'eager'}), contexts "
          f"{P + T} -> {P + T + S - 1} (index_topk {config.index_topk}), identical to the plain "
          f"API bit for bit; {elapsed * 1e3 / S:.2f} ms a step with the checks")
    for t in tables:
        pages.release(t)
    print(f"pages free at the end: {len(pages.free)} of {num_pages}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
