#include <cmath>
#include <vector>

#include "dsattn/ops/cpu/cpu_ops.h"

namespace dsattn::ops::cpu {

void apply_rope(const TensorView& x, const TensorView& positions, const RopeTable& table,
                RopeLayout layout) {
  const std::int64_t tokens = x.size(0), heads = x.size(1), dim = x.size(2), pairs = dim / 2;
  const std::int32_t* pos = positions.ptr<std::int32_t>();
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < tokens; ++t) {
    // Angles in double: positions reach 10^5 and an f32 angle would be off by ~1e-2 radians.
    std::vector<float> cos_v(pairs), sin_v(pairs);
    for (std::int64_t i = 0; i < pairs; ++i) {
      const double angle = static_cast<double>(pos[t]) * table.inv_freq[i];
      cos_v[i] = static_cast<float>(std::cos(angle) * table.mscale);
      sin_v[i] = static_cast<float>(std::sin(angle) * table.mscale);
    }
    for (std::int64_t h = 0; h < heads; ++h) {
      bf16* v = x.ptr<bf16>() + t * x.stride(0) + h * x.stride(1);
      for (std::int64_t i = 0; i < pairs; ++i) {
        const std::int64_t a = layout == RopeLayout::interleaved ? 2 * i : i;
        const std::int64_t b = layout == RopeLayout::interleaved ? 2 * i + 1 : i + pairs;
        const float x0 = v[a].to_float(), x1 = v[b].to_float();
        v[a] = bf16::from_float(x0 * cos_v[i] - x1 * sin_v[i]);
        v[b] = bf16::from_float(x0 * sin_v[i] + x1 * cos_v[i]);
      }
    }
  }
}

}  // namespace dsattn::ops::cpu
