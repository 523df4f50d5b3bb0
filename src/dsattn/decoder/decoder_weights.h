// The weights of the decoder of decoder_config.h, named after a Hugging Face DeepSeek checkpoint:
//   model.embed_tokens.weight                      [vocab, hidden]
//   model.layers.{i}.input_layernorm.weight        [hidden]
//   model.layers.{i}.self_attn.*                   (model/weights.h)
//   model.layers.{i}.post_attention_layernorm.weight [hidden]
//   model.layers.{i}.mlp.gate_proj.weight          [intermediate, hidden]
//   model.layers.{i}.mlp.up_proj.weight            [intermediate, hidden]
//   model.layers.{i}.mlp.down_proj.weight          [hidden, intermediate]
//   model.norm.weight                              [hidden]
//   lm_head.weight                                 [vocab, hidden]
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dsattn/decoder/decoder_config.h"
#include "dsattn/model/checkpoint.h"
#include "dsattn/model/checkpoint_writer.h"
#include "dsattn/model/weights.h"

namespace dsattn {

struct DecoderLayerWeights {
  Tensor input_norm;  // [hidden]
  LayerWeights attention;
  Tensor post_attention_norm;  // [hidden]
  Tensor gate_up;  // [2 · intermediate, hidden]: gate_proj's rows, then up_proj's (one GEMM)
  Tensor down;     // [hidden, intermediate]
};

struct DecoderWeights {
  Tensor embed;  // [vocab, hidden]
  std::vector<DecoderLayerWeights> layers;
  Tensor final_norm;  // [hidden]
  Tensor lm_head;     // [vocab, hidden]

  // Seeded synthetic weights: projections uniform with variance 1/fan_in (attention as
  // LayerWeights::synthetic(config.attention, seed + layer)), embeddings of unit variance, norms
  // near one; the MLP's down projection scaled by one half like o_proj, so the residual stream
  // stays O(1).
  static DecoderWeights synthetic(const DecoderConfig& config, std::uint64_t seed);
  // Every tensor from a checkpoint (FP8 block-scaled weights dequantised to bf16), on the host.
  // Throws CheckpointError naming the file and tensor for a missing or misshapen one.
  static DecoderWeights load(const Checkpoint& checkpoint, const DecoderConfig& config);

  // Throws InvalidArgument naming the first tensor whose shape or dtype does not fit `config`.
  void validate(const DecoderConfig& config) const;
  DecoderWeights to(Device device) const;
};

// A checkpoint of DecoderWeights::synthetic(config, seed) in `dir` (one shard per layer, plus one
// for the embeddings, final norm and LM head; or a single file), FP8 block-scaled with `fp8`.
void write_synthetic_decoder_checkpoint(const std::string& dir, const DecoderConfig& config,
                                        std::uint64_t seed, bool fp8,
                                        CheckpointLayout layout = CheckpointLayout::sharded);

}  // namespace dsattn
