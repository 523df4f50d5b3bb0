// What the top-k kernels share: the order-preserving keys of the scores and the radix passes
// over them. Device code only.
#pragma once

#include <cstdint>

namespace dsattn::ops::cuda {

// An unsigned key that orders like the scores: larger score, larger key; NaN lowest; +0 and -0
// equal (the CPU compares them equal, so the lower position wins between them).
__device__ __forceinline__ std::uint32_t order_key(float f) {
  if (isnan(f)) return 0u;
  if (f == 0.0f) f = 0.0f;
  const std::uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The radix passes over the keys, from the top: 11, 11 and 10 bits.
struct RadixPass {
  int shift, bins;
};
__host__ __device__ constexpr RadixPass radix_pass(int pass) {
  return pass == 0 ? RadixPass{21, 2048} : pass == 1 ? RadixPass{10, 2048} : RadixPass{0, 1024};
}

}  // namespace dsattn::ops::cuda
