// The decoder of decoder_config.h on one device: embeddings, L x (RMSNorm -> dsattn attention ->
// RMSNorm -> SwiGLU MLP), final RMSNorm, LM head. Its attention layers run under one policy,
// so the same model computes each request along the planner's path.
#pragma once

#include <span>
#include <vector>

#include "dsattn/cache/paged_kv_cache.h"
#include "dsattn/decoder/decoder_config.h"
#include "dsattn/decoder/decoder_weights.h"
#include "dsattn/layer/attention_layer.h"

namespace dsattn {

struct DecoderOutput {
  Tensor logits;            // [batch, vocab] f32 on the host: each request's last new token
  std::vector<Path> paths;  // the attention path of each request (every layer plans alike)
};

class DecoderModel {
 public:
  // The model lives on the weights' device.
  DecoderModel(const DecoderConfig& config, DecoderWeights weights, Policy policy = {});

  const DecoderConfig& config() const { return config_; }
  Device device() const { return weights_.embed.device(); }
  void set_policy(const Policy& policy);

  // One forward of `batch` (prefill, decode or verify): `tokens` holds the batch's new token ids
  // packed by request ([batch.total_tokens()], each in [0, vocab)); layer l uses cache.layer(l).
  // Throws InvalidArgument for a token out of range or a cache of too few layers, before any
  // cache write.
  DecoderOutput forward(const Batch& batch, std::span<const std::int32_t> tokens,
                        const PagedKvCache& cache) const;

 private:
  DecoderConfig config_;
  DecoderWeights weights_;  // the attention weights live in attention_
  std::vector<AttentionLayer> attention_;
};

}  // namespace dsattn
