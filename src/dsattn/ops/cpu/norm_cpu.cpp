#include <cmath>

#include "dsattn/ops/cpu/cpu_ops.h"

namespace dsattn::ops::cpu {

void rms_norm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out) {
  const std::int64_t rows = x.size(0), n = x.size(1);
  const bf16* w = weight.ptr<bf16>();
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const bf16* in = x.row<bf16>(r);
    bf16* o = out.row<bf16>(r);
    float sum_sq = 0.0f;
    for (std::int64_t j = 0; j < n; ++j) {
      const float v = in[j].to_float();
      sum_sq += v * v;
    }
    const float inv_rms = 1.0f / std::sqrt(sum_sq / static_cast<float>(n) + eps);
    for (std::int64_t j = 0; j < n; ++j) {
      o[j] = bf16::from_float(in[j].to_float() * inv_rms * w[j].to_float());
    }
  }
}

void layer_norm(const TensorView& x, const TensorView& weight, const TensorView& bias, float eps,
                const TensorView& out) {
  const std::int64_t rows = x.size(0), n = x.size(1);
  const bf16* w = weight.ptr<bf16>();
  const bf16* b = bias.ptr<bf16>();
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const bf16* in = x.row<bf16>(r);
    bf16* o = out.row<bf16>(r);
    float sum = 0.0f;
    for (std::int64_t j = 0; j < n; ++j) sum += in[j].to_float();
    const float mean = sum / static_cast<float>(n);
    float var = 0.0f;
    for (std::int64_t j = 0; j < n; ++j) {
      const float d = in[j].to_float() - mean;
      var += d * d;
    }
    const float inv_std = 1.0f / std::sqrt(var / static_cast<float>(n) + eps);
    for (std::int64_t j = 0; j < n; ++j) {
      o[j] =
          bf16::from_float((in[j].to_float() - mean) * inv_std * w[j].to_float() + b[j].to_float());
    }
  }
}

}  // namespace dsattn::ops::cpu
