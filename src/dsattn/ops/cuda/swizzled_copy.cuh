// Row copies from global memory into the 128-byte-swizzled shared tiles the wgmma kernels read
// (see wgmma::swizzled_offset), by one warpgroup with 16-byte cp.async. Device code only.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "dsattn/ops/cuda/ptx.cuh"

namespace dsattn::ops::cuda {

// Copies kRows rows of kSubs * 64 bf16 (row i from src + i * stride; rows at or past
// `valid_rows` zero-filled) into kSubs swizzled sub-tiles of kRows rows at `dst`. Thread t of the
// warpgroup copies 16-byte chunk t % 8 of sub-tile j of rows t / 8 + 16 i: a warp reads four rows
// × 128 contiguous bytes per instruction, and row % 8 (the swizzle) is the same for all of a
// thread's rows. Commits nothing: the caller groups or announces the copies.
template <int kRows, int kSubs>
__device__ __forceinline__ void copy_rows_swizzled(std::uint32_t dst, const __nv_bfloat16* src,
                                                   std::int64_t stride, int valid_rows, int t) {
  const int r0 = t / 8, c = t % 8;
  const std::uint32_t d = dst + r0 * 128 + ((c ^ (r0 % 8)) << 4);
  const __nv_bfloat16* s = src + r0 * stride + c * 8;
#pragma unroll
  for (int i = 0; i < kRows / 16; ++i) {
    const bool valid = r0 + 16 * i < valid_rows;
#pragma unroll
    for (int j = 0; j < kSubs; ++j) {
      ptx::cp_async16(d + j * kRows * 128 + i * 16 * 128,
                      valid ? s + i * 16 * stride + j * 64 : src, valid);
    }
  }
}

}  // namespace dsattn::ops::cuda
