// A direct implementation of the layer's mathematics (DESIGN §2), in the MHA form, written for
// clarity, not speed. In float64 it is the reference every path and backend is measured
// against; in "plain bf16" precision (f32 arithmetic, bf16 storage between stages, the obvious
// way) it gives the error that FlashAttention's tolerance scheme allows twice over.
#pragma once

#include <cstdint>
#include <vector>

#include "dsattn/core/tensor.h"
#include "dsattn/model/config.h"
#include "dsattn/model/weights.h"

namespace dsattn::reference {

enum class Precision { float64, plain_bf16 };

struct Request {
  // [context_len, hidden_size] bf16: the hidden state of every token of the sequence, the cached
  // prefix included; the last `extend_len` rows are the queries of this forward.
  TensorView hidden;
  std::int64_t extend_len = 0;
  // Per query row: the key positions it may attend to. Empty: dense causal (all earlier keys).
  std::vector<std::vector<std::int32_t>> allowed_keys;
  // The latent is cached as FP8 (ops/latent_fp8.h): c_kv goes through the same block-128 e4m3
  // quantisation before it is used as keys and values.
  bool fp8_latent = false;
};

// Returns the layer output for the request's queries, [extend_len * hidden_size] row-major.
std::vector<double> attention_layer(const AttentionConfig& config, const LayerWeights& weights,
                                    const Request& request, Precision precision);

// The lightning indexer's scores for the request's queries against all its positions, in
// float64 from unquantised q_I and k_I: [extend_len * context_len], -inf where not causal.
std::vector<double> indexer_scores(const AttentionConfig& config, const LayerWeights& weights,
                                   const Request& request);

}  // namespace dsattn::reference
