#include "dsattn/model/checkpoint_writer.h"

#include <fcntl.h>  // AT_FDCWD
#include <stdio.h>  // renameat2, RENAME_EXCHANGE
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dsattn/core/error.h"
#include "dsattn/core/random.h"
#include "dsattn/model/checkpoint.h"
#include "dsattn/model/weights.h"

namespace dsattn {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail<CheckpointError>("cannot create {}", path.string());
  out << text;
  out.close();
  if (!out) fail<CheckpointError>("cannot write {}", path.string());
}

json config_to_json(const AttentionConfig& c, int num_layers, bool fp8) {
  const bool glm = c.model_type == "glm_moe_dsa";
  json j = {
      {"architectures", {glm ? "GlmMoeDsaForCausalLM" : "DeepseekV32ForCausalLM"}},
      {"model_type", glm ? "glm_moe_dsa" : "deepseek_v32"},
      {"num_hidden_layers", num_layers},
      {"hidden_size", c.hidden_size},
      {"num_attention_heads", c.num_heads},
      {"q_lora_rank", c.q_lora_rank},
      {"kv_lora_rank", c.kv_lora_rank},
      {"qk_nope_head_dim", c.qk_nope_head_dim},
      {"qk_rope_head_dim", c.qk_rope_head_dim},
      {"v_head_dim", c.v_head_dim},
      {"index_n_heads", c.index_n_heads},
      {"index_head_dim", c.index_head_dim},
      {"index_topk", c.index_topk},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rope_theta", c.rope_theta},
      {"rms_norm_eps", c.rms_norm_eps},
      {"indexer_rope_interleave", c.indexer_rope_interleave},
  };
  if (!c.shared_topk_layers.empty()) {
    json types = json::array();
    // One entry per layer, as transformers writes it (layers past the config's list run their
    // own indexer).
    for (int l = 0; l < num_layers; ++l) types.push_back(c.shares_topk(l) ? "shared" : "full");
    j["indexer_types"] = types;
  } else if (c.index_topk_freq > 1) {
    j["index_topk_freq"] = c.index_topk_freq;
    j["index_skip_topk_offset"] = c.index_skip_topk_offset;
  }
  const json yarn = {{"factor", c.yarn.factor},
                     {"original_max_position_embeddings", c.yarn.original_max_position_embeddings},
                     {"beta_fast", c.yarn.beta_fast},
                     {"beta_slow", c.yarn.beta_slow},
                     {"mscale", c.yarn.mscale},
                     {"mscale_all_dim", c.yarn.mscale_all_dim}};
  if (glm) {
    // As transformers v5 writes GLM configs: rope_parameters, and every MLP dense (the synthetic
    // decoders have no experts).
    j["rope_parameters"] = {{"rope_type", c.use_yarn ? "yarn" : "default"},
                            {"rope_theta", c.rope_theta}};
    if (c.use_yarn) j["rope_parameters"].update(yarn);
    j["first_k_dense_replace"] = num_layers;
  } else if (c.use_yarn) {
    j["rope_scaling"] = yarn;
    j["rope_scaling"]["type"] = "yarn";
  } else {
    j["rope_scaling"] = nullptr;
  }
  if (fp8) {
    j["quantization_config"] = {{"activation_scheme", "dynamic"},
                                {"fmt", "e4m3"},
                                {"quant_method", "fp8"},
                                {"weight_block_size", {128, 128}}};
  }
  return j;
}

// model.safetensors, its index, or a shard model-XXXXX-of-YYYYY.safetensors.
bool is_checkpoint_file(const std::string& name) {
  if (name == kCheckpointSingleFile || name == kCheckpointIndexFile) return true;
  const std::string shard = "model-00000-of-00000.safetensors";
  if (name.size() != shard.size() || !name.starts_with("model-") ||
      !name.ends_with(".safetensors") || name.substr(11, 4) != "-of-") {
    return false;
  }
  const auto digits = [&](std::size_t at) {
    return std::all_of(name.begin() + at, name.begin() + at + 5,
                       [](char c) { return c >= '0' && c <= '9'; });
  };
  return digits(6) && digits(15);
}

}  // namespace

CheckpointWriter::CheckpointWriter(std::string dir, bool fp8, CheckpointLayout layout,
                                   int num_shards)
    : dir_(std::move(dir)), fp8_(fp8), layout_(layout), num_shards_(num_shards) {
  DSATTN_CHECK(num_shards >= 1, "CheckpointWriter: num_shards must be >= 1, got {}", num_shards);
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) fail<CheckpointError>("cannot create checkpoint directory {}: {}", dir_, ec.message());
  static std::atomic<int> writers{0};  // several writers of one process need their own folders
  const std::string tag = fmt::format("dsattn-partial-{}-{}", ::getpid(), writers++);
  // The new checkpoint is built in a sibling folder and swapped with the old one in one step;
  // where the parent cannot hold it, inside the folder, and moved into place file by file.
  // The folder itself, through any symbolic links to it (so that they keep pointing at it).
  const fs::path folder = fs::canonical(fs::path(dir_), ec);
  if (ec) fail<CheckpointError>("cannot resolve checkpoint directory {}: {}", dir_, ec.message());
  folder_ = folder.string();
  staging_ =
      (folder.parent_path() / fmt::format(".{}.{}", folder.filename().string(), tag)).string();
  fs::remove_all(staging_, ec);  // a staging folder a killed writer of this pid left behind
  swap_folders_ = fs::create_directory(staging_, ec) && !ec;
  if (!swap_folders_) {
    staging_ = (fs::path(dir_) / fmt::format(".{}", tag)).string();
    fs::remove_all(staging_, ec);
    fs::create_directory(staging_, ec);
    if (ec) fail<CheckpointError>("cannot create staging folder {}: {}", staging_, ec.message());
  }
}

CheckpointWriter::~CheckpointWriter() {
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

void CheckpointWriter::install() {
  const fs::path root(folder_), staged(staging_);
  std::error_code ec;
  if (swap_folders_) {
    // The folder's other files (a tokenizer, a README, subfolders) go into the new folder too,
    // as hard links; the old checkpoint's files stay behind.
    for (const fs::directory_entry& e : fs::directory_iterator(root)) {
      const std::string name = e.path().filename().string();
      if (is_checkpoint_file(name) || fs::exists(staged / name)) continue;
      fs::copy(e.path(), staged / name,
               fs::copy_options::recursive | fs::copy_options::create_hard_links |
                   fs::copy_options::copy_symlinks,
               ec);
      if (ec) {
        fail<CheckpointError>("cannot carry {} over into the new checkpoint in {}: {}", name, dir_,
                              ec.message());
      }
    }
    // One step: a reader opens the old checkpoint or the new one, never a mix, and a crash
    // leaves one of them whole (the other under the staging name, removed by the next writer
    // of that name or by hand).
    if (::renameat2(AT_FDCWD, staged.c_str(), AT_FDCWD, root.c_str(), RENAME_EXCHANGE) == 0) {
      fs::remove_all(staged, ec);  // now the old checkpoint
      return;
    }
    const int err = errno;
    if (err != EINVAL && err != ENOSYS && err != EXDEV && err != EBUSY) {
      fail<CheckpointError>("cannot swap the new checkpoint {} into place as {}: {}",
                            staged.string(), dir_, std::strerror(err));
    }
    // The filesystem cannot exchange folders (or the folder is a mount point): file by file,
    // config.json last. The carried-over links are already in the folder.
  }
  // The earlier checkpoint's files that the new one does not replace.
  for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (is_checkpoint_file(name) && !fs::exists(staged / name)) fs::remove(e.path(), ec);
  }
  std::vector<std::string> files;
  for (const fs::directory_entry& e : fs::directory_iterator(staged)) {
    const std::string name = e.path().filename().string();
    if (is_checkpoint_file(name)) files.push_back(name);  // not what was carried over
  }
  files.push_back("config.json");  // last: a loader finds a complete checkpoint or the old one
  for (const std::string& name : files) {
    fs::rename(staged / name, root / name, ec);
    if (ec) fail<CheckpointError>("cannot move {} into {}: {}", name, dir_, ec.message());
  }
  fs::remove_all(staged, ec);
}

void CheckpointWriter::add(const std::string& name, const Tensor& weight) {
  DSATTN_CHECK(weight.dtype() == DType::bf16 && weight.device().is_cpu(),
               "CheckpointWriter::add: {} must be a bf16 host tensor", name);
  auto queue = [&](const std::string& n, const Tensor& t) {
    keep_.push_back(t);
    entries_.push_back({n, t.dtype(), Shape(t.view().shape().begin(), t.view().shape().end()),
                        tensor_bytes(keep_.back())});
  };
  if (fp8_ && weight.view().ndim() == 2) {
    Fp8BlockWeight q = quantize_fp8_blocks(weight);
    queue(name, q.values);
    queue(name + "_scale_inv", q.scale_inv);
  } else {
    queue(name, weight);
  }
}

void CheckpointWriter::flush(const std::string& file) {
  write_safetensors((fs::path(staging_) / file).string(), entries_, {{"format", "pt"}});
  for (const SafetensorsEntry& e : entries_) {
    weight_map_[e.name] = file;
    total_size_ += e.bytes.size();
  }
  entries_.clear();
  keep_.clear();
}

void CheckpointWriter::end_shard() {
  if (layout_ != CheckpointLayout::sharded) return;
  DSATTN_CHECK(shards_written_ < num_shards_, "CheckpointWriter: more than the {} shards declared",
               num_shards_);
  ++shards_written_;
  flush(fmt::format("model-{:05d}-of-{:05d}.safetensors", shards_written_, num_shards_));
}

void CheckpointWriter::finish(const AttentionConfig& config, int num_layers,
                              const std::map<std::string, std::int64_t>& extra) {
  DSATTN_CHECK(!finished_, "CheckpointWriter::finish: called twice for {}", dir_);
  const fs::path staged(staging_);
  if (layout_ == CheckpointLayout::single_file) {
    flush(kCheckpointSingleFile);
  } else {
    if (!entries_.empty()) end_shard();
    DSATTN_CHECK(shards_written_ == num_shards_, "CheckpointWriter: {} shards declared, {} written",
                 num_shards_, shards_written_);
    json index = {{"metadata", {{"total_size", total_size_}}}, {"weight_map", weight_map_}};
    write_text(staged / kCheckpointIndexFile, index.dump(2) + "\n");
  }
  json cfg = config_to_json(config, num_layers, fp8_);
  for (const auto& [key, value] : extra) cfg[key] = value;
  write_text(staged / "config.json", cfg.dump(2) + "\n");
  install();
  finished_ = true;
}

Tensor synthetic_input_norm(const AttentionConfig& config, std::uint64_t seed) {
  Tensor norm = Tensor::empty({config.hidden_size}, DType::bf16);
  fill_uniform(norm, seed, /*stream=*/1000, 0.05f, 1.0f);
  return norm;
}

void write_synthetic_checkpoint(const std::string& dir, const AttentionConfig& config,
                                int num_layers, std::uint64_t seed, bool fp8,
                                CheckpointLayout layout) {
  DSATTN_CHECK(num_layers >= 1, "write_synthetic_checkpoint: num_layers must be >= 1, got {}",
               num_layers);
  config.validate();
  CheckpointWriter writer(dir, fp8, layout, num_layers);
  for (int layer = 0; layer < num_layers; ++layer) {
    const std::uint64_t layer_seed = seed + std::uint64_t(layer);
    const LayerWeights w = LayerWeights::synthetic_layer(config, layer, layer_seed);
    for (const AttentionWeightSlot& slot : attention_weight_slots(config)) {
      if ((w.*slot.member).defined())
        writer.add(attention_prefix(layer) + slot.name, w.*slot.member);
    }
    writer.add(input_norm_name(layer), synthetic_input_norm(config, layer_seed));
    writer.end_shard();
  }
  writer.finish(config, num_layers);
}

}  // namespace dsattn
