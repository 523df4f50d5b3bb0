#include "dsattn/core/random.h"

#include <cmath>

#include "dsattn/core/checks.h"

namespace dsattn {

void fill_uniform(const TensorView& t, std::uint64_t seed, std::uint64_t stream, float std,
                  float mean) {
  check_device(t, "tensor to fill", Device::cpu());
  check_contiguous(t, "tensor to fill");
  const float half_width = std * std::sqrt(3.0f);
  const std::int64_t n = t.numel();
  if (t.dtype() == DType::f32) {
    float* p = t.ptr<float>();
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) p[i] = mean + half_width * uniform_pm1(seed, stream, i);
  } else if (t.dtype() == DType::bf16) {
    bf16* p = t.ptr<bf16>();
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      p[i] = bf16::from_float(mean + half_width * uniform_pm1(seed, stream, i));
    }
  } else {
    fail("tensor to fill must have dtype f32 or bf16, got {}", dtype_name(t.dtype()));
  }
}

}  // namespace dsattn
