#include "dsattn/ops/cache_ops.h"

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

}  // namespace

void scatter_rows(const TensorView& rows, const TensorView& index, const TensorView& dst) {
  check_row_copy(rows, "rows", dst, "dst");
  check_index(index, "index", rows.size(0), dst.size(0));
  const Device d = common_device({{"rows", &rows}, {"index", &index}, {"dst", &dst}});
  if (rows.size(0) == 0) return;
  DSATTN_DISPATCH(d, scatter_rows, rows, index, dst);
}

void gather_rows(const TensorView& src, const TensorView& index, const TensorView& out) {
  check_row_copy(out, "out", src, "src");
  check_index(index, "index", out.size(0), src.size(0));
  const Device d = common_device({{"src", &src}, {"index", &index}, {"out", &out}});
  if (out.size(0) == 0) return;
  DSATTN_DISPATCH(d, gather_rows, src, index, out);
}

}  // namespace dsattn::ops
