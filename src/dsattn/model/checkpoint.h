// A Hugging Face style checkpoint directory: config.json (with an optional fp8
// quantization_config), safetensors shards and model.safetensors.index.json, or a single
// model.safetensors. Loads one layer's attention weights on the host as bf16, dequantising
// block-scaled fp8 e4m3 weights exactly.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dsattn/model/config.h"
#include "dsattn/model/safetensors.h"
#include "dsattn/model/weights.h"

namespace dsattn {

// The files of a checkpoint folder besides config.json: the shard index, or the single file.
inline constexpr const char* kCheckpointIndexFile = "model.safetensors.index.json";
inline constexpr const char* kCheckpointSingleFile = "model.safetensors";

// quantization_config of config.json. Only block-scaled fp8 e4m3 ("quant_method": "fp8",
// "fmt": "e4m3", "weight_block_size": [128, 128]) is supported.
struct QuantizationConfig {
  bool fp8 = false;
  std::int64_t block_rows = 128;
  std::int64_t block_cols = 128;
};

// Reads quantization_config from the text of config.json: nothing (fp8 = false) when absent or
// null; throws ConfigError naming `source` and the field for other methods, formats or block sizes.
QuantizationConfig quantization_config_from_json_text(const std::string& text,
                                                      const std::string& source);

class Checkpoint {
 public:
  // Reads dir/config.json and the shard index (dir/model.safetensors.index.json, or else the single
  // dir/model.safetensors). Shards listed in the index are opened on first use. Throws ConfigError
  // for a bad config.json and CheckpointError for a missing or malformed index or shard.
  static Checkpoint open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const AttentionConfig& config() const { return config_; }
  const QuantizationConfig& quantization() const { return quant_; }
  // Tensor name -> shard file name (relative to dir).
  const std::map<std::string, std::string>& weight_map() const { return weight_map_; }
  bool contains(const std::string& tensor) const { return weight_map_.count(tensor) != 0; }

  // The opened shard holding `tensor`; throws CheckpointError naming the tensor when no shard
  // lists it, and naming the shard when it cannot be opened. Safe to call from several threads.
  const SafetensorsFile& shard_for(const std::string& tensor) const;

 private:
  struct Shards {
    std::mutex mutex;
    std::map<std::string, std::unique_ptr<SafetensorsFile>> open;
  };

  std::string dir_;
  AttentionConfig config_;
  QuantizationConfig quant_;
  std::map<std::string, std::string> weight_map_;
  std::shared_ptr<Shards> shards_ = std::make_shared<Shards>();
};

// The checkpoint name prefix of layer `layer`'s attention: "model.layers.{layer}.self_attn.".
std::string attention_prefix(int layer);
// The pre-attention RMSNorm weight of layer `layer`: "model.layers.{layer}.input_layernorm.weight".
std::string input_norm_name(int layer);

// One attention weight: its checkpoint name after attention_prefix(), its LayerWeights member and
// the shape the config gives it.
struct AttentionWeightSlot {
  const char* name;
  Tensor LayerWeights::*member;
  Shape shape;
};
std::vector<AttentionWeightSlot> attention_weight_slots(const AttentionConfig& config);

// Loads the weight `name` as a bf16 host tensor of shape `shape`: bf16 as stored, f32 rounded to
// bf16, fp8 e4m3 dequantised with its <name>_scale_inv block scales. Throws CheckpointError naming
// the file and the tensor when it is missing, has another shape or lacks its scales.
Tensor load_bf16_weight(const Checkpoint& checkpoint, const std::string& name, const Shape& shape);

// Loads model.layers.{layer}.self_attn.* as bf16 host tensors: bf16 tensors as stored, f32 ones
// rounded to bf16, fp8 e4m3 ones dequantised with their <name>_scale_inv block scales
// (w = e4m3 · scale_inv[i / 128, j / 128], rounded to bf16). Shapes are checked against the
// checkpoint's config; errors name the file and the tensor.
LayerWeights load_layer_weights(const Checkpoint& checkpoint, int layer);

// The block quantisation CheckpointWriter uses, for a bf16 [rows, cols] weight:
// fp8 e4m3 values and f32 scales of shape [ceil(rows / 128), ceil(cols / 128)].
struct Fp8BlockWeight {
  Tensor values;     // fp8_e4m3 [rows, cols]
  Tensor scale_inv;  // f32 [ceil(rows / 128), ceil(cols / 128)]
};
Fp8BlockWeight quantize_fp8_blocks(const Tensor& weight, std::int64_t block = 128);
// w[i, j] = values[i, j] · scale_inv[i / block, j / block], rounded to bf16.
Tensor dequantize_fp8_blocks(const Tensor& values, const Tensor& scale_inv,
                             std::int64_t block = 128);

}  // namespace dsattn
