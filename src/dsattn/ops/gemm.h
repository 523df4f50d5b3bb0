// Matrix products with f32 accumulation.
#pragma once

#include "dsattn/core/tensor.h"

namespace dsattn::ops {

// Layout of the right-hand operand b.
//   nt: b is [n, k] (a Linear weight, [out_features, in_features]): c = a · bᵀ
//   nn: b is [k, n]: c = a · b
enum class BLayout { nt, nn };

// c = alpha · a · op(b)
//   a: [m, k] bf16, unit inner stride; b: bf16 or f32 (f32 for pre-widened weights);
//   c: [m, n] bf16 or f32, unit inner stride. Rows of a, b and c may be strided.
void gemm(const TensorView& a, const TensorView& b, const TensorView& c, BLayout layout,
          float alpha = 1.0f);

}  // namespace dsattn::ops
