// Elementwise ops.
#pragma once

#include "dsattn/core/tensor.h"

namespace dsattn::ops {

// out = a + b, rounded once to bf16.   a, b, out: [rows, n] bf16; out may alias a or b
void add(const TensorView& a, const TensorView& b, const TensorView& out);

// The SwiGLU gate of a feed-forward block: out = silu(x[:, :n]) · x[:, n:2n] with
// silu(g) = g / (1 + e^-g), in f32, rounded once to bf16. x holds the gate and up projections
// side by side (one GEMM with the two weights stacked).
//   x: [rows, 2n] bf16; out: [rows, n] bf16; unit inner strides (rows may be strided)
void silu_mul(const TensorView& x, const TensorView& out);

// dst[i...] = src[i...] for views of equal shape and dtype on one device, any strides; a stride
// of 0 in src broadcasts (one rope key copied into every head, say). dst must not overlap src.
void strided_copy(const TensorView& src, const TensorView& dst);

}  // namespace dsattn::ops
