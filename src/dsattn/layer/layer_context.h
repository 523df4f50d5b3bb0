// What every stage of one attention layer reads: its configuration, weights and RoPE tables.
#pragma once

#include "dsattn/model/config.h"
#include "dsattn/model/weights.h"
#include "dsattn/ops/rope.h"

namespace dsattn {

struct LayerContext {
  AttentionConfig config;
  LayerWeights weights;
  ops::RopeTable rope;  // for the d_rope dims of MLA (interleaved) and of the indexer (halves)
  float softmax_scale = 0.0f;
  // The indexer's per-head weight factor H_I^-1/2 · d_I^-1/2 (DeepSeek-V3.2's weights_proj scale
  // times its softmax_scale).
  float index_weight_scale = 0.0f;

  LayerContext(const AttentionConfig& config, LayerWeights weights);
};

}  // namespace dsattn
