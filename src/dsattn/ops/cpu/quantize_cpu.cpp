#include <algorithm>
#include <cmath>
#include <vector>

#include "dsattn/ops/cpu/cpu_ops.h"

namespace dsattn::ops::cpu {

void hadamard_rotate(const TensorView& x) {
  const std::int64_t rows = x.size(0), n = x.size(1);
  const float scale = 1.0f / std::sqrt(static_cast<float>(n));
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    bf16* v = x.row<bf16>(r);
    std::vector<float> buf(n);
    widen(v, buf.data(), n);
    // Fast Walsh-Hadamard transform, Sylvester order: butterflies of width 1, 2, 4, ...
    for (std::int64_t h = 1; h < n; h *= 2) {
      for (std::int64_t i = 0; i < n; i += 2 * h) {
        for (std::int64_t j = i; j < i + h; ++j) {
          const float a = buf[j], b = buf[j + h];
          buf[j] = a + b;
          buf[j + h] = a - b;
        }
      }
    }
    for (std::int64_t j = 0; j < n; ++j) v[j] = bf16::from_float(buf[j] * scale);
  }
}

void quantize_fp8_block128(const TensorView& x, const TensorView& q, const TensorView& scale) {
  const std::int64_t rows = x.size(0), n = x.size(1), blocks = n / kQuantBlock;
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const bf16* in = x.row<bf16>(r);
    std::uint8_t* out = q.row<std::uint8_t>(r);
    float* s = scale.row<float>(r);
    for (std::int64_t b = 0; b < blocks; ++b) {
      float amax = 0.0f;
      for (std::int64_t j = b * kQuantBlock; j < (b + 1) * kQuantBlock; ++j) {
        amax = std::max(amax, std::fabs(in[j].to_float()));
      }
      // As DeepSeek-V3.2's act_quant: a floor on amax keeps the scale of a tiny block finite.
      const float block_scale = std::max(amax, 1e-4f) / fp8_e4m3::kMax;
      s[b] = block_scale;
      for (std::int64_t j = b * kQuantBlock; j < (b + 1) * kQuantBlock; ++j) {
        out[j] = fp8_e4m3::from_float(in[j].to_float() / block_scale).bits;
      }
    }
  }
}

}  // namespace dsattn::ops::cpu
