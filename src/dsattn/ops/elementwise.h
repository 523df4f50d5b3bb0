// Elementwise ops on bf16 rows.
#pragma once

#include "dsattn/core/tensor.h"

namespace dsattn::ops {

// out = a + b, rounded once to bf16.   a, b, out: [rows, n] bf16; out may alias a or b
void add(const TensorView& a, const TensorView& b, const TensorView& out);

}  // namespace dsattn::ops
