// The per-token projections every path shares: the query, the cached latent and the indexer key.
#pragma once

#include "dsattn/core/tensor.h"
#include "dsattn/layer/layer_context.h"

namespace dsattn {

struct TokenProjections {
  Tensor q_latent;  // [T, q_lora_rank] bf16: c_q = RMSNorm(q_a_proj x), also the indexer's input
  Tensor q;         // [T, H, d_nope + d_rope] bf16: [q_nope, RoPE(q_pe)]
  Tensor latent;    // [T, kv_lora_rank + d_rope] bf16: [RMSNorm(c_kv), RoPE(k_pe)], as cached
  // [T, index_key_bytes(d_I)] u8: FP8 indexer keys with their scales, as cached; undefined in a
  // layer without an indexer (IndexShare)
  Tensor index_keys;
};

// hidden: [T, D] bf16; positions: [T] i32 (each token's position in its sequence)
TokenProjections project_tokens(const LayerContext& ctx, const TensorView& hidden,
                                const TensorView& positions);

}  // namespace dsattn
