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

void map_positions_to_slots(const TensorView& indices, const TensorView& row_request,
                            const TensorView& block_tables, std::int64_t page_size) {
  const std::int64_t rows = indices.size(0), k = indices.size(1);
  const std::int32_t* req = row_request.ptr<std::int32_t>();
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    std::int32_t* idx = indices.row<std::int32_t>(r);
    const std::int32_t* table = block_tables.row<std::int32_t>(req[r]);
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int32_t p = idx[j];
      if (p >= 0)
        idx[j] = static_cast<std::int32_t>(table[p / page_size] * page_size + p % page_size);
    }
  }
}

}  // namespace dsattn::ops::cpu
