// Measuring a cost profile (cost_model.h) on a device: one layer with synthetic weights runs
// prefill batches of several shapes on each exact path, and each path's costs are fitted to the
// path's measured time. `dsattn calibrate` writes the result as JSON.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/layer/cost_model.h"

namespace dsattn {

// `requests` requests, each `extend` new tokens over a cached prefix of `prefix`.
struct CalibrationShape {
  std::int64_t requests = 1, prefix = 0, extend = 1;
};

// The shapes calibrate() times: short and long prompts, prefix-heavy chunks, contexts past
// index_topk for the sparse and masked paths. Full-size batches (up to 16K tokens) on a GPU
// (seconds on an H200); small ones on the CPU backend (about 40 s on two cores).
std::vector<CalibrationShape> calibration_shapes(const AttentionConfig& config, Device device);

// Times every shape on each exact path (the median of `repeats` forwards after a warm-up: dense
// MHA where it is exact, masked MHA where it is not, sparse MLA always) and fits each path's
// costs (masked MHA's with at least two shapes past index_topk). `progress` receives one line
// per shape.
CostProfile calibrate(const AttentionConfig& config, Device device, LatentFormat cache_format,
                      const std::vector<CalibrationShape>& shapes, int repeats = 3,
                      const std::function<void(const std::string&)>& progress = {});

}  // namespace dsattn
