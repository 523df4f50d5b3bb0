// Runs the layer on a batch under each policy and measures every output row against the float64
// reference with the tolerance scheme of compare.h. Shared by `dsattn check` and the tests.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/layer/planner.h"
#include "dsattn/reference/compare.h"

namespace dsattn::reference {

struct CheckRequest {
  std::int64_t prefix_len = 0;  // prefilled (in chunks of at most `prefix_chunk`) before the check
  std::int64_t extend_len = 1;
};

struct CheckCase {
  AttentionConfig config;
  std::vector<CheckRequest> requests;
  ForwardMode mode = ForwardMode::prefill;
  std::uint64_t seed = 0;
  std::int64_t prefix_chunk = 1 << 30;
  LatentFormat latent_format = LatentFormat::bf16;
  IndexKeyLayout index_key_layout = IndexKeyLayout::rows;
  Device device = Device::cpu();  // where the layer runs (the reference always runs on the CPU)

  std::string to_string() const;
};

struct PolicyCheck {
  std::string policy;
  std::vector<Path> paths;
  Comparison engine;  // this policy's output vs float64
  Comparison plain;   // the plain bf16 implementation vs float64, on the same key sets
  bool pass = false;
  std::vector<double> output;  // [total rows * hidden], as doubles
};

// max |a - b| / max |b| (max |a - b| where b is all zeros); +inf when either holds a NaN or an
// Inf: a non-finite value is a disagreement, never dropped by a maximum.
double relative_difference(std::span<const double> a, std::span<const double> b);

struct CaseReport {
  std::vector<PolicyCheck> checks;
  // max |y_mha - y_mla| / max |y_mla| when both forced paths ran (dense MHA exact everywhere),
  // else negative.
  double mha_mla_relative_difference = -1;
  bool pass = false;

  std::string to_string() const;
};

// Checks `policies` (default: mla, masked, per-request, and mha where it is exact for every
// request).
CaseReport check_case(const CheckCase& c, std::vector<Policy> policies = {});

// A small random configuration and batch (and cache format), from `seed`.
CheckCase random_case(std::uint64_t seed);

}  // namespace dsattn::reference
