#include "dsattn/parallel/tensor_parallel_layer.h"

namespace dsattn::parallel {

AttentionLayer rank_local_layer(const AttentionConfig& config, const LayerWeights& full,
                                const HeadShard& shard, Policy policy, Device device) {
  LayerWeights mine = shard_weights(full, config, shard);
  if (!(mine.device() == device)) mine = mine.to(device);
  return AttentionLayer(shard_config(config, shard), std::move(mine), policy);
}

TensorParallelLayer::TensorParallelLayer(AttentionLayer local, const HeadShard& shard,
                                         Communicator& comm)
    : local_(std::move(local)), shard_(shard), comm_(&comm) {
  if (comm.world_size() != shard.world_size || comm.rank() != shard.rank) {
    fail("communicator is rank {} of {}, but the layer's head shard is rank {} of {}", comm.rank(),
         comm.world_size(), shard.rank, shard.world_size);
  }
  if (local_.config().num_heads != shard.num_heads) {
    fail("rank-local layer must have the shard's {} heads, got {}", shard.num_heads,
         local_.config().num_heads);
  }
}

ForwardResult TensorParallelLayer::forward(const Batch& batch, const TensorView& hidden_in,
                                           const LayerCacheView& cache,
                                           const TensorView& hidden_out,
                                           const ForwardOptions& options) const {
  // The local forward checks everything before it writes; hidden_out is then checked contiguous
  // bf16 already, which is what the all-reduce needs.
  ForwardResult result = local_.forward(batch, hidden_in, cache, hidden_out, options);
  comm_->all_reduce_sum(hidden_out);
  return result;
}

}  // namespace dsattn::parallel
