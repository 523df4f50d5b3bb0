// add and strided_copy on the GPU against the CPU backend. Both are exact: add rounds the f32 sum
// of two bf16 values once, and a copy moves bits.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "dsattn/ops/elementwise.h"
#include "gpu_test_util.h"

namespace dsattn::gpu_test {
namespace {

using ElementwiseGpu = GpuTest;

// out = a + b over row-strided views: bit-identical to the CPU and within the float64 rule.
TEST_F(ElementwiseGpu, AddMatchesCpuOnStridedRows) {
  const std::int64_t rows = 300, n = 1000;
  // a: rows of a wider tensor; b: contiguous, a different magnitude so the sums round; out: a
  // column window of a wider, poisoned tensor.
  Tensor a_backing = random_tensor({rows, n + 24}, DType::bf16, 1, 1, 4.0);
  Tensor b = random_tensor({rows, n}, DType::bf16, 1, 2, 0.01);
  const TensorView a = a_backing.view().slice(1, 24, 24 + n);
  Tensor out_backing = poisoned({rows, n + 40}, DType::bf16);
  const TensorView out = out_backing.view().slice(1, 8, 8 + n);

  const Mirror a_dev(a_backing), b_dev(b), out_dev(out_backing);
  ops::add(a, b, out);
  ops::add(a_dev.on_gpu(a), b_dev.on_gpu(), out_dev.on_gpu(out));
  const Tensor fetched = out_dev.fetch();
  EXPECT_TRUE(same_bytes(out_backing, fetched, "add out (with the bytes around the window)"));

  const std::vector<double> av = read_doubles(a), bv = read_doubles(b);
  std::vector<double> ref(av.size());
  for (std::size_t i = 0; i < ref.size(); ++i) ref[i] = av[i] + bv[i];
  EXPECT_TRUE(within_tolerance(read_doubles(Mirror::same_view(out, out_backing, fetched)),
                               read_doubles(out), ref, relative_atol(ref), shape_of(out)));
}

// out may alias a: the sum is formed in place.
TEST_F(ElementwiseGpu, AddInPlaceMatchesCpu) {
  const std::int64_t rows = 129, n = 7168;
  Tensor a = random_tensor({rows, n}, DType::bf16, 2, 1, 2.0);
  Tensor b = random_tensor({rows, n}, DType::bf16, 2, 2, 0.5);
  const Mirror a_dev(clone(a)), b_dev(b);
  ops::add(a, b, a);
  ops::add(a_dev.on_gpu(), b_dev.on_gpu(), a_dev.on_gpu());
  EXPECT_TRUE(same_bytes(a, a_dev.fetch(), "add in place"));
}

// SwiGLU on strided rows: within f32 rounding of the CPU, so within the float64 rule.
TEST_F(ElementwiseGpu, SiluMulMatchesCpuOnStridedRows) {
  const std::int64_t rows = 257, n = 1536;
  Tensor x_backing = random_tensor({rows, 2 * n + 8}, DType::bf16, 5, 1, 6.0);
  const TensorView x = x_backing.view().slice(1, 8, 2 * n + 8);
  Tensor out_backing = poisoned({rows, n + 16}, DType::bf16);
  const TensorView out = out_backing.view().slice(1, 16, n + 16);
  const Mirror x_dev(x_backing), out_dev(out_backing);
  ops::silu_mul(x, out);
  ops::silu_mul(x_dev.on_gpu(x), out_dev.on_gpu(out));
  const Tensor fetched = out_dev.fetch();

  const std::vector<double> xv = read_doubles(x);
  std::vector<double> ref;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < n; ++j) {
      const double g = xv[r * 2 * n + j];
      ref.push_back(g / (1.0 + std::exp(-g)) * xv[r * 2 * n + n + j]);
    }
  }
  EXPECT_TRUE(within_tolerance(read_doubles(Mirror::same_view(out, out_backing, fetched)),
                               read_doubles(out), ref, 1e-6, shape_of(out)));
  // The columns left of the window keep their poison (a NaN).
  for (double v :
       read_doubles(Mirror::same_view(out_backing.view().slice(1, 0, 16), out_backing, fetched))) {
    ASSERT_TRUE(std::isnan(v)) << "silu_mul wrote outside out's window";
  }
}

// One strided_copy case: `src` is a view into `src_backing`, `dst` a view into `dst_backing`
// (poisoned here). The whole destination tensor must come back bit-identical to the CPU's.
void expect_copy_matches(const Tensor& src_backing, const TensorView& src,
                         const Tensor& dst_backing, const TensorView& dst) {
  poison(dst_backing);
  const Mirror src_dev(src_backing), dst_dev(dst_backing);
  ops::strided_copy(src, dst);
  ops::strided_copy(src_dev.on_gpu(src), dst_dev.on_gpu(dst));
  EXPECT_TRUE(same_bytes(dst_backing, dst_dev.fetch(), "strided_copy destination"));
}

// The layer's use: one rope key per token broadcast (stride 0) into every head's last 64 dims.
TEST_F(ElementwiseGpu, StridedCopyBroadcastsOverHeads) {
  const std::int64_t tokens = 70, heads = 128;
  Tensor k_pe = random_tensor({tokens, 64}, DType::bf16, 3, 1);
  const TensorView src = strided_view(k_pe, {tokens, heads, 64}, {64, 0, 1});
  Tensor k = Tensor::empty({tokens, heads, 192}, DType::bf16);
  expect_copy_matches(k_pe, src, k, k.view().slice(2, 128, 192));
}

TEST_F(ElementwiseGpu, StridedCopyTransposesF32) {
  Tensor m = Tensor::empty({64, 48}, DType::f32);
  fill_random_bytes(m, 4);  // NaN payloads included: a copy moves bits, not values
  Tensor dst = Tensor::empty({48, 64}, DType::f32);
  expect_copy_matches(m, m.view().transpose(0, 1), dst, dst.view());
}

TEST_F(ElementwiseGpu, StridedCopyPermutesFourDimsOfBytes) {
  Tensor src_backing = Tensor::empty({3, 5, 7, 11}, DType::u8);
  fill_random_bytes(src_backing, 5);
  // Read as [7, 3, 11, 5] and write into a window of a wider [7, 4, 13, 6] tensor.
  const TensorView src = strided_view(src_backing, {7, 3, 11, 5}, {11, 5 * 7 * 11, 1, 7 * 11});
  Tensor dst_backing = Tensor::empty({7, 4, 13, 6}, DType::u8);
  const TensorView dst = dst_backing.view().slice(1, 1, 4).slice(2, 2, 13).slice(3, 0, 5);
  expect_copy_matches(src_backing, src, dst_backing, dst);
}

TEST_F(ElementwiseGpu, StridedCopyOneDimI32AndFp8) {
  Tensor src_i = Tensor::empty({3000}, DType::i32);
  fill_random_bytes(src_i, 6);
  Tensor dst_i = Tensor::empty({2000}, DType::i32);
  expect_copy_matches(src_i, strided_view(src_i, {1000}, {3}), dst_i,
                      strided_view(dst_i, {1000}, {2}));

  Tensor src_q = Tensor::empty({33, 132}, DType::fp8_e4m3);
  fill_random_bytes(src_q, 7);
  Tensor dst_q = Tensor::empty({33, 128}, DType::fp8_e4m3);
  expect_copy_matches(src_q, src_q.view().slice(1, 0, 128), dst_q, dst_q.view());
}

// Large enough for many blocks: a [tokens, heads, 128] value slice made contiguous.
TEST_F(ElementwiseGpu, StridedCopyLargeSlice) {
  const std::int64_t tokens = 256, heads = 32;
  Tensor kv = random_tensor({tokens, heads, 256}, DType::bf16, 8, 1);
  Tensor v = Tensor::empty({tokens, heads, 128}, DType::bf16);
  expect_copy_matches(kv, kv.view().slice(2, 128, 256), v, v.view());
}

}  // namespace
}  // namespace dsattn::gpu_test
