// gemm against a float64 product over every layout, operand dtype and row stride.
#include <gtest/gtest.h>

#include <vector>

#include "dsattn/ops/gemm.h"
#include "op_test_util.h"

namespace dsattn::test {
namespace {

struct GemmCase {
  std::int64_t m, n, k;
  float alpha;
  ops::BLayout layout;
  DType b_dtype, c_dtype;
  bool strided;  // a, b and c are column windows of wider tensors
};

std::string describe(const GemmCase& c) {
  return fmt::format("M{}_N{}_K{}_{}_B{}_C{}{}{}", c.m, c.n, c.k,
                     c.layout == ops::BLayout::nt ? "NT" : "NN", dtype_name(c.b_dtype),
                     dtype_name(c.c_dtype), c.alpha == 1.0f ? "" : "_Alpha",
                     c.strided ? "_Strided" : "");
}

void PrintTo(const GemmCase& c, std::ostream* os) { *os << describe(c); }

std::vector<GemmCase> gemm_cases() {
  struct Size {
    std::int64_t m, n, k;
    float alpha;
  };
  // m = 1 is the decode GEMV; odd sizes leave no vector-width remainder unexercised.
  const Size sizes[] = {{1, 129, 257, 1.0f},
                        {7, 13, 31, 0.37f},
                        {33, 65, 17, 1.0f},
                        {64, 96, 512, 1.0f},
                        {5, 576, 128, -2.5f}};
  std::vector<GemmCase> cases;
  for (const Size& s : sizes) {
    for (ops::BLayout layout : {ops::BLayout::nt, ops::BLayout::nn}) {
      for (DType b : {DType::bf16, DType::f32}) {
        for (DType c : {DType::bf16, DType::f32}) {
          for (bool strided : {false, true}) {
            cases.push_back({s.m, s.n, s.k, s.alpha, layout, b, c, strided});
          }
        }
      }
    }
  }
  return cases;
}

// A [rows, cols] view, either a whole tensor or columns [2, 2 + cols) of a wider one.
TensorView matrix(Tensor& backing, std::int64_t rows, std::int64_t cols, DType dtype, bool strided,
                  std::uint64_t stream) {
  const std::int64_t pad = strided ? 5 : 0;
  backing = random_tensor({rows, cols + pad}, dtype, 11, stream);
  return strided ? backing.view().slice(1, 2, 2 + cols) : backing.view();
}

class GemmTest : public ::testing::TestWithParam<GemmCase> {};

TEST_P(GemmTest, MatchesFloat64Product) {
  const GemmCase g = GetParam();
  const bool nt = g.layout == ops::BLayout::nt;
  Tensor a_backing, b_backing, c_backing;
  const TensorView a = matrix(a_backing, g.m, g.k, DType::bf16, g.strided, 1);
  const TensorView b = nt ? matrix(b_backing, g.n, g.k, g.b_dtype, g.strided, 2)
                          : matrix(b_backing, g.k, g.n, g.b_dtype, g.strided, 3);
  const TensorView c = matrix(c_backing, g.m, g.n, g.c_dtype, g.strided, 4);

  const std::vector<double> av = read_doubles(a), bv = read_doubles(b);
  auto b_at = [&](std::int64_t l, std::int64_t j) {
    return nt ? bv[j * g.k + l] : bv[l * g.n + j];
  };
  std::vector<double> ref(g.m * g.n), plain(g.m * g.n);
  for (std::int64_t i = 0; i < g.m; ++i) {
    for (std::int64_t j = 0; j < g.n; ++j) {
      double acc = 0;
      float acc_f = 0;
      for (std::int64_t l = 0; l < g.k; ++l) {
        acc += av[i * g.k + l] * b_at(l, j);
        acc_f += static_cast<float>(av[i * g.k + l]) * static_cast<float>(b_at(l, j));
      }
      ref[i * g.n + j] = g.alpha * acc;
      const float p = g.alpha * acc_f;
      plain[i * g.n + j] = g.c_dtype == DType::bf16 ? round_bf16(p) : p;
    }
  }

  poison(c);
  const std::vector<std::uint8_t> before = snapshot(c_backing);
  ops::gemm(a, b, c, g.layout, g.alpha);
  // f32 results are not rounded to bf16, so the sum's own rounding is all there is; the atol
  // covers a summation order that happens to land on a worse element than the plain loop's.
  const double atol = (g.c_dtype == DType::f32 ? 1e-6 : 1e-5) * max_abs(ref);
  const std::vector<std::int64_t> shape{g.m, g.n};
  EXPECT_TRUE(within_tolerance(read_doubles(c), ref, plain, atol, shape));
  EXPECT_TRUE(only_view_written(c_backing, before, c));
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmTest, ::testing::ValuesIn(gemm_cases()),
                         [](const auto& info) { return describe(info.param); });

TEST(GemmEdgeTest, EmptyInnerDimensionGivesZeros) {
  // k = 0: every entry of c is an empty sum.
  Tensor a = Tensor::empty({3, 0}, DType::bf16);
  Tensor b = Tensor::empty({4, 0}, DType::bf16);
  Tensor c = Tensor::empty({3, 4}, DType::bf16);
  poison(c);
  ops::gemm(a, b, c, ops::BLayout::nt);
  EXPECT_EQ(read_doubles(c), std::vector<double>(12, 0.0));
}

TEST(GemmTest, RejectsBadArguments) {
  Tensor a = random_tensor({4, 32}, DType::bf16, 12, 1);
  Tensor b = random_tensor({8, 32}, DType::bf16, 12, 2);
  Tensor c = random_tensor({4, 8}, DType::f32, 12, 3);
  Tensor a_f32 = random_tensor({4, 32}, DType::f32, 12, 4);
  Tensor b_i32 = Tensor::empty({8, 32}, DType::i32);
  Tensor b_short = random_tensor({8, 31}, DType::bf16, 12, 5);
  Tensor c_i32 = Tensor::empty({4, 8}, DType::i32);
  Tensor c_wrong = random_tensor({4, 9}, DType::f32, 12, 6);
  Tensor wide = random_tensor({8, 64}, DType::bf16, 12, 7);
  Tensor c_wide = random_tensor({4, 16}, DType::f32, 12, 8);
  const TensorView b_every_other = strided_view(wide, {8, 32}, {64, 2});
  const TensorView a_every_other = strided_view(wide, {4, 32}, {64, 2});
  const TensorView c_every_other = strided_view(c_wide, {4, 8}, {16, 2});
  const auto nt = ops::BLayout::nt;

  EXPECT_TRUE(rejects([&] { ops::gemm(a_f32, b, c, nt); }, "a must have dtype bf16", {watch(c)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a, b_i32, c, nt); }, "b must have dtype", {watch(c)}));
  EXPECT_TRUE(
      rejects([&] { ops::gemm(a, b_short, c, nt); }, "b must have shape [*, 32]", {watch(c)}));
  // In the nn layout the same b is [k, n] and its first dimension must be k.
  EXPECT_TRUE(rejects([&] { ops::gemm(a, b, c, ops::BLayout::nn); }, "b must have shape [32, *]",
                      {watch(c)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a, b, c_i32, nt); }, "c must have dtype", {watch(c_i32)}));
  EXPECT_TRUE(
      rejects([&] { ops::gemm(a, b, c_wrong, nt); }, "c must have shape", {watch(c_wrong)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a_every_other, b, c, nt); }, "a must have a unit stride",
                      {watch(c)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a, b_every_other, c, nt); }, "b must have a unit stride",
                      {watch(c)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a, b, c_every_other, nt); }, "c must have a unit stride",
                      {watch(c_wide)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a, on_cuda(b), c, nt); }, "b is on cuda:0", {watch(c)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a, b, on_cuda(c), nt); }, "c is on cuda:0", {watch(c)}));
}

}  // namespace
}  // namespace dsattn::test
