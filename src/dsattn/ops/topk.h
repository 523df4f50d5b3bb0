// Top-k selection over score rows.
#pragma once

#include "dsattn/core/tensor.h"

namespace dsattn::ops {

// For each row r, the min(k, lengths[r]) positions s < lengths[r] with the largest scores[r, s],
// in descending order of score; equal scores put the lower position first; slots past the
// selection hold -1. NaN scores rank below every number.
//   scores: [rows, n] f32 (rows may be strided); lengths: [rows] i32 in [0, n]; out: [rows, k] i32
void topk(const TensorView& scores, const TensorView& lengths, const TensorView& out);

}  // namespace dsattn::ops
