// RoPE with YaRN: the frequency table against DeepSeek-V3's precompute_freqs_cis, and apply_rope
// against a float64 rotation for both pairings.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>
#include <vector>

#include "dsattn/model/config.h"
#include "dsattn/ops/rope.h"
#include "op_test_util.h"

namespace dsattn::test {
namespace {

// DeepSeek-V3's YaRN, transcribed from inference/model.py (precompute_freqs_cis) in float64.
std::vector<double> yarn_inv_freq(const AttentionConfig& c, std::int64_t dim) {
  std::vector<double> freq(static_cast<std::size_t>(dim / 2));
  for (std::int64_t i = 0; i < dim / 2; ++i) {
    freq[i] = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / static_cast<double>(dim));
  }
  if (!c.use_yarn) return freq;
  const double orig = static_cast<double>(c.yarn.original_max_position_embeddings);
  auto correction_dim = [&](double rotations) {
    return static_cast<double>(dim) * std::log(orig / (rotations * 2.0 * std::numbers::pi)) /
           (2.0 * std::log(c.rope_theta));
  };
  const double low = std::max(std::floor(correction_dim(c.yarn.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(c.yarn.beta_slow)), static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  for (std::int64_t i = 0; i < dim / 2; ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    freq[i] = freq[i] / c.yarn.factor * ramp + freq[i] * (1.0 - ramp);
  }
  return freq;
}

void expect_close_rel(const std::vector<double>& got, const std::vector<double>& want, double rel) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], rel * std::fabs(want[i])) << "inv_freq[" << i << "]";
  }
}

TEST(RopeTableTest, DeepSeekDefaultsMatchYarnTranscription) {
  const AttentionConfig c = AttentionConfig::deepseek_v32();
  const ops::RopeTable t = ops::RopeTable::from_config(c, 64);
  ASSERT_EQ(t.rotary_dim(), 64);
  expect_close_rel(t.inv_freq, yarn_inv_freq(c, 64), 1e-13);
  // Worked by hand for d = 64, θ = 1e4, 4096 original positions: the ramp runs from
  // floor(10.47) = 10 to ceil(22.52) = 23. Below it the frequencies are untouched; above it they
  // are divided by the factor 40.
  for (std::int64_t i = 0; i <= 10; ++i) {
    EXPECT_NEAR(t.inv_freq[i], std::pow(1e4, -i / 32.0), 1e-15) << "pair " << i;
  }
  for (std::int64_t i = 23; i < 32; ++i) {
    EXPECT_NEAR(t.inv_freq[i], std::pow(1e4, -i / 32.0) / 40.0, 1e-15) << "pair " << i;
  }
  // Inside the ramp, pair 16 is 6/13 of the way from the original frequency to the divided one.
  const double f16 = std::pow(1e4, -0.5);
  EXPECT_NEAR(t.inv_freq[16], f16 / 40.0 * (6.0 / 13.0) + f16 * (7.0 / 13.0), 1e-15);
  // mscale == mscale_all_dim: the cos/sin correction cancels.
  EXPECT_EQ(t.mscale, 1.0);
}

TEST(RopeTableTest, OtherYarnSettingsMatchTranscription) {
  AttentionConfig c;
  c.rope_theta = 50000.0;
  c.yarn.factor = 8.0;
  c.yarn.original_max_position_embeddings = 8192;
  c.yarn.beta_fast = 16.0;
  c.yarn.beta_slow = 2.0;
  c.yarn.mscale = 0.707;
  c.yarn.mscale_all_dim = 1.0;
  for (std::int64_t dim : {32, 64, 128}) {
    const ops::RopeTable t = ops::RopeTable::from_config(c, dim);
    expect_close_rel(t.inv_freq, yarn_inv_freq(c, dim), 1e-13);
    // HF's DeepseekV3YarnRotaryEmbedding: cos and sin carry get_mscale(f, m) / get_mscale(f,
    // m_all).
    const double want = (0.1 * 0.707 * std::log(8.0) + 1.0) / (0.1 * std::log(8.0) + 1.0);
    EXPECT_NEAR(t.mscale, want, 1e-14);
  }
}

TEST(RopeTableTest, WithoutYarnKeepsPlainFrequencies) {
  AttentionConfig c;
  c.use_yarn = false;
  const ops::RopeTable t = ops::RopeTable::from_config(c, 64);
  for (std::int64_t i = 0; i < 32; ++i) {
    EXPECT_NEAR(t.inv_freq[i], std::pow(1e4, -i / 32.0), 1e-15) << "pair " << i;
  }
  EXPECT_EQ(t.mscale, 1.0);
}

TEST(RopeTableTest, RejectsOddOrEmptyRotaryDim) {
  const AttentionConfig c;
  EXPECT_TRUE(rejects([&] { ops::RopeTable::from_config(c, 63); }, "rotary_dim"));
  EXPECT_TRUE(rejects([&] { ops::RopeTable::from_config(c, 0); }, "rotary_dim"));
}

struct RopeCase {
  const char* name;
  std::int64_t tokens, heads, width;  // the wider tensor the rotated slice lives in
  std::int64_t begin;                 // first rotated column; rotary_dim columns follow
  ops::RopeLayout layout;
  double mscale;  // 0: the config's own
};

void PrintTo(const RopeCase& c, std::ostream* os) { *os << c.name; }

class ApplyRopeTest : public ::testing::TestWithParam<RopeCase> {};

TEST_P(ApplyRopeTest, MatchesFloat64Rotation) {
  const RopeCase c = GetParam();
  const std::int64_t dim = 64, pairs = dim / 2;
  const AttentionConfig config;
  ops::RopeTable table = ops::RopeTable::from_config(config, dim);
  if (c.mscale != 0) table.mscale = c.mscale;
  const std::vector<double> inv_freq = yarn_inv_freq(config, dim);

  Tensor backing =
      random_tensor({c.tokens, c.heads, c.width}, DType::bf16, 7, c.begin + c.width, 2.0);
  const TensorView x = backing.view().slice(2, c.begin, c.begin + dim);
  Tensor positions = Tensor::empty({c.tokens}, DType::i32);
  std::mt19937 rng(static_cast<unsigned>(c.tokens * 31 + c.begin));
  std::uniform_int_distribution<std::int32_t> any_position(0, 100000);
  for (std::int64_t t = 0; t < c.tokens; ++t) positions.ptr<std::int32_t>()[t] = any_position(rng);
  // The extremes: no rotation at all, and the largest position the test promises.
  positions.ptr<std::int32_t>()[0] = 0;
  positions.ptr<std::int32_t>()[c.tokens - 1] = 100000;

  const std::vector<double> in = read_doubles(x);
  std::vector<double> ref(in.size()), plain(in.size());
  for (std::int64_t t = 0; t < c.tokens; ++t) {
    const double pos = positions.ptr<std::int32_t>()[t];
    for (std::int64_t h = 0; h < c.heads; ++h) {
      const std::int64_t base = (t * c.heads + h) * dim;
      for (std::int64_t i = 0; i < pairs; ++i) {
        const std::int64_t a = c.layout == ops::RopeLayout::interleaved ? 2 * i : i;
        const std::int64_t b = c.layout == ops::RopeLayout::interleaved ? 2 * i + 1 : i + pairs;
        const double angle = pos * inv_freq[i];
        const double cs = std::cos(angle) * table.mscale, sn = std::sin(angle) * table.mscale;
        const double x0 = in[base + a], x1 = in[base + b];
        ref[base + a] = x0 * cs - x1 * sn;
        ref[base + b] = x0 * sn + x1 * cs;
        // The plain version rotates in f32. Its angle is still taken in double: at position 1e5
        // an f32 angle is off by ~1e-2 rad, an error the op's contract does not allow.
        const float cf = static_cast<float>(std::cos(angle)) * static_cast<float>(table.mscale);
        const float sf = static_cast<float>(std::sin(angle)) * static_cast<float>(table.mscale);
        const float y0 = static_cast<float>(x0), y1 = static_cast<float>(x1);
        plain[base + a] = round_bf16(y0 * cf - y1 * sf);
        plain[base + b] = round_bf16(y0 * sf + y1 * cf);
      }
    }
  }

  const std::vector<std::uint8_t> before = snapshot(backing);
  ops::apply_rope(x, positions, table, c.layout);
  const std::vector<std::int64_t> shape{c.tokens, c.heads, dim};
  EXPECT_TRUE(within_tolerance(read_doubles(x), ref, plain, 1e-5, shape));
  EXPECT_TRUE(only_view_written(backing, before, x));
  // Position 0 is the identity rotation (times mscale).
  if (table.mscale == 1.0) {
    const std::vector<double> out = read_doubles(x);
    for (std::int64_t j = 0; j < c.heads * dim; ++j) ASSERT_EQ(out[j], in[j]) << j;
  }
}

// q_h = [q_nope (128), q_pe (64)] rotates its last 64 columns interleaved; the indexer's q_I and
// k_I rotate their first 64 of 128 by halves; k_pe is one contiguous 64-wide head.
const RopeCase kRopeCases[] = {
    {"QueryPeInterleaved", 9, 4, 192, 128, ops::RopeLayout::interleaved, 0},
    {"IndexerHalves", 7, 3, 128, 0, ops::RopeLayout::halves, 0},
    {"KPeContiguous", 17, 1, 64, 0, ops::RopeLayout::interleaved, 0},
    {"MiddleSliceHalves", 5, 2, 100, 17, ops::RopeLayout::halves, 0},
    {"MscaleInterleaved", 6, 2, 64, 0, ops::RopeLayout::interleaved, 1.25},
};
INSTANTIATE_TEST_SUITE_P(Layouts, ApplyRopeTest, ::testing::ValuesIn(kRopeCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ApplyRopeTest, LayoutsPairDifferentColumns) {
  // With one pair rotated by a quarter turn the two layouts move different columns, so a layout
  // mix-up cannot pass the tests above by accident.
  ops::RopeTable table;
  table.inv_freq = {std::numbers::pi / 2, 0.0};
  Tensor x = Tensor::empty({1, 1, 4}, DType::bf16);
  Tensor pos = Tensor::empty({1}, DType::i32);
  pos.ptr<std::int32_t>()[0] = 1;
  const float v[4] = {1, 2, 3, 4};
  for (int i = 0; i < 4; ++i) x.ptr<bf16>()[i] = bf16::from_float(v[i]);
  ops::apply_rope(x, pos, table, ops::RopeLayout::interleaved);
  // (x0, x1) -> (-x1, x0); the second pair has angle 0.
  EXPECT_EQ(read_doubles(x), (std::vector<double>{-2, 1, 3, 4}));
  for (int i = 0; i < 4; ++i) x.ptr<bf16>()[i] = bf16::from_float(v[i]);
  ops::apply_rope(x, pos, table, ops::RopeLayout::halves);
  // (x0, x2) -> (-x2, x0).
  EXPECT_EQ(read_doubles(x), (std::vector<double>{-3, 2, 1, 4}));
}

TEST(ApplyRopeTest, RejectsBadArguments) {
  const ops::RopeTable table = ops::RopeTable::from_config(AttentionConfig{}, 64);
  Tensor x = random_tensor({4, 2, 64}, DType::bf16, 9, 1);
  Tensor pos = Tensor::empty({4}, DType::i32);
  for (int i = 0; i < 4; ++i) pos.ptr<std::int32_t>()[i] = 10 * i;
  Tensor x_wide = random_tensor({4, 2, 128}, DType::bf16, 9, 2);
  Tensor x_f32 = random_tensor({4, 2, 64}, DType::f32, 9, 3);
  Tensor pos_f32 = random_tensor({4}, DType::f32, 9, 4);
  Tensor pos_short = Tensor::empty({3}, DType::i32);
  for (int i = 0; i < 3; ++i) pos_short.ptr<std::int32_t>()[i] = i;
  Tensor pos_negative = Tensor::empty({4}, DType::i32);
  for (int i = 0; i < 4; ++i) pos_negative.ptr<std::int32_t>()[i] = i == 2 ? -5 : i;
  const TensorView every_other = strided_view(x_wide, {4, 2, 64}, {256, 128, 2});
  const auto rope = [&](const TensorView& xv, const TensorView& p) {
    ops::apply_rope(xv, p, table, ops::RopeLayout::interleaved);
  };

  EXPECT_TRUE(rejects([&] { rope(x_wide, pos); }, "x must have shape", {watch(x_wide)}));
  EXPECT_TRUE(rejects([&] { rope(x_f32, pos); }, "x must have dtype bf16", {watch(x_f32)}));
  EXPECT_TRUE(
      rejects([&] { rope(every_other, pos); }, "x must have a unit stride", {watch(x_wide)}));
  EXPECT_TRUE(rejects([&] { rope(x, pos_f32); }, "positions must have dtype i32", {watch(x)}));
  EXPECT_TRUE(rejects([&] { rope(x, pos_short); }, "positions must have shape", {watch(x)}));
  EXPECT_TRUE(rejects([&] { rope(x, pos_negative); }, "positions[2]", {watch(x)}));
  EXPECT_TRUE(rejects([&] { rope(x, on_cuda(pos)); }, "positions is on cuda:0", {watch(x)}));
}

}  // namespace
}  // namespace dsattn::test
