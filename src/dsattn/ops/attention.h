// The attention cores of the two forms.
#pragma once

#include "dsattn/core/tensor.h"

namespace dsattn::ops {

// Dense causal attention over packed variable-length requests (the MHA form).
// Request b owns query rows [cu_q[b], cu_q[b+1]) and key rows [cu_k[b], cu_k[b+1]), with
// n_k >= n_q; query i may see keys j <= n_k - n_q + i (bottom-right alignment, so a cached
// prefix is visible to every new query).
//   q: [total_q, H, d_qk] bf16; k: [total_k, H, d_qk] bf16; v: [total_k, H, d_v] bf16;
//   cu_q, cu_k: [batch + 1] i32 on the op's device; max_q: the largest request's n_q (sizes the
//   launch); out: [total_q, H, d_v] bf16
//   lse (optional): [total_q, H] f32, heads contiguous: each (row, head)'s log-sum-exp
//   ln Σ_j exp(scale · q·k_j) over its visible keys, FlashAttention's softmax_lse (with rows
//   first), which merging partial attentions over disjoint key sets needs.
//   key_mask (optional): [total_q, W] i32 bit words, masked MHA: query row t sees key j of its
//   request (j counted from the request's first key) only if bit j % 32 of key_mask[t][j / 32]
//   is set, besides the causal rule; keys past 32 W are hidden. A row that sees no key gets zeros
//   (and an lse of -inf), and a hidden key's values never reach it, even when they are not
//   finite. selection_mask builds the words from a top-k selection.
void mha_varlen_causal(const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& cu_q, const TensorView& cu_k, std::int64_t max_q,
                       float scale, const TensorView& out, const TensorView& lse = {},
                       const TensorView& key_mask = {});

// The bit words of mha_varlen_causal's key_mask from each row's selected key positions:
//   selected: [n, K] i32 positions, -1 = unused; mask: [n, W] i32, overwritten: bit p % 32 of
//   word p / 32 set for every selected p. The CPU refuses a position outside [-1, 32 W); a GPU
//   kernel cannot raise, so there it is skipped, as -1 is.
void selection_mask(const TensorView& selected, const TensorView& mask);

// Sparse attention of the absorbed (MLA) form: each query row attends to the cached latent rows
// named by its index list, with keys [c_kv, k_pe] (d_qk wide) and values c_kv (the first d_v).
//   q: [n, H, d_qk] bf16; kv_cache: [num_slots, d_qk] bf16 (or FP8 latent rows, u8); indices:
//   [n, topk] i32 slots, -1 = unused; out: [n, H, d_v] bf16. A row with no valid index gets zeros.
//   On the CPU a slot outside [-1, num_slots) is refused; a GPU kernel cannot raise, so there such
//   a slot counts as unused, as -1 does.
//   lse (optional): [n, H] f32, heads contiguous: each (row, head)'s log-sum-exp
//   ln Σ_j exp(scale · q·k_j) over its valid indices (-inf for a row without one), as
//   mha_varlen_causal's.
//   topk_length (optional): [n] i32: row t reads only the first topk_length[t] entries of its
//   index list (the rest are ignored, valid or not), as FlashMLA's topk_length. The CPU refuses a
//   length outside [0, topk]; the GPU clamps it there.
void sparse_mla(const TensorView& q, const TensorView& kv_cache, const TensorView& indices,
                float scale, const TensorView& out, const TensorView& lse = {},
                const TensorView& topk_length = {});

}  // namespace dsattn::ops
