// rms_norm, layer_norm and add against float64 formulas, with strided rows and in-place calls.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "dsattn/ops/elementwise.h"
#include "dsattn/ops/norm.h"
#include "op_test_util.h"

namespace dsattn::test {
namespace {

enum class Placement { contiguous, strided, in_place };

struct NormCase {
  std::int64_t rows;
  std::int64_t n;
  Placement placement;
  float x_std = 1.0f;  // 1e-3 makes mean(x²) and the variance comparable to eps
};

std::string norm_case_name(const ::testing::TestParamInfo<NormCase>& info) {
  const char* p = info.param.placement == Placement::contiguous ? "Contiguous"
                  : info.param.placement == Placement::strided  ? "Strided"
                                                                : "InPlace";
  return fmt::format("R{}_N{}_{}{}", info.param.rows, info.param.n, p,
                     info.param.x_std == 1.0f ? "" : "_TinyValues");
}
void PrintTo(const NormCase& c, std::ostream* os) {
  *os << c.rows << "x" << c.n << " x_std " << c.x_std;
}

// Input and output views for one placement: strided rows are a column window of a wider
// tensor, in place makes out the same view as x. The backing tensors are returned so the test
// can check that nothing outside the views changed.
struct RowViews {
  Tensor x_backing, out_backing;
  TensorView x, out;
};

RowViews make_rows(const NormCase& c, std::uint64_t seed, double mean) {
  RowViews r;
  const std::int64_t pad = c.placement == Placement::strided ? 9 : 0;
  r.x_backing = Tensor::empty({c.rows, c.n + pad}, DType::bf16);
  fill_uniform(r.x_backing, seed, 1, c.x_std, static_cast<float>(mean) * c.x_std);
  r.x = r.x_backing.view().slice(1, pad / 2, pad / 2 + c.n);
  if (c.placement == Placement::in_place) {
    r.out = r.x;
  } else {
    r.out_backing = random_tensor({c.rows, c.n + pad}, DType::bf16, seed, 2);
    r.out = r.out_backing.view().slice(1, pad - pad / 2, pad - pad / 2 + c.n);
  }
  return r;
}

class RmsNormTest : public ::testing::TestWithParam<NormCase> {};

TEST_P(RmsNormTest, MatchesFloat64Formula) {
  const NormCase c = GetParam();
  const float eps = 1e-6f;
  RowViews r = make_rows(c, 100 + c.n, 0.0);
  Tensor weight = Tensor::empty({c.n}, DType::bf16);
  fill_uniform(weight, 100 + c.n, 3, 0.3f, 1.0f);
  const std::vector<double> x = read_doubles(r.x), w = read_doubles(weight);

  std::vector<double> ref(x.size()), plain(x.size());
  for (std::int64_t i = 0; i < c.rows; ++i) {
    const double* xi = x.data() + i * c.n;
    double sq = 0;
    float sq_f = 0;
    for (std::int64_t j = 0; j < c.n; ++j) {
      sq += xi[j] * xi[j];
      sq_f += static_cast<float>(xi[j]) * static_cast<float>(xi[j]);
    }
    const double inv = 1.0 / std::sqrt(sq / c.n + eps);
    const float inv_f = 1.0f / std::sqrt(sq_f / static_cast<float>(c.n) + eps);
    for (std::int64_t j = 0; j < c.n; ++j) {
      ref[i * c.n + j] = xi[j] * inv * w[j];
      plain[i * c.n + j] = round_bf16(static_cast<float>(xi[j]) * inv_f * static_cast<float>(w[j]));
    }
  }

  const std::vector<std::uint8_t> out_before =
      c.placement == Placement::strided ? snapshot(r.out_backing) : std::vector<std::uint8_t>{};
  if (c.placement != Placement::in_place) poison(r.out);
  ops::rms_norm(r.x, weight, eps, r.out);

  const std::vector<std::int64_t> shape{c.rows, c.n};
  EXPECT_TRUE(within_tolerance(read_doubles(r.out), ref, plain, 1e-5, shape));
  if (c.placement == Placement::strided) {
    EXPECT_TRUE(only_view_written(r.out_backing, out_before, r.out));
    EXPECT_EQ(read_doubles(r.x), x) << "the input rows changed";
  }
}

class LayerNormTest : public ::testing::TestWithParam<NormCase> {};

TEST_P(LayerNormTest, MatchesFloat64Formula) {
  const NormCase c = GetParam();
  const float eps = 1e-6f;
  // A mean of 3 makes a one-pass variance (E[x²] - mean²) lose digits; the contract does not.
  RowViews r = make_rows(c, 200 + c.n, 3.0);
  Tensor weight = Tensor::empty({c.n}, DType::bf16);
  fill_uniform(weight, 200 + c.n, 3, 0.3f, 1.0f);
  Tensor bias = random_tensor({c.n}, DType::bf16, 200 + c.n, 4, 0.5);
  const std::vector<double> x = read_doubles(r.x), w = read_doubles(weight), b = read_doubles(bias);

  std::vector<double> ref(x.size()), plain(x.size());
  for (std::int64_t i = 0; i < c.rows; ++i) {
    const double* xi = x.data() + i * c.n;
    double mean = 0;
    float sum_f = 0;
    for (std::int64_t j = 0; j < c.n; ++j) {
      mean += xi[j];
      sum_f += static_cast<float>(xi[j]);
    }
    mean /= c.n;
    const float mean_f = sum_f / static_cast<float>(c.n);
    double var = 0;
    float var_f = 0;
    for (std::int64_t j = 0; j < c.n; ++j) {
      var += (xi[j] - mean) * (xi[j] - mean);
      const float d = static_cast<float>(xi[j]) - mean_f;
      var_f += d * d;
    }
    const double inv = 1.0 / std::sqrt(var / c.n + eps);
    const float inv_f = 1.0f / std::sqrt(var_f / static_cast<float>(c.n) + eps);
    for (std::int64_t j = 0; j < c.n; ++j) {
      ref[i * c.n + j] = (xi[j] - mean) * inv * w[j] + b[j];
      plain[i * c.n + j] =
          round_bf16((static_cast<float>(xi[j]) - mean_f) * inv_f * static_cast<float>(w[j]) +
                     static_cast<float>(b[j]));
    }
  }

  const std::vector<std::uint8_t> out_before =
      c.placement == Placement::strided ? snapshot(r.out_backing) : std::vector<std::uint8_t>{};
  if (c.placement != Placement::in_place) poison(r.out);
  ops::layer_norm(r.x, weight, bias, eps, r.out);

  const std::vector<std::int64_t> shape{c.rows, c.n};
  EXPECT_TRUE(within_tolerance(read_doubles(r.out), ref, plain, 1e-5, shape));
  if (c.placement == Placement::strided) {
    EXPECT_TRUE(only_view_written(r.out_backing, out_before, r.out));
  }
}

// Row lengths of the model (512 latent, 1536 q_lora, 128 indexer key, 7168 hidden) and odd ones.
const NormCase kNormCases[] = {
    {3, 1, Placement::contiguous},        {5, 7, Placement::contiguous},
    {4, 128, Placement::contiguous},      {6, 512, Placement::strided},
    {3, 1536, Placement::in_place},       {2, 7168, Placement::contiguous},
    {7, 129, Placement::strided},         {4, 128, Placement::in_place},
    {33, 1536, Placement::strided},       {4, 512, Placement::contiguous, 1e-3f},
    {3, 128, Placement::in_place, 1e-3f},
};
INSTANTIATE_TEST_SUITE_P(Shapes, RmsNormTest, ::testing::ValuesIn(kNormCases), norm_case_name);
INSTANTIATE_TEST_SUITE_P(Shapes, LayerNormTest, ::testing::ValuesIn(kNormCases), norm_case_name);

TEST(RmsNormTest, RejectsBadArguments) {
  Tensor x = random_tensor({4, 64}, DType::bf16, 1, 1);
  Tensor w = random_tensor({64}, DType::bf16, 1, 2);
  Tensor out = random_tensor({4, 64}, DType::bf16, 1, 3);
  Tensor x_f32 = random_tensor({4, 64}, DType::f32, 1, 4);
  Tensor w_short = random_tensor({63}, DType::bf16, 1, 5);
  Tensor out_rows = random_tensor({5, 64}, DType::bf16, 1, 6);
  Tensor wide = random_tensor({4, 128}, DType::bf16, 1, 7);
  const TensorView every_other = strided_view(wide, {4, 64}, {128, 2});

  EXPECT_TRUE(rejects([&] { ops::rms_norm(x_f32, w, 1e-6f, out); }, "x must have dtype bf16",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::rms_norm(x, w_short, 1e-6f, out); }, "weight must have shape",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::rms_norm(x, w, 1e-6f, out_rows); }, "out must have shape",
                      {watch(out_rows)}));
  EXPECT_TRUE(rejects([&] { ops::rms_norm(every_other, w, 1e-6f, out); },
                      "x must have a unit stride", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::rms_norm(x, w, 1e-6f, every_other); },
                      "out must have a unit stride", {watch(wide)}));
  EXPECT_TRUE(rejects([&] { ops::rms_norm(x, w, 0.0f, out); }, "eps", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::rms_norm(x, w, std::nanf(""), out); }, "eps", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::rms_norm(x, on_cuda(w), 1e-6f, out); }, "weight is on cuda:0",
                      {watch(out)}));
  EXPECT_TRUE(
      rejects([&] { ops::rms_norm(x, w, 1e-6f, on_cuda(out)); }, "out is on cuda:0", {watch(out)}));
}

TEST(LayerNormTest, RejectsBadArguments) {
  Tensor x = random_tensor({4, 64}, DType::bf16, 2, 1);
  Tensor w = random_tensor({64}, DType::bf16, 2, 2);
  Tensor b = random_tensor({64}, DType::bf16, 2, 3);
  Tensor out = random_tensor({4, 64}, DType::bf16, 2, 4);
  Tensor b_f32 = random_tensor({64}, DType::f32, 2, 5);
  Tensor b_long = random_tensor({65}, DType::bf16, 2, 6);
  Tensor out_cols = random_tensor({4, 32}, DType::bf16, 2, 7);

  EXPECT_TRUE(rejects([&] { ops::layer_norm(x, w, b_f32, 1e-6f, out); },
                      "bias must have dtype bf16", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::layer_norm(x, w, b_long, 1e-6f, out); }, "bias must have shape",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::layer_norm(x, w, b, 1e-6f, out_cols); }, "out must have shape",
                      {watch(out_cols)}));
  EXPECT_TRUE(rejects([&] { ops::layer_norm(x, w, b, -1.0f, out); }, "eps", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::layer_norm(x, w, on_cuda(b), 1e-6f, out); }, "bias is on cuda:0",
                      {watch(out)}));
}

TEST(AddTest, RoundsTheSumOnceIncludingInPlace) {
  const std::int64_t rows = 5, n = 300;
  Tensor a = random_tensor({rows, n}, DType::bf16, 3, 1, 4.0);
  Tensor b_wide = random_tensor({rows, n + 4}, DType::bf16, 3, 2, 4.0);
  const TensorView b = b_wide.view().slice(1, 4, n + 4);
  const std::vector<double> x = read_doubles(a), y = read_doubles(b);
  // The sum of two bf16 values is exact in double; one rounding to bf16 is the whole error, so
  // the result must equal the plain f32 sum rounded once, bit for bit.
  std::vector<double> ref(x.size()), plain(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    ref[i] = x[i] + y[i];
    plain[i] = round_bf16(static_cast<float>(x[i]) + static_cast<float>(y[i]));
  }
  Tensor out = Tensor::empty({rows, n}, DType::bf16);
  poison(out);
  ops::add(a, b, out);
  EXPECT_EQ(read_doubles(out), plain);
  EXPECT_TRUE(within_tolerance(read_doubles(out), ref, plain, 0.0));
  ops::add(a, b, a);  // out aliasing a
  EXPECT_EQ(read_doubles(a), plain);

  Tensor short_b = random_tensor({rows - 1, n}, DType::bf16, 3, 3);
  EXPECT_TRUE(rejects([&] { ops::add(a, short_b, out); }, "b must have shape", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::add(a, b, on_cuda(out)); }, "out is on cuda:0", {watch(out)}));
}

// SwiGLU: silu(gate) · up against float64, on a row-strided input and a window of a wider output.
TEST(SiluMulTest, MatchesFloat64OnStridedRows) {
  const std::int64_t rows = 7, n = 300;
  Tensor x_wide = random_tensor({rows, 2 * n + 6}, DType::bf16, 4, 1, 6.0);
  const TensorView x = x_wide.view().slice(1, 6, 2 * n + 6);
  Tensor out_wide = Tensor::empty({rows, n + 3}, DType::bf16);
  poison(out_wide);
  const std::vector<std::uint8_t> before = snapshot(out_wide);
  const TensorView out = out_wide.view().slice(1, 3, n + 3);
  ops::silu_mul(x, out);

  const std::vector<double> xv = read_doubles(x);
  std::vector<double> ref, plain;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < n; ++j) {
      const double g = xv[r * 2 * n + j], u = xv[r * 2 * n + n + j];
      ref.push_back(g / (1.0 + std::exp(-g)) * u);
      const float gf = static_cast<float>(g);
      plain.push_back(round_bf16(gf / (1.0f + std::exp(-gf)) * static_cast<float>(u)));
    }
  }
  EXPECT_TRUE(within_tolerance(read_doubles(out), ref, plain, 1e-6));
  EXPECT_TRUE(only_view_written(out_wide, before, out));

  Tensor odd = random_tensor({rows, 2 * n + 1}, DType::bf16, 4, 2);
  Tensor narrow = Tensor::empty({rows, n - 1}, DType::bf16);
  Tensor f32_x = random_tensor({rows, 2 * n}, DType::f32, 4, 3);
  Tensor out_c = Tensor::empty({rows, n}, DType::bf16);
  EXPECT_TRUE(
      rejects([&] { ops::silu_mul(odd, out_c); }, "even number of columns", {watch(out_c)}));
  EXPECT_TRUE(rejects([&] { ops::silu_mul(x, narrow); }, "out must have shape", {watch(narrow)}));
  EXPECT_TRUE(
      rejects([&] { ops::silu_mul(f32_x, out_c); }, "x must have dtype bf16", {watch(out_c)}));
  EXPECT_TRUE(
      rejects([&] { ops::silu_mul(x, on_cuda(out_c)); }, "out is on cuda:0", {watch(out_c)}));
}

}  // namespace
}  // namespace dsattn::test
