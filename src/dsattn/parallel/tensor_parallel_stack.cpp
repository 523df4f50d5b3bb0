#include "dsattn/parallel/tensor_parallel_stack.h"

#include "dsattn/parallel/tensor_parallel_layer.h"

namespace dsattn::parallel {

AttentionStack rank_local_stack(const AttentionStack& full, const HeadShard& shard,
                                Communicator& comm, Device device) {
  if (comm.world_size() != shard.world_size || comm.rank() != shard.rank) {
    fail("communicator is rank {} of {}, but the stack's head shard is rank {} of {}", comm.rank(),
         comm.world_size(), shard.rank, shard.world_size);
  }
  std::vector<AttentionLayer> layers;
  std::vector<Tensor> norms;
  for (std::int64_t l = 0; l < full.num_layers(); ++l) {
    const AttentionLayer& layer = full.layer(l);
    layers.push_back(
        rank_local_layer(layer.config(), layer.weights(), shard, layer.policy(), device));
    const Tensor& norm = full.input_norm(l);
    norms.push_back(norm.device() == device ? norm : norm.to(device));
  }
  return AttentionStack(std::move(layers), std::move(norms),
                        [&comm](const TensorView& t) { comm.all_reduce_sum(t); });
}

}  // namespace dsattn::parallel
