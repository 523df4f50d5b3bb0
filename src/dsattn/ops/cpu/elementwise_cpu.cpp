#include "dsattn/ops/cpu/cpu_ops.h"

namespace dsattn::ops::cpu {

void add(const TensorView& a, const TensorView& b, const TensorView& out) {
  const std::int64_t rows = a.size(0), n = a.size(1);
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const bf16* x = a.row<bf16>(r);
    const bf16* y = b.row<bf16>(r);
    bf16* o = out.row<bf16>(r);
    for (std::int64_t j = 0; j < n; ++j) o[j] = bf16::from_float(x[j].to_float() + y[j].to_float());
  }
}

}  // namespace dsattn::ops::cpu
