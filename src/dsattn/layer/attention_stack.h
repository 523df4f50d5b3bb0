// A stack of attention layers in a pre-norm residual stream, h <- h + Attn_l(RMSNorm_l(h)): the
// attention half of a DeepSeek-V3.2 decoder, used by the workloads to run several layers.
#pragma once

#include <functional>
#include <vector>

#include "dsattn/layer/attention_layer.h"
#include "dsattn/model/checkpoint.h"

namespace dsattn {

// Sums a layer's attention output over the ranks of a tensor-parallel group, in place, before the
// residual add: each rank's layers compute their heads' share of o_proj (parallel/).
using OutputReduction = std::function<void(const TensorView&)>;

class AttentionStack {
 public:
  // Given layers, each with its input RMSNorm weight ([hidden_size] bf16 on the layers' device).
  // With `reduce_output`, each layer's output goes through it before the residual add. Throws
  // InvalidArgument when there is no layer, the layers differ in shape (plan_signature) or device
  // (a forward plans once for every layer of one policy), or the norms do not fit the layers.
  AttentionStack(std::vector<AttentionLayer> layers, std::vector<Tensor> input_norms,
                 OutputReduction reduce_output = {});

  // Layer l gets synthetic weights from seed + l, placed on `device`.
  static AttentionStack synthetic(const AttentionConfig& config, std::int64_t num_layers,
                                  std::uint64_t seed, Policy policy = {},
                                  Device device = Device::cpu());

  std::int64_t num_layers() const { return static_cast<std::int64_t>(layers_.size()); }
  const AttentionLayer& layer(std::int64_t l) const { return layers_[l]; }
  const Tensor& input_norm(std::int64_t l) const { return input_norms_[l]; }
  // Layers [first_layer, first_layer + num_layers) of a checkpoint: each layer's attention
  // weights (FP8 ones dequantised) and its input_layernorm, placed on `device`.
  static AttentionStack from_checkpoint(const Checkpoint& checkpoint, int first_layer,
                                        int num_layers, Policy policy = {},
                                        Device device = Device::cpu());

  void set_policy(const Policy& policy);

  // hidden: [T, hidden_size] bf16, updated in place. Layer l uses cache.layer(l).
  ForwardResult forward(const Batch& batch, const TensorView& hidden, const PagedKvCache& cache,
                        const ForwardOptions& options = {}) const;

  // Every layer on the sparse path with device metadata only (see
  // AttentionLayer::forward_sparse_on_device): the work DecodeGraph captures.
  void forward_sparse_on_device(const SparseMeta& meta, const TensorView& new_slots,
                                const TensorView& hidden, const PagedKvCache& cache) const;

 private:
  AttentionStack() = default;

  std::vector<AttentionLayer> layers_;
  std::vector<Tensor> input_norms_;  // [hidden_size] bf16 each
  OutputReduction reduce_output_;
};

}  // namespace dsattn
