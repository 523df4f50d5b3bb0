#include <cblas.h>

#include <algorithm>
#include <memory>

#include "dsattn/ops/cpu/cpu_ops.h"

namespace dsattn::ops::cpu {

void widen(const bf16* src, float* dst, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = src[i].to_float();
}

namespace {

// A per-thread f32 work buffer that keeps its memory between calls: a forward runs a dozen
// products, and a fresh vector for each one spent more time zero-filling and faulting in pages
// than some of the products took (a decode step's o_proj: 470 MB of f32 weights per call).
// Buffers past kKeepBytes are given back after the call that needed them.
class Scratch {
 public:
  static constexpr std::size_t kKeepBytes = std::size_t(64) << 20;

  float* get(std::int64_t n) {
    const auto want = static_cast<std::size_t>(std::max<std::int64_t>(n, 1));
    if (want > capacity_) {
      data_.reset(new float[want]);  // uninitialised: every use writes before it reads
      capacity_ = want;
    }
    return data_.get();
  }
  void trim() {
    if (capacity_ * sizeof(float) > kKeepBytes) {
      data_.reset();
      capacity_ = 0;
    }
  }

 private:
  std::unique_ptr<float[]> data_;
  std::size_t capacity_ = 0;
};

thread_local Scratch g_a, g_b, g_c;

// Trims the buffers when the product that used them ends.
struct TrimOnExit {
  ~TrimOnExit() {
    g_a.trim();
    g_b.trim();
    g_c.trim();
  }
};

// f32 rows [r0, r0 + rows) x columns [c0, c0 + cols) of a bf16 or f32 2-D view with unit
// column stride (ops::gemm checks it): the view itself when it is f32, else a dense f32 copy in
// `scratch`.
struct F32Block {
  const float* data = nullptr;
  std::int64_t ld = 0;

  F32Block(const TensorView& t, std::int64_t r0, std::int64_t rows, std::int64_t c0,
           std::int64_t cols, Scratch& scratch) {
    if (t.dtype() == DType::f32) {
      data = t.ptr<float>() + r0 * t.stride(0) + c0;
      ld = t.stride(0);
      return;
    }
    float* dst = scratch.get(rows * cols);
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
    for (std::int64_t r = 0; r < rows; ++r) widen(t.row<bf16>(r0 + r) + c0, dst + r * cols, cols);
    data = dst;
    ld = cols;
  }
};

// The f32 copies of B are made in slices of at most this many elements (16 MB), each multiplied
// as soon as it is made, so a weight matrix is never copied whole.
constexpr std::int64_t kSliceElements = std::int64_t(1) << 22;

// C[:, j0 : j0 + nb] from A (f32) and the matching slice of B.
void gemm_slice(const F32Block& A, const TensorView& b, const TensorView& c, BLayout layout,
                float alpha, std::int64_t m, std::int64_t k, std::int64_t j0, std::int64_t nb) {
  // B is [n, k] (nt: its rows are C's columns) or [k, n] (nn).
  const F32Block B =
      layout == BLayout::nt ? F32Block(b, j0, nb, 0, k, g_b) : F32Block(b, 0, k, j0, nb, g_b);
  const CBLAS_TRANSPOSE trans_b = layout == BLayout::nt ? CblasTrans : CblasNoTrans;
  if (c.dtype() == DType::f32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b, m, nb, k, alpha, A.data, A.ld, B.data, B.ld,
                0.0f, c.ptr<float>() + j0, c.stride(0));
    return;
  }
  float* out = g_c.get(m * nb);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b, m, nb, k, alpha, A.data, A.ld, B.data, B.ld,
              0.0f, out, nb);
#pragma omp parallel for schedule(static) if (m * nb > (1 << 16))
  for (std::int64_t r = 0; r < m; ++r) {
    bf16* dst = c.row<bf16>(r) + j0;
    for (std::int64_t j = 0; j < nb; ++j) dst[j] = bf16::from_float(out[r * nb + j]);
  }
}

void gemm_2d(const TensorView& a, const TensorView& b, const TensorView& c, BLayout layout,
             float alpha) {
  const std::int64_t m = a.size(0), k = a.size(1), n = c.size(1);
  if (m == 0 || n == 0) return;
  const TrimOnExit trim;
  const F32Block A(a, 0, m, 0, k, g_a);
  // An f32 B needs no copy: one product.
  const std::int64_t slice =
      b.dtype() == DType::f32
          ? n
          : std::clamp<std::int64_t>(kSliceElements / std::max<std::int64_t>(k, 1) / 64 * 64, 64,
                                     std::max<std::int64_t>(n, 64));
  for (std::int64_t j0 = 0; j0 < n; j0 += slice) {
    gemm_slice(A, b, c, layout, alpha, m, k, j0, std::min(slice, n - j0));
  }
}

}  // namespace

void gemm(const TensorView& a, const TensorView& b, const TensorView& c, BLayout layout,
          float alpha) {
  if (a.ndim() == 2) {
    gemm_2d(a, b, c, layout, alpha);
    return;
  }
  for (std::int64_t i = 0; i < a.size(0); ++i) {
    gemm_2d(a.select(0, i), b.ndim() == 3 ? b.select(0, i) : b, c.select(0, i), layout, alpha);
  }
}

}  // namespace dsattn::ops::cpu
