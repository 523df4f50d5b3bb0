// Timing for benchmarks: median milliseconds of many runs after warm-up, with CUDA events on a
// GPU (the work is asynchronous) and a steady clock on the CPU.
#pragma once

#include <functional>

#include "dsattn/core/tensor.h"

namespace dsattn::tools {

struct Timing {
  double median_ms = 0;
  int runs = 0;
};

// Runs `fn` twice to warm up, then enough times to fill about `budget_ms` (between 3 and 50
// runs), and returns the median.
Timing time_median(Device device, const std::function<void()>& fn, double budget_ms = 300);

}  // namespace dsattn::tools
