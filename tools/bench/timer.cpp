#include "bench/timer.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "dsattn/core/cuda_runtime.h"
#ifdef DSATTN_WITH_CUDA
#include <cuda_runtime_api.h>

#include "dsattn/core/cuda_check.h"
#endif

namespace dsattn::tools {

namespace {

// Milliseconds of one call of fn on `device`.
double time_once(Device device, const std::function<void()>& fn) {
#ifdef DSATTN_WITH_CUDA
  if (device.is_cuda()) {
    cudaEvent_t start, stop;
    DSATTN_CUDA_CHECK(cudaEventCreate(&start));
    DSATTN_CUDA_CHECK(cudaEventCreate(&stop));
    const auto stream = static_cast<cudaStream_t>(cuda::current_stream());
    DSATTN_CUDA_CHECK(cudaEventRecord(start, stream));
    fn();
    DSATTN_CUDA_CHECK(cudaEventRecord(stop, stream));
    DSATTN_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    DSATTN_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return ms;
  }
#endif
  (void)device;
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Timing time_median(Device device, const std::function<void()>& fn, double budget_ms) {
  time_once(device, fn);
  const double first = time_once(device, fn);
  const int runs = std::clamp(static_cast<int>(budget_ms / std::max(first, 1e-3)), 3, 50);
  std::vector<double> ms(runs);
  for (double& m : ms) m = time_once(device, fn);
  std::nth_element(ms.begin(), ms.begin() + runs / 2, ms.end());
  return {ms[runs / 2], runs};
}

}  // namespace dsattn::tools
