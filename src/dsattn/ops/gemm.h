// Matrix products with f32 accumulation.
#pragma once

#include "dsattn/core/tensor.h"

namespace dsattn::ops {

// Layout of the right-hand operand b.
//   nt: b is [n, k] (a Linear weight, [out_features, in_features]): c = a · bᵀ
//   nn: b is [k, n]: c = a · b
enum class BLayout { nt, nn };

// c = alpha · a · op(b), f32 accumulation.
//   a: [m, k] bf16; b: bf16 (or, on the CPU, f32); c: [m, n] bf16 or f32. Every operand has a
//   unit inner stride; rows may be strided.
// Batched: a [batch, m, k], b [batch, ...] and c [batch, m, n], with any batch strides (a
// per-head slice of a [tokens, heads, dim] tensor, transposed to [heads, tokens, dim], is a valid
// operand), computing one product per batch entry.
void gemm(const TensorView& a, const TensorView& b, const TensorView& c, BLayout layout,
          float alpha = 1.0f);

}  // namespace dsattn::ops
