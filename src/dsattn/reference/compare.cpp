#include "dsattn/reference/compare.h"

#include <cmath>

#include "dsattn/core/error.h"

namespace dsattn::reference {

std::string Comparison::to_string() const {
  return fmt::format("max_abs_err={:.3e} at {} (ref max {:.3e}), rel_l2={:.3e}{}", max_abs_error,
                     worst_index, ref_max_abs, relative_l2, finite ? "" : ", NON-FINITE");
}

Comparison compare(std::span<const double> out, std::span<const double> ref) {
  if (out.size() != ref.size()) {
    fail("compare needs equal sizes: output has {} elements, reference {}", out.size(), ref.size());
  }
  Comparison c;
  double err_sq = 0, ref_sq = 0;
  std::int64_t first_non_finite = -1;
  for (std::size_t i = 0; i < out.size(); ++i) {
    c.ref_max_abs = std::max(c.ref_max_abs, std::fabs(ref[i]));
    ref_sq += ref[i] * ref[i];
    if (!std::isfinite(out[i])) {
      if (first_non_finite < 0) first_non_finite = static_cast<std::int64_t>(i);
      continue;
    }
    const double e = std::fabs(out[i] - ref[i]);
    if (c.worst_index < 0 || e > c.max_abs_error) {
      c.max_abs_error = e;
      c.worst_index = static_cast<std::int64_t>(i);
    }
    err_sq += e * e;
  }
  if (first_non_finite >= 0) {
    c.finite = false;
    c.worst_index = first_non_finite;
  }
  c.relative_l2 = ref_sq > 0 ? std::sqrt(err_sq / ref_sq) : std::sqrt(err_sq);
  return c;
}

std::vector<double> to_doubles(const TensorView& t) {
  if (!t.device().is_cpu() || !t.is_contiguous()) fail("to_doubles needs a contiguous CPU tensor");
  std::vector<double> v(static_cast<std::size_t>(t.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (t.dtype() == DType::bf16) {
      v[i] = t.ptr<bf16>()[i].to_float();
    } else if (t.dtype() == DType::f32) {
      v[i] = t.ptr<float>()[i];
    } else {
      fail("to_doubles needs a bf16 or f32 tensor, got {}", dtype_name(t.dtype()));
    }
  }
  return v;
}

bool within_tolerance(const Comparison& out, const Comparison& plain, double relative_atol) {
  return out.finite &&
         out.max_abs_error <= 2.0 * plain.max_abs_error + relative_atol * out.ref_max_abs;
}

}  // namespace dsattn::reference
