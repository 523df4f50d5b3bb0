#include <cstring>

#include "dsattn/ops/cpu/cpu_ops.h"
#include "dsattn/ops/decode_request_tables.h"

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
    if (s[i] >= 0) std::memcpy(dst + s[i] * dst_stride, src + i * src_stride, row_bytes);
  }
}

void write_index_keys_page_major(const TensorView& rows, const TensorView& slots,
                                 const TensorView& cache, std::int64_t page_size) {
  const std::int64_t bytes = rows.size(1), d = index_head_dim_of(bytes);
  const std::int32_t* s = slots.ptr<std::int32_t>();
  for (std::int64_t i = 0; i < rows.size(0); ++i) {
    if (s[i] < 0) continue;
    const IndexKeyOffsets at =
        index_key_offsets(IndexKeyLayout::page_major, s[i], page_size, d, cache.stride(0));
    const std::uint8_t* src = rows.row<std::uint8_t>(i);
    std::memcpy(cache.ptr<std::uint8_t>() + at.values, src, d);
    std::memcpy(cache.ptr<std::uint8_t>() + at.scales, src + d, bytes - d);
  }
}

void build_decode_tables(const TensorView& prefix_lens, const TensorView& block_tables,
                         std::int64_t tokens, std::int64_t page_size, std::int64_t num_pages,
                         std::int64_t max_context, const DecodeTables& out) {
  const std::int64_t batch = prefix_lens.size(0), max_pages = out.block_tables.size(1);
  const std::int32_t* prefix = prefix_lens.ptr<std::int32_t>();
  std::int32_t faults = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    const DecodeRequestTables r = decode_request_tables(
        prefix[b], block_tables.row<std::int32_t>(b), tokens, page_size, num_pages, max_context);
    faults |= r.faults;
    std::int32_t* table = out.block_tables.row<std::int32_t>(b);
    for (std::int64_t j = 0; j < max_pages; ++j) {
      if (r.page_fault(j)) faults |= kDecodeFaultPage;
      table[j] = r.page(j);
    }
    for (std::int64_t t = 0; t < tokens; ++t) {
      const std::int64_t row = b * tokens + t;
      out.positions.ptr<std::int32_t>()[row] = r.position(t);
      out.visible.ptr<std::int32_t>()[row] = r.position(t) + 1;
      out.slots.ptr<std::int32_t>()[row] = r.slot(t);
      out.row_request.ptr<std::int32_t>()[row] = static_cast<std::int32_t>(b);
    }
    out.context_lens.ptr<std::int32_t>()[b] = r.context();
  }
  for (std::int64_t b = 0; b <= batch; ++b) {
    out.cu_q.ptr<std::int32_t>()[b] = static_cast<std::int32_t>(b * tokens);
  }
  out.faults.ptr<std::int32_t>()[0] |= faults;
}

void build_prefill_tables(const TensorView& prefix_lens, const TensorView& cu_tokens,
                          const TensorView& block_tables, std::int64_t page_size,
                          std::int64_t num_pages, const TensorView& tables, const TensorView& slots,
                          const TensorView& faults) {
  const std::int64_t batch = prefix_lens.size(0), max_pages = tables.size(1);
  const std::int32_t* prefix = prefix_lens.ptr<std::int32_t>();
  const std::int32_t* cu = cu_tokens.ptr<std::int32_t>();
  std::int32_t found = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    const DecodeRequestTables r =
        decode_request_tables(prefix[b], block_tables.row<std::int32_t>(b), cu[b + 1] - cu[b],
                              page_size, num_pages, max_pages * page_size);
    found |= r.faults;
    std::int32_t* table = tables.row<std::int32_t>(b);
    for (std::int64_t j = 0; j < max_pages; ++j) {
      if (r.page_fault(j)) found |= kDecodeFaultPage;
      table[j] = r.page(j);
    }
    for (std::int64_t t = 0; t < cu[b + 1] - cu[b]; ++t) {
      slots.ptr<std::int32_t>()[cu[b] + t] = r.slot(t);
    }
  }
  faults.ptr<std::int32_t>()[0] |= found;
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
