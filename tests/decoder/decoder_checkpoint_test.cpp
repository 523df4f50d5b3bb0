// The decoder's weights through a checkpoint: written and read back exactly (bf16) or as their
// FP8 block quantisation, and clear errors for a missing tensor or config field.
#include <gmock/gmock-matchers.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error_message.h"
#include "core/temp_dir.h"
#include "dsattn/decoder/decoder_model.h"

namespace dsattn {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::TempDir;
using testing::thrown_message;

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.ptr<bf16>(), b.ptr<bf16>(), a.nbytes()) == 0;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

DecoderWeights load(const TempDir& dir) {
  return DecoderWeights::load(Checkpoint::open(dir.path().string()),
                              DecoderConfig::from_json_file(dir.file("config.json")));
}

TEST(DecoderCheckpoint, Bf16RoundTripIsExact) {
  const DecoderConfig config = DecoderConfig::tiny();
  TempDir dir;
  write_synthetic_decoder_checkpoint(dir.path().string(), config, 5, false);
  const DecoderConfig read = DecoderConfig::from_json_file(dir.file("config.json"));
  EXPECT_EQ(read.vocab_size, config.vocab_size);
  EXPECT_EQ(read.intermediate_size, config.intermediate_size);
  EXPECT_EQ(read.num_layers, config.num_layers);
  EXPECT_EQ(read.attention.index_topk, 64);
  const DecoderWeights want = DecoderWeights::synthetic(config, 5);
  const DecoderWeights got = load(dir);
  EXPECT_TRUE(same_bytes(got.embed, want.embed));
  EXPECT_TRUE(same_bytes(got.lm_head, want.lm_head));
  EXPECT_TRUE(same_bytes(got.final_norm, want.final_norm));
  ASSERT_EQ(got.layers.size(), 2u);
  for (std::size_t l = 0; l < 2; ++l) {
    EXPECT_TRUE(same_bytes(got.layers[l].gate_up, want.layers[l].gate_up)) << l;
    EXPECT_TRUE(same_bytes(got.layers[l].down, want.layers[l].down)) << l;
    EXPECT_TRUE(same_bytes(got.layers[l].input_norm, want.layers[l].input_norm)) << l;
    EXPECT_TRUE(same_bytes(got.layers[l].post_attention_norm, want.layers[l].post_attention_norm));
    EXPECT_TRUE(same_bytes(got.layers[l].attention.kv_b_proj, want.layers[l].attention.kv_b_proj));
  }
}

// GLM-5's shapes with IndexShare: the config says glm_moe_dsa with its layers' roles, shared
// layers carry no indexer weights, and generation from the checkpoint equals generation from the
// same weights in memory.
TEST(DecoderCheckpoint, Glm5RoundTripWithIndexShare) {
  const DecoderConfig config = DecoderConfig::tiny_glm5();
  TempDir dir;
  write_synthetic_decoder_checkpoint(dir.path().string(), config, 6, false);
  const DecoderConfig read = DecoderConfig::from_json_file(dir.file("config.json"));
  EXPECT_EQ(read.attention.model_type, "glm_moe_dsa");
  EXPECT_TRUE(read.attention.indexer_rope_interleave);
  EXPECT_FALSE(read.attention.use_yarn);
  EXPECT_EQ(read.attention.v_head_dim, 256);
  EXPECT_EQ(read.attention.shared_topk_layers, (std::vector<bool>{false, true, false, true}));
  const DecoderWeights got = load(dir);
  const DecoderWeights want = DecoderWeights::synthetic(config, 6);
  ASSERT_EQ(got.layers.size(), 4u);
  for (std::size_t l = 0; l < 4; ++l) {
    EXPECT_EQ(got.layers[l].attention.has_indexer(), l % 2 == 0) << l;
    EXPECT_TRUE(same_bytes(got.layers[l].attention.kv_b_proj, want.layers[l].attention.kv_b_proj));
  }
}

// A layer's indexer weights must match its role in the config: a full layer without them would
// silently take the previous layer's top-k, a shared one with them would run its own.
TEST(DecoderCheckpoint, IndexShareRolesMustMatchTheWeights) {
  const DecoderConfig config = DecoderConfig::tiny_glm5();
  DecoderWeights w = DecoderWeights::synthetic(config, 6);
  w.layers[2].attention.drop_indexer();
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { w.validate(config); }),
              AllOf(HasSubstr("layer 2 has no indexer"), HasSubstr("runs its own")));
  w.layers[2] = DecoderWeights::synthetic(config, 6).layers[2];
  w.layers[1].attention = LayerWeights::synthetic(config.attention, 1);
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { w.validate(config); }),
              HasSubstr("layer 1 has indexer weights"));

  // The config's list covers every layer.
  TempDir dir;
  write_synthetic_decoder_checkpoint(dir.path().string(), config, 6, false);
  std::string cfg = read_all(dir.file("config.json"));
  cfg.replace(cfg.find("\"num_hidden_layers\": 4"), 22, "\"num_hidden_layers\": 5");
  EXPECT_THAT(
      thrown_message<ConfigError>([&] { DecoderConfig::from_json_text(cfg, "cfg.json"); }),
      HasSubstr("indexer_types (or index_topk_pattern) lists 4 layers, num_hidden_layers is 5"));
}

TEST(DecoderCheckpoint, Fp8WeightsLoadAsTheirBlockQuantisation) {
  const DecoderConfig config = DecoderConfig::tiny();
  TempDir dir;
  write_synthetic_decoder_checkpoint(dir.path().string(), config, 5, true,
                                     CheckpointLayout::single_file);
  const DecoderWeights want = DecoderWeights::synthetic(config, 5);
  const DecoderWeights got = load(dir);
  auto fp8_of = [](const Tensor& w) {
    const Fp8BlockWeight q = quantize_fp8_blocks(w);
    return dequantize_fp8_blocks(q.values, q.scale_inv);
  };
  EXPECT_TRUE(same_bytes(got.lm_head, fp8_of(want.lm_head)));
  EXPECT_TRUE(same_bytes(got.layers[1].down, fp8_of(want.layers[1].down)));
  EXPECT_FALSE(same_bytes(got.layers[1].down, want.layers[1].down));  // it was quantised
  EXPECT_TRUE(same_bytes(got.final_norm, want.final_norm));           // 1-D: stored as bf16
}

TEST(DecoderCheckpoint, NamesTheMissingTensorAndField) {
  const DecoderConfig config = DecoderConfig::tiny();
  TempDir dir;
  write_synthetic_decoder_checkpoint(dir.path().string(), config, 5, false);
  const std::string index_path = dir.file("model.safetensors.index.json");
  std::string index = read_all(index_path);
  const std::string entry = "\"model.layers.1.mlp.up_proj.weight\"";
  index.replace(index.find(entry), entry.size(), "\"renamed\"");
  std::ofstream(index_path) << index;
  EXPECT_THAT(thrown_message<CheckpointError>([&] { load(dir); }),
              HasSubstr("no tensor model.layers.1.mlp.up_proj.weight"));

  std::string cfg = read_all(dir.file("config.json"));
  cfg.replace(cfg.find("\"vocab_size\""), 12, "\"vocab_sizes\"");
  EXPECT_THAT(thrown_message<ConfigError>([&] { DecoderConfig::from_json_text(cfg, "cfg.json"); }),
              AllOf(HasSubstr("cfg.json"), HasSubstr("field vocab_size is missing")));
}

TEST(DecoderModel, RefusesTokensOutsideTheVocabulary) {
  const DecoderConfig config = DecoderConfig::tiny();
  const DecoderModel model(config, DecoderWeights::synthetic(config, 1));
  PagedKvCache cache(config.attention, {.num_pages = 2, .num_layers = 2});
  BlockTable table;
  cache.reserve(table, 2);
  Batch batch;
  batch.requests.push_back({0, 2, table});
  const std::vector<std::int32_t> tokens = {3, 600};
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { model.forward(batch, tokens, cache); }),
              HasSubstr("tokens[1] must be in [0, 512), got 600"));
  DecoderWeights short_vocab = DecoderWeights::synthetic(config, 1);
  short_vocab.lm_head = Tensor::empty({10, config.attention.hidden_size}, DType::bf16);
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { DecoderModel(config, short_vocab); }),
              HasSubstr("lm_head"));
}

}  // namespace
}  // namespace dsattn
