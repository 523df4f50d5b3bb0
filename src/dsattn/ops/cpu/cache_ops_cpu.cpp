#include <cstring>

#include "dsattn/ops/cpu/cpu_ops.h"

namespace dsattn::ops::cpu {

void scatter_rows(const TensorView& rows, const TensorView& slots, const TensorView& cache) {
  const std::int64_t n = rows.size(0);
  const std::size_t row_bytes = rows.size(1) * dtype_size(rows.dtype());
  const std::int32_t* s = slots.ptr<std::int32_t>();
  const char* src = static_cast<const char*>(rows.data());
  char* dst = static_cast<char*>(cache.data());
  const std::int64_t src_stride = rows.stride(0) * dtype_size(rows.dtype());
  const std::int64_t dst_stride = cache.stride(0) * dtype_size(cache.dtype());
  for (std::int64_t i = 0; i < n; ++i) {
    std::memcpy(dst + s[i] * dst_stride, src + i * src_stride, row_bytes);
  }
}

void gather_rows(const TensorView& cache, const TensorView& slots, const TensorView& out) {
  const std::int64_t n = out.size(0);
  const std::size_t row_bytes = out.size(1) * dtype_size(out.dtype());
  const std::int32_t* s = slots.ptr<std::int32_t>();
  const char* src = static_cast<const char*>(cache.data());
  char* dst = static_cast<char*>(out.data());
  const std::int64_t src_stride = cache.stride(0) * dtype_size(cache.dtype());
  const std::int64_t dst_stride = out.stride(0) * dtype_size(out.dtype());
  for (std::int64_t i = 0; i < n; ++i) {
    std::memcpy(dst + i * dst_stride, src + s[i] * src_stride, row_bytes);
  }
}

}  // namespace dsattn::ops::cpu
