// GEMM through cuBLASLt against a float64 product, with the CPU backend's (OpenBLAS, f32) error as
// the yardstick: both layouts, bf16 and f32 outputs, alpha, strided rows, and the batched
// products of per-head slices (transposed [tokens, heads, dim] views) that absorb and un-absorb
// the MLA queries and outputs.
#include <gtest/gtest.h>

#include <vector>

#include "dsattn/ops/gemm.h"
#include "gpu_test_util.h"

namespace dsattn::gpu_test {
namespace {

using GemmGpu = GpuTest;

// c = alpha · a · op(b) in float64 for views of any strides: a [batch, m, k] (or [m, k]), b
// [batch, ...] or 2-D (shared by every batch entry).
std::vector<double> reference_gemm(const TensorView& a, const TensorView& b, ops::BLayout layout,
                                   float alpha) {
  const bool batched = a.ndim() == 3;
  const std::int64_t batch = batched ? a.size(0) : 1, m = a.size(-2), k = a.size(-1);
  const std::int64_t n = layout == ops::BLayout::nt ? b.size(-2) : b.size(-1);
  const std::vector<double> av = read_doubles(a), bv = read_doubles(b);
  const std::int64_t b_batch_size = b.ndim() == 3 ? b.size(-2) * b.size(-1) : 0;
  std::vector<double> c(static_cast<std::size_t>(batch * m * n));
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < batch * m; ++i) {
    const std::int64_t e = i / m, r = i % m;
    const double* arow = &av[(e * m + r) * k];
    const double* bmat = &bv[e * b_batch_size];
    for (std::int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (std::int64_t x = 0; x < k; ++x) {
        acc += arow[x] * (layout == ops::BLayout::nt ? bmat[j * k + x] : bmat[x * n + j]);
      }
      c[(e * m + r) * n + j] = static_cast<double>(alpha) * acc;
    }
  }
  return c;
}

// Runs one product on both backends. a, b and c are views into `a_t`, `b_t` and `c_t`; c_t is
// poisoned first. Checks c against float64 and that nothing around the c view was written.
void expect_gemm_matches(const Tensor& a_t, const TensorView& a, const Tensor& b_t,
                         const TensorView& b, const Tensor& c_t, const TensorView& c,
                         ops::BLayout layout, float alpha) {
  poison(c_t);
  const Tensor original = clone(c_t);
  const Mirror a_dev(a_t), b_dev(b_t), c_dev(c_t);
  ops::gemm(a, b, c, layout, alpha);
  ops::gemm(a_dev.on_gpu(a), b_dev.on_gpu(b), c_dev.on_gpu(c), layout, alpha);
  const Tensor fetched = c_dev.fetch();
  const std::vector<double> ref = reference_gemm(a, b, layout, alpha);
  const std::vector<double> gpu_out = read_doubles(Mirror::same_view(c, c_t, fetched));
  EXPECT_TRUE(within_tolerance(gpu_out, read_doubles(c), ref, relative_atol(ref), shape_of(c)));
  EXPECT_TRUE(only_view_written(original, c_t, c, fetched));
}

TEST_F(GemmGpu, LinearNtBf16Out) {
  Tensor a = random_tensor({96, 512}, DType::bf16, 100, 1);
  Tensor b = random_tensor({384, 512}, DType::bf16, 100, 2, 0.05);
  Tensor c = Tensor::empty({96, 384}, DType::bf16);
  expect_gemm_matches(a, a, b, b, c, c, ops::BLayout::nt, 1.0f);
}

TEST_F(GemmGpu, NnF32OutWithAlpha) {
  Tensor a = random_tensor({64, 256}, DType::bf16, 101, 1);
  Tensor b = random_tensor({256, 200}, DType::bf16, 101, 2);
  Tensor c = Tensor::empty({64, 200}, DType::f32);
  expect_gemm_matches(a, a, b, b, c, c, ops::BLayout::nn, 0.125f);
}

// Every operand a column window of a wider tensor (row strides != widths, offset pointers).
TEST_F(GemmGpu, StridedRowsBothLayouts) {
  Tensor a_t = random_tensor({80, 512 + 64}, DType::bf16, 102, 1);
  const TensorView a = a_t.view().slice(1, 32, 32 + 512);
  Tensor b_nt = random_tensor({160, 512 + 8}, DType::bf16, 102, 2, 0.1);
  const TensorView bn = b_nt.view().slice(1, 8, 8 + 512);
  Tensor c_t = Tensor::empty({80, 160 + 24}, DType::bf16);
  expect_gemm_matches(a_t, a, b_nt, bn, c_t, c_t.view().slice(1, 8, 8 + 160), ops::BLayout::nt,
                      1.0f);

  Tensor b_nn = random_tensor({512, 96 + 32}, DType::bf16, 102, 3, 0.1);
  const TensorView bnn = b_nn.view().slice(1, 16, 16 + 96);
  Tensor c_f = Tensor::empty({80, 96 + 4}, DType::f32);
  expect_gemm_matches(a_t, a, b_nn, bnn, c_f, c_f.view().slice(1, 4, 4 + 96), ops::BLayout::nn,
                      2.0f);
}

// Small shapes whose leading dimensions are not multiples of 8 elements.
TEST_F(GemmGpu, SmallOddShapes) {
  Tensor a = random_tensor({5, 24}, DType::bf16, 103, 1);
  Tensor b = random_tensor({7, 24}, DType::bf16, 103, 2);
  Tensor c = Tensor::empty({5, 7}, DType::f32);
  expect_gemm_matches(a, a, b, b, c, c, ops::BLayout::nt, 1.0f);

  Tensor a2 = random_tensor({3, 13}, DType::bf16, 103, 3);
  Tensor b2 = random_tensor({13, 9}, DType::bf16, 103, 4);
  Tensor c2 = Tensor::empty({3, 9}, DType::bf16);
  expect_gemm_matches(a2, a2, b2, b2, c2, c2, ops::BLayout::nn, 1.0f);
}

// The MLA absorb: q̃_h = q_nope_h · W_UK,h over heads, with q_nope a [tokens, heads, 128] slice of
// q [tokens, heads, 192] seen as [heads, tokens, 128], W_UK [heads, 128, 512] (nn), and the
// output written into the first 512 of each head's 576 columns of q̃ [tokens, heads, 576].
TEST_F(GemmGpu, BatchedAbsorbOverTransposedHeads) {
  const std::int64_t tokens = 40, heads = 16;
  Tensor q = random_tensor({tokens, heads, 192}, DType::bf16, 104, 1);
  const TensorView a = q.view().slice(2, 0, 128).transpose(0, 1);
  Tensor w_uk = random_tensor({heads, 128, 512}, DType::bf16, 104, 2, 0.1);
  Tensor q_abs = Tensor::empty({tokens, heads, 576}, DType::bf16);
  const TensorView c = q_abs.view().slice(2, 0, 512).transpose(0, 1);
  expect_gemm_matches(q, a, w_uk, w_uk, q_abs, c, ops::BLayout::nn, 1.0f);
}

// The un-absorb: o_h = õ_h · W_UV,hᵀ with õ [tokens, heads, 512] seen as [heads, tokens, 512],
// W_UV [heads, 128, 512] (nt), written into o [tokens, heads, 128] as [heads, tokens, 128]; f32.
TEST_F(GemmGpu, BatchedUnabsorbNtF32Out) {
  const std::int64_t tokens = 33, heads = 8;
  Tensor o_lat = random_tensor({tokens, heads, 512}, DType::bf16, 105, 1);
  const TensorView a = o_lat.view().transpose(0, 1);
  Tensor w_uv = random_tensor({heads, 128, 512}, DType::bf16, 105, 2, 0.1);
  Tensor o = Tensor::empty({tokens, heads, 128}, DType::f32);
  expect_gemm_matches(o_lat, a, w_uv, w_uv, o, o.view().transpose(0, 1), ops::BLayout::nt, 0.5f);
}

// A batched a with a 2-D b shared by every batch entry (batch stride 0 for b).
TEST_F(GemmGpu, BatchedWithSharedB) {
  Tensor a = random_tensor({4, 32, 64}, DType::bf16, 106, 1);
  Tensor b = random_tensor({48, 64}, DType::bf16, 106, 2);
  Tensor c = Tensor::empty({4, 32, 48}, DType::bf16);
  expect_gemm_matches(a, a, b, b, c, c, ops::BLayout::nt, 1.0f);
}

}  // namespace
}  // namespace dsattn::gpu_test
