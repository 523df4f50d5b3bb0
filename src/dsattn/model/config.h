// The attention configuration of a DeepSeek-V3.2-class layer, with the model's values built in
// and a reader for Hugging Face config.json files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dsattn {

// YaRN context extension (rope_scaling of type "yarn" in config.json).
struct YarnScaling {
  double factor = 40.0;
  std::int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 1.0;
};

struct AttentionConfig {
  // config.json's model_type: "deepseek_v32" or "glm_moe_dsa" (GLM-5-class). It changes nothing
  // by itself here; the reader derives GLM's defaults from it and checkpoints record it.
  std::string model_type = "deepseek_v32";
  std::int64_t hidden_size = 7168;  // D
  std::int64_t num_heads = 128;     // H
  std::int64_t q_lora_rank = 1536;
  std::int64_t kv_lora_rank = 512;  // r: the cached latent c_kv
  std::int64_t qk_nope_head_dim = 128;
  std::int64_t qk_rope_head_dim = 64;
  std::int64_t v_head_dim = 128;
  std::int64_t index_n_heads = 64;    // H_I
  std::int64_t index_head_dim = 128;  // d_I
  std::int64_t index_topk = 2048;     // K
  double rope_theta = 10000.0;
  // How the indexer's RoPE pairs dimensions: DeepSeek-V3.2 rotates (x[i], x[i + d/2]) (false);
  // GLM-5-class models rotate interleaved pairs (x[2i], x[2i+1]) as MLA does (true).
  bool indexer_rope_interleave = false;
  // IndexShare (GLM-5.2): some layers run no indexer and take the top-k of the last earlier layer
  // that does. `shared_topk_layers[l]` says layer l shares (config.json's indexer_types, "shared"
  // or "full"); layers past its end run their own. When it is empty the rule of index_topk_freq
  // and index_skip_topk_offset applies: layer l shares iff
  // max(l - index_skip_topk_offset + 1, 0) % index_topk_freq != 0 (freq 1: no layer shares; the
  // offset defaults to 2, as transformers' GlmMoeDsaConfig has it).
  std::vector<bool> shared_topk_layers;
  std::int64_t index_topk_freq = 1;
  std::int64_t index_skip_topk_offset = 2;
  bool use_yarn = true;
  YarnScaling yarn{};
  double rms_norm_eps = 1e-6;
  double index_layer_norm_eps = 1e-6;
  std::int64_t max_position_embeddings = 163840;

  std::int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Whether layer `layer` of the model reuses an earlier layer's top-k (IndexShare).
  bool shares_topk(std::int64_t layer) const;
  // Width of one cached token: [c_kv, k_pe].
  std::int64_t latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }
  // (d_nope + d_rope)^-1/2 · m², with m the YaRN attention factor when YaRN is on.
  double softmax_scale() const;
  // YaRN's magnitude correction applied to cos/sin (1 for DeepSeek-V3.2's mscale = mscale_all_dim).
  double rope_mscale() const;

  // Throws ConfigError naming the first field whose value is impossible or unsupported.
  void validate() const;

  static AttentionConfig deepseek_v32() { return {}; }
  // GLM-5 / GLM-5.1's attention (zai-org/GLM-5): 64 heads of q/k 192 + 64 and v 256, q_lora 2048,
  // plain RoPE at theta 1e6 (no YaRN, so no mscale in the scale), 32 index heads whose RoPE pairs
  // interleaved dimensions; every layer has its own indexer.
  static AttentionConfig glm5();
  // A preset by name: "deepseek-v32" or "glm5" (InvalidArgument naming the choices otherwise).
  static AttentionConfig preset(const std::string& name);
  // Fields absent from the JSON keep their DeepSeek-V3.2 values; present ones must have the right
  // type and a possible value. `source` names the file in messages.
  static AttentionConfig from_json_text(const std::string& text, const std::string& source);
  static AttentionConfig from_json_file(const std::string& path);
};

// YaRN's attention factor: 0.1 · mscale · ln(factor) + 1 (1 when factor <= 1).
double yarn_get_mscale(double factor, double mscale);

}  // namespace dsattn
