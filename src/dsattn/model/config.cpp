#include "dsattn/model/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
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

AttentionConfig AttentionConfig::glm5() {
  AttentionConfig c;
  c.model_type = "glm_moe_dsa";
  c.hidden_size = 6144;
  c.num_heads = 64;
  c.q_lora_rank = 2048;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 192;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 256;
  c.index_n_heads = 32;
  c.index_head_dim = 128;
  c.index_topk = 2048;
  c.rope_theta = 1e6;
  c.use_yarn = false;
  c.indexer_rope_interleave = true;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 202752;
  return c;
}

AttentionConfig AttentionConfig::preset(const std::string& name) {
  if (name == "deepseek-v32") return deepseek_v32();
  if (name == "glm5") return glm5();
  fail("model preset must be deepseek-v32 or glm5, got '{}'", name);
}

bool AttentionConfig::shares_topk(std::int64_t layer) const {
  if (!shared_topk_layers.empty()) {
    return layer >= 0 && layer < static_cast<std::int64_t>(shared_topk_layers.size()) &&
           shared_topk_layers[static_cast<std::size_t>(layer)];
  }
  if (index_topk_freq <= 1) return false;
  return std::max<std::int64_t>(layer - index_skip_topk_offset + 1, 0) % index_topk_freq != 0;
}

double AttentionConfig::rope_mscale() const {
  if (!use_yarn) return 1.0;
  return yarn_get_mscale(yarn.factor, yarn.mscale) /
         yarn_get_mscale(yarn.factor, yarn.mscale_all_dim);
}

namespace {

// Sizes multiply into tensor shapes (heads x head dim x hidden size, ...): bounding every
// dimension keeps those products far inside int64, so a huge value is refused here instead of
// wrapping into a small allocation later.
constexpr std::int64_t kMaxDimension = std::int64_t(1) << 20;

// Positions are int32 on the device.
constexpr std::int64_t kMaxPosition = std::numeric_limits<std::int32_t>::max();

void require_positive(std::int64_t value, const char* field, std::int64_t limit = kMaxDimension) {
  if (value <= 0)
    fail<ConfigError>("config field {} must be a positive integer, got {}", field, value);
  if (value > limit) {
    fail<ConfigError>("config field {} must be at most {}, got {}", field, limit, value);
  }
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
  require_positive(max_position_embeddings, "max_position_embeddings", kMaxPosition);
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
  require_positive(index_topk_freq, "index_topk_freq");
  if (index_skip_topk_offset < 0 || index_skip_topk_offset > kMaxDimension) {
    fail<ConfigError>("config field index_skip_topk_offset must be in [0, {}], got {}",
                      kMaxDimension, index_skip_topk_offset);
  }
  if (shares_topk(0)) {
    fail<ConfigError>(
        "IndexShare: layer 0 must run its own indexer (it has no earlier layer to take the top-k "
        "of), but {} make it share",
        shared_topk_layers.empty() ? "index_topk_freq and index_skip_topk_offset"
                                   : "indexer_types");
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
                     "rope_scaling.original_max_position_embeddings", kMaxPosition);
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
  void read_bool(const char* key, bool& out) const {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return;
    if (!it->is_boolean()) {
      fail<ConfigError>("{}: field {}{} must be true or false, got {}", source, prefix, key,
                        it->dump());
    }
    out = it->get<bool>();
  }
};

// A RoPE description read from rope_scaling or rope_parameters.
struct RopeSettings {
  bool yarn = true;
  YarnScaling scaling{};
  std::optional<double> theta;
};

// The same rotation and scaling (theta aside: rope_scaling carries none).
bool same_rope(const RopeSettings& a, const RopeSettings& b) {
  const YarnScaling &x = a.scaling, &y = b.scaling;
  const bool same_scaling =
      x.factor == y.factor &&
      x.original_max_position_embeddings == y.original_max_position_embeddings &&
      x.beta_fast == y.beta_fast && x.beta_slow == y.beta_slow && x.mscale == y.mscale &&
      x.mscale_all_dim == y.mscale_all_dim;
  return a.yarn == b.yarn && (!a.yarn || same_scaling);
}

// Reads one RoPE object. Every key must be one this reader knows: a key it ignored could change
// the rotation or the softmax scale, so an unknown or unsupported one is refused by name.
RopeSettings read_rope(const json& obj, const std::string& source, const std::string& prefix,
                       bool theta_allowed, const char* default_type) {
  RopeSettings r;
  std::string type = default_type;
  for (const char* key : {"type", "rope_type"}) {
    if (auto t = obj.find(key); t != obj.end()) {
      if (!t->is_string()) {
        fail<ConfigError>("{}: field {}{} must be a string, got {}", source, prefix, key,
                          t->dump());
      }
      type = t->get<std::string>();
    }
  }
  if (type != "yarn" && type != "default") {
    fail<ConfigError>(
        "{}: field {}type must be \"yarn\" or \"default\" (the RoPE types supported), got \"{}\"",
        source, prefix, type);
  }
  r.yarn = type == "yarn";
  static const char* const yarn_keys[] = {"factor",    "original_max_position_embeddings",
                                          "beta_fast", "beta_slow",
                                          "mscale",    "mscale_all_dim"};
  for (const auto& item : obj.items()) {
    // Named, not structured bindings: lambdas below use them (C++20 lets them capture bindings,
    // clang 14 does not).
    const std::string& key = item.key();
    const json& value = item.value();
    if (key == "type" || key == "rope_type") continue;
    if (key == "rope_theta" && theta_allowed) continue;
    const bool yarn_key =
        std::find_if(std::begin(yarn_keys), std::end(yarn_keys),
                     [&](const char* k) { return key == k; }) != std::end(yarn_keys);
    if (yarn_key && r.yarn) continue;
    if (key == "truncate" && r.yarn && value == json(true)) continue;  // DeepSeek's YaRN rounds
    if (key == "partial_rotary_factor" && value == json(1)) continue;
    if (yarn_key) {
      fail<ConfigError>("{}: field {}{} is a YaRN parameter, but the RoPE type is \"{}\"", source,
                        prefix, key, type);
    }
    fail<ConfigError>(
        "{}: field {}{} = {} is not supported: it would change the rotary embedding or the "
        "softmax scale",
        source, prefix, key, value.dump());
  }
  const Reader y{obj, source, prefix};
  if (theta_allowed && obj.contains("rope_theta")) {
    double theta = 0;
    y.read_number("rope_theta", theta);
    r.theta = theta;
  }
  y.read_number("factor", r.scaling.factor);
  y.read_int("original_max_position_embeddings", r.scaling.original_max_position_embeddings);
  y.read_number("beta_fast", r.scaling.beta_fast);
  y.read_number("beta_slow", r.scaling.beta_slow);
  y.read_number("mscale", r.scaling.mscale);
  y.read_number("mscale_all_dim", r.scaling.mscale_all_dim);
  return r;
}

// Fields of other DSA models that change the mathematics in ways this layer does not implement:
// refused by name rather than ignored.
void refuse_unsupported_fields(const json& root, const std::string& source) {
  const auto refuse = [&](const char* field, const json& value, const char* what) {
    fail<ConfigError>("{}: field {} = {} is not supported: {}", source, field, value.dump(), what);
  };
  if (auto it = root.find("rope_interleave"); it != root.end() && *it != json(true)) {
    refuse("rope_interleave", *it, "MLA's RoPE pairs interleaved dimensions");
  }
  if (auto it = root.find("partial_rotary_factor"); it != root.end() && *it != json(1)) {
    refuse("partial_rotary_factor", *it, "RoPE rotates all qk_rope_head_dim dimensions");
  }
}

// IndexShare's schedule: indexer_types (a list of "full" / "shared"), or index_topk_pattern (a
// string of F / S), or the rule of index_topk_freq and index_skip_topk_offset. A list and a rule
// given together must agree on every listed layer.
void read_index_share(const json& root, const std::string& source, const Reader& r,
                      AttentionConfig& c) {
  r.read_int("index_topk_freq", c.index_topk_freq);
  const bool has_offset = root.contains("index_skip_topk_offset");
  r.read_int("index_skip_topk_offset", c.index_skip_topk_offset);
  std::vector<bool> listed;
  const char* list_field = nullptr;
  if (auto it = root.find("indexer_types"); it != root.end() && !it->is_null()) {
    list_field = "indexer_types";
    if (!it->is_array()) {
      fail<ConfigError>("{}: field indexer_types must be a list of \"full\" or \"shared\", got {}",
                        source, it->dump());
    }
    for (std::size_t l = 0; l < it->size(); ++l) {
      const json& v = (*it)[l];
      if (v != json("full") && v != json("shared")) {
        fail<ConfigError>("{}: field indexer_types[{}] must be \"full\" or \"shared\", got {}",
                          source, l, v.dump());
      }
      listed.push_back(v == json("shared"));
    }
  }
  if (auto it = root.find("index_topk_pattern"); it != root.end() && !it->is_null()) {
    if (!it->is_string() || it->get<std::string>().find_first_not_of("FS") != std::string::npos) {
      fail<ConfigError>(
          "{}: field index_topk_pattern must be a string of F (full) and S (shared), "
          "got {}",
          source, it->dump());
    }
    std::vector<bool> pattern;
    for (char ch : it->get<std::string>()) pattern.push_back(ch == 'S');
    if (list_field && pattern != listed) {
      fail<ConfigError>("{}: fields indexer_types and index_topk_pattern disagree; give one",
                        source);
    }
    list_field = list_field ? list_field : "index_topk_pattern";
    listed = std::move(pattern);
  }
  if (list_field && (c.index_topk_freq > 1 || has_offset)) {
    // c holds no list yet, so shares_topk applies the rule.
    for (std::size_t l = 0; l < listed.size(); ++l) {
      if (listed[l] != c.shares_topk(static_cast<std::int64_t>(l))) {
        fail<ConfigError>(
            "{}: fields {} and index_topk_freq / index_skip_topk_offset disagree at layer {} ({} "
            "says {}); give one",
            source, list_field, l, list_field, listed[l] ? "shared" : "full");
      }
    }
  }
  c.shared_topk_layers = std::move(listed);
}

}  // namespace

AttentionConfig AttentionConfig::from_json_text(const std::string& text,
                                                const std::string& source) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {  // syntax, and numbers out of range (1e400)
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
  // GLM-5-class models always rope their indexer by interleaved pairs; the configs transformers
  // writes for them say so by model_type alone (no indexer_rope_interleave key).
  if (auto it = root.find("model_type"); it != root.end()) {
    // Another model type is another architecture, whose fields this reader may not know.
    if (*it != json("deepseek_v32") && *it != json("glm_moe_dsa")) {
      fail<ConfigError>(
          "{}: field model_type must be \"deepseek_v32\" or \"glm_moe_dsa\" (the DSA models "
          "supported), got {}",
          source, it->dump());
    }
    c.model_type = it->get<std::string>();
    if (c.model_type == "glm_moe_dsa") c.indexer_rope_interleave = true;
  }
  r.read_bool("indexer_rope_interleave", c.indexer_rope_interleave);
  r.read_number("rms_norm_eps", c.rms_norm_eps);

  std::optional<RopeSettings> from_scaling, from_parameters;
  if (auto it = root.find("rope_scaling"); it != root.end()) {
    if (it->is_null()) {
      from_scaling = RopeSettings();
      from_scaling->yarn = false;
    } else if (!it->is_object()) {
      fail<ConfigError>("{}: field rope_scaling must be an object or null, got {}", source,
                        it->dump());
    } else {
      from_scaling = read_rope(*it, source, "rope_scaling.", /*theta_allowed=*/false, "yarn");
    }
  }
  // transformers v5 writes rope_parameters (the rope type, theta and scaling together), flat or
  // keyed by attention type; DSA models have full attention only.
  if (auto it = root.find("rope_parameters"); it != root.end() && !it->is_null()) {
    if (!it->is_object()) {
      fail<ConfigError>("{}: field rope_parameters must be an object, got {}", source, it->dump());
    }
    const json* params = &*it;
    if (!it->empty() &&
        std::all_of(it->begin(), it->end(), [](const json& v) { return v.is_object(); })) {
      for (const auto& [key, value] : it->items()) {
        if (key != "full_attention") {
          fail<ConfigError>(
              "{}: field rope_parameters.{}: attention of type '{}' is not supported (DSA layers "
              "use full attention only)",
              source, key, key);
        }
      }
      params = &(*it)["full_attention"];
    }
    const std::string prefix =
        params == &*it ? "rope_parameters." : "rope_parameters.full_attention.";
    from_parameters = read_rope(*params, source, prefix, /*theta_allowed=*/true, "default");
  }
  if (from_scaling && from_parameters && !same_rope(*from_scaling, *from_parameters)) {
    fail<ConfigError>(
        "{}: fields rope_scaling and rope_parameters describe different RoPE settings; give one",
        source);
  }
  if (const std::optional<RopeSettings>& rope = from_parameters ? from_parameters : from_scaling) {
    c.use_yarn = rope->yarn;
    if (rope->yarn) c.yarn = rope->scaling;
    if (rope->theta) {
      if (root.contains("rope_theta") && *rope->theta != c.rope_theta) {
        fail<ConfigError>(
            "{}: fields rope_theta ({}) and rope_parameters.rope_theta ({}) disagree; give one",
            source, c.rope_theta, *rope->theta);
      }
      c.rope_theta = *rope->theta;
    }
  }
  read_index_share(root, source, r, c);
  refuse_unsupported_fields(root, source);
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
