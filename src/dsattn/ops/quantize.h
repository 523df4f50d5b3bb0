// The indexer's activation transform: Walsh-Hadamard rotation, then FP8 e4m3 quantisation in
// blocks of 128 with one f32 scale per block (DeepSeek-V3.2's rotate_activation and act_quant).
#pragma once

#include "dsattn/core/tensor.h"

namespace dsattn::ops {

inline constexpr std::int64_t kQuantBlock = 128;

// x[r, :] <- H_n · x[r, :] · n^-1/2, with H_n the Sylvester-ordered Hadamard matrix.
//   x: [rows, n] bf16, unit inner stride, n a power of two; in place, rounded to bf16
void hadamard_rotate(const TensorView& x);

// scale[r, b] = max(amax(x[r, block b]), 1e-4) / 448 in f32 (the floor keeps an all-zero block's
// scale finite and non-zero, as DeepSeek-V3.2's act_quant does);
// q[r, j] = e4m3(x[r, j] / scale[r, j / 128]), round to nearest even.
//   x: [rows, n] bf16, n a multiple of 128; q: [rows, n] fp8_e4m3 (or u8); scale: [rows, n / 128]
//   f32 q and scale may be strided by row (to write straight into a cache).
void quantize_fp8_block128(const TensorView& x, const TensorView& q, const TensorView& scale);

// Index-key cache rows (the cache's row layout): row r holds the d e4m3 values of
// quantize_fp8_block128(keys[r]), then its d / 128 f32 scales.
//   keys: [n, d] bf16, d a multiple of 128; rows: [n, d + 4 d / 128] u8, rows may be strided,
//   4-byte aligned (the scales are f32)
void quantize_index_key_rows(const TensorView& keys, const TensorView& rows);

}  // namespace dsattn::ops
