#include "dsattn/ops/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "dsattn/ops/op_checks.h"

namespace dsattn::ops {

namespace {

// The rotary dimension whose wavelength completes `rotations` turns over the original context.
double correction_dim(double rotations, std::int64_t dim, double base, double max_positions) {
  return static_cast<double>(dim) * std::log(max_positions / (rotations * 2.0 * std::numbers::pi)) /
         (2.0 * std::log(base));
}

}  // namespace

RopeTable RopeTable::from_config(const AttentionConfig& config, std::int64_t rotary_dim) {
  if (rotary_dim <= 0 || rotary_dim % 2 != 0) {
    fail("rotary_dim must be a positive even number, got {}", rotary_dim);
  }
  RopeTable t;
  const std::int64_t pairs = rotary_dim / 2;
  t.inv_freq.resize(pairs);
  for (std::int64_t i = 0; i < pairs; ++i) {
    t.inv_freq[i] = 1.0 / std::pow(config.rope_theta, static_cast<double>(2 * i) / rotary_dim);
  }
  if (config.use_yarn) {
    const YarnScaling& y = config.yarn;
    const double original = static_cast<double>(y.original_max_position_embeddings);
    double low = std::floor(correction_dim(y.beta_fast, rotary_dim, config.rope_theta, original));
    double high = std::ceil(correction_dim(y.beta_slow, rotary_dim, config.rope_theta, original));
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(rotary_dim - 1));
    if (low == high) high += 0.001;  // avoid a zero-width ramp
    for (std::int64_t i = 0; i < pairs; ++i) {
      const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
      const double smooth = 1.0 - ramp;  // 1: keep the frequency, 0: divide it by the factor
      t.inv_freq[i] = t.inv_freq[i] / y.factor * (1.0 - smooth) + t.inv_freq[i] * smooth;
    }
    t.mscale = config.rope_mscale();
  }
  return t;
}

void apply_rope(const TensorView& x, const TensorView& positions, const RopeTable& table,
                RopeLayout layout) {
  check_dtype(x, "x", DType::bf16);
  check_shape(x, "x", {kAny, kAny, table.rotary_dim()});
  check_inner_contiguous(x, "x");
  check_dtype(positions, "positions", DType::i32);
  check_shape(positions, "positions", {x.size(0)});
  check_contiguous(positions, "positions");
  const Device d = common_device({{"x", &x}, {"positions", &positions}});
  if (d.is_cpu()) {
    const std::int32_t* p = positions.ptr<std::int32_t>();
    for (std::int64_t i = 0; i < positions.size(0); ++i) {
      DSATTN_CHECK(p[i] >= 0, "positions[{}] must be non-negative, got {}", i, p[i]);
    }
  }
  if (x.numel() == 0) return;
  DSATTN_DISPATCH(d, apply_rope, x, positions, table, layout);
}

}  // namespace dsattn::ops
