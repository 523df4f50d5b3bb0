#include <algorithm>
#include <cmath>
#include <cstring>

#include "dsattn/ops/cpu/cpu_ops.h"

namespace dsattn::ops::cpu {

void quantize_latent_fp8(const TensorView& latent, std::int64_t r, const TensorView& rows) {
  const std::int64_t n = latent.size(0), rope = latent.size(1) - r;
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < n; ++t) {
    const bf16* in = latent.row<bf16>(t);
    std::uint8_t* out = rows.row<std::uint8_t>(t);
    for (std::int64_t b = 0; b < r / kQuantBlock; ++b) {
      float amax = 0.0f;
      for (std::int64_t j = b * kQuantBlock; j < (b + 1) * kQuantBlock; ++j) {
        amax = std::max(amax, std::fabs(in[j].to_float()));
      }
      const float scale = std::max(amax, 1e-4f) / fp8_e4m3::kMax;
      std::memcpy(out + r + 4 * b, &scale, 4);
      for (std::int64_t j = b * kQuantBlock; j < (b + 1) * kQuantBlock; ++j) {
        out[j] = fp8_e4m3::from_float(in[j].to_float() / scale).bits;
      }
    }
    std::memcpy(out + r + 4 * (r / kQuantBlock), in + r, rope * sizeof(bf16));
  }
}

void dequantize_latent_fp8(const TensorView& rows, std::int64_t r, const TensorView& latent) {
  const std::int64_t n = latent.size(0), rope = latent.size(1) - r;
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < n; ++t) {
    const std::uint8_t* in = rows.row<std::uint8_t>(t);
    bf16* out = latent.row<bf16>(t);
    for (std::int64_t b = 0; b < r / kQuantBlock; ++b) {
      float scale;
      std::memcpy(&scale, in + r + 4 * b, 4);
      for (std::int64_t j = b * kQuantBlock; j < (b + 1) * kQuantBlock; ++j) {
        out[j] = bf16::from_float(fp8_e4m3::from_bits(in[j]).to_float() * scale);
      }
    }
    std::memcpy(out + r, in + r + 4 * (r / kQuantBlock), rope * sizeof(bf16));
  }
}

}  // namespace dsattn::ops::cpu
