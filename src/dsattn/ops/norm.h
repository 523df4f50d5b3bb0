// Row normalisations. bf16 in and out, f32 arithmetic. `out` may alias `x` (in place).
#pragma once

#include "dsattn/core/tensor.h"

namespace dsattn::ops {

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight
//   x, out: [rows, n] bf16, unit inner stride (rows may be strided); weight: [n] bf16
void rms_norm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out);

// out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * weight + bias   (biased variance)
//   x, out: [rows, n] bf16; weight, bias: [n] bf16
void layer_norm(const TensorView& x, const TensorView& weight, const TensorView& bias, float eps,
                const TensorView& out);

}  // namespace dsattn::ops
