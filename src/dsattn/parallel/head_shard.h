// Tensor parallelism over attention heads: which heads a rank owns, and the slices of a layer's
// weights it holds.
//
// Rank r of N owns the contiguous heads [r·H/N, (r+1)·H/N). Per head, q_b_proj has d_nope + d_rope
// rows and kv_b_proj d_nope (k) then d_v (v) rows, so a rank's rows of both are one contiguous
// block; o_proj's input columns are per head too (d_v each), so the rank's o_proj output is its
// heads' share of y = W_o [o_1 … o_H], and y is the sum of the ranks' outputs. Everything that is
// not per attention head is replicated: q_a_proj, kv_a_proj_with_mqa, the norms, the cached
// latent (one 576-wide row per token serves every head) and the whole indexer with its key cache
// (see docs/design.md, "Tensor parallelism").
#pragma once

#include <cstdint>

#include "dsattn/model/config.h"
#include "dsattn/model/weights.h"

namespace dsattn::parallel {

struct HeadShard {
  int rank = 0;
  int world_size = 1;
  std::int64_t head_begin = 0;  // first head of the rank in the unsharded layer
  std::int64_t num_heads = 0;   // H / world_size

  std::int64_t head_end() const { return head_begin + num_heads; }
};

// The heads of `rank` in a group of `world_size`. Throws InvalidArgument when world_size < 1,
// when world_size does not divide config.num_heads, or when rank is outside [0, world_size).
HeadShard head_shard(const AttentionConfig& config, int rank, int world_size);

// The configuration of a rank-local layer: `config` with num_heads = shard.num_heads. Every other
// field (and so the softmax scale, the RoPE tables and the indexer) is unchanged.
AttentionConfig shard_config(const AttentionConfig& config, const HeadShard& shard);

// The rank's weights, on the device of `full`: its rows of q_b_proj and kv_b_proj and its columns
// of o_proj (copied into contiguous tensors); every other tensor is shared with `full` (weights
// are read-only). `full` must fit `config` (LayerWeights::validate) and `shard` must come from
// head_shard(config, ...).
LayerWeights shard_weights(const LayerWeights& full, const AttentionConfig& config,
                           const HeadShard& shard);

}  // namespace dsattn::parallel
