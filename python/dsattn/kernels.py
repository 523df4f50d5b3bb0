"""The layer's kernels on their own, for engines that bring their own layer.

Each takes tensors of one device (CPU or CUDA), writes into `out` when given (and returns it),
else allocates the output in the framework and on the device of the first argument. For CUDA
tensors the work runs on `stream` (an int cudaStream_t; default: the current PyTorch or CuPy
stream of the first argument, else the default stream). bf16 arguments also take uint16 arrays
of bf16 bits, fp8 e4m3 ones uint8 arrays. Metadata (offsets, lengths, block tables, indices) is
int32 on the op's device; on the CPU its entries are checked, on CUDA they are trusted.
"""

from __future__ import annotations

from typing import Any

from . import _core
from ._arrays import empty_like, shape_of


def mha_prefill(
    q: Any,
    k: Any,
    v: Any,
    cu_q: Any,
    cu_k: Any,
    max_q: int,
    scale: float,
    out: Any = None,
    stream: int | None = None,
    *,
    lse: Any = None,
    return_lse: bool = False,
    key_mask: Any = None,
) -> Any:
    """Dense causal attention over packed variable-length requests (the MHA form).

    Request b owns query rows [cu_q[b], cu_q[b+1]) and key rows [cu_k[b], cu_k[b+1]), with at
    least as many keys as queries; query i of a request with n_q queries and n_k keys sees keys
    j <= n_k - n_q + i (bottom-right alignment: a cached prefix is visible to every query).
    out[t, h] = softmax(scale * q[t, h] . k[:, h]) v[:, h] over the visible keys.

    q: [total_q, heads, d_qk] bf16; k: [total_k, heads, d_qk] bf16; v: [total_k, heads, d_v]
    bf16 (unit stride in the last dimension, rows may be strided); cu_q, cu_k: [batch + 1]
    int32; max_q: the largest request's query count; out: [total_q, heads, d_v] bf16.

    lse: [total_q, heads] float32 (heads contiguous), written when given: each row's and head's
    log-sum-exp, ln sum_j exp(scale * q . k_j) over its visible keys, as FlashAttention's
    softmax_lse, for merging attention over disjoint key sets. return_lse=True returns
    (out, lse), allocating lse when it is not given.

    key_mask: [total_q, words] int32 bit words, masked MHA: row t also sees key j of its request
    (counted from the request's first key) only if bit j % 32 of key_mask[t, j // 32] is set;
    keys past 32 * words are hidden. A row that sees no key gets zeros (lse -inf), and a hidden
    key's values never reach it. `selection_mask` builds the words from top-k positions.
    """
    total_q, heads, _ = shape_of(q, "q", "[total_q, heads, d_qk]")
    if out is None:
        d_v = shape_of(v, "v", "[total_k, heads, d_v]")[2]
        out = empty_like(q, (total_q, heads, d_v), "bf16")
    if lse is None and return_lse:
        lse = empty_like(q, (total_q, heads), "f32")
    _core.mha_prefill(q, k, v, cu_q, cu_k, max_q, scale, out, lse, key_mask, stream)
    return (out, lse) if return_lse else out


def sparse_mla(
    q: Any,
    kv_cache: Any,
    indices: Any,
    scale: float,
    v_dim: int = 512,
    out: Any = None,
    stream: int | None = None,
    *,
    lse: Any = None,
    return_lse: bool = False,
    topk_length: Any = None,
) -> Any:
    """Sparse attention of the absorbed (MLA) form: each query row attends to the cached latent
    rows its index list names, keys [c_kv, k_pe] (d_qk wide) and values c_kv (the first d_v).

    q: [n, heads, d_qk] bf16 (576 for DeepSeek-V3.2: the absorbed query);
    kv_cache: [num_slots, d_qk] bf16, or [num_slots, row_bytes] uint8 FP8 rows (d_v e4m3, one
    f32 scale per 128 of them, then d_qk - d_v bf16: 656 bytes for DeepSeek-V3.2);
    indices: [n, topk] int32 cache slots, -1 for unused (a row with none gets zeros). On the
    CPU another slot outside the cache is refused; on the GPU it counts as unused;
    out: [n, heads, d_v] bf16. v_dim: d_v of the allocated output when `out` is None (512 is
    DeepSeek-V3.2's kv_lora_rank).

    lse: [n, heads] float32 (heads contiguous), written when given: each row's and head's
    log-sum-exp, ln sum_j exp(scale * q . k_j) over its valid indices (-inf for a row without
    one), for merging attention over disjoint key sets. return_lse=True returns (out, lse),
    allocating lse when it is not given.

    topk_length: [n] int32, optional: row t reads only the first topk_length[t] entries of its
    index list (FlashMLA's topk_length). The CPU refuses a length outside [0, topk]; the GPU
    clamps it there.
    """
    n, heads, _ = shape_of(q, "q", "[n, heads, d_qk]")
    if out is None:
        out = empty_like(q, (n, heads, v_dim), "bf16")
    if lse is None and return_lse:
        lse = empty_like(q, (n, heads), "f32")
    _core.sparse_mla(q, kv_cache, indices, scale, out, lse, topk_length, stream)
    return (out, lse) if return_lse else out


def indexer_scores(
    q: Any,
    q_scale: Any,
    weights: Any,
    key_cache: Any,
    block_tables: Any,
    page_size: int,
    cu_q: Any,
    context_lens: Any,
    skip_rows_up_to: int = 0,
    scores: Any = None,
    stream: int | None = None,
    *,
    key_layout: str = "rows",
) -> Any:
    """The lightning indexer's scores of packed requests against their paged keys.

    Request b owns query rows [cu_q[b], cu_q[b+1]) and context_lens[b] cached keys; position s
    lives at slot block_tables[b, s // page_size] * page_size + s % page_size. Its queries are its
    newest positions, so query i of n_q sees keys s <= n_k - n_q + i. For a visible key:
    scores[row, s] = sum_h weights[row, h] * relu((q[row, h] * q_scale[row, h]) . key[s]),
    with q and the key dequantised per block of 128; -inf for the row's other columns below
    n_k; columns past n_k are not written. Rows that see at most `skip_rows_up_to` keys are not
    written at all (top-k selects all their keys); 0 computes every row.

    q: [total_q, index_heads, index_head_dim] float8_e4m3fn (or uint8 bits);
    q_scale: [total_q, index_heads, index_head_dim / 128] float32;
    weights: [total_q, index_heads] float32;
    key_cache: [num_slots, index_head_dim + 4 * index_head_dim / 128] uint8 (132 bytes a token
    for DeepSeek-V3.2) in `key_layout`: "rows", each slot's e4m3 values then its float32 scales
    (one per 128), or "page-major", each page's values (slot by slot) then their scales, the
    layout vLLM's indexer cache uses (the tensor contiguous, whole pages);
    block_tables: [batch, max_pages] int32; cu_q: [batch + 1] int32; context_lens: [batch] int32;
    scores: [total_q, max_k] float32 with max_k >= every context length (rows may be strided).
    An allocated `scores` is [total_q, max(context_lens)], filled with -inf first.
    """
    if scores is None:
        total_q = shape_of(q, "q", "[total_q, index_heads, index_head_dim]")[0]
        (batch,) = shape_of(context_lens, "context_lens", "[batch]")
        max_k = int(context_lens.max()) if batch > 0 else 0
        scores = empty_like(q, (total_q, max(max_k, 0)), "f32", fill=float("-inf"))
    _core.indexer_scores(
        q, q_scale, weights, key_cache, block_tables, page_size, cu_q, context_lens,
        skip_rows_up_to, scores, key_layout, stream,
    )
    return scores


def _selection_out(scores: Any, k: int, out: Any) -> Any:
    """The [rows, k] int32 output of a top-k: `out` when given, else a new one beside scores."""
    if out is not None:
        return out
    (rows, _) = shape_of(scores, "scores", "[rows, n]")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected an int >= 1, got {k!r}")
    return empty_like(scores, (rows, k), "i32")


def topk(
    scores: Any, lengths: Any, k: int, out: Any = None, stream: int | None = None
) -> Any:
    """Per row r, the min(k, lengths[r]) positions s < lengths[r] with the largest scores
    (equal scores: the lower position wins; NaN ranks below every number), in ascending
    position order, then -1 for the unused slots. A row with lengths[r] <= k selects
    0 .. lengths[r] - 1 without reading its scores.

    scores: [rows, n] float32 (rows may be strided); lengths: [rows] int32 in [0, n];
    out: [rows, k] int32 (its width is k when given).
    """
    out = _selection_out(scores, k, out)
    _core.topk(scores, lengths, out, stream)
    return out


def topk_slots(
    scores: Any,
    lengths: Any,
    k: int,
    row_request: Any,
    block_tables: Any,
    page_size: int,
    out: Any = None,
    stream: int | None = None,
) -> Any:
    """`topk` and `map_positions_to_slots` in one kernel: per row, the cache slots of its
    selected keys (-1 for the unused ones), what `sparse_mla` reads as `indices`. Positions index
    the row's request's block table: position p of row r lives in slot
    block_tables[row_request[r], p // page_size] * page_size + p % page_size. Every position
    below lengths[r] must lie inside the table (checked on the CPU; on CUDA a position past the
    table's width gives -1).

    scores: [rows, n] float32; lengths: [rows] int32 in [0, n]; row_request: [rows] int32;
    block_tables: [requests, max_pages] int32; out: [rows, k] int32 (its width is k when given).
    """
    out = _selection_out(scores, k, out)
    _core.topk_slots(scores, lengths, row_request, block_tables, page_size, out, stream)
    return out


def write_latent(
    latent: Any, slots: Any, cache: Any, kv_lora_rank: int, stream: int | None = None
) -> Any:
    """Writes tokens' latents [c_kv, k_pe] into a latent cache at their slots (page * page_size +
    offset), quantising them for an FP8 cache; returns `cache`.

    latent: [n, kv_lora_rank + rope_dim] bf16; slots: [n] int32, distinct, in [0, num_slots)
    (-1: that row is not written);
    cache: [num_slots, kv_lora_rank + rope_dim] bf16, or [num_slots, kv_lora_rank + 4 *
    kv_lora_rank / 128 + 2 * rope_dim] uint8 for the FP8 format (kv_lora_rank e4m3 values, one
    float32 scale = max(amax, 1e-4) / 448 per 128 of them, then rope_dim bf16): 656 bytes for
    DeepSeek-V3.2, the layout FlashMLA and vLLM use. Rows of other slots are left as they are.
    """
    _core.write_latent(latent, slots, cache, kv_lora_rank, stream)
    return cache


def write_index_keys(
    keys: Any,
    slots: Any,
    cache: Any,
    stream: int | None = None,
    *,
    key_layout: str = "rows",
    page_size: int | None = None,
) -> Any:
    """Writes tokens' indexer keys (already quantised: index_head_dim e4m3 values, then one
    float32 scale per 128, as `quantize_index_keys` makes them) into the index-key cache at their
    slots, in the cache's `key_layout` ("rows" or "page-major", see `indexer_scores`; the
    page-major layout needs the cache's `page_size`); returns `cache`.

    keys: [n, key bytes] uint8; slots: [n] int32, distinct (-1: that row is not written);
    cache: [num_slots, key bytes] uint8 (132 bytes for DeepSeek-V3.2; contiguous whole pages for
    "page-major").
    """
    if key_layout == "page-major" and page_size is None:
        raise ValueError("page_size: the page-major layout needs the cache's page size, got None")
    _core.write_index_keys(keys, slots, cache, 1 if page_size is None else page_size, key_layout,
                           stream)
    return cache


def quantize_index_keys(
    keys: Any, out: Any = None, rotate: bool = True, stream: int | None = None
) -> Any:
    """Index-key cache rows from the indexer's keys (after their norm and RoPE), as the layer
    writes them: with `rotate`, the Walsh-Hadamard rotation (H · k / sqrt(d), rounded to bf16),
    then FP8 e4m3 quantisation in blocks of 128, scale = max(amax, 1e-4) / 448. Row r holds the d
    e4m3 values, then the d / 128 float32 scales; pass the rows to `write_index_keys`. Returns
    `out`.

    keys: [n, d] bf16, d a multiple of 128 (128 on CUDA with `rotate`); out: [n, d + 4 * d / 128]
    uint8 (132 bytes for DeepSeek-V3.2), rows 4-byte aligned; allocated when not given.
    """
    if out is None:
        (n, d) = shape_of(keys, "keys", "[n, d]")
        out = empty_like(keys, (n, d + 4 * (d // 128)), "u8")
    _core.quantize_index_keys(keys, out, bool(rotate), stream)
    return out


def selection_mask(
    selected: Any, words: int | None = None, out: Any = None, stream: int | None = None
) -> Any:
    """The key mask of masked MHA (mha_prefill's key_mask) from top-k positions: bit p % 32 of
    word p // 32 of row r is set for every p = selected[r, j] >= 0; -1 is skipped.

    selected: [n, k] int32 key positions (as `topk` returns them); words: the mask's words a row
    (at least ceil(longest context / 32); default: the width of `out`, which is then required);
    out: [n, words] int32, overwritten. The CPU refuses a position outside [-1, 32 * words).
    """
    n = shape_of(selected, "selected", "[n, k]")[0]
    if out is None:
        if words is None:
            raise ValueError("selection_mask needs words or out")
        out = empty_like(selected, (n, words), "i32")
    _core.selection_mask(selected, out, stream)
    return out


def map_positions_to_slots(
    indices: Any, row_request: Any, block_tables: Any, page_size: int, stream: int | None = None
) -> Any:
    """Turns selected key positions into cache slots, in place, and returns `indices`: for row r,
    p = indices[r, j] >= 0 becomes block_tables[row_request[r], p // page_size] * page_size +
    p % page_size; -1 stays -1. This is what `sparse_mla` reads after `topk`.

    indices: [rows, k] int32; row_request: [rows] int32 (each row's request); block_tables:
    [requests, max_pages] int32.
    """
    _core.map_positions_to_slots(indices, row_request, block_tables, page_size, stream)
    return indices
