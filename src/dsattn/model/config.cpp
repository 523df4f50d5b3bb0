#include "dsattn/model/config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dsattn/core/error.h"

namespace dsattn {

double yarn_get_mscale(double factor, double mscale) {
  return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}

double AttentionConfig::softmax_scale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (use_yarn) {
    const double m = yarn_get_mscale(yarn.factor, yarn.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

double AttentionConfig::rope_mscale() const {
  if (!use_yarn) return 1.0;
  return yarn_get_mscale(yarn.factor, yarn.mscale) /
         yarn_get_mscale(yarn.factor, yarn.mscale_all_dim);
}

namespace {

void require_positive(std::int64_t value, const char* field) {
  if (value <= 0)
    fail<ConfigError>("config field {} must be a positive integer, got {}", field, value);
}

bool is_power_of_two(std::int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

}  // namespace

void AttentionConfig::validate() const {
  require_positive(hidden_size, "hidden_size");
  require_positive(num_heads, "num_attention_heads");
  require_positive(q_lora_rank, "q_lora_rank");
  require_positive(kv_lora_rank, "kv_lora_rank");
  require_positive(qk_nope_head_dim, "qk_nope_head_dim");
  require_positive(qk_rope_head_dim, "qk_rope_head_dim");
  require_positive(v_head_dim, "v_head_dim");
  require_positive(index_n_heads, "index_n_heads");
  require_positive(index_head_dim, "index_head_dim");
  require_positive(index_topk, "index_topk");
  require_positive(max_position_embeddings, "max_position_embeddings");
  if (qk_rope_head_dim % 2 != 0) {
    fail<ConfigError>("config field qk_rope_head_dim must be even (RoPE rotates pairs), got {}",
                      qk_rope_head_dim);
  }
  // The indexer rotates with a Walsh-Hadamard transform and quantises in blocks of 128.
  if (!is_power_of_two(index_head_dim) || index_head_dim % 128 != 0) {
    fail<ConfigError>(
        "config field index_head_dim must be a power of two and a multiple of 128, got {}",
        index_head_dim);
  }
  if (qk_rope_head_dim > index_head_dim) {
    fail<ConfigError>(
        "config field qk_rope_head_dim ({}) must not exceed index_head_dim ({}): the indexer "
        "ropes its first qk_rope_head_dim dimensions",
        qk_rope_head_dim, index_head_dim);
  }
  if (!(rope_theta > 0.0) || !std::isfinite(rope_theta)) {
    fail<ConfigError>("config field rope_theta must be a positive number, got {}", rope_theta);
  }
  if (!(rms_norm_eps > 0.0) || !std::isfinite(rms_norm_eps)) {
    fail<ConfigError>("config field rms_norm_eps must be a positive number, got {}", rms_norm_eps);
  }
  if (use_yarn) {
    if (!(yarn.factor >= 1.0) || !std::isfinite(yarn.factor)) {
      fail<ConfigError>("config field rope_scaling.factor must be a number >= 1, got {}",
                        yarn.factor);
    }
    require_positive(yarn.original_max_position_embeddings,
                     "rope_scaling.original_max_position_embeddings");
    if (!(yarn.beta_fast > 0.0) || !(yarn.beta_slow > 0.0) || yarn.beta_fast < yarn.beta_slow) {
      fail<ConfigError>(
          "config fields rope_scaling.beta_fast and beta_slow must be positive with beta_fast >= "
          "beta_slow, got {} and {}",
          yarn.beta_fast, yarn.beta_slow);
    }
    if (!std::isfinite(yarn.mscale) || !std::isfinite(yarn.mscale_all_dim) || yarn.mscale < 0 ||
        yarn.mscale_all_dim < 0) {
      fail<ConfigError>(
          "config fields rope_scaling.mscale and mscale_all_dim must be non-negative numbers, got "
          "{} and {}",
          yarn.mscale, yarn.mscale_all_dim);
    }
  }
}

namespace {

using nlohmann::json;

struct Reader {
  const json& object;
  const std::string& source;
  std::string prefix;

  void read_int(const char* key, std::int64_t& out) const {
    auto it = object.find(key);
    if (it == object.end()) return;
    if (!it->is_number_integer()) {
      fail<ConfigError>("{}: field {}{} must be an integer, got {}", source, prefix, key,
                        it->dump());
    }
    out = it->get<std::int64_t>();
  }
  void read_number(const char* key, double& out) const {
    auto it = object.find(key);
    if (it == object.end()) return;
    if (!it->is_number()) {
      fail<ConfigError>("{}: field {}{} must be a number, got {}", source, prefix, key, it->dump());
    }
    out = it->get<double>();
  }
};

}  // namespace

AttentionConfig AttentionConfig::from_json_text(const std::string& text,
                                                const std::string& source) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::parse_error& e) {
    fail<ConfigError>("{}: not valid JSON: {}", source, e.what());
  }
  if (!root.is_object()) {
    fail<ConfigError>("{}: expected a JSON object at the top level, got {}", source,
                      root.type_name());
  }
  AttentionConfig c;
  if (auto it = root.find("q_lora_rank"); it != root.end() && it->is_null()) {
    fail<ConfigError>(
        "{}: field q_lora_rank must be a positive integer (DeepSeek-V3.2 attention uses a "
        "low-rank query), got null",
        source);
  }
  const Reader r{root, source, ""};
  r.read_int("hidden_size", c.hidden_size);
  r.read_int("num_attention_heads", c.num_heads);
  r.read_int("q_lora_rank", c.q_lora_rank);
  r.read_int("kv_lora_rank", c.kv_lora_rank);
  r.read_int("qk_nope_head_dim", c.qk_nope_head_dim);
  r.read_int("qk_rope_head_dim", c.qk_rope_head_dim);
  r.read_int("v_head_dim", c.v_head_dim);
  r.read_int("index_n_heads", c.index_n_heads);
  r.read_int("index_head_dim", c.index_head_dim);
  r.read_int("index_topk", c.index_topk);
  r.read_int("max_position_embeddings", c.max_position_embeddings);
  r.read_number("rope_theta", c.rope_theta);
  r.read_number("rms_norm_eps", c.rms_norm_eps);

  if (auto it = root.find("rope_scaling"); it != root.end()) {
    if (it->is_null()) {
      c.use_yarn = false;
    } else if (!it->is_object()) {
      fail<ConfigError>("{}: field rope_scaling must be an object or null, got {}", source,
                        it->dump());
    } else {
      const json& rs = *it;
      std::string type = "yarn";
      for (const char* key : {"type", "rope_type"}) {
        if (auto t = rs.find(key); t != rs.end()) {
          if (!t->is_string()) {
            fail<ConfigError>("{}: field rope_scaling.{} must be a string, got {}", source, key,
                              t->dump());
          }
          type = t->get<std::string>();
        }
      }
      if (type != "yarn") {
        fail<ConfigError>(
            "{}: field rope_scaling.type must be \"yarn\" (supported: yarn), got \"{}\"", source,
            type);
      }
      const Reader y{rs, source, "rope_scaling."};
      y.read_number("factor", c.yarn.factor);
      y.read_int("original_max_position_embeddings", c.yarn.original_max_position_embeddings);
      y.read_number("beta_fast", c.yarn.beta_fast);
      y.read_number("beta_slow", c.yarn.beta_slow);
      y.read_number("mscale", c.yarn.mscale);
      y.read_number("mscale_all_dim", c.yarn.mscale_all_dim);
    }
  }
  try {
    c.validate();
  } catch (const ConfigError& e) {
    throw ConfigError(fmt::format("{}: {}", source, e.what()));
  }
  return c;
}

AttentionConfig AttentionConfig::from_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail<ConfigError>("cannot open config file {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json_text(ss.str(), path);
}

}  // namespace dsattn
