#include "dsattn/layer/attention_stack.h"

#include <chrono>

#include "dsattn/core/checks.h"
#include "dsattn/layer/forward_tables.h"
#include "dsattn/model/checkpoint_writer.h"
#include "dsattn/ops/elementwise.h"
#include "dsattn/ops/norm.h"

namespace dsattn {

AttentionStack AttentionStack::synthetic(const AttentionConfig& config, std::int64_t num_layers,
                                         std::uint64_t seed, Policy policy, Device device) {
  if (num_layers <= 0) fail("num_layers must be positive, got {}", num_layers);
  AttentionStack s;
  for (std::int64_t l = 0; l < num_layers; ++l) {
    LayerWeights weights = LayerWeights::synthetic_layer(config, l, seed + l);
    s.layers_.emplace_back(config, device.is_cpu() ? std::move(weights) : weights.to(device),
                           policy);
    Tensor norm = synthetic_input_norm(config, seed + l);
    s.input_norms_.push_back(device.is_cpu() ? std::move(norm) : norm.to(device));
  }
  return s;
}

AttentionStack AttentionStack::from_checkpoint(const Checkpoint& checkpoint, int first_layer,
                                               int num_layers, Policy policy, Device device) {
  if (num_layers <= 0) fail("num_layers must be positive, got {}", num_layers);
  if (first_layer < 0) fail("first_layer must be >= 0, got {}", first_layer);
  const AttentionConfig& config = checkpoint.config();
  if (config.shares_topk(first_layer)) {
    int own = first_layer;
    while (own > 0 && config.shares_topk(own)) --own;
    fail(
        "layer {} of checkpoint {} takes the top-k of an earlier layer (IndexShare) and so cannot "
        "start a stack; start at layer {}, the last one before it with its own indexer",
        first_layer, checkpoint.dir(), own);
  }
  AttentionStack s;
  for (int l = first_layer; l < first_layer + num_layers; ++l) {
    LayerWeights weights = load_layer_weights(checkpoint, l);
    s.layers_.emplace_back(config, device.is_cpu() ? std::move(weights) : weights.to(device),
                           policy);
    Tensor norm = load_bf16_weight(checkpoint, input_norm_name(l), {config.hidden_size});
    s.input_norms_.push_back(device.is_cpu() ? std::move(norm) : norm.to(device));
  }
  return s;
}

AttentionStack::AttentionStack(std::vector<AttentionLayer> layers, std::vector<Tensor> input_norms,
                               OutputReduction reduce_output)
    : layers_(std::move(layers)),
      input_norms_(std::move(input_norms)),
      reduce_output_(std::move(reduce_output)) {
  if (layers_.empty()) fail("an attention stack needs at least one layer, got none");
  if (!layers_.front().has_indexer()) {
    fail(
        "the first layer of an attention stack must have its own indexer: a layer without one "
        "takes the top-k of an earlier layer (IndexShare), and there is none before it");
  }
  if (input_norms_.size() != layers_.size()) {
    fail("an attention stack needs one input norm per layer ({}), got {}", layers_.size(),
         input_norms_.size());
  }
  // A forward plans the batch once for every layer: the tables fit layers of one shape and device.
  const std::string shape = plan_signature(layers_.front().config());
  const Device device = layers_.front().weights().device();
  for (std::size_t l = 1; l < layers_.size(); ++l) {
    if (plan_signature(layers_[l].config()) != shape) {
      fail("the layers of an attention stack must have one shape: layer {} is {}, layer 0 is {}", l,
           plan_signature(layers_[l].config()), shape);
    }
    if (layers_[l].weights().device() != device) {
      fail(
          "the layers of an attention stack must be on one device: layer {} is on {}, layer 0 on "
          "{}",
          l, to_string(layers_[l].weights().device()), to_string(device));
    }
  }
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const std::string name = fmt::format("input norm of layer {}", l);
    check_dtype(input_norms_[l], name, DType::bf16);
    check_shape(input_norms_[l], name, {layers_[l].config().hidden_size});
    check_device(input_norms_[l], name, layers_[l].weights().device());
  }
}

void AttentionStack::set_policy(const Policy& policy) {
  for (AttentionLayer& l : layers_) l.set_policy(policy);
}

ForwardResult AttentionStack::forward(const Batch& batch, const TensorView& hidden,
                                      const PagedKvCache& cache,
                                      const ForwardOptions& options) const {
  if (cache.num_layers() < num_layers()) {
    fail("cache must hold at least {} layers, got {}", num_layers(), cache.num_layers());
  }
  if (!options.lse.empty()) {
    // One buffer cannot hold every layer's log-sum-exp; each layer's forward takes its own.
    fail(
        "lse: a stack's forward does not return log-sum-exps (one buffer per layer is needed: "
        "call AttentionLayer::forward with ForwardOptions::lse for the layers that need it)");
  }
  // The plan records the batch's writes: the residual stream is checked before it.
  const AttentionLayer& first = layers_.front();
  check_dtype(hidden, "hidden", DType::bf16);
  check_shape(hidden, "hidden", {batch.total_tokens(), first.config().hidden_size});
  check_contiguous(hidden, "hidden");
  check_device(hidden, "hidden", first.weights().device());
  const std::int64_t T = hidden.size(0), D = hidden.size(1);
  Tensor normed = Tensor::empty({T, D}, DType::bf16, hidden.device());
  Tensor attn = Tensor::empty({T, D}, DType::bf16, hidden.device());
  // Every layer reads the same block tables: one plan serves all the layers of one policy (a
  // layer with another policy, which only the constructor's layers can have, plans again).
  ForwardResult total;
  // Planning is host work (its uploads wait for the copies): wall clock.
  const auto timed_plan = [&](std::int64_t l) {
    const auto start = std::chrono::steady_clock::now();
    ForwardPlan p = layers_[l].plan(batch, cache.layer(l), options.max_score_bytes);
    total.times.planning +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return p;
  };
  ForwardPlan plan = timed_plan(0);
  const Policy* planned_under = &first.policy();
  const auto same_policy = [](const Policy& a, const Policy& b) {
    return a.kind == b.kind && a.threshold == b.threshold && a.profile == b.profile;
  };
  RunOptions run_options;
  run_options.time_stages = options.time_stages;
  run_options.record_topk = options.record_topk;
  SharedTopk shared;  // IndexShare: carried from each layer with an indexer to those without
  for (std::int64_t l = 0; l < num_layers(); ++l) {
    ops::rms_norm(hidden, input_norms_[l], static_cast<float>(layers_[l].config().rms_norm_eps),
                  normed);
    if (!same_policy(layers_[l].policy(), *planned_under)) {
      plan = timed_plan(l);
      planned_under = &layers_[l].policy();
    }
    ForwardResult r = layers_[l].run(plan, normed, cache.layer(l), attn, run_options, &shared);
    if (reduce_output_) reduce_output_(attn);
    ops::add(hidden, attn, hidden);
    total.paths = std::move(r.paths);
    total.times += r.times;
  }
  return total;
}

void AttentionStack::forward_sparse_on_device(const SparseMeta& meta, const TensorView& new_slots,
                                              const TensorView& hidden,
                                              const PagedKvCache& cache) const {
  const std::int64_t T = hidden.size(0), D = hidden.size(1);
  Tensor normed = Tensor::empty({T, D}, DType::bf16, hidden.device());
  Tensor attn = Tensor::empty({T, D}, DType::bf16, hidden.device());
  SharedTopk shared;
  for (std::int64_t l = 0; l < num_layers(); ++l) {
    ops::rms_norm(hidden, input_norms_[l], static_cast<float>(layers_[l].config().rms_norm_eps),
                  normed);
    layers_[l].forward_sparse_on_device(meta, new_slots, normed, cache.layer(l), attn, &shared);
    if (reduce_output_) reduce_output_(attn);
    ops::add(hidden, attn, hidden);
  }
}

}  // namespace dsattn
