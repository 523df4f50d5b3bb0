// Top-k selection over score rows.
#pragma once

#include "dsattn/core/tensor.h"

namespace dsattn::ops {

// For each row r, the set of min(k, lengths[r]) positions s < lengths[r] with the largest
// scores[r, s] (equal scores: the lower position wins; NaN ranks below every number), written in
// ascending position order, then -1 for the unused slots.
// A row with lengths[r] <= k selects every position 0 .. lengths[r]-1 without reading its
// scores, so those rows need not hold scores at all (decode of short contexts skips them).
//   scores: [rows, n] f32 (rows may be strided); lengths: [rows] i32 in [0, n]; out: [rows, k] i32
void topk(const TensorView& scores, const TensorView& lengths, const TensorView& out);

// topk, then map_positions_to_slots on its result, in one pass: per row, the cache slots of its
// selected keys (-1 for the unused ones), what sparse_mla reads as indices. Position p of row r
// is slot block_tables[row_request[r], p / page_size] * page_size + p % page_size; every
// position below lengths[r] must lie inside the table (on the GPU, where the lengths are not
// read on the host, a position past the table's width gives -1).
//   scores, lengths, out: as topk; row_request: [rows] i32 in [0, requests);
//   block_tables: [requests, max_pages] i32; page_size > 0
void topk_slots(const TensorView& scores, const TensorView& lengths, const TensorView& row_request,
                const TensorView& block_tables, std::int64_t page_size, const TensorView& out);

}  // namespace dsattn::ops
