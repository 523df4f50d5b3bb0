// Comparing outputs with a float64 reference, FlashAttention style: a result passes when its
// largest error is at most twice that of a plain same-precision implementation, plus a small
// atol relative to the reference's magnitude. NaN or Inf never pass.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dsattn/core/tensor.h"

namespace dsattn::reference {

struct Comparison {
  double max_abs_error = 0;       // max |out - ref|
  std::int64_t worst_index = -1;  // flat index of that element
  double ref_max_abs = 0;         // max |ref|
  double relative_l2 = 0;         // ||out - ref|| / ||ref||
  bool finite = true;             // every output element is finite

  std::string to_string() const;
};

Comparison compare(std::span<const double> out, std::span<const double> ref);
// Widens a bf16 or f32 CPU tensor to doubles, row-major.
std::vector<double> to_doubles(const TensorView& t);

// Default atol of the scheme: 1e-3 of the reference's largest magnitude.
inline constexpr double kRelativeAtol = 1e-3;

// out passes when finite and out.max_abs_error <= 2 · plain.max_abs_error + atol.
bool within_tolerance(const Comparison& out, const Comparison& plain,
                      double relative_atol = kRelativeAtol);

}  // namespace dsattn::reference
