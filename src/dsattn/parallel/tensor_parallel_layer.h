// One attention layer run tensor-parallel over heads: each rank runs the rank-local layer (its
// heads' slices of q_b_proj, kv_b_proj and o_proj, everything else replicated; head_shard.h),
// whose output is its heads' share of o_proj, then one all-reduce sums the shares.
//
// The planner's decision depends only on the batch's shape, the configuration's index_topk and
// the policy, and the indexer is replicated, so every rank takes the same paths and selects the
// same keys with no communication but the all-reduce at the end.
#pragma once

#include "dsattn/layer/attention_layer.h"
#include "dsattn/parallel/communicator.h"
#include "dsattn/parallel/head_shard.h"

namespace dsattn::parallel {

// The layer rank `shard.rank` runs: the unsharded layer's `full` weights cut to the shard and
// placed on `device`. Its forward writes the rank's share of the output; the sum over the ranks
// is the unsharded layer's output.
AttentionLayer rank_local_layer(const AttentionConfig& config, const LayerWeights& full,
                                const HeadShard& shard, Policy policy = {},
                                Device device = Device::cpu());

class TensorParallelLayer {
 public:
  // `local` must be the layer of `comm.rank()`'s shard of a group of comm.world_size() ranks
  // (rank_local_layer), and `comm` must outlive this layer. Throws InvalidArgument otherwise.
  TensorParallelLayer(AttentionLayer local, const HeadShard& shard, Communicator& comm);

  const AttentionLayer& local() const { return local_; }
  const HeadShard& shard() const { return shard_; }
  void set_policy(const Policy& policy) { local_.set_policy(policy); }

  // AttentionLayer::forward on the rank's heads, then the all-reduce of hidden_out: every rank
  // ends with the unsharded layer's output. Every rank must call it with the same batch and
  // hidden_in (and its own replica of the cache). A refused call (bad batch, tensors or policy)
  // is refused on every rank alike, before anything is written or communicated.
  ForwardResult forward(const Batch& batch, const TensorView& hidden_in,
                        const LayerCacheView& cache, const TensorView& hidden_out,
                        const ForwardOptions& options = {}) const;

 private:
  AttentionLayer local_;
  HeadShard shard_;
  Communicator* comm_;
};

}  // namespace dsattn::parallel
