#include "dsattn/decoder/decoder_model.h"

#include "dsattn/layer/host_meta.h"
#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/elementwise.h"
#include "dsattn/ops/gemm.h"
#include "dsattn/ops/norm.h"

namespace dsattn {

DecoderModel::DecoderModel(const DecoderConfig& config, DecoderWeights weights, Policy policy)
    : config_(config), weights_(std::move(weights)) {
  config_.validate();
  weights_.validate(config_);
  for (DecoderLayerWeights& layer : weights_.layers) {
    attention_.emplace_back(config_.attention, std::move(layer.attention), policy);
  }
}

void DecoderModel::set_policy(const Policy& policy) {
  for (AttentionLayer& layer : attention_) layer.set_policy(policy);
}

DecoderOutput DecoderModel::forward(const Batch& batch, std::span<const std::int32_t> tokens,
                                    const PagedKvCache& cache) const {
  const std::int64_t T = batch.total_tokens();
  if (static_cast<std::int64_t>(tokens.size()) != T) {
    fail("tokens must hold the batch's {} new tokens, got {}", T, tokens.size());
  }
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      fail("tokens[{}] must be in [0, {}), got {}", i, config_.vocab_size, tokens[i]);
    }
  }
  if (cache.num_layers() < config_.num_layers) {
    fail("cache must hold at least {} layers, got {}", config_.num_layers, cache.num_layers());
  }
  if (cache.device() != device()) {
    fail("cache must be on the model's device {}, got {}", to_string(device()),
         to_string(cache.device()));
  }

  const Device dev = device();
  const std::int64_t D = config_.attention.hidden_size, I = config_.intermediate_size;
  const float eps = static_cast<float>(config_.attention.rms_norm_eps);
  Tensor hidden = Tensor::empty({T, D}, DType::bf16, dev);
  ops::gather_rows(weights_.embed, upload_i32(tokens, dev), hidden);

  Tensor normed = Tensor::empty({T, D}, DType::bf16, dev);
  Tensor delta = Tensor::empty({T, D}, DType::bf16, dev);
  Tensor gate_up = Tensor::empty({T, 2 * I}, DType::bf16, dev);
  Tensor act = Tensor::empty({T, I}, DType::bf16, dev);
  DecoderOutput out;
  ForwardOptions options;
  options.time_stages = false;
  SharedTopk shared;  // IndexShare: from each layer with an indexer to the layers without
  for (std::size_t l = 0; l < attention_.size(); ++l) {
    const DecoderLayerWeights& w = weights_.layers[l];
    ops::rms_norm(hidden, w.input_norm, eps, normed);
    ForwardResult r =
        attention_[l].forward(batch, normed, cache.layer(std::int64_t(l)), delta, options, &shared);
    if (l == 0) out.paths = std::move(r.paths);
    ops::add(hidden, delta, hidden);
    ops::rms_norm(hidden, w.post_attention_norm, eps, normed);
    ops::gemm(normed, w.gate_up, gate_up, ops::BLayout::nt);
    ops::silu_mul(gate_up, act);
    ops::gemm(act, w.down, delta, ops::BLayout::nt);
    ops::add(hidden, delta, hidden);
  }

  // Only each request's last token is read out.
  const std::vector<std::int64_t> offsets = batch.token_offsets();
  std::vector<std::int32_t> last(batch.requests.size());
  for (std::size_t b = 0; b < last.size(); ++b) {
    last[b] = static_cast<std::int32_t>(offsets[b + 1] - 1);
  }
  const std::int64_t B = static_cast<std::int64_t>(last.size());
  Tensor last_hidden = Tensor::empty({B, D}, DType::bf16, dev);
  ops::gather_rows(hidden, upload_i32(last, dev), last_hidden);
  ops::rms_norm(last_hidden, weights_.final_norm, eps, last_hidden);
  Tensor logits = Tensor::empty({B, config_.vocab_size}, DType::f32, dev);
  ops::gemm(last_hidden, weights_.lm_head, logits, ops::BLayout::nt);
  out.logits = dev.is_cpu() ? std::move(logits) : logits.to(Device::cpu());
  return out;
}

}  // namespace dsattn
