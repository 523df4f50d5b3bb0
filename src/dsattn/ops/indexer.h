// The lightning indexer's scores.
#pragma once

#include "dsattn/cache/cache_format.h"
#include "dsattn/core/tensor.h"

namespace dsattn::ops {

// For each query row t of one request and each key position s < key_slots.size(0):
//   scores[t, s] = Σ_h weights[t, h] · ReLU(dequant(q[t, h]) · dequant(key[s]))   if s <= limit_t
//   scores[t, s] = -inf                                                          otherwise
// with limit_t = n_keys - n_queries + t (bottom-right causal: the queries are the last ones).
//   q: [n_queries, H_I, d_I] fp8_e4m3; q_scale: [n_queries, H_I, d_I / 128] f32;
//   weights: [n_queries, H_I] f32; key_cache: [num_slots, index_key_bytes(d_I)] u8;
//   key_slots: [n_keys] i32; scores: [n_queries, n_keys] f32 (rows may be strided)
void indexer_scores(const TensorView& q, const TensorView& q_scale, const TensorView& weights,
                    const TensorView& key_cache, const TensorView& key_slots,
                    const TensorView& scores);

}  // namespace dsattn::ops
