#include "dsattn/decoder/decoder_config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dsattn/core/error.h"

namespace dsattn {

void DecoderConfig::validate() const {
  attention.validate();
  if (vocab_size < 2) fail<ConfigError>("vocab_size must be at least 2, got {}", vocab_size);
  if (intermediate_size < 1) {
    fail<ConfigError>("intermediate_size must be positive, got {}", intermediate_size);
  }
  if (num_layers < 1) fail<ConfigError>("num_hidden_layers must be positive, got {}", num_layers);
}

DecoderConfig DecoderConfig::tiny() {
  DecoderConfig c;
  AttentionConfig& a = c.attention;
  a.hidden_size = 256;
  a.num_heads = 4;
  a.q_lora_rank = 128;
  a.index_n_heads = 4;
  a.index_topk = 64;
  c.vocab_size = 512;
  c.intermediate_size = 512;
  c.num_layers = 2;
  return c;
}

DecoderConfig DecoderConfig::tiny_glm5() {
  DecoderConfig c = tiny();
  const AttentionConfig full = AttentionConfig::glm5();
  AttentionConfig& a = c.attention;
  a.model_type = full.model_type;
  a.qk_nope_head_dim = full.qk_nope_head_dim;
  a.v_head_dim = full.v_head_dim;
  a.rope_theta = full.rope_theta;
  a.use_yarn = full.use_yarn;
  a.indexer_rope_interleave = full.indexer_rope_interleave;
  a.rms_norm_eps = full.rms_norm_eps;
  a.shared_topk_layers = {false, true, false, true};
  c.num_layers = 4;
  return c;
}

DecoderConfig DecoderConfig::from_json_text(const std::string& text, const std::string& source) {
  DecoderConfig c;
  c.attention = AttentionConfig::from_json_text(text, source);  // also checks that it parses
  const nlohmann::json root = nlohmann::json::parse(text);
  auto required = [&](const char* field) {
    auto it = root.find(field);
    if (it == root.end()) fail<ConfigError>("{}: field {} is missing", source, field);
    if (!it->is_number_integer()) {
      fail<ConfigError>("{}: field {} must be an integer, got {}", source, field, it->dump());
    }
    return it->get<std::int64_t>();
  };
  c.vocab_size = required("vocab_size");
  c.intermediate_size = required("intermediate_size");
  c.num_layers = required("num_hidden_layers");
  const std::size_t listed = c.attention.shared_topk_layers.size();
  if (listed != 0 && static_cast<std::int64_t>(listed) != c.num_layers) {
    fail<ConfigError>(
        "{}: indexer_types (or index_topk_pattern) lists {} layers, num_hidden_layers is {}",
        source, listed, c.num_layers);
  }
  try {
    c.validate();
  } catch (const ConfigError& e) {
    fail<ConfigError>("{}: {}", source, e.what());
  }
  return c;
}

DecoderConfig DecoderConfig::from_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail<ConfigError>("cannot open {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json_text(ss.str(), path);
}

}  // namespace dsattn
