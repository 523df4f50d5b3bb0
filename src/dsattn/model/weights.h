// The weights of one DeepSeek-V3.2 attention layer, named after the checkpoint's tensors
// (model.layers.{i}.self_attn.*). Linear weights are [out_features, in_features], bf16.
#pragma once

#include <cstdint>
#include <string_view>

#include "dsattn/core/tensor.h"
#include "dsattn/model/config.h"

namespace dsattn {

// Whether a weight named `name` (as in LayerWeights or a checkpoint: "indexer.wk",
// "indexer.wk.weight") is one of the indexer's, which IndexShare layers do not have.
bool is_indexer_weight(std::string_view name);

struct LayerWeights {
  Tensor q_a_proj;            // [q_lora_rank, hidden]
  Tensor q_a_layernorm;       // [q_lora_rank]          RMSNorm weight
  Tensor q_b_proj;            // [H * (d_nope + d_rope), q_lora_rank]
  Tensor kv_a_proj_with_mqa;  // [kv_lora_rank + d_rope, hidden]
  Tensor kv_a_layernorm;      // [kv_lora_rank]         RMSNorm weight
  Tensor kv_b_proj;  // [H * (d_nope + d_v), kv_lora_rank]; head h: k_nope rows, then v rows
  Tensor o_proj;     // [hidden, H * d_v]
  // The indexer's weights, absent (all five undefined) in a layer that takes the top-k of an
  // earlier layer instead of running its own indexer (IndexShare, AttentionConfig::shares_topk).
  Tensor indexer_wq_b;          // [H_I * d_I, q_lora_rank]
  Tensor indexer_wk;            // [d_I, hidden]
  Tensor indexer_k_norm;        // [d_I]                  LayerNorm weight
  Tensor indexer_k_norm_bias;   // [d_I]                  LayerNorm bias
  Tensor indexer_weights_proj;  // [H_I, hidden]

  // Seeded synthetic weights. Projections are uniform with variance 1/fan_in, so every
  // activation keeps unit RMS; o_proj is scaled down by `output_gain` so that a residual stack
  // of many layers (x + attn(norm(x))) grows slowly. Same seed, same weights, on any machine.
  static LayerWeights synthetic(const AttentionConfig& config, std::uint64_t seed,
                                float output_gain = 0.5f);
  // The same for layer `layer` of a model: without an indexer where config.shares_topk(layer).
  static LayerWeights synthetic_layer(const AttentionConfig& config, std::int64_t layer,
                                      std::uint64_t seed);

  bool has_indexer() const { return indexer_wq_b.defined(); }
  // Removes the indexer's weights (a layer sharing an earlier layer's top-k).
  void drop_indexer();

  // Throws InvalidArgument naming the first tensor whose shape or dtype does not fit `config`,
  // or an indexer that is only partly there.
  void validate(const AttentionConfig& config) const;
  // A copy of every tensor on `device`.
  LayerWeights to(Device device) const;
  Device device() const { return q_a_proj.device(); }
};

}  // namespace dsattn
