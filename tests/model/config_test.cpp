// AttentionConfig: the DeepSeek-V3.2 defaults, the derived quantities, and the config.json reader
// with its error messages.
#include "dsattn/model/config.h"

#include <gmock/gmock-matchers.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "core/error_message.h"
#include "dsattn/core/error.h"

namespace dsattn {
namespace {

using ::dsattn::testing::thrown_message;
using ::testing::AllOf;
using ::testing::HasSubstr;

// The attention-relevant part of DeepSeek-V3.2-Exp's config.json, with the surrounding keys a
// real file carries so that the reader is seen to ignore them.
const char* const kRopeScaling = R"({
    "beta_fast": 32,
    "beta_slow": 1,
    "factor": 40,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "original_max_position_embeddings": 4096,
    "type": "yarn"
  })";

std::string v32_config_json() {
  return R"({
  "architectures": ["DeepseekV32ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "eos_token_id": 1,
  "ep_size": 1,
  "first_k_dense_replace": 3,
  "hidden_act": "silu",
  "hidden_size": 7168,
  "index_head_dim": 128,
  "index_n_heads": 64,
  "index_topk": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 18432,
  "kv_lora_rank": 512,
  "max_position_embeddings": 163840,
  "model_type": "deepseek_v32",
  "moe_intermediate_size": 2048,
  "moe_layer_freq": 1,
  "n_group": 8,
  "n_routed_experts": 256,
  "n_shared_experts": 1,
  "norm_topk_prob": true,
  "num_attention_heads": 128,
  "num_experts_per_tok": 8,
  "num_hidden_layers": 61,
  "num_key_value_heads": 128,
  "num_nextn_predict_layers": 1,
  "q_lora_rank": 1536,
  "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64,
  "quantization_config": {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "scale_fmt": "ue8m0",
    "weight_block_size": [128, 128]
  },
  "rms_norm_eps": 1e-06,
  "rope_scaling": )" +
         std::string(kRopeScaling) +
         R"(,
  "rope_theta": 10000,
  "routed_scaling_factor": 2.5,
  "scoring_func": "sigmoid",
  "tie_word_embeddings": false,
  "topk_group": 4,
  "topk_method": "noaux_tc",
  "torch_dtype": "bfloat16",
  "transformers_version": "4.44.2",
  "use_cache": true,
  "v_head_dim": 128,
  "vocab_size": 129280
})";
}

void expect_deepseek_v32(const AttentionConfig& c) {
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_heads, 128);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_nope_head_dim, 128);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.index_n_heads, 64);
  EXPECT_EQ(c.index_head_dim, 128);
  EXPECT_EQ(c.index_topk, 2048);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_TRUE(c.use_yarn);
  EXPECT_EQ(c.yarn.factor, 40.0);
  EXPECT_EQ(c.yarn.original_max_position_embeddings, 4096);
  EXPECT_EQ(c.yarn.beta_fast, 32.0);
  EXPECT_EQ(c.yarn.beta_slow, 1.0);
  EXPECT_EQ(c.yarn.mscale, 1.0);
  EXPECT_EQ(c.yarn.mscale_all_dim, 1.0);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.max_position_embeddings, 163840);
}

// `text` with its one occurrence of `from` replaced by `to`.
std::string replaced(std::string text, const std::string& from, const std::string& to) {
  const std::size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << "no " << from << " in the config text";
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

AttentionConfig parse(const std::string& text) {
  return AttentionConfig::from_json_text(text, "test.json");
}

// The message of the ConfigError raised by parsing `text`.
std::string config_error(const std::string& text) {
  return thrown_message<ConfigError>([&] { (void)parse(text); });
}

TEST(Config, DefaultsAreDeepSeekV32) {
  expect_deepseek_v32(AttentionConfig{});
  expect_deepseek_v32(AttentionConfig::deepseek_v32());
  EXPECT_EQ(AttentionConfig{}.index_layer_norm_eps, 1e-6);
  EXPECT_NO_THROW(AttentionConfig{}.validate());
}

TEST(Config, DerivedWidths) {
  const AttentionConfig c;
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_EQ(c.latent_dim(), 576);
  AttentionConfig small;
  small.kv_lora_rank = 256;
  small.qk_nope_head_dim = 64;
  small.qk_rope_head_dim = 32;
  EXPECT_EQ(small.qk_head_dim(), 96);
  EXPECT_EQ(small.latent_dim(), 288);
}

TEST(Config, SoftmaxScaleFollowsYarn) {
  const AttentionConfig c;
  const double m = 0.1 * std::log(40.0) + 1.0;
  const double want = std::pow(192.0, -0.5) * m * m;
  EXPECT_NEAR(c.softmax_scale(), want, 1e-6);
  EXPECT_NEAR(c.softmax_scale(), 0.1352, 1e-4);

  // mscale_all_dim scales the attention factor; mscale (the rope side) does not enter.
  AttentionConfig d;
  d.yarn.mscale_all_dim = 0.5;
  d.yarn.mscale = 0.25;
  const double m2 = 0.1 * 0.5 * std::log(40.0) + 1.0;
  EXPECT_NEAR(d.softmax_scale(), std::pow(192.0, -0.5) * m2 * m2, 1e-12);

  AttentionConfig off;
  off.use_yarn = false;
  EXPECT_NEAR(off.softmax_scale(), 1.0 / std::sqrt(192.0), 1e-12);
}

TEST(Config, RopeMscaleIsTheRatioOfAttentionFactors) {
  EXPECT_DOUBLE_EQ(AttentionConfig{}.rope_mscale(), 1.0);  // mscale == mscale_all_dim
  AttentionConfig c;
  c.yarn.mscale = 0.707;
  c.yarn.mscale_all_dim = 1.0;
  const double want = (0.1 * 0.707 * std::log(40.0) + 1.0) / (0.1 * std::log(40.0) + 1.0);
  EXPECT_NEAR(c.rope_mscale(), want, 1e-12);
  c.use_yarn = false;
  EXPECT_EQ(c.rope_mscale(), 1.0);
}

TEST(Config, YarnMscaleFormula) {
  EXPECT_EQ(yarn_get_mscale(1.0, 1.0), 1.0);
  EXPECT_EQ(yarn_get_mscale(0.5, 3.0), 1.0);
  EXPECT_NEAR(yarn_get_mscale(40.0, 1.0), 0.1 * std::log(40.0) + 1.0, 1e-15);
  EXPECT_NEAR(yarn_get_mscale(4.0, 0.5), 0.05 * std::log(4.0) + 1.0, 1e-15);
}

TEST(ConfigJson, ParsesARealDeepSeekV32File) {
  const AttentionConfig c = parse(v32_config_json());
  expect_deepseek_v32(c);
  EXPECT_NEAR(c.softmax_scale(), AttentionConfig{}.softmax_scale(), 1e-15);
}

// The defaults equal the real file, so read every field from a file whose values all differ.
TEST(ConfigJson, ReadsEveryFieldFromTheFile) {
  const AttentionConfig c = parse(R"({
    "hidden_size": 2048, "num_attention_heads": 16, "q_lora_rank": 768, "kv_lora_rank": 256,
    "qk_nope_head_dim": 96, "qk_rope_head_dim": 32, "v_head_dim": 80, "index_n_heads": 32,
    "index_head_dim": 256, "index_topk": 512, "max_position_embeddings": 32768,
    "rope_theta": 50000.5, "rms_norm_eps": 1e-5, "vocab_size": 1000,
    "rope_scaling": {"type": "yarn", "factor": 8, "original_max_position_embeddings": 2048,
                     "beta_fast": 16.5, "beta_slow": 2, "mscale": 0.5, "mscale_all_dim": 0.75}
  })");
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_heads, 16);
  EXPECT_EQ(c.q_lora_rank, 768);
  EXPECT_EQ(c.kv_lora_rank, 256);
  EXPECT_EQ(c.qk_nope_head_dim, 96);
  EXPECT_EQ(c.qk_rope_head_dim, 32);
  EXPECT_EQ(c.v_head_dim, 80);
  EXPECT_EQ(c.index_n_heads, 32);
  EXPECT_EQ(c.index_head_dim, 256);
  EXPECT_EQ(c.index_topk, 512);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.rope_theta, 50000.5);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_TRUE(c.use_yarn);
  EXPECT_EQ(c.yarn.factor, 8.0);
  EXPECT_EQ(c.yarn.original_max_position_embeddings, 2048);
  EXPECT_EQ(c.yarn.beta_fast, 16.5);
  EXPECT_EQ(c.yarn.beta_slow, 2.0);
  EXPECT_EQ(c.yarn.mscale, 0.5);
  EXPECT_EQ(c.yarn.mscale_all_dim, 0.75);
  const double m = 0.1 * 0.75 * std::log(8.0) + 1.0;
  EXPECT_NEAR(c.softmax_scale(), m * m / std::sqrt(128.0), 1e-12);
}

TEST(ConfigJson, AbsentFieldsKeepTheirDefaults) {
  expect_deepseek_v32(parse("{}"));
  const AttentionConfig c = parse(R"({"index_topk": 1024, "rope_scaling": {"factor": 10}})");
  EXPECT_EQ(c.index_topk, 1024);
  EXPECT_EQ(c.yarn.factor, 10.0);
  EXPECT_EQ(c.yarn.original_max_position_embeddings, 4096);
  EXPECT_EQ(c.yarn.beta_fast, 32.0);
  EXPECT_EQ(c.hidden_size, 7168);
}

TEST(ConfigJson, RopeTypeKeyIsAccepted) {
  const AttentionConfig c = parse(R"({"rope_scaling": {"rope_type": "yarn", "factor": 4}})");
  EXPECT_TRUE(c.use_yarn);
  EXPECT_EQ(c.yarn.factor, 4.0);
}

TEST(ConfigJson, NullRopeScalingDisablesYarn) {
  const AttentionConfig c = parse(replaced(v32_config_json(), kRopeScaling, "null"));
  EXPECT_FALSE(c.use_yarn);
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_NEAR(c.softmax_scale(), 1.0 / std::sqrt(192.0), 1e-12);
  EXPECT_EQ(c.rope_mscale(), 1.0);
  EXPECT_FALSE(parse(R"({"rope_scaling": null})").use_yarn);
}

TEST(ConfigJson, WrongTypeNamesTheFieldAndValue) {
  EXPECT_THAT(config_error(R"({"index_topk": "2048"})"),
              AllOf(HasSubstr("test.json"), HasSubstr("index_topk"), HasSubstr("integer"),
                    HasSubstr("\"2048\"")));
  EXPECT_THAT(config_error(R"({"hidden_size": 7168.5})"),
              AllOf(HasSubstr("hidden_size"), HasSubstr("integer")));
  EXPECT_THAT(config_error(R"({"num_attention_heads": true})"), HasSubstr("num_attention_heads"));
  EXPECT_THAT(config_error(R"({"rope_theta": "1e4"})"),
              AllOf(HasSubstr("rope_theta"), HasSubstr("number")));
  EXPECT_THAT(config_error(R"({"rope_scaling": {"factor": "40"}})"),
              AllOf(HasSubstr("rope_scaling.factor"), HasSubstr("number")));
  EXPECT_THAT(config_error(R"({"rope_scaling": {"original_max_position_embeddings": 4096.5}})"),
              HasSubstr("rope_scaling.original_max_position_embeddings"));
  EXPECT_THAT(config_error(R"({"rope_scaling": {"type": 3}})"),
              AllOf(HasSubstr("rope_scaling.type"), HasSubstr("string")));
}

TEST(ConfigJson, ImpossibleValuesNameTheField) {
  EXPECT_THAT(config_error(R"({"index_topk": 0})"),
              AllOf(HasSubstr("test.json"), HasSubstr("index_topk"), HasSubstr("got 0")));
  EXPECT_THAT(config_error(R"({"num_attention_heads": -128})"),
              AllOf(HasSubstr("num_attention_heads"), HasSubstr("-128")));
  EXPECT_THAT(config_error(R"({"kv_lora_rank": 0})"), HasSubstr("kv_lora_rank"));
  EXPECT_THAT(config_error(R"({"qk_rope_head_dim": 63})"),
              AllOf(HasSubstr("qk_rope_head_dim"), HasSubstr("even"), HasSubstr("63")));
  EXPECT_THAT(config_error(R"({"index_head_dim": 96})"),
              AllOf(HasSubstr("index_head_dim"), HasSubstr("96")));
  EXPECT_THAT(config_error(R"({"index_head_dim": 384})"), HasSubstr("power of two"));
  EXPECT_THAT(config_error(R"({"qk_rope_head_dim": 256})"),
              AllOf(HasSubstr("qk_rope_head_dim"), HasSubstr("index_head_dim")));
  EXPECT_THAT(config_error(R"({"rope_theta": 0})"), HasSubstr("rope_theta"));
  EXPECT_THAT(config_error(R"({"rms_norm_eps": -1e-6})"), HasSubstr("rms_norm_eps"));
  EXPECT_THAT(config_error(R"({"rope_scaling": {"factor": 0.5}})"),
              AllOf(HasSubstr("rope_scaling.factor"), HasSubstr("0.5")));
  EXPECT_THAT(config_error(R"({"rope_scaling": {"beta_fast": 1, "beta_slow": 32}})"),
              AllOf(HasSubstr("beta_fast"), HasSubstr("beta_slow")));
  EXPECT_THAT(config_error(R"({"rope_scaling": {"mscale": -1}})"), HasSubstr("mscale"));
  EXPECT_THAT(config_error(R"({"rope_scaling": {"original_max_position_embeddings": 0}})"),
              HasSubstr("original_max_position_embeddings"));
}

TEST(ConfigJson, NullQLoraRankIsRefused) {
  // DeepSeek-V2-Lite writes q_lora_rank null (no query compression); V3.2's attention needs it.
  EXPECT_THAT(
      config_error(replaced(v32_config_json(), R"("q_lora_rank": 1536)", R"("q_lora_rank": null)")),
      AllOf(HasSubstr("q_lora_rank"), HasSubstr("null")));
  EXPECT_THAT(config_error(R"({"q_lora_rank": null})"), HasSubstr("q_lora_rank"));
}

TEST(ConfigJson, OnlyYarnRopeScalingIsSupported) {
  EXPECT_THAT(config_error(replaced(v32_config_json(), R"("type": "yarn")", R"("type": "linear")")),
              AllOf(HasSubstr("rope_scaling.type"), HasSubstr("yarn"), HasSubstr("linear")));
  EXPECT_THAT(config_error(R"({"rope_scaling": {"rope_type": "dynamic"}})"), HasSubstr("dynamic"));
}

TEST(ConfigJson, RopeScalingMustBeAnObject) {
  EXPECT_THAT(config_error(R"({"rope_scaling": "yarn"})"),
              AllOf(HasSubstr("rope_scaling"), HasSubstr("object")));
  EXPECT_THAT(config_error(R"({"rope_scaling": [40]})"), HasSubstr("rope_scaling"));
}

TEST(ConfigJson, InvalidJsonAndNonObjects) {
  EXPECT_THAT(config_error(R"({"hidden_size": 7168,)"),
              AllOf(HasSubstr("test.json"), HasSubstr("not valid JSON")));
  EXPECT_THAT(config_error(""), HasSubstr("not valid JSON"));
  EXPECT_THAT(config_error("[1, 2, 3]"), AllOf(HasSubstr("object"), HasSubstr("array")));
  EXPECT_THAT(config_error("42"), HasSubstr("object"));
}

TEST(ConfigJson, ReadsFromAFile) {
  const std::filesystem::path path =
      std::filesystem::path(::testing::TempDir()) / "dsattn_config_test_config.json";
  {
    std::ofstream out(path);
    out << v32_config_json();
  }
  expect_deepseek_v32(AttentionConfig::from_json_file(path.string()));
  {
    std::ofstream out(path);
    out << R"({"index_topk": -5})";
  }
  // Messages from a file name the file.
  EXPECT_THAT(
      thrown_message<ConfigError>([&] { (void)AttentionConfig::from_json_file(path.string()); }),
      AllOf(HasSubstr(path.string()), HasSubstr("index_topk")));
  std::filesystem::remove(path);
}

TEST(ConfigJson, MissingFileNamesThePath) {
  const std::string path = "/nonexistent/dsattn/config.json";
  EXPECT_THAT(thrown_message<ConfigError>([&] { (void)AttentionConfig::from_json_file(path); }),
              HasSubstr(path));
}

TEST(ConfigValidate, RefusesImpossibleStructs) {
  AttentionConfig c;
  c.v_head_dim = 0;
  EXPECT_THAT(thrown_message<ConfigError>([&] { c.validate(); }), HasSubstr("v_head_dim"));
  c = {};
  c.rope_theta = std::nan("");
  EXPECT_THAT(thrown_message<ConfigError>([&] { c.validate(); }), HasSubstr("rope_theta"));
  c = {};
  c.yarn.factor = std::numeric_limits<double>::infinity();
  EXPECT_THAT(thrown_message<ConfigError>([&] { c.validate(); }), HasSubstr("factor"));
  // With YaRN off its fields are not consulted.
  c.use_yarn = false;
  EXPECT_NO_THROW(c.validate());
}

// transformers v5 writes rope_parameters instead of rope_scaling and rope_theta: every field in
// it is read (a changed theta or factor changes the config), flat or keyed by attention type.
TEST(ConfigJson, RopeParametersAreRead) {
  const AttentionConfig c = parse(R"({"rope_parameters": {"rope_type": "yarn", "rope_theta": 50000,
      "factor": 8, "original_max_position_embeddings": 2048, "beta_fast": 16, "beta_slow": 2,
      "mscale": 0.5, "mscale_all_dim": 0.5, "truncate": true}})");
  EXPECT_TRUE(c.use_yarn);
  EXPECT_EQ(c.rope_theta, 50000.0);
  EXPECT_EQ(c.yarn.factor, 8.0);
  EXPECT_EQ(c.yarn.original_max_position_embeddings, 2048);
  EXPECT_EQ(c.yarn.beta_fast, 16.0);
  EXPECT_EQ(c.yarn.beta_slow, 2.0);
  EXPECT_EQ(c.yarn.mscale, 0.5);
  const double m = 0.1 * 0.5 * std::log(8.0) + 1.0;
  EXPECT_NEAR(c.softmax_scale(), m * m / std::sqrt(192.0), 1e-12);

  // The v5 form of DeepSeek-V3.2's own settings gives DeepSeek-V3.2's config.
  const std::string v5 =
      replaced(replaced(v32_config_json(), R"("rope_scaling": )", R"("rope_parameters": )"),
               R"("type": "yarn")", R"("rope_type": "yarn", "rope_theta": 10000)");
  expect_deepseek_v32(parse(v5));

  // "default": plain RoPE with its theta, and a softmax scale without YaRN's factor.
  const AttentionConfig plain =
      parse(R"({"rope_parameters": {"full_attention": {"rope_type": "default",
          "rope_theta": 1000000}}})");
  EXPECT_FALSE(plain.use_yarn);
  EXPECT_EQ(plain.rope_theta, 1e6);
  EXPECT_NEAR(plain.softmax_scale(), 1.0 / std::sqrt(192.0), 1e-12);
  EXPECT_EQ(plain.rope_mscale(), 1.0);
  EXPECT_FALSE(parse(R"({"rope_parameters": {"rope_theta": 8e6}})").use_yarn);
  EXPECT_EQ(parse(R"({"rope_parameters": {"rope_theta": 8e6}})").rope_theta, 8e6);

  // rope_scaling beside an equal rope_parameters (some files carry both) is accepted.
  EXPECT_EQ(parse(R"({"rope_scaling": {"type": "yarn", "factor": 4},
                      "rope_parameters": {"rope_type": "yarn", "factor": 4}})")
                .yarn.factor,
            4.0);
}

// Any field that would change the rotation or the scale and that the reader does not implement
// is refused by name, never ignored.
TEST(ConfigJson, RopeFieldsThatChangeTheMathematicsAreNeverIgnored) {
  EXPECT_THAT(config_error(R"({"rope_parameters": {"rope_type": "llama3", "factor": 8}})"),
              AllOf(HasSubstr("rope_parameters.type"), HasSubstr("llama3")));
  EXPECT_THAT(
      config_error(R"({"rope_parameters": {"rope_type": "yarn", "attention_factor": 1.2}})"),
      AllOf(HasSubstr("rope_parameters.attention_factor"), HasSubstr("1.2"),
            HasSubstr("not supported")));
  EXPECT_THAT(config_error(R"({"rope_scaling": {"type": "yarn", "attention_factor": 1.2}})"),
              AllOf(HasSubstr("rope_scaling.attention_factor"), HasSubstr("not supported")));
  EXPECT_THAT(config_error(R"({"rope_parameters": {"rope_type": "yarn", "truncate": false}})"),
              HasSubstr("rope_parameters.truncate"));
  EXPECT_THAT(config_error(R"({"rope_parameters": {"partial_rotary_factor": 0.5}})"),
              HasSubstr("rope_parameters.partial_rotary_factor"));
  EXPECT_THAT(config_error(R"({"rope_parameters": {"rope_type": "default", "factor": 4}})"),
              AllOf(HasSubstr("rope_parameters.factor"), HasSubstr("YaRN")));
  EXPECT_THAT(config_error(R"({"rope_parameters": {"full_attention": {"rope_type": "default"},
                                                   "sliding_attention": {"rope_type": "default"}}})"),
              AllOf(HasSubstr("rope_parameters.sliding_attention"), HasSubstr("not supported")));
  EXPECT_THAT(config_error(R"({"rope_theta": 10000, "rope_parameters": {"rope_theta": 50000}})"),
              AllOf(HasSubstr("rope_theta"), HasSubstr("disagree")));
  EXPECT_THAT(config_error(R"({"rope_scaling": {"type": "yarn", "factor": 4},
                               "rope_parameters": {"rope_type": "yarn", "factor": 8}})"),
              AllOf(HasSubstr("rope_scaling"), HasSubstr("rope_parameters")));
  EXPECT_THAT(config_error(R"({"rope_parameters": [1]})"), HasSubstr("rope_parameters"));
}

// Fields of other DSA models that this layer does not implement are refused by name.
TEST(ConfigJson, UnimplementedDsaVariantsAreRefused) {
  EXPECT_THAT(config_error(R"({"rope_interleave": false})"), HasSubstr("rope_interleave"));
  EXPECT_EQ(parse(R"({"rope_interleave": true})").index_topk, 2048);
  EXPECT_THAT(config_error(R"({"partial_rotary_factor": 0.5})"),
              HasSubstr("partial_rotary_factor"));
}

// GLM-5's indexer ropes interleaved pairs; DeepSeek-V3.2's (the default) pairs halves.
TEST(ConfigJson, IndexerRopeInterleave) {
  EXPECT_FALSE(parse("{}").indexer_rope_interleave);
  EXPECT_FALSE(parse(R"({"model_type": "deepseek_v32"})").indexer_rope_interleave);
  // transformers writes GLM-5 configs without the key: the model type implies it.
  EXPECT_TRUE(parse(R"({"model_type": "glm_moe_dsa"})").indexer_rope_interleave);
  EXPECT_FALSE(parse(R"({"model_type": "glm_moe_dsa", "indexer_rope_interleave": false})")
                   .indexer_rope_interleave);
  EXPECT_THAT(config_error(R"({"model_type": "glm5_next"})"),
              AllOf(HasSubstr("model_type"), HasSubstr("glm5_next")));
  EXPECT_THAT(config_error(R"({"model_type": 3})"), HasSubstr("model_type"));
  EXPECT_TRUE(parse(R"({"indexer_rope_interleave": true})").indexer_rope_interleave);
  EXPECT_FALSE(parse(R"({"indexer_rope_interleave": false})").indexer_rope_interleave);
  EXPECT_THAT(config_error(R"({"indexer_rope_interleave": 1})"),
              AllOf(HasSubstr("indexer_rope_interleave"), HasSubstr("true or false")));
}

std::vector<int> shared_layers(const AttentionConfig& c, int layers) {
  std::vector<int> out;
  for (int l = 0; l < layers; ++l) {
    if (c.shares_topk(l)) out.push_back(l);
  }
  return out;
}

// IndexShare's schedule, from indexer_types or from index_topk_freq and index_skip_topk_offset.
TEST(ConfigJson, IndexShareSchedule) {
  EXPECT_TRUE(shared_layers(parse("{}"), 100).empty());
  const AttentionConfig listed =
      parse(R"({"indexer_types": ["full", "shared", "full", "shared"]})");
  EXPECT_EQ(shared_layers(listed, 8), (std::vector<int>{1, 3}));  // past the list: own indexer
  // GLM-5.2: index_topk_freq 4, index_skip_topk_offset 3 over 78 layers: layers 0-2 and every
  // fourth from 6 run the indexer, 21 in all.
  const AttentionConfig rule = parse(R"({"index_topk_freq": 4, "index_skip_topk_offset": 3})");
  std::vector<int> own;
  for (int l = 0; l < 78; ++l) {
    if (!rule.shares_topk(l)) own.push_back(l);
  }
  std::vector<int> expected{0, 1, 2};
  for (int l = 6; l < 78; l += 4) expected.push_back(l);
  EXPECT_EQ(own, expected);
  EXPECT_EQ(own.size(), 21u);
  // Without an offset, transformers' default of 2: layers 0, 1 and every fourth from 5 run it.
  EXPECT_EQ(shared_layers(parse(R"({"index_topk_freq": 4})"), 9),
            (std::vector<int>{2, 3, 4, 6, 7, 8}));
  EXPECT_EQ(shared_layers(parse(R"({"index_topk_pattern": "FFSS"})"), 4), (std::vector<int>{2, 3}));
  // A list and a rule that agree are accepted; any disagreement is refused by layer.
  EXPECT_EQ(shared_layers(parse(R"({"index_topk_freq": 2, "index_skip_topk_offset": 1,
                                     "indexer_types": ["full", "shared", "full"]})"),
                          3),
            (std::vector<int>{1}));
  EXPECT_THAT(config_error(R"({"index_topk_freq": 2, "index_skip_topk_offset": 1,
                               "indexer_types": ["full", "full"]})"),
              AllOf(HasSubstr("disagree at layer 1"), HasSubstr("indexer_types")));
  EXPECT_THAT(config_error(R"({"indexer_types": ["full"], "index_topk_pattern": "FS"})"),
              HasSubstr("index_topk_pattern"));
}

TEST(ConfigJson, IndexShareRefusals) {
  EXPECT_THAT(config_error(R"({"indexer_types": ["shared", "full"]})"),
              AllOf(HasSubstr("layer 0"), HasSubstr("indexer_types")));
  EXPECT_THAT(config_error(R"({"index_topk_freq": 4, "index_skip_topk_offset": 0})"),
              HasSubstr("layer 0"));
  EXPECT_THAT(config_error(R"({"indexer_types": ["full", "sparse"]})"),
              AllOf(HasSubstr("indexer_types[1]"), HasSubstr("sparse")));
  EXPECT_THAT(config_error(R"({"indexer_types": "full"})"), HasSubstr("indexer_types"));
  EXPECT_THAT(config_error(R"({"index_topk_pattern": "FX"})"), HasSubstr("index_topk_pattern"));
  EXPECT_THAT(config_error(R"({"index_topk_freq": 0})"), HasSubstr("index_topk_freq"));
  EXPECT_THAT(config_error(R"({"index_topk_freq": 2, "index_skip_topk_offset": -1})"),
              HasSubstr("index_skip_topk_offset"));
}

// A dimension so large that shapes built from it would wrap int64 (2^62 heads x 192 = 0) is
// refused with its limit, before any tensor is sized from it.
TEST(ConfigJson, HugeDimensionsAreRefusedBeforeSizesWrap) {
  EXPECT_THAT(config_error(R"({"num_attention_heads": 4611686018427387904})"),
              AllOf(HasSubstr("num_attention_heads"), HasSubstr("at most 1048576"),
                    HasSubstr("4611686018427387904")));
  EXPECT_THAT(config_error(R"({"hidden_size": 2097152})"), HasSubstr("hidden_size"));
  EXPECT_THAT(config_error(R"({"max_position_embeddings": 4294967296})"),
              AllOf(HasSubstr("max_position_embeddings"), HasSubstr("2147483647")));
  EXPECT_EQ(parse(R"({"max_position_embeddings": 1048576})").max_position_embeddings, 1048576);
}

TEST(ConfigJson, NumberOutOfRangeIsAConfigError) {
  EXPECT_THAT(config_error(R"({"rope_theta": 1e400})"),
              AllOf(HasSubstr("test.json"), HasSubstr("not valid JSON")));
}

}  // namespace
}  // namespace dsattn

namespace dsattn {
namespace {

TEST(ConfigPresets, Glm5) {
  const AttentionConfig c = AttentionConfig::preset("glm5");
  EXPECT_NO_THROW(c.validate());
  EXPECT_EQ(c.model_type, "glm_moe_dsa");
  EXPECT_EQ(c.num_heads, 64);
  EXPECT_EQ(c.qk_head_dim(), 256);
  EXPECT_EQ(c.v_head_dim, 256);
  EXPECT_EQ(c.index_n_heads, 32);
  EXPECT_TRUE(c.indexer_rope_interleave);
  EXPECT_DOUBLE_EQ(c.softmax_scale(), 1.0 / 16);  // 256^-1/2, no YaRN mscale
  EXPECT_EQ(AttentionConfig::preset("deepseek-v32").num_heads, 128);
  EXPECT_THROW(AttentionConfig::preset("glm-5"), InvalidArgument);
}

}  // namespace
}  // namespace dsattn
