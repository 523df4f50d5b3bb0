#include "dsattn/ops/topk.h"

#include <limits>

#include "dsattn/ops/op_checks.h"

namespace dsattn::ops {

namespace {

// topk's checks; returns the device every argument is on.
Device check_topk(const TensorView& scores, const TensorView& lengths, const TensorView& out) {
  check_dtype(scores, "scores", DType::f32);
  check_shape(scores, "scores", {kAny, kAny});
  check_inner_contiguous(scores, "scores");
  const std::int64_t rows = scores.size(0), n = scores.size(1);
  check_dtype(lengths, "lengths", DType::i32);
  check_shape(lengths, "lengths", {rows});
  check_contiguous(lengths, "lengths");
  check_dtype(out, "out", DType::i32);
  check_shape(out, "out", {rows, kAny});
  check_inner_contiguous(out, "out");
  DSATTN_CHECK(out.size(1) > 0, "out must select at least one position (k > 0), got k = {}",
               out.size(1));
  const Device d = common_device({{"scores", &scores}, {"lengths", &lengths}, {"out", &out}});
  if (d.is_cpu()) {
    const std::int32_t* len = lengths.ptr<std::int32_t>();
    for (std::int64_t r = 0; r < rows; ++r) {
      DSATTN_CHECK(len[r] >= 0 && len[r] <= n, "lengths[{}] must be in [0, {}], got {}", r, n,
                   len[r]);
    }
  }
  return d;
}

}  // namespace

void topk(const TensorView& scores, const TensorView& lengths, const TensorView& out) {
  const Device d = check_topk(scores, lengths, out);
  if (scores.size(0) == 0) return;
  DSATTN_DISPATCH(d, topk, scores, lengths, out);
}

void topk_slots(const TensorView& scores, const TensorView& lengths, const TensorView& row_request,
                const TensorView& block_tables, std::int64_t page_size, const TensorView& out) {
  const Device d = check_topk(scores, lengths, out);
  const std::int64_t rows = scores.size(0);
  check_dtype(block_tables, "block_tables", DType::i32);
  check_shape(block_tables, "block_tables", {kAny, kAny});
  check_inner_contiguous(block_tables, "block_tables");
  check_index(row_request, "row_request", rows, block_tables.size(0));
  DSATTN_CHECK(page_size > 0 && page_size <= std::numeric_limits<std::int32_t>::max(),
               "page_size must be in [1, 2^31), got {}", page_size);
  common_device(
      {{"scores", &scores}, {"row_request", &row_request}, {"block_tables", &block_tables}});
  if (d.is_cpu()) {  // every position a row may select must lie inside its request's table
    const std::int64_t capacity = block_tables.size(1) * page_size;
    const std::int32_t* len = lengths.ptr<std::int32_t>();
    for (std::int64_t r = 0; r < rows; ++r) {
      DSATTN_CHECK(len[r] <= capacity,
                   "lengths[{}] = {} reaches past the block table's {} positions ({} pages of {})",
                   r, len[r], capacity, block_tables.size(1), page_size);
    }
  }
  if (rows == 0) return;
  DSATTN_DISPATCH(d, topk_slots, scores, lengths, row_request, block_tables, page_size, out);
}

}  // namespace dsattn::ops
