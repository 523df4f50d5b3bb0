// Writing Hugging Face style checkpoints: config.json, safetensors shards and
// model.safetensors.index.json (or one model.safetensors), with weights stored as bf16 or as
// block-scaled fp8 e4m3. Used for synthetic checkpoints that the loaders read back.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "dsattn/core/tensor.h"
#include "dsattn/model/config.h"
#include "dsattn/model/safetensors.h"

namespace dsattn {

enum class CheckpointLayout { sharded, single_file };

// Writing is all or nothing: every file goes first into a staging folder inside `dir`, and only
// finish() moves them into place (the index and shards, then config.json last), removing the
// checkpoint files of an earlier, larger checkpoint there (model-*-of-*.safetensors,
// model.safetensors, the index) that the new one does not have. A writer destroyed before
// finish() (an error, a full disk) removes its staging folder and leaves `dir` as it was. Files
// in `dir` that are not checkpoint files (a tokenizer, say) are left alone.
class CheckpointWriter {
 public:
  // Creates `dir` if needed. With `fp8`, every 2-D weight is stored as fp8 e4m3 per 128x128 block
  // (quantize_fp8_blocks) with an f32 <name>_scale_inv, and config.json carries the matching
  // quantization_config. A sharded checkpoint has `num_shards` shards, written by end_shard().
  CheckpointWriter(std::string dir, bool fp8, CheckpointLayout layout, int num_shards);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Queues a bf16 host tensor (1-D tensors are never quantised); it is written with its shard.
  void add(const std::string& name, const Tensor& weight);
  // Sharded layout: writes the queued tensors as the next model-XXXXX-of-YYYYY.safetensors.
  // Single-file layout: nothing (everything goes to model.safetensors in finish()).
  void end_shard();
  // Writes the last file, the index (sharded) and config.json: the attention fields of `config`,
  // num_hidden_layers and the integer fields of `extra` (vocab_size, say).
  void finish(const AttentionConfig& config, int num_layers,
              const std::map<std::string, std::int64_t>& extra = {});

 private:
  std::string dir_;
  std::string folder_;  // dir_ with symbolic links resolved
  // A sibling of dir_ that install() swaps with it in one step (swap_folders_); else, where the
  // parent cannot hold it, inside dir_, so that moving a file into place is a rename.
  std::string staging_;
  bool swap_folders_ = false;
  bool finished_ = false;
  bool fp8_;
  CheckpointLayout layout_;
  int num_shards_;
  int shards_written_ = 0;
  std::vector<Tensor> keep_;  // the queued tensors' memory, alive until their file is written
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> weight_map_;
  std::uint64_t total_size_ = 0;

  void flush(const std::string& file);
  void install();
};

// Writes a checkpoint of `num_layers` layers of LayerWeights::synthetic(config, seed + layer)
// (each with a synthetic input_layernorm) into `dir`: config.json, and either one shard per layer
// with model.safetensors.index.json or a single model.safetensors; fp8 as for CheckpointWriter.
void write_synthetic_checkpoint(const std::string& dir, const AttentionConfig& config,
                                int num_layers, std::uint64_t seed, bool fp8,
                                CheckpointLayout layout = CheckpointLayout::sharded);

// The synthetic pre-attention RMSNorm weight (input_layernorm) of the layer seeded `seed`, as
// AttentionStack::synthetic and write_synthetic_checkpoint make it.
Tensor synthetic_input_norm(const AttentionConfig& config, std::uint64_t seed);

}  // namespace dsattn
