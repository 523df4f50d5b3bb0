#include "dsattn/model/checkpoint.h"

#include <algorithm>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dsattn/core/error.h"

namespace dsattn {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// `name` in the checkpoint folder `dir`, checked before it is opened: a regular file (not a FIFO,
// which would block the reader, nor a device or a folder) that lies inside the folder once
// symbolic links are resolved. `what` names it in errors ("config.json", "shard").
fs::path checkpoint_file(const std::string& dir, const fs::path& name, const char* what) {
  const fs::path path = fs::path(dir) / name;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (ec || !fs::exists(status)) {
    fail<CheckpointError>("checkpoint {}: {} {} does not exist", dir, what, path.string());
  }
  if (!fs::is_regular_file(status)) {
    fail<CheckpointError>("checkpoint {}: {} {} is not a regular file", dir, what, path.string());
  }
  const fs::path real = fs::canonical(path, ec), folder = fs::canonical(dir, ec);
  const auto [mismatch, unused] =
      std::mismatch(folder.begin(), folder.end(), real.begin(), real.end());
  if (ec || mismatch != folder.end()) {
    fail<CheckpointError>("checkpoint {}: {} {} resolves to {}, outside the checkpoint folder", dir,
                          what, path.string(), real.string());
  }
  return path;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail<CheckpointError>("cannot open {}", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::vector<AttentionWeightSlot> attention_weight_slots(const AttentionConfig& c) {
  const std::int64_t H = c.num_heads;
  return {
      {"q_a_proj.weight", &LayerWeights::q_a_proj, {c.q_lora_rank, c.hidden_size}},
      {"q_a_layernorm.weight", &LayerWeights::q_a_layernorm, {c.q_lora_rank}},
      {"q_b_proj.weight", &LayerWeights::q_b_proj, {H * c.qk_head_dim(), c.q_lora_rank}},
      {"kv_a_proj_with_mqa.weight",
       &LayerWeights::kv_a_proj_with_mqa,
       {c.latent_dim(), c.hidden_size}},
      {"kv_a_layernorm.weight", &LayerWeights::kv_a_layernorm, {c.kv_lora_rank}},
      {"kv_b_proj.weight",
       &LayerWeights::kv_b_proj,
       {H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}},
      {"o_proj.weight", &LayerWeights::o_proj, {c.hidden_size, H * c.v_head_dim}},
      {"indexer.wq_b.weight",
       &LayerWeights::indexer_wq_b,
       {c.index_n_heads * c.index_head_dim, c.q_lora_rank}},
      {"indexer.wk.weight", &LayerWeights::indexer_wk, {c.index_head_dim, c.hidden_size}},
      {"indexer.k_norm.weight", &LayerWeights::indexer_k_norm, {c.index_head_dim}},
      {"indexer.k_norm.bias", &LayerWeights::indexer_k_norm_bias, {c.index_head_dim}},
      {"indexer.weights_proj.weight",
       &LayerWeights::indexer_weights_proj,
       {c.index_n_heads, c.hidden_size}},
  };
}

namespace {

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

Tensor to_bf16(const Tensor& t) {
  if (t.dtype() == DType::bf16) return t;
  Tensor out = Tensor::empty(t.view().shape(), DType::bf16);
  const float* src = t.ptr<float>();
  bf16* dst = out.ptr<bf16>();
  for (std::int64_t i = 0; i < t.numel(); ++i) dst[i] = bf16::from_float(src[i]);
  return out;
}

}  // namespace

QuantizationConfig quantization_config_from_json_text(const std::string& text,
                                                      const std::string& source) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {  // syntax, and numbers out of range (1e400)
    fail<ConfigError>("{}: not valid JSON: {}", source, e.what());
  }
  QuantizationConfig q;
  if (!root.is_object()) return q;
  auto it = root.find("quantization_config");
  if (it == root.end() || it->is_null()) return q;
  if (!it->is_object()) {
    fail<ConfigError>("{}: field quantization_config must be an object, got {}", source,
                      it->dump());
  }
  const json& qc = *it;
  auto method = qc.find("quant_method");
  if (method == qc.end() || !method->is_string() || method->get<std::string>() != "fp8") {
    fail<ConfigError>(
        "{}: field quantization_config.quant_method must be \"fp8\" (supported: fp8), got {}",
        source, method == qc.end() ? std::string("nothing") : method->dump());
  }
  if (auto fmt_it = qc.find("fmt"); fmt_it != qc.end()) {
    if (!fmt_it->is_string() || fmt_it->get<std::string>() != "e4m3") {
      fail<ConfigError>(
          "{}: field quantization_config.fmt must be \"e4m3\" (supported: e4m3), got {}", source,
          fmt_it->dump());
    }
  }
  if (auto bs = qc.find("weight_block_size"); bs != qc.end()) {
    const bool ok = bs->is_array() && bs->size() == 2 && (*bs)[0].is_number_integer() &&
                    (*bs)[1].is_number_integer() && (*bs)[0].get<std::int64_t>() == 128 &&
                    (*bs)[1].get<std::int64_t>() == 128;
    if (!ok) {
      fail<ConfigError>(
          "{}: field quantization_config.weight_block_size must be [128, 128] (supported: "
          "[128, 128]), got {}",
          source, bs->dump());
    }
  }
  q.fp8 = true;
  return q;
}

Checkpoint Checkpoint::open(const std::string& dir) {
  Checkpoint ck;
  ck.dir_ = dir;
  const fs::path root(dir);
  if (!fs::exists(root / "config.json")) {
    fail<CheckpointError>("checkpoint {} has no config.json", dir);
  }
  const fs::path config_path = checkpoint_file(dir, "config.json", "config.json");
  ck.config_ = AttentionConfig::from_json_file(config_path.string());
  ck.quant_ = quantization_config_from_json_text(read_text(config_path), config_path.string());

  if (fs::exists(root / kCheckpointIndexFile)) {
    const fs::path index_path = checkpoint_file(dir, kCheckpointIndexFile, "index");
    const std::string source = index_path.string();
    json index;
    try {
      index = json::parse(read_text(index_path));
    } catch (const json::exception& e) {  // syntax, and numbers out of range (1e400)
      fail<CheckpointError>("{}: not valid JSON: {}", source, e.what());
    }
    if (!index.is_object()) {
      fail<CheckpointError>("{}: expected a JSON object at the top level, got {}", source,
                            index.type_name());
    }
    auto wm = index.find("weight_map");
    if (wm == index.end() || !wm->is_object()) {
      fail<CheckpointError>("{}: field weight_map must be an object of tensor name -> shard file",
                            source);
    }
    for (const auto& [name, file] : wm->items()) {
      if (!file.is_string() || file.get<std::string>().empty()) {
        fail<CheckpointError>("{}: weight_map.{} must be a shard file name, got {}", source, name,
                              file.dump());
      }
      // Shards live in the checkpoint's folder: no absolute paths, no way out of it.
      const fs::path shard(file.get<std::string>());
      bool escapes = shard.is_absolute();
      for (const fs::path& part : shard) escapes = escapes || part == "..";
      if (escapes) {
        fail<CheckpointError>(
            "{}: weight_map.{} must name a file inside the checkpoint folder, "
            "got {}",
            source, name, file.dump());
      }
      ck.weight_map_[name] = file.get<std::string>();
    }
  } else if (fs::exists(root / kCheckpointSingleFile)) {
    auto file = std::make_unique<SafetensorsFile>(SafetensorsFile::open(
        checkpoint_file(dir, kCheckpointSingleFile, "weights file").string()));
    for (const auto& [name, t] : file->tensors()) ck.weight_map_[name] = kCheckpointSingleFile;
    ck.shards_->open.emplace(kCheckpointSingleFile, std::move(file));
  } else {
    fail<CheckpointError>("checkpoint {} has neither {} nor {}", dir, kCheckpointIndexFile,
                          kCheckpointSingleFile);
  }
  return ck;
}

const SafetensorsFile& Checkpoint::shard_for(const std::string& tensor) const {
  auto it = weight_map_.find(tensor);
  if (it == weight_map_.end()) {
    fail<CheckpointError>("checkpoint {} has no tensor {}", dir_, tensor);
  }
  std::lock_guard<std::mutex> lock(shards_->mutex);
  auto& slot = shards_->open[it->second];
  if (!slot) {
    try {
      const std::string what = fmt::format("shard (holding tensor {})", tensor);
      slot = std::make_unique<SafetensorsFile>(
          SafetensorsFile::open(checkpoint_file(dir_, it->second, what.c_str()).string()));
    } catch (...) {
      shards_->open.erase(it->second);
      throw;
    }
  }
  return *slot;
}

std::string attention_prefix(int layer) { return fmt::format("model.layers.{}.self_attn.", layer); }

std::string input_norm_name(int layer) {
  return fmt::format("model.layers.{}.input_layernorm.weight", layer);
}

Tensor load_bf16_weight(const Checkpoint& checkpoint, const std::string& name, const Shape& shape) {
  const SafetensorsFile& file = checkpoint.shard_for(name);
  const SafetensorsTensor& info = file.tensor(name);
  if (info.shape != shape) {
    fail<CheckpointError>("{}: tensor {} has shape {}, the config needs {}", file.path(), name,
                          shape_string(info.shape), shape_string(shape));
  }
  if (info.dtype != DType::fp8_e4m3) return to_bf16(file.load(name));
  if (shape.size() != 2) {
    fail<CheckpointError>("{}: tensor {} is F8_E4M3, but only 2-D weights may be fp8", file.path(),
                          name);
  }
  if (!checkpoint.quantization().fp8) {
    fail<CheckpointError>(
        "{}: tensor {} is F8_E4M3, but config.json has no fp8 quantization_config", file.path(),
        name);
  }
  const std::string scale_name = name + "_scale_inv";
  if (!checkpoint.contains(scale_name)) {
    fail<CheckpointError>("{}: fp8 tensor {} has no scale tensor {}", file.path(), name,
                          scale_name);
  }
  const SafetensorsFile& scale_file = checkpoint.shard_for(scale_name);
  const SafetensorsTensor& scale_info = scale_file.tensor(scale_name);
  const std::int64_t block = checkpoint.quantization().block_rows;
  const Shape scale_shape{ceil_div(shape[0], block), ceil_div(shape[1], block)};
  if (scale_info.shape != scale_shape) {
    fail<CheckpointError>("{}: scale tensor {} has shape {}, weight {} {} needs {}",
                          scale_file.path(), scale_name, shape_string(scale_info.shape), name,
                          shape_string(shape), shape_string(scale_shape));
  }
  if (scale_info.dtype != DType::f32 && scale_info.dtype != DType::bf16) {
    fail<CheckpointError>("{}: scale tensor {} must be F32 or BF16, got {}", scale_file.path(),
                          scale_name, safetensors_dtype_name(scale_info.dtype));
  }
  Tensor scale = scale_file.load(scale_name);
  if (scale.dtype() == DType::bf16) {
    Tensor f = Tensor::empty(scale.view().shape(), DType::f32);
    for (std::int64_t i = 0; i < scale.numel(); ++i) {
      f.ptr<float>()[i] = scale.ptr<bf16>()[i].to_float();
    }
    scale = f;
  }
  return dequantize_fp8_blocks(file.load(name), scale, block);
}

LayerWeights load_layer_weights(const Checkpoint& checkpoint, int layer) {
  DSATTN_CHECK(layer >= 0, "load_layer_weights: layer must be >= 0, got {}", layer);
  const AttentionConfig& config = checkpoint.config();
  const std::string prefix = attention_prefix(layer);
  LayerWeights w;
  // A layer sharing an earlier layer's top-k (IndexShare) has no indexer weights.
  const bool shares = config.shares_topk(layer);
  for (const AttentionWeightSlot& slot : attention_weight_slots(config)) {
    if (shares && is_indexer_weight(slot.name)) continue;
    w.*slot.member = load_bf16_weight(checkpoint, prefix + slot.name, slot.shape);
  }
  try {
    w.validate(config);
  } catch (const InvalidArgument& e) {
    throw CheckpointError(
        fmt::format("checkpoint {}, layer {}: {}", checkpoint.dir(), layer, e.what()));
  }
  return w;
}

Fp8BlockWeight quantize_fp8_blocks(const Tensor& weight, std::int64_t block) {
  DSATTN_CHECK(weight.dtype() == DType::bf16 && weight.view().ndim() == 2,
               "quantize_fp8_blocks: weight must be a 2-D bf16 tensor");
  DSATTN_CHECK(block > 0, "quantize_fp8_blocks: block must be positive, got {}", block);
  const std::int64_t rows = weight.size(0), cols = weight.size(1);
  const std::int64_t br = ceil_div(rows, block), bc = ceil_div(cols, block);
  Fp8BlockWeight out{Tensor::empty({rows, cols}, DType::fp8_e4m3),
                     Tensor::empty({br, bc}, DType::f32)};
  const bf16* w = weight.ptr<bf16>();
  fp8_e4m3* q = out.values.ptr<fp8_e4m3>();
  float* s = out.scale_inv.ptr<float>();
  for (std::int64_t bi = 0; bi < br; ++bi) {
    for (std::int64_t bj = 0; bj < bc; ++bj) {
      const std::int64_t r0 = bi * block, r1 = std::min(rows, r0 + block);
      const std::int64_t c0 = bj * block, c1 = std::min(cols, c0 + block);
      float amax = 0.0f;
      for (std::int64_t i = r0; i < r1; ++i) {
        for (std::int64_t j = c0; j < c1; ++j)
          amax = std::max(amax, std::abs(w[i * cols + j].to_float()));
      }
      const float scale = amax > 0.0f ? amax / fp8_e4m3::kMax : 1.0f;
      s[bi * bc + bj] = scale;
      for (std::int64_t i = r0; i < r1; ++i) {
        for (std::int64_t j = c0; j < c1; ++j) {
          q[i * cols + j] = fp8_e4m3::from_float(w[i * cols + j].to_float() / scale);
        }
      }
    }
  }
  return out;
}

Tensor dequantize_fp8_blocks(const Tensor& values, const Tensor& scale_inv, std::int64_t block) {
  DSATTN_CHECK(values.dtype() == DType::fp8_e4m3 && values.view().ndim() == 2,
               "dequantize_fp8_blocks: values must be a 2-D fp8_e4m3 tensor");
  DSATTN_CHECK(block > 0, "dequantize_fp8_blocks: block must be positive, got {}", block);
  const std::int64_t rows = values.size(0), cols = values.size(1);
  const std::int64_t bc = ceil_div(cols, block);
  DSATTN_CHECK(scale_inv.dtype() == DType::f32 && scale_inv.view().ndim() == 2 &&
                   scale_inv.size(0) == ceil_div(rows, block) && scale_inv.size(1) == bc,
               "dequantize_fp8_blocks: scale_inv must be f32 [{}, {}]", ceil_div(rows, block), bc);
  Tensor out = Tensor::empty({rows, cols}, DType::bf16);
  const fp8_e4m3* q = values.ptr<fp8_e4m3>();
  const float* s = scale_inv.ptr<float>();
  bf16* o = out.ptr<bf16>();
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* srow = s + (i / block) * bc;
    for (std::int64_t j = 0; j < cols; ++j) {
      o[i * cols + j] = bf16::from_float(q[i * cols + j].to_float() * srow[j / block]);
    }
  }
  return out;
}

}  // namespace dsattn
