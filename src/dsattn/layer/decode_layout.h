// The per-step i32 tables of a decode or verify step (positions, the new tokens' cache slots, the
// keys each row sees, each row's request, the query offsets, the contexts and the block tables),
// one after another in one buffer: what DecodeGraph uploads from the host and DecodeStep builds on
// the device, and the sparse path's metadata over them.
#pragma once

#include <cstdint>

#include "dsattn/core/checked_size.h"
#include "dsattn/core/checks.h"
#include "dsattn/core/tensor.h"
#include "dsattn/layer/paths.h"
#include "dsattn/ops/cache_ops.h"

namespace dsattn {

// The shape checks of a fixed-shape decode step (DecodeGraph, DecodeStep).
inline void check_decode_shape(std::int64_t batch_size, std::int64_t tokens_per_request,
                               std::int64_t max_context) {
  DSATTN_CHECK(batch_size >= 1, "batch_size must be >= 1, got {}", batch_size);
  DSATTN_CHECK(tokens_per_request >= 1, "tokens_per_request must be >= 1, got {}",
               tokens_per_request);
  DSATTN_CHECK(max_context >= tokens_per_request,
               "max_context must be >= tokens_per_request ({}), got {}", tokens_per_request,
               max_context);
}

struct DecodeLayout {
  std::int64_t rows, batch, pages;  // batch requests of rows / batch tokens; pages per table

  std::int64_t positions() const { return 0; }
  std::int64_t visible() const { return rows; }
  std::int64_t slots() const { return 2 * rows; }
  std::int64_t row_request() const { return 3 * rows; }
  std::int64_t cu_q() const { return 4 * rows; }
  std::int64_t context_lens() const { return 4 * rows + batch + 1; }
  std::int64_t tables() const { return 4 * rows + 2 * batch + 1; }
  // Checked: a step's shapes come from its caller.
  std::int64_t size() const {
    return checked_add(tables(), checked_mul(batch, pages, "the block tables' entries"),
                       "the decode tables");
  }

  // Views of the tables in `buffer` (i32, size() entries; faults left empty).
  ops::DecodeTables views(const Tensor& buffer) const {
    const auto at = [&](std::int64_t offset, std::int64_t n) {
      return TensorView(buffer.ptr<std::int32_t>() + offset, DType::i32, buffer.device(), {n});
    };
    ops::DecodeTables t;
    t.positions = at(positions(), rows);
    t.visible = at(visible(), rows);
    t.slots = at(slots(), rows);
    t.row_request = at(row_request(), rows);
    t.cu_q = at(cu_q(), batch + 1);
    t.context_lens = at(context_lens(), batch);
    t.block_tables = TensorView(buffer.ptr<std::int32_t>() + tables(), DType::i32, buffer.device(),
                                {batch, pages});
    return t;
  }

  // The sparse path's metadata over those tables: every row, contexts up to max_context.
  SparseMeta sparse_meta(const ops::DecodeTables& t, std::int64_t max_context) const {
    SparseMeta meta;
    meta.positions = t.positions;
    meta.visible = t.visible;
    meta.row_request = t.row_request;
    meta.cu_q = t.cu_q;
    meta.context_lens = t.context_lens;
    meta.block_tables = t.block_tables;
    meta.n = rows;
    meta.max_k = max_context;
    return meta;
  }
};

}  // namespace dsattn
