// The seeded counter-based generator: reproducible, stream-separated, and with the promised range
// and moments.
#include "dsattn/core/random.h"

#include <gmock/gmock-matchers.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error_message.h"

namespace dsattn {
namespace {

using ::dsattn::testing::thrown_message;
using ::testing::HasSubstr;

TEST(Random, UniformIsInRangeAndCentred) {
  double sum = 0.0;
  double sum_sq = 0.0;
  const int n = 200'000;
  for (int i = 0; i < n; ++i) {
    const float u = uniform_pm1(123, 4, i);
    ASSERT_GE(u, -1.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    sum_sq += double(u) * u;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sum_sq / n, 1.0 / 3.0, 0.01);  // variance of U(-1, 1)
}

TEST(Random, DependsOnlyOnSeedStreamAndIndex) {
  EXPECT_EQ(uniform_pm1(9, 2, 1000), uniform_pm1(9, 2, 1000));
  int same_seed = 0, same_stream = 0, same_index = 0;
  for (int i = 0; i < 1000; ++i) {
    same_seed += uniform_pm1(9, 2, i) == uniform_pm1(10, 2, i);
    same_stream += uniform_pm1(9, 2, i) == uniform_pm1(9, 3, i);
    same_index += uniform_pm1(9, 2, i) == uniform_pm1(9, 2, i + 1);
  }
  EXPECT_LT(same_seed, 5);
  EXPECT_LT(same_stream, 5);
  EXPECT_LT(same_index, 5);
}

TEST(Random, FillUniformF32HasTheRequestedMoments) {
  const Tensor t = Tensor::empty({256, 512}, DType::f32);
  const float std = 0.25f, mean = 2.0f;
  fill_uniform(t, 77, 1, std, mean);
  const float* p = t.ptr<float>();
  const float half_width = std * std::sqrt(3.0f);
  double sum = 0.0, sum_sq = 0.0;
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    ASSERT_GE(p[i], mean - half_width * 1.0001f);
    ASSERT_LT(p[i], mean + half_width * 1.0001f);
    ASSERT_EQ(p[i], mean + half_width * uniform_pm1(77, 1, i)) << "element " << i;
    sum += p[i];
    sum_sq += double(p[i] - mean) * (p[i] - mean);
  }
  const double n = double(t.numel());
  EXPECT_NEAR(sum / n, mean, 0.005);
  EXPECT_NEAR(std::sqrt(sum_sq / n), std, 0.005);
}

TEST(Random, FillUniformBf16RoundsTheF32Values) {
  const Tensor t = Tensor::empty({64, 33}, DType::bf16);
  fill_uniform(t, 5, 8, 1.5f);
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    const float want = 1.5f * std::sqrt(3.0f) * uniform_pm1(5, 8, i);
    ASSERT_EQ(t.ptr<bf16>()[i].bits, bf16::from_float(want).bits) << "element " << i;
  }
}

TEST(Random, FillUniformRefusesOtherDtypesAndStridedViews) {
  const Tensor ints = Tensor::empty({8}, DType::i32);
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { fill_uniform(ints, 1, 1, 1.0f); }),
              HasSubstr("got i32"));
  const Tensor m = Tensor::empty({8, 8}, DType::f32);
  EXPECT_THAT(
      thrown_message<InvalidArgument>([&] { fill_uniform(m.view().slice(1, 0, 4), 1, 1, 1.0f); }),
      HasSubstr("contiguous"));
}

}  // namespace
}  // namespace dsattn
