// The lightning indexer: its keys (computed for every token, on every path, because later tokens
// may need them) and its top-k selection (only on the sparse path).
#pragma once

#include "dsattn/core/tensor.h"
#include "dsattn/layer/layer_context.h"

namespace dsattn {

// k_I = Hadamard(RoPE_halves(LayerNorm(W_k x))) quantised to FP8 blocks of 128.
//   hidden: [T, D] bf16; positions: [T] i32. Returns [T, index_key_bytes(d_I)] u8 rows as cached.
Tensor compute_index_keys(const LayerContext& ctx, const TensorView& hidden,
                          const TensorView& positions);

// The indexer's queries and per-head weights for T tokens.
struct IndexQueries {
  Tensor q;        // [T, H_I, d_I] fp8_e4m3
  Tensor q_scale;  // [T, H_I, d_I / 128] f32
  Tensor weights;  // [T, H_I] f32, already scaled by index_weight_scale
};
//   hidden: [T, D] bf16; q_latent: [T, q_lora_rank] bf16; positions: [T] i32
IndexQueries compute_index_queries(const LayerContext& ctx, const TensorView& hidden,
                                   const TensorView& q_latent, const TensorView& positions);

}  // namespace dsattn
