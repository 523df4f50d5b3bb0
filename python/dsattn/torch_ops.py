"""dsattn's kernels as PyTorch operators (torch.library), so that a model calling them compiles
with torch.compile(fullgraph=True) instead of breaking the graph at each call.

    import dsattn.torch_ops                       # registers the operators (needs PyTorch)
    out, lse = torch.ops.dsattn.sparse_mla(q, kv_cache, indices, scale)

Each operator has a schema (inputs it writes are declared mutated: the cache writes and
map_positions_to_slots), a fake implementation that gives output shapes and dtypes without
running (for tracing and torch.compile), and runs the kernel of `dsattn.kernels` with the same
arguments on the current stream. Outputs are fresh tensors; shapes that depend on tensor
contents are arguments (indexer_scores' max_k). Shapes and dtypes are as in dsattn.kernels.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import kernels


@torch.library.custom_op("dsattn::mha_prefill", mutates_args=())
def mha_prefill(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_q: Tensor,
    cu_k: Tensor,
    max_q: int,
    scale: float,
    key_mask: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """kernels.mha_prefill; returns (out [total_q, heads, d_v] bf16, lse [total_q, heads] f32)."""
    return kernels.mha_prefill(q, k, v, cu_q, cu_k, max_q, scale, return_lse=True,
                               key_mask=key_mask)


@mha_prefill.register_fake
def _(q, k, v, cu_q, cu_k, max_q, scale, key_mask=None):
    n, heads = q.shape[0], q.shape[1]
    return q.new_empty((n, heads, v.shape[2])), q.new_empty((n, heads), dtype=torch.float32)


@torch.library.custom_op("dsattn::sparse_mla", mutates_args=())
def sparse_mla(
    q: Tensor,
    kv_cache: Tensor,
    indices: Tensor,
    scale: float,
    v_dim: int = 512,
    topk_length: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """kernels.sparse_mla; returns (out [n, heads, v_dim] bf16, lse [n, heads] f32)."""
    return kernels.sparse_mla(q, kv_cache, indices, scale, v_dim, return_lse=True,
                              topk_length=topk_length)


@sparse_mla.register_fake
def _(q, kv_cache, indices, scale, v_dim=512, topk_length=None):
    n, heads = q.shape[0], q.shape[1]
    return q.new_empty((n, heads, v_dim)), q.new_empty((n, heads), dtype=torch.float32)


@torch.library.custom_op("dsattn::indexer_scores", mutates_args=())
def indexer_scores(
    q: Tensor,
    q_scale: Tensor,
    weights: Tensor,
    key_cache: Tensor,
    block_tables: Tensor,
    page_size: int,
    cu_q: Tensor,
    context_lens: Tensor,
    max_k: int,
    skip_rows_up_to: int = 0,
    key_layout: str = "rows",
) -> Tensor:
    """kernels.indexer_scores into a fresh [total_q, max_k] f32 tensor filled with -inf
    (max_k >= every context length: an argument, so that the shape is known when tracing)."""
    scores = torch.full((q.shape[0], max_k), float("-inf"), dtype=torch.float32, device=q.device)
    return kernels.indexer_scores(q, q_scale, weights, key_cache, block_tables, page_size, cu_q,
                                  context_lens, skip_rows_up_to, scores, key_layout=key_layout)


@indexer_scores.register_fake
def _(q, q_scale, weights, key_cache, block_tables, page_size, cu_q, context_lens, max_k,
      skip_rows_up_to=0, key_layout="rows"):
    return q.new_empty((q.shape[0], max_k), dtype=torch.float32)


@torch.library.custom_op("dsattn::topk", mutates_args=())
def topk(scores: Tensor, lengths: Tensor, k: int) -> Tensor:
    """kernels.topk; returns [rows, k] int32 positions."""
    return kernels.topk(scores, lengths, k)


@topk.register_fake
def _(scores, lengths, k):
    return scores.new_empty((scores.shape[0], k), dtype=torch.int32)


@torch.library.custom_op("dsattn::topk_slots", mutates_args=())
def topk_slots(
    scores: Tensor, lengths: Tensor, k: int, row_request: Tensor, block_tables: Tensor,
    page_size: int,
) -> Tensor:
    """kernels.topk_slots; returns [rows, k] int32 cache slots (-1 unused)."""
    return kernels.topk_slots(scores, lengths, k, row_request, block_tables, page_size)


@topk_slots.register_fake
def _(scores, lengths, k, row_request, block_tables, page_size):
    return scores.new_empty((scores.shape[0], k), dtype=torch.int32)


@torch.library.custom_op("dsattn::quantize_index_keys", mutates_args=())
def quantize_index_keys(keys: Tensor, rotate: bool = True) -> Tensor:
    """kernels.quantize_index_keys; returns [n, d + 4 * d / 128] uint8 cache rows."""
    return kernels.quantize_index_keys(keys, rotate=rotate)


@quantize_index_keys.register_fake
def _(keys, rotate=True):
    n, d = keys.shape
    return keys.new_empty((n, d + 4 * (d // 128)), dtype=torch.uint8)


@torch.library.custom_op("dsattn::write_latent", mutates_args=("cache",))
def write_latent(latent: Tensor, slots: Tensor, cache: Tensor, kv_lora_rank: int) -> None:
    """kernels.write_latent: the tokens' latents into `cache` at `slots` (FP8 rows quantised)."""
    kernels.write_latent(latent, slots, cache, kv_lora_rank)


@write_latent.register_fake
def _(latent, slots, cache, kv_lora_rank):
    return None


@torch.library.custom_op("dsattn::write_index_keys", mutates_args=("cache",))
def write_index_keys(
    keys: Tensor, slots: Tensor, cache: Tensor, key_layout: str = "rows", page_size: int = 0
) -> None:
    """kernels.write_index_keys: quantised index-key rows into `cache` at `slots`, in the cache's
    layout ("rows", or "page-major" with the cache's page_size)."""
    kernels.write_index_keys(keys, slots, cache, key_layout=key_layout,
                             page_size=page_size if page_size > 0 else None)


@write_index_keys.register_fake
def _(keys, slots, cache, key_layout="rows", page_size=0):
    return None


@torch.library.custom_op("dsattn::selection_mask", mutates_args=())
def selection_mask(selected: Tensor, words: int) -> Tensor:
    """kernels.selection_mask; returns the key mask [n, words] int32."""
    return kernels.selection_mask(selected, words)


@selection_mask.register_fake
def _(selected, words):
    return selected.new_empty((selected.shape[0], words), dtype=torch.int32)


@torch.library.custom_op("dsattn::map_positions_to_slots", mutates_args=("indices",))
def map_positions_to_slots(
    indices: Tensor, row_request: Tensor, block_tables: Tensor, page_size: int
) -> None:
    """kernels.map_positions_to_slots: positions in `indices` become cache slots, in place."""
    kernels.map_positions_to_slots(indices, row_request, block_tables, page_size)


@map_positions_to_slots.register_fake
def _(indices, row_request, block_tables, page_size):
    return None
