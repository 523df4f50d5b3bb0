#include <cblas.h>

#include <vector>

#include "dsattn/ops/cpu/cpu_ops.h"

namespace dsattn::ops::cpu {

void widen(const bf16* src, float* dst, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = src[i].to_float();
}

namespace {

// A dense f32 copy of a 2-D view (or the view itself when it already is f32 with unit stride).
struct F32Matrix {
  std::vector<float> storage;
  const float* data = nullptr;
  std::int64_t ld = 0;

  explicit F32Matrix(const TensorView& t) {
    const std::int64_t rows = t.size(0), cols = t.size(1);
    if (t.dtype() == DType::f32) {
      data = t.ptr<float>();
      ld = t.stride(0);
      return;
    }
    storage.resize(static_cast<std::size_t>(rows * cols));
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
    for (std::int64_t r = 0; r < rows; ++r) widen(t.row<bf16>(r), storage.data() + r * cols, cols);
    data = storage.data();
    ld = cols;
  }
};

}  // namespace

namespace {

void gemm_2d(const TensorView& a, const TensorView& b, const TensorView& c, BLayout layout,
             float alpha) {
  const std::int64_t m = a.size(0), k = a.size(1), n = c.size(1);
  if (m == 0 || n == 0) return;
  const F32Matrix A(a), B(b);
  const CBLAS_TRANSPOSE trans_b = layout == BLayout::nt ? CblasTrans : CblasNoTrans;
  if (c.dtype() == DType::f32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b, m, n, k, alpha, A.data, A.ld, B.data, B.ld,
                0.0f, c.ptr<float>(), c.stride(0));
    return;
  }
  std::vector<float> out(static_cast<std::size_t>(m * n));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b, m, n, k, alpha, A.data, A.ld, B.data, B.ld,
              0.0f, out.data(), n);
#pragma omp parallel for schedule(static) if (m * n > (1 << 16))
  for (std::int64_t r = 0; r < m; ++r) {
    bf16* dst = c.row<bf16>(r);
    for (std::int64_t j = 0; j < n; ++j) dst[j] = bf16::from_float(out[r * n + j]);
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
