// AttentionConfig: DeepSeek-V3.2's values built in, keyword construction, read-only fields.
#include <fmt/format.h>
#include <nanobind/stl/string.h>

#include <functional>
#include <string>
#include <vector>

#include "bindings.h"
#include "dsattn/model/checkpoint.h"
#include "dsattn/model/config.h"
#include "tensor_args.h"

namespace dsattn::python {

namespace {

// One keyword field: its name, reading it, and setting it from a Python value with a type check.
struct Field {
  const char* name;
  const char* doc;
  std::function<nb::object(const AttentionConfig&)> get;
  std::function<void(AttentionConfig&, nb::handle)> set;
  // Adds the read-only attribute, typed (for the stubs) as the field is.
  std::function<void(nb::class_<AttentionConfig>&)> bind;
};

template <typename T>
T from_python(nb::handle value, const char* name) {
  const bool is_bool = PyBool_Check(value.ptr());
  const bool is_int = PyLong_Check(value.ptr()) && !is_bool;
  if constexpr (std::is_same_v<T, bool>) {
    if (is_bool) return nb::cast<bool>(value);
    throw nb::type_error(
        fmt::format("AttentionConfig: {} must be a bool, got {}", name, python_type_name(value))
            .c_str());
  } else if constexpr (std::is_integral_v<T>) {
    if (is_int) return nb::cast<T>(value);
    throw nb::type_error(
        fmt::format("AttentionConfig: {} must be an int, got {}", name, python_type_name(value))
            .c_str());
  } else {
    if (is_int || PyFloat_Check(value.ptr())) return nb::cast<T>(value);
    throw nb::type_error(
        fmt::format("AttentionConfig: {} must be a number, got {}", name, python_type_name(value))
            .c_str());
  }
}

template <auto Member>
Field field(const char* name, const char* doc) {
  return {name, doc, [](const AttentionConfig& c) { return nb::cast(c.*Member); },
          [name](AttentionConfig& c, nb::handle v) {
            using T = std::remove_cvref_t<decltype(c.*Member)>;
            c.*Member = from_python<T>(v, name);
          },
          [name, doc](nb::class_<AttentionConfig>& cls) {
            cls.def_prop_ro(
                name, [](const AttentionConfig& c) { return c.*Member; }, doc);
          }};
}

template <auto Member>
Field yarn_field(const char* name, const char* doc) {
  return {name, doc, [](const AttentionConfig& c) { return nb::cast(c.yarn.*Member); },
          [name](AttentionConfig& c, nb::handle v) {
            using T = std::remove_cvref_t<decltype(c.yarn.*Member)>;
            c.yarn.*Member = from_python<T>(v, name);
          },
          [name, doc](nb::class_<AttentionConfig>& cls) {
            cls.def_prop_ro(
                name, [](const AttentionConfig& c) { return c.yarn.*Member; }, doc);
          }};
}

const std::vector<Field>& fields() {
  using C = AttentionConfig;
  using Y = YarnScaling;
  static const std::vector<Field> all = {
      field<&C::hidden_size>("hidden_size", "D, the token hidden state width [7168]"),
      field<&C::num_heads>("num_heads", "H, attention heads [128]"),
      field<&C::q_lora_rank>("q_lora_rank", "width of the compressed query c_q [1536]"),
      field<&C::kv_lora_rank>("kv_lora_rank", "r, width of the cached latent c_kv [512]"),
      field<&C::qk_nope_head_dim>("qk_nope_head_dim", "d_nope [128]"),
      field<&C::qk_rope_head_dim>("qk_rope_head_dim", "d_rope [64]"),
      field<&C::v_head_dim>("v_head_dim", "d_v [128]"),
      field<&C::index_n_heads>("index_n_heads", "H_I, indexer heads [64]"),
      field<&C::index_head_dim>("index_head_dim", "d_I, indexer head dim [128]"),
      field<&C::index_topk>("index_topk", "K, keys selected per query [2048]"),
      field<&C::rope_theta>("rope_theta", "RoPE base [10000]"),
      field<&C::use_yarn>("use_yarn", "YaRN context extension on [True]"),
      field<&C::indexer_rope_interleave>(
          "indexer_rope_interleave",
          "the indexer's RoPE pairs interleaved dims (GLM-5), not halves [False]"),
      yarn_field<&Y::factor>("yarn_factor", "YaRN factor [40]"),
      yarn_field<&Y::original_max_position_embeddings>("yarn_original_max_position_embeddings",
                                                       "YaRN original context [4096]"),
      yarn_field<&Y::beta_fast>("yarn_beta_fast", "YaRN beta_fast [32]"),
      yarn_field<&Y::beta_slow>("yarn_beta_slow", "YaRN beta_slow [1]"),
      yarn_field<&Y::mscale>("yarn_mscale", "YaRN mscale [1]"),
      yarn_field<&Y::mscale_all_dim>("yarn_mscale_all_dim", "YaRN mscale_all_dim [1]"),
      field<&C::rms_norm_eps>("rms_norm_eps", "RMSNorm epsilon [1e-6]"),
      field<&C::index_layer_norm_eps>("index_layer_norm_eps", "indexer LayerNorm epsilon [1e-6]"),
      field<&C::max_position_embeddings>("max_position_embeddings",
                                         "largest context a request may reach [163840]"),
  };
  return all;
}

// Sets the keyword fields, then validates (ValueError naming the first impossible field).
void apply(AttentionConfig& c, const nb::kwargs& kwargs) {
  for (auto [key, value] : kwargs) {
    const std::string name = nb::cast<std::string>(key);
    const Field* f = nullptr;
    for (const Field& candidate : fields()) {
      if (name == candidate.name) f = &candidate;
    }
    if (!f) {
      std::string known;
      for (const Field& candidate : fields())
        known += (known.empty() ? "" : ", ") + std::string(candidate.name);
      throw nb::type_error(
          fmt::format("AttentionConfig: unknown field '{}' (fields: {})", name, known).c_str());
    }
    f->set(c, value);
  }
  c.validate();
}

std::string repr(const AttentionConfig& c) {
  std::string s = "AttentionConfig(";
  bool first = true;
  for (const Field& f : fields()) {
    s += fmt::format("{}{}={}", first ? "" : ", ", f.name,
                     nb::cast<std::string>(nb::repr(f.get(c))));
    first = false;
  }
  return s + ")";
}

bool equal(const AttentionConfig& a, const AttentionConfig& b) {
  for (const Field& f : fields()) {
    if (!f.get(a).equal(f.get(b))) return false;
  }
  return true;
}

}  // namespace

void bind_config(nb::module_& m) {
  nb::class_<AttentionConfig> cls(
      m, "AttentionConfig",
      "The attention configuration of a DeepSeek-V3.2-class layer.\n\n"
      "AttentionConfig(**fields) starts from DeepSeek-V3.2's values (in brackets in each field's\n"
      "doc) and sets the given keyword fields; impossible values raise ValueError naming the\n"
      "field, unknown fields and wrong types TypeError. Fields are read-only: use replace().");
  cls.def(
      "__init__",
      [](AttentionConfig* self, const nb::kwargs& kwargs) {
        AttentionConfig c;
        apply(c, kwargs);
        new (self) AttentionConfig(c);
      },
      "Keyword fields over DeepSeek-V3.2's values, e.g. AttentionConfig(hidden_size=96, "
      "num_heads=2).");
  for (const Field& f : fields()) f.bind(cls);
  cls.def_prop_ro("qk_head_dim", &AttentionConfig::qk_head_dim, "d_nope + d_rope [192]")
      .def_prop_ro("latent_dim", &AttentionConfig::latent_dim,
                   "width of one cached token [c_kv, k_pe]: kv_lora_rank + d_rope [576]")
      .def_prop_ro("softmax_scale", &AttentionConfig::softmax_scale,
                   "(d_nope + d_rope)^-1/2 * m^2, m the YaRN attention factor [about 0.1352]")
      .def(
          "replace",
          [](const AttentionConfig& self, const nb::kwargs& kwargs) {
            AttentionConfig c = self;
            apply(c, kwargs);
            return c;
          },
          "A copy with the given keyword fields changed (validated).")
      .def("validate", &AttentionConfig::validate,
           "Raises ValueError naming the first field whose value is impossible or unsupported.")
      .def_static("deepseek_v32", &AttentionConfig::deepseek_v32,
                  "DeepSeek-V3.2's attention configuration.")
      .def_static("from_json", &AttentionConfig::from_json_file, nb::arg("path"),
                  "Reads a Hugging Face config.json; absent fields keep DeepSeek-V3.2's values.\n"
                  "Raises ValueError naming the file and field when one is malformed.")
      .def_static(
          "from_checkpoint", [](const std::string& dir) { return Checkpoint::open(dir).config(); },
          nb::arg("dir"),
          "The configuration of a checkpoint directory (its config.json). Raises ValueError for\n"
          "a bad config.json and dsattn.CheckpointError for a missing or malformed shard index.")
      .def("__repr__", &repr)
      .def("__eq__", &equal)
      .def("__copy__", [](const AttentionConfig& c) { return c; })
      .def(
          "__deepcopy__", [](const AttentionConfig& c, nb::handle) { return c; }, nb::arg("memo"));
}

}  // namespace dsattn::python
