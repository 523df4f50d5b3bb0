// The configuration of a small DeepSeek-V3.2-shaped decoder: token embedding, L layers of
// (RMSNorm -> attention -> RMSNorm -> SwiGLU MLP) in a pre-norm residual stream, a final RMSNorm
// and an LM head. Every layer's MLP is dense (the real model's routed experts are not needed to
// exercise the attention end to end).
#pragma once

#include <cstdint>
#include <string>

#include "dsattn/model/config.h"

namespace dsattn {

struct DecoderConfig {
  AttentionConfig attention;
  std::int64_t vocab_size = 512;
  std::int64_t intermediate_size = 512;
  std::int64_t num_layers = 2;

  // Throws ConfigError naming the first impossible field (the attention's fields included).
  void validate() const;

  // A tiny model with the real attention shapes per head (latent 512 + 64, heads of 192/128,
  // indexer heads of 128) and index_topk = 64, so that short prompts cross it: hidden 256,
  // 4 heads, q_lora_rank 128, 4 indexer heads, 2 layers, vocabulary 512, MLP width 512.
  static DecoderConfig tiny();
  // The same with GLM-5's attention per head (q/k 192 + 64, v 256, the indexer's RoPE on
  // interleaved pairs, plain RoPE at theta 1e6) and IndexShare: 4 layers, of which 1 and 3 take
  // the top-k of the layer before.
  static DecoderConfig tiny_glm5();

  // A Hugging Face config.json: the attention fields as AttentionConfig reads them, and
  // vocab_size, intermediate_size and num_hidden_layers (required). `source` names the file.
  static DecoderConfig from_json_text(const std::string& text, const std::string& source);
  static DecoderConfig from_json_file(const std::string& path);
};

}  // namespace dsattn
