// The cost model: the work formulas of each path, the fit of a profile to timed groups, and the
// profile's JSON form.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <vector>

#include "dsattn/core/error.h"
#include "dsattn/layer/calibration.h"
#include "dsattn/layer/cost_model.h"
#include "layer_test_util.h"

namespace dsattn {
namespace {

using ::testing::HasSubstr;

TEST(CostModel, WorkOfEachPath) {
  const AttentionConfig c = AttentionConfig::deepseek_v32();
  // 64 new rows over a prefix of 1984: row t sees 1985 + t keys, at most index_topk selected.
  const PathWork w = path_work({1984, 64, {}}, c);
  double pairs = 0, capped = 0;
  for (int t = 0; t < 64; ++t) {
    pairs += 1985 + t;
    capped += std::min(1985 + t, 2048);
  }
  EXPECT_DOUBLE_EQ(w.decompress_flops, 2.0 * 2048 * 512 * 128 * 256);
  EXPECT_DOUBLE_EQ(w.attention_flops, 2.0 * pairs * 128 * (192 + 128));
  EXPECT_DOUBLE_EQ(w.absorb_flops, 2.0 * 64 * 128 * 512 * 256);
  EXPECT_DOUBLE_EQ(w.score_pairs, pairs);
  EXPECT_DOUBLE_EQ(w.mla_flops, 2.0 * capped * 128 * (2 * 512 + 64));
  // Past index_topk each row attends to index_topk keys only.
  const PathWork long_rows = path_work({4000, 10, {}}, c);
  EXPECT_DOUBLE_EQ(long_rows.mla_flops, 2.0 * 10 * 2048 * 128 * (2 * 512 + 64));
}

// Groups timed exactly by known costs: the fit recovers them.
TEST(CostModel, FitRecoversTheCostsOfExactTimes) {
  const AttentionConfig c = AttentionConfig::deepseek_v32();
  CostProfile truth;
  truth.dense_fixed_s = 2e-4;
  truth.decompress_s_per_flop = 1.5e-15;
  truth.attention_s_per_flop = 3e-15;
  truth.sparse_fixed_s = 5e-4;
  truth.absorb_s_per_flop = 4e-15;
  truth.score_s_per_pair = 2e-11;
  truth.mla_s_per_flop = 3.2e-15;
  std::vector<TimedGroup> dense, sparse;
  for (auto [n, prefix, extend] : std::vector<std::array<std::int64_t, 3>>{
           {128, 0, 128}, {16, 0, 1024}, {64, 1984, 64}, {16, 1024, 1024}, {2, 0, 8192}}) {
    PathWork w;
    for (std::int64_t r = 0; r < n; ++r) w += path_work({prefix, extend, {}}, c);
    if (prefix + extend <= c.index_topk) {
      dense.push_back({w, truth.dense_fixed_s + truth.dense_seconds(w)});
    }
    sparse.push_back({w, truth.sparse_fixed_s + truth.sparse_seconds(w)});
  }
  CostProfile fitted;
  fit_dense_costs(dense, fitted);
  fit_sparse_costs(sparse, fitted);
  EXPECT_NEAR(fitted.dense_fixed_s, truth.dense_fixed_s, 1e-9);
  EXPECT_NEAR(fitted.decompress_s_per_flop / truth.decompress_s_per_flop, 1.0, 1e-6);
  EXPECT_NEAR(fitted.attention_s_per_flop / truth.attention_s_per_flop, 1.0, 1e-6);
  EXPECT_NEAR(fitted.sparse_fixed_s, truth.sparse_fixed_s, 1e-9);
  EXPECT_NEAR(fitted.absorb_s_per_flop / truth.absorb_s_per_flop, 1.0, 1e-6);
  EXPECT_NEAR(fitted.score_s_per_pair / truth.score_s_per_pair, 1.0, 1e-6);
  EXPECT_NEAR(fitted.mla_s_per_flop / truth.mla_s_per_flop, 1.0, 1e-6);
}

// Masked MHA's two costs from what remains after the decompression and scores the profile
// already prices; a masked group in the JSON round trip; none without it.
TEST(CostModel, MaskedFitRecoversItsCostsAndRoundTrips) {
  const AttentionConfig c = AttentionConfig::deepseek_v32();
  CostProfile truth;
  truth.decompress_s_per_flop = 1.5e-15;
  truth.score_s_per_pair = 2e-11;
  truth.masked_fixed_s = 7e-4;
  truth.masked_attention_s_per_flop = 2.2e-15;
  std::vector<TimedGroup> masked;
  for (auto [n, prefix, extend] :
       std::vector<std::array<std::int64_t, 3>>{{4, 0, 4096}, {8, 6144, 512}, {64, 4096, 64}}) {
    PathWork w;
    for (std::int64_t r = 0; r < n; ++r) w += path_work({prefix, extend, {}}, c);
    masked.push_back({w, truth.masked_fixed_s + truth.masked_seconds(w)});
  }
  CostProfile fitted;
  fitted.decompress_s_per_flop = truth.decompress_s_per_flop;
  fitted.score_s_per_pair = truth.score_s_per_pair;
  EXPECT_FALSE(fitted.has_masked);
  fit_masked_costs(masked, fitted);
  EXPECT_TRUE(fitted.has_masked);
  EXPECT_NEAR(fitted.masked_fixed_s, truth.masked_fixed_s, 1e-9);
  EXPECT_NEAR(fitted.masked_attention_s_per_flop / truth.masked_attention_s_per_flop, 1.0, 1e-6);
  EXPECT_THAT(
      [&] {
        fit_masked_costs({masked.data(), 1}, fitted);
      },
      ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("at least 2 timed groups")));

  fitted.device = "x";
  fitted.source = "y";
  const CostProfile q = CostProfile::parse(fitted.to_json());
  EXPECT_TRUE(q.has_masked);
  EXPECT_EQ(q.masked_fixed_s, fitted.masked_fixed_s);
  EXPECT_EQ(q.masked_attention_s_per_flop, fitted.masked_attention_s_per_flop);
  CostProfile without = fitted;
  without.has_masked = false;
  EXPECT_FALSE(CostProfile::parse(without.to_json()).has_masked);
  EXPECT_EQ(without.to_json().find("masked"), std::string::npos);
  std::string negative = without.to_json();
  negative.insert(negative.rfind('}'), R"(, "masked": {"fixed_s": 0, "attention_s_per_flop": -2})");
  EXPECT_THAT([&] { CostProfile::parse(negative); },
              ::testing::ThrowsMessage<InvalidArgument>(
                  HasSubstr("'masked.attention_s_per_flop' must be finite and >= 0, got -2")));
  std::string partial = without.to_json();
  partial.insert(partial.rfind('}'), R"(, "masked": {"fixed_s": 0})");
  EXPECT_THAT([&] { CostProfile::parse(partial); },
              ::testing::ThrowsMessage<InvalidArgument>(
                  HasSubstr("'masked.attention_s_per_flop' must be a number")));
}

// Times that a negative cost would fit best: every fitted cost stays >= 0.
TEST(CostModel, FittedCostsAreNeverNegative) {
  std::vector<TimedGroup> groups;
  for (int i = 1; i <= 4; ++i) {
    PathWork w;
    w.decompress_flops = 1e12 * i;
    w.attention_flops = 1e12 * (5 - i);
    groups.push_back({w, 1.0 - 0.1 * i});  // falls as decompression grows
  }
  CostProfile p;
  fit_dense_costs(groups, p);
  EXPECT_GE(p.dense_fixed_s, 0);
  EXPECT_GE(p.decompress_s_per_flop, 0);
  EXPECT_GE(p.attention_s_per_flop, 0);
  EXPECT_THAT(
      [&] {
        fit_sparse_costs({groups.data(), 3}, p);
      },
      ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("at least 4 timed groups")));
}

// Shared stages timed exactly: the fit recovers the per-forward and per-token costs; a profile
// without a "shared" group reads as zeros; a negative cost is refused.
TEST(CostModel, SharedStagesFitAndJson) {
  std::vector<TimedShared> forwards;
  for (double tokens : {512.0, 4096.0, 16384.0}) forwards.push_back({tokens, 3e-4 + 5e-7 * tokens});
  CostProfile p;
  fit_shared_costs(forwards, p);
  EXPECT_NEAR(p.shared_fixed_s, 3e-4, 1e-9);
  EXPECT_NEAR(p.shared_s_per_token / 5e-7, 1.0, 1e-6);
  EXPECT_DOUBLE_EQ(p.shared_seconds(1000), p.shared_fixed_s + 1000 * p.shared_s_per_token);
  EXPECT_THAT(
      [&] {
        fit_shared_costs({forwards.data(), 1}, p);
      },
      ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("at least 2 timed forwards")));

  p.device = "x";
  p.source = "y";
  const CostProfile q = CostProfile::parse(p.to_json());
  EXPECT_EQ(q.shared_fixed_s, p.shared_fixed_s);
  EXPECT_EQ(q.shared_s_per_token, p.shared_s_per_token);
  const std::string without = R"({"device": "x", "source": "y", "dense": {"fixed_s": 0,
      "decompress_s_per_flop": 0, "attention_s_per_flop": 0}, "sparse": {"fixed_s": 0,
      "absorb_s_per_flop": 0, "score_s_per_pair": 0, "mla_s_per_flop": 0}})";
  EXPECT_EQ(CostProfile::parse(without).shared_s_per_token, 0.0);
  std::string negative = without;
  negative.insert(negative.size() - 1, R"(, "shared": {"fixed_s": 0, "s_per_token": -1})");
  EXPECT_THAT([&] { CostProfile::parse(negative); },
              ::testing::ThrowsMessage<InvalidArgument>(
                  HasSubstr("'shared.s_per_token' must be finite and >= 0, got -1")));
}

TEST(CostModel, ProfileJsonRoundTripAndErrors) {
  CostProfile p;
  p.device = "NVIDIA H100 80GB HBM3";
  p.source = "test";
  p.shape = "H128 qk192 v128 r512 rope64 topk2048";
  p.dense_fixed_s = 1e-4;
  p.decompress_s_per_flop = 1.25e-15;
  p.attention_s_per_flop = 2.5e-15;
  p.sparse_fixed_s = 3e-4;
  p.absorb_s_per_flop = 4e-15;
  p.score_s_per_pair = 5e-12;
  p.mla_s_per_flop = 6e-15;
  const CostProfile q = CostProfile::parse(p.to_json());
  EXPECT_EQ(q.to_json(), p.to_json());
  EXPECT_EQ(q.device, p.device);
  EXPECT_EQ(q.shape, p.shape);
  EXPECT_EQ(q.mla_s_per_flop, p.mla_s_per_flop);

  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "dsattn_profile_test";
  std::filesystem::create_directories(dir);
  std::ofstream((dir / "p.json").string()) << p.to_json();
  EXPECT_EQ(CostProfile::load((dir / "p.json").string()).to_json(), p.to_json());
  EXPECT_THAT([&] { CostProfile::load((dir / "missing.json").string()); },
              ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("cannot read")));
  std::filesystem::remove_all(dir);

  for (const auto& [text, message] : std::vector<std::pair<std::string, std::string>>{
           {"[1]", "expected a JSON object"},
           {"{", "not valid JSON"},
           {R"({"device": "x", "source": "y"})", "missing object 'dense'"},
           {R"({"device": 1, "source": "y"})", "'device' must be a string"},
           {R"({"device": "x", "source": "y", "dense": {"fixed_s": 0, "decompress_s_per_flop": -1,
               "attention_s_per_flop": 0}})",
            "'dense.decompress_s_per_flop' must be finite and >= 0, got -1"},
           {R"({"device": "x", "source": "y", "dense": {"fixed_s": 0, "decompress_s_per_flop": 0,
               "attention_s_per_flop": 0}, "sparse": {"fixed_s": 0}})",
            "'sparse.absorb_s_per_flop' must be a number"}}) {
    EXPECT_THAT([&] { CostProfile::parse(text); },
                ::testing::ThrowsMessage<InvalidArgument>(HasSubstr(message)))
        << text;
  }
}

TEST(CostModel, BuiltinProfileForTheCpu) {
  const AttentionConfig c = AttentionConfig::deepseek_v32();
  const std::optional<CostProfile> cpu = CostProfile::builtin(Device::cpu(), c);
  ASSERT_TRUE(cpu.has_value());
  EXPECT_EQ(cpu->device, "cpu");
  EXPECT_EQ(cpu->shape, profile_shape(c));
  // Measured on DeepSeek-V3.2's shapes: none for GLM-5's.
  EXPECT_FALSE(CostProfile::builtin(Device::cpu(), AttentionConfig::glm5()).has_value());
  // Fresh short prompts are cheaper dense; a few rows over a long prefix cheaper sparse.
  const PathWork fresh = path_work({0, 256, {}}, c), chunk = path_work({2016, 32, {}}, c);
  EXPECT_LT(cpu->dense_seconds(fresh), cpu->sparse_seconds(fresh));
  EXPECT_GT(cpu->dense_seconds(chunk), cpu->sparse_seconds(chunk));
  // Masked MHA was measured too: on the CPU its decompression of the whole context costs more
  // than sparse MLA's attention for a few rows over a long prefix.
  ASSERT_TRUE(cpu->has_masked);
  const PathWork past = path_work({4096, 32, {}}, c);
  EXPECT_GT(cpu->masked_seconds(past), cpu->sparse_seconds(past));
}

// Every config gets valid shapes on both sides of its index_topk, on either backend; DeepSeek-V3.2
// on a GPU includes the prefix-heavy batch of chunked prefill.
TEST(Calibration, ShapesCoverBothSidesOfTopk) {
  for (const AttentionConfig& c :
       {AttentionConfig::deepseek_v32(), AttentionConfig::glm5(), testing::small_config(24)}) {
    for (const Device d : {Device::cpu(), Device::cuda(0)}) {
      SCOPED_TRACE(fmt::format("topk {} on {}", c.index_topk, to_string(d)));
      int exact = 0, past = 0;
      for (const CalibrationShape& s : calibration_shapes(c, d)) {
        EXPECT_GE(s.requests, 1);
        EXPECT_GE(s.prefix, 0);
        EXPECT_GE(s.extend, 1);
        (s.prefix + s.extend <= c.index_topk ? exact : past) += 1;
      }
      EXPECT_GE(exact, 3);         // the dense path's three costs
      EXPECT_GE(exact + past, 4);  // the sparse path's four
      EXPECT_GE(past, 1);
    }
  }
  bool chunked = false;
  for (const CalibrationShape& s :
       calibration_shapes(AttentionConfig::deepseek_v32(), Device::cuda(0))) {
    chunked = chunked || (s.requests == 64 && s.prefix == 1984 && s.extend == 64);
  }
  EXPECT_TRUE(chunked);
}

// A whole calibration on the CPU backend, of both cache formats: each shape's prefix is written
// to the cache, every path is timed on every shape, and each cost of the profile is fitted
// (finite and >= 0; on shapes this small the times are too short for their values to mean more).
TEST(Calibration, RunsOnTheCpuAndFitsEveryPath) {
  AttentionConfig c = testing::small_config(24);
  c.kv_lora_rank = 128;  // the FP8 cache's quantisation blocks
  for (const LatentFormat format : {LatentFormat::bf16, LatentFormat::fp8}) {
    SCOPED_TRACE(latent_format_name(format));
    std::vector<std::string> lines;
    const CostProfile p = calibrate(c, Device::cpu(), format, calibration_shapes(c, Device::cpu()),
                                    1, [&](const std::string& line) { lines.push_back(line); });
    EXPECT_EQ(lines.size(), calibration_shapes(c, Device::cpu()).size());
    EXPECT_TRUE(p.has_masked);
    EXPECT_EQ(p.device, "cpu");
    for (const double cost : {p.dense_fixed_s, p.decompress_s_per_flop, p.attention_s_per_flop,
                              p.sparse_fixed_s, p.absorb_s_per_flop, p.score_s_per_pair,
                              p.mla_s_per_flop, p.masked_fixed_s, p.masked_attention_s_per_flop}) {
      EXPECT_TRUE(std::isfinite(cost) && cost >= 0) << cost;
    }
    EXPECT_NO_THROW(CostProfile::parse(p.to_json()));
  }
}

}  // namespace
}  // namespace dsattn
