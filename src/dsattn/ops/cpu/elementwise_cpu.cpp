#include <cmath>
#include <cstring>

#include "dsattn/ops/cpu/cpu_ops.h"

namespace dsattn::ops::cpu {

void add(const TensorView& a, const TensorView& b, const TensorView& out) {
  const std::int64_t rows = a.size(0), n = a.size(1);
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const bf16* x = a.row<bf16>(r);
    const bf16* y = b.row<bf16>(r);
    bf16* o = out.row<bf16>(r);
    for (std::int64_t j = 0; j < n; ++j) o[j] = bf16::from_float(x[j].to_float() + y[j].to_float());
  }
}

void silu_mul(const TensorView& x, const TensorView& out) {
  const std::int64_t rows = x.size(0), n = out.size(1);
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const bf16* gate = x.row<bf16>(r);
    const bf16* up = gate + n;
    bf16* o = out.row<bf16>(r);
    for (std::int64_t j = 0; j < n; ++j) {
      const float g = gate[j].to_float();
      o[j] = bf16::from_float(g / (1.0f + std::exp(-g)) * up[j].to_float());
    }
  }
}

void strided_copy(const TensorView& src, const TensorView& dst) {
  // Pad to four dimensions; the innermost one is copied element by element.
  std::int64_t shape[4] = {1, 1, 1, 1}, ss[4] = {0, 0, 0, 0}, ds[4] = {0, 0, 0, 0};
  const int off = 4 - src.ndim();
  for (int i = 0; i < src.ndim(); ++i) {
    shape[off + i] = src.size(i);
    ss[off + i] = src.stride(i);
    ds[off + i] = dst.stride(i);
  }
  const std::int64_t es = static_cast<std::int64_t>(dtype_size(src.dtype()));
  const auto* s = static_cast<const char*>(src.data());
  auto* d = static_cast<char*>(dst.data());
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t i0 = 0; i0 < shape[0]; ++i0) {
    for (std::int64_t i1 = 0; i1 < shape[1]; ++i1) {
      for (std::int64_t i2 = 0; i2 < shape[2]; ++i2) {
        const char* srow = s + (i0 * ss[0] + i1 * ss[1] + i2 * ss[2]) * es;
        char* drow = d + (i0 * ds[0] + i1 * ds[1] + i2 * ds[2]) * es;
        if (ss[3] == 1 && ds[3] == 1) {
          std::memcpy(drow, srow, shape[3] * es);
        } else {
          for (std::int64_t i3 = 0; i3 < shape[3]; ++i3) {
            std::memcpy(drow + i3 * ds[3] * es, srow + i3 * ss[3] * es, es);
          }
        }
      }
    }
  }
}

}  // namespace dsattn::ops::cpu
