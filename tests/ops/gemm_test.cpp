// gemm against a float64 product over every layout, operand dtype and row stride, and batched
// over per-head views of [tokens, heads, dim] tensors (any batch stride, b per batch or shared).
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
  // m = 1 is the decode GEMV; odd sizes leave no vector-width remainder unexercised. With
  // k = 32768 the CPU backend copies a bf16 B to f32 in slices of 128 of C's columns (B's rows
  // for nt, its columns for nn), the last one partial.
  const Size sizes[] = {{1, 129, 257, 1.0f}, {7, 13, 31, 0.37f},   {33, 65, 17, 1.0f},
                        {64, 96, 512, 1.0f}, {5, 576, 128, -2.5f}, {2, 300, 32768, 1.0f}};
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

// Batched products. a is a per-head view of a [tokens, heads, dim] tensor: heads [1, 1 + batch)
// and columns [2, 2 + k), transposed to [batch, tokens, k]; c likewise (columns [c_col0,
// c_col0 + n)); b is a per-head view the same way, a contiguous [batch, ...] tensor, or a 2-D
// matrix shared by every batch entry.
enum class BSource { per_head_view, contiguous, shared };

struct BatchedGemmCase {
  const char* name;
  std::int64_t batch, m, n, k;
  ops::BLayout layout;
  BSource b_source;
  DType b_dtype, c_dtype;
  float alpha;
  std::int64_t c_width;  // the [tokens, heads, c_width] tensor holding c; c is columns [0, n)
};

void PrintTo(const BatchedGemmCase& c, std::ostream* os) { *os << c.name; }

// heads [1, 1 + batch) and columns [col0, col0 + cols) of a random [rows, batch + 2, width]
// tensor, transposed to [batch, rows, cols].
TensorView per_head(Tensor& backing, std::int64_t rows, std::int64_t batch, std::int64_t width,
                    std::int64_t col0, std::int64_t cols, DType dtype, std::uint64_t stream) {
  backing = random_tensor({rows, batch + 2, width}, dtype, 13, stream);
  return backing.view().slice(1, 1, 1 + batch).slice(2, col0, col0 + cols).transpose(0, 1);
}

class BatchedGemmTest : public ::testing::TestWithParam<BatchedGemmCase> {};

TEST_P(BatchedGemmTest, MatchesFloat64ProductPerBatchEntry) {
  const BatchedGemmCase g = GetParam();
  const bool nt = g.layout == ops::BLayout::nt;
  const std::int64_t b_rows = nt ? g.n : g.k, b_cols = nt ? g.k : g.n;
  Tensor a_backing, b_backing, c_backing;
  const TensorView a = per_head(a_backing, g.m, g.batch, g.k + 5, 2, g.k, DType::bf16, 1);
  TensorView b;
  switch (g.b_source) {
    case BSource::per_head_view:
      b = per_head(b_backing, b_rows, g.batch, b_cols + 3, 1, b_cols, g.b_dtype, 2);
      break;
    case BSource::contiguous:
      b_backing = random_tensor({g.batch, b_rows, b_cols}, g.b_dtype, 13, 3);
      b = b_backing.view();
      break;
    case BSource::shared:
      b_backing = random_tensor({b_rows, b_cols + 4}, g.b_dtype, 13, 4);
      b = b_backing.view().slice(1, 4, 4 + b_cols);
      break;
  }
  const TensorView c = per_head(c_backing, g.m, g.batch, g.c_width, 0, g.n, g.c_dtype, 5);
  ASSERT_EQ(a.ndim(), 3);
  ASSERT_NE(a.stride(0), g.m * g.k) << "a should not be a plain contiguous batch";

  // Element (e, i, l) of a 3-D view, (e, l, j) of b as a [k, n] operand.
  const std::vector<double> av = read_doubles(a), bv = read_doubles(b);
  const std::int64_t b_batch = g.b_source == BSource::shared ? 0 : b_rows * b_cols;
  auto b_at = [&](std::int64_t e, std::int64_t l, std::int64_t j) {
    return nt ? bv[e * b_batch + j * g.k + l] : bv[e * b_batch + l * g.n + j];
  };
  std::vector<double> ref(g.batch * g.m * g.n), plain(ref.size());
  for (std::int64_t e = 0; e < g.batch; ++e) {
    for (std::int64_t i = 0; i < g.m; ++i) {
      for (std::int64_t j = 0; j < g.n; ++j) {
        double acc = 0;
        float acc_f = 0;
        for (std::int64_t l = 0; l < g.k; ++l) {
          const double x = av[(e * g.m + i) * g.k + l], y = b_at(e, l, j);
          acc += x * y;
          acc_f += static_cast<float>(x) * static_cast<float>(y);
        }
        const std::size_t o = (e * g.m + i) * g.n + j;
        ref[o] = g.alpha * acc;
        const float p = g.alpha * acc_f;
        plain[o] = g.c_dtype == DType::bf16 ? round_bf16(p) : p;
      }
    }
  }

  poison(c);
  const std::vector<std::uint8_t> before = snapshot(c_backing);
  const std::vector<std::uint8_t> a_before = snapshot(a_backing);
  ops::gemm(a, b, c, g.layout, g.alpha);
  const double atol = (g.c_dtype == DType::f32 ? 1e-6 : 1e-5) * max_abs(ref);
  EXPECT_TRUE(within_tolerance(read_doubles(c), ref, plain, atol,
                               std::vector<std::int64_t>{g.batch, g.m, g.n}));
  EXPECT_TRUE(only_view_written(c_backing, before, c));
  EXPECT_EQ(snapshot(a_backing), a_before);
}

const BatchedGemmCase kBatchedGemmCases[] = {
    // name, batch, m, n, k, layout, b, b dtype, c dtype, alpha, c's tensor width
    {"NT_PerHeadB", 4, 7, 13, 64, ops::BLayout::nt, BSource::per_head_view, DType::bf16,
     DType::bf16, 1.0f, 13},
    {"NN_PerHeadB_F32Out", 3, 33, 20, 31, ops::BLayout::nn, BSource::per_head_view, DType::bf16,
     DType::f32, 1.0f, 25},
    {"NT_SharedB_F32B", 5, 9, 17, 40, ops::BLayout::nt, BSource::shared, DType::f32, DType::f32,
     0.5f, 17},
    {"NN_SharedB_Gemv", 2, 1, 129, 257, ops::BLayout::nn, BSource::shared, DType::bf16, DType::bf16,
     -1.5f, 131},
    // Absorbing q: [tokens, heads, 128] q_nope times each head's [128, 512] W_UK into the first
    // 512 columns of the [tokens, heads, 576] absorbed query.
    {"NN_AbsorbIntoWiderOutput", 4, 6, 512, 128, ops::BLayout::nn, BSource::contiguous, DType::bf16,
     DType::bf16, 1.0f, 576},
    // Un-absorbing the output: [tokens, heads, 512] times each head's W_UV [128, 512]ᵀ.
    {"NT_UnabsorbContiguousB", 3, 5, 128, 512, ops::BLayout::nt, BSource::contiguous, DType::bf16,
     DType::bf16, 1.0f, 128},
    {"SingleBatchEntry", 1, 8, 9, 10, ops::BLayout::nt, BSource::per_head_view, DType::bf16,
     DType::f32, 1.0f, 12},
};
INSTANTIATE_TEST_SUITE_P(Shapes, BatchedGemmTest, ::testing::ValuesIn(kBatchedGemmCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(BatchedGemmTest, RejectsBadArguments) {
  const std::int64_t batch = 4, m = 5, n = 8, k = 32;
  Tensor a_backing, c_backing;
  const TensorView a = per_head(a_backing, m, batch, k, 0, k, DType::bf16, 20);
  Tensor b = random_tensor({batch, n, k}, DType::bf16, 14, 1);
  const TensorView c = per_head(c_backing, m, batch, n, 0, n, DType::f32, 21);
  Tensor a_2d = random_tensor({m, k}, DType::bf16, 14, 2);
  Tensor c_2d = random_tensor({m, n}, DType::f32, 14, 3);
  Tensor b_batch = random_tensor({batch + 1, n, k}, DType::bf16, 14, 4);
  Tensor b_k = random_tensor({batch, n, k + 1}, DType::bf16, 14, 5);
  Tensor c_batch = random_tensor({batch - 1, m, n}, DType::f32, 14, 6);
  Tensor c_n = random_tensor({batch, m, n + 1}, DType::f32, 14, 7);
  Tensor a_4d = random_tensor({1, batch, m, k}, DType::bf16, 14, 8);
  const TensorView a_columns = a.transpose(1, 2);  // [batch, k, m] with a strided last dim
  const auto nt = ops::BLayout::nt;

  EXPECT_TRUE(rejects([&] { ops::gemm(a_2d, b, c_2d, nt); },
                      "b is batched ([4, 8, 32]) but a is not", {watch(c_2d)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a, b_batch, c, nt); }, "b must have shape [4, *, 32]",
                      {watch(c_backing)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a, b_k, c, nt); }, "b must have shape [4, *, 32]",
                      {watch(c_backing)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a, b, c, ops::BLayout::nn); }, "b must have shape [4, 32, *]",
                      {watch(c_backing)}));
  EXPECT_TRUE(
      rejects([&] { ops::gemm(a, b, c_2d, nt); }, "c must have shape [4, 5, 8]", {watch(c_2d)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a, b, c_batch, nt); }, "c must have shape [4, 5, 8]",
                      {watch(c_batch)}));
  EXPECT_TRUE(
      rejects([&] { ops::gemm(a, b, c_n, nt); }, "c must have shape [4, 5, 8]", {watch(c_n)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a_4d, b, c, nt); }, "a must have shape", {watch(c_backing)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a_columns, b, c, nt); }, "a must have a unit stride",
                      {watch(c_backing)}));
  EXPECT_TRUE(rejects([&] { ops::gemm(a, b.view().transpose(1, 2), c, ops::BLayout::nn); },
                      "b must have a unit stride", {watch(c_backing)}));
  EXPECT_TRUE(
      rejects([&] { ops::gemm(a, on_cuda(b), c, nt); }, "b is on cuda:0", {watch(c_backing)}));
}

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
