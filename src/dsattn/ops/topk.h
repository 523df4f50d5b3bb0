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

}  // namespace dsattn::ops
