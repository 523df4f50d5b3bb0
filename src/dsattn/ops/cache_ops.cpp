#include "dsattn/ops/cache_ops.h"

#include <limits>
#include <tuple>

#include "dsattn/core/checked_size.h"
#include "dsattn/ops/op_checks.h"

namespace dsattn::ops {

void positions_to_slots(std::span<const std::int32_t> block_table, std::int64_t page_size,
                        std::span<const std::int32_t> positions, std::span<std::int32_t> slots) {
  DSATTN_CHECK(page_size > 0, "page_size must be positive, got {}", page_size);
  DSATTN_CHECK(slots.size() == positions.size(), "slots must have {} entries, got {}",
               positions.size(), slots.size());
  const std::int64_t capacity = static_cast<std::int64_t>(block_table.size()) * page_size;
  // Every position is checked before any slot is written, so a failed call writes nothing.
  for (std::size_t i = 0; i < positions.size(); ++i) {
    const std::int64_t p = positions[i];
    if (p < 0 || p >= capacity) {
      fail("positions[{}]: position {} lies outside the block table, which covers [0, {})", i, p,
           capacity);
    }
  }
  for (std::size_t i = 0; i < positions.size(); ++i) {
    const std::int64_t p = positions[i];
    slots[i] = static_cast<std::int32_t>(block_table[p / page_size] * page_size + p % page_size);
  }
}

void map_positions_to_slots(const TensorView& indices, const TensorView& row_request,
                            const TensorView& block_tables, std::int64_t page_size) {
  check_dtype(indices, "indices", DType::i32);
  check_shape(indices, "indices", {kAny, kAny});
  check_inner_contiguous(indices, "indices");
  const std::int64_t rows = indices.size(0);
  check_dtype(block_tables, "block_tables", DType::i32);
  check_shape(block_tables, "block_tables", {kAny, kAny});
  check_inner_contiguous(block_tables, "block_tables");
  check_index(row_request, "row_request", rows, block_tables.size(0));
  DSATTN_CHECK(page_size > 0, "page_size must be positive, got {}", page_size);
  const Device d = common_device(
      {{"indices", &indices}, {"row_request", &row_request}, {"block_tables", &block_tables}});
  if (d.is_cpu()) {  // every selected position must lie inside its request's table
    const std::int64_t capacity = block_tables.size(1) * page_size;
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t j = 0; j < indices.size(1); ++j) {
        const std::int32_t p = indices.row<std::int32_t>(r)[j];
        DSATTN_CHECK(p >= -1 && p < capacity,
                     "indices[{}, {}] = {} is outside the block table's [0, {}) (or -1)", r, j, p,
                     capacity);
      }
    }
  }
  if (rows == 0) return;
  DSATTN_DISPATCH(d, map_positions_to_slots, indices, row_request, block_tables, page_size);
}

namespace {

void check_row_copy(const TensorView& rows, const char* rows_name, const TensorView& table,
                    const char* table_name) {
  check_shape(table, table_name, {kAny, kAny});
  check_inner_contiguous(table, table_name);
  check_shape(rows, rows_name, {kAny, table.size(1)});
  check_inner_contiguous(rows, rows_name);
  if (rows.dtype() != table.dtype()) {
    fail("{} must have the dtype of {}, {}, got {}", rows_name, table_name,
         dtype_name(table.dtype()), dtype_name(rows.dtype()));
  }
}

// A paged cache's geometry as the table builders address it: slots as int32.
void check_page_geometry(std::int64_t page_size, std::int64_t num_pages) {
  DSATTN_CHECK(page_size > 0, "page_size must be positive, got {}", page_size);
  DSATTN_CHECK(num_pages > 0, "num_pages must be positive, got {}", num_pages);
  constexpr std::int64_t kI32 = std::numeric_limits<std::int32_t>::max();
  DSATTN_CHECK(checked_mul(num_pages, page_size, "cache slots") <= kI32,
               "the cache's slots (num_pages x page_size = {} x {}) must fit int32", num_pages,
               page_size);
}

}  // namespace

void build_decode_tables(const TensorView& prefix_lens, const TensorView& block_tables,
                         std::int64_t tokens, std::int64_t page_size, std::int64_t num_pages,
                         std::int64_t max_context, const DecodeTables& out) {
  DSATTN_CHECK(tokens >= 1, "tokens must be >= 1, got {}", tokens);
  check_page_geometry(page_size, num_pages);
  DSATTN_CHECK(max_context >= tokens, "max_context must be >= tokens ({}), got {}", tokens,
               max_context);
  constexpr std::int64_t kI32 = std::numeric_limits<std::int32_t>::max();
  DSATTN_CHECK(max_context <= kI32, "max_context must fit int32 ({}), got {}", kI32, max_context);
  check_dtype(prefix_lens, "prefix_lens", DType::i32);
  check_shape(prefix_lens, "prefix_lens", {kAny});
  check_contiguous(prefix_lens, "prefix_lens");
  const std::int64_t batch = prefix_lens.size(0), rows = checked_mul(batch, tokens, "rows");
  const std::int64_t max_pages = (max_context + page_size - 1) / page_size;
  check_dtype(block_tables, "block_tables", DType::i32);
  check_shape(block_tables, "block_tables", {batch, kAny});
  check_inner_contiguous(block_tables, "block_tables");
  if (block_tables.size(1) < max_pages) {
    fail("block_tables: expected at least {} pages a row (max_context {} at page_size {}), got {}",
         max_pages, max_context, page_size, block_tables.size(1));
  }
  for (const auto& [name, t, n] :
       {std::tuple{"positions", &out.positions, rows}, std::tuple{"visible", &out.visible, rows},
        std::tuple{"slots", &out.slots, rows}, std::tuple{"row_request", &out.row_request, rows},
        std::tuple{"cu_q", &out.cu_q, batch + 1},
        std::tuple{"context_lens", &out.context_lens, batch},
        std::tuple{"faults", &out.faults, std::int64_t(1)}}) {
    check_dtype(*t, name, DType::i32);
    check_shape(*t, name, {n});
    check_contiguous(*t, name);
  }
  check_dtype(out.block_tables, "out.block_tables", DType::i32);
  check_shape(out.block_tables, "out.block_tables", {batch, max_pages});
  check_contiguous(out.block_tables, "out.block_tables");
  const Device d = common_device({{"prefix_lens", &prefix_lens},
                                  {"block_tables", &block_tables},
                                  {"positions", &out.positions},
                                  {"visible", &out.visible},
                                  {"slots", &out.slots},
                                  {"row_request", &out.row_request},
                                  {"cu_q", &out.cu_q},
                                  {"context_lens", &out.context_lens},
                                  {"out.block_tables", &out.block_tables},
                                  {"faults", &out.faults}});
  DSATTN_DISPATCH(d, build_decode_tables, prefix_lens, block_tables, tokens, page_size, num_pages,
                  max_context, out);
}

void build_prefill_tables(const TensorView& prefix_lens, const TensorView& cu_tokens,
                          const TensorView& block_tables, std::int64_t page_size,
                          std::int64_t num_pages, const TensorView& tables, const TensorView& slots,
                          const TensorView& faults) {
  check_page_geometry(page_size, num_pages);
  check_dtype(prefix_lens, "prefix_lens", DType::i32);
  check_shape(prefix_lens, "prefix_lens", {kAny});
  check_contiguous(prefix_lens, "prefix_lens");
  const std::int64_t batch = prefix_lens.size(0);
  for (const auto& [name, t, n] :
       {std::tuple{"cu_tokens", &cu_tokens, batch + 1}, std::tuple{"slots", &slots, kAny},
        std::tuple{"faults", &faults, std::int64_t(1)}}) {
    check_dtype(*t, name, DType::i32);
    check_shape(*t, name, {n});
    check_contiguous(*t, name);
  }
  check_offsets(cu_tokens, "cu_tokens", batch, slots.size(0));
  check_dtype(block_tables, "block_tables", DType::i32);
  check_shape(block_tables, "block_tables", {batch, kAny});
  check_inner_contiguous(block_tables, "block_tables");
  check_dtype(tables, "tables", DType::i32);
  check_shape(tables, "tables", {batch, kAny});
  check_contiguous(tables, "tables");
  if (block_tables.size(1) < tables.size(1)) {
    fail("block_tables: expected at least {} pages a row (the width of tables), got {}",
         tables.size(1), block_tables.size(1));
  }
  const Device d = common_device({{"prefix_lens", &prefix_lens},
                                  {"cu_tokens", &cu_tokens},
                                  {"block_tables", &block_tables},
                                  {"tables", &tables},
                                  {"slots", &slots},
                                  {"faults", &faults}});
  if (batch == 0) return;
  DSATTN_DISPATCH(d, build_prefill_tables, prefix_lens, cu_tokens, block_tables, page_size,
                  num_pages, tables, slots, faults);
}

std::string page_fault_sentence(std::int64_t num_pages) {
  return fmt::format(
      "a block-table entry a request needed lay outside the cache's pages [0, {}) (read as page "
      "0, the new tokens on that page not written; that request's output is not meaningful)",
      num_pages);
}

void scatter_rows(const TensorView& rows, const TensorView& index, const TensorView& dst) {
  check_row_copy(rows, "rows", dst, "dst");
  check_index(index, "index", rows.size(0), dst.size(0), /*allow_skip=*/true);
  const Device d = common_device({{"rows", &rows}, {"index", &index}, {"dst", &dst}});
  if (rows.size(0) == 0) return;
  DSATTN_DISPATCH(d, scatter_rows, rows, index, dst);
}

void check_index_key_cache(const TensorView& cache, const char* name, std::int64_t page_size,
                           IndexKeyLayout layout) {
  if (layout == IndexKeyLayout::rows) return;
  // Page p is the bytes of rows p · page_size ... on, read as one block.
  DSATTN_CHECK(cache.stride(0) == cache.size(1),
               "{} in the page-major layout must be contiguous, got a row stride of {} bytes for "
               "rows of {}",
               name, cache.stride(0), cache.size(1));
  DSATTN_CHECK(page_size > 0 && cache.size(0) % page_size == 0,
               "{} in the page-major layout must hold whole pages of {} slots, got {} slots", name,
               page_size, cache.size(0));
}

void write_index_keys(const TensorView& rows, const TensorView& slots, const TensorView& cache,
                      std::int64_t page_size, IndexKeyLayout layout) {
  if (layout == IndexKeyLayout::rows) {
    scatter_rows(rows, slots, cache);
    return;
  }
  check_dtype(rows, "rows", DType::u8);
  check_dtype(cache, "cache", DType::u8);
  check_row_copy(rows, "rows", cache, "cache");
  const std::int64_t d = index_head_dim_of(rows.size(1));
  DSATTN_CHECK(d > 0 && d % 128 == 0 && index_key_bytes(d) == rows.size(1),
               "rows must be index-key rows of d + 4 * d / 128 bytes (d a multiple of 128), got "
               "{} bytes",
               rows.size(1));
  DSATTN_CHECK(page_size > 0, "page_size must be positive, got {}", page_size);
  check_index_key_cache(cache, "cache", page_size, layout);
  check_index(slots, "slots", rows.size(0), cache.size(0), /*allow_skip=*/true);
  const Device dev = common_device({{"rows", &rows}, {"slots", &slots}, {"cache", &cache}});
  if (rows.size(0) == 0) return;
  DSATTN_DISPATCH(dev, write_index_keys_page_major, rows, slots, cache, page_size);
}

void gather_rows(const TensorView& src, const TensorView& index, const TensorView& out) {
  check_row_copy(out, "out", src, "src");
  check_index(index, "index", out.size(0), src.size(0));
  const Device d = common_device({{"src", &src}, {"index", &index}, {"out", &out}});
  if (out.size(0) == 0) return;
  DSATTN_DISPATCH(d, gather_rows, src, index, out);
}

}  // namespace dsattn::ops
