// Every CUDA op launches on the thread's current stream (core/cuda_runtime.h), so that an engine's
// stream orders dsattn's work with its own. Checked by making the legacy default stream busy
// first: an op launched there instead would still be queued when the result is copied back on
// the current (non-blocking) stream, and the copy would read the poisoned output.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "dsattn/ops/elementwise.h"
#include "dsattn/ops/gemm.h"
#include "dsattn/ops/norm.h"
#include "dsattn/ops/topk.h"
#include "gpu_test_util.h"

namespace dsattn::gpu_test {
namespace {

using StreamGpu = GpuTest;

// Device-to-device copies on the legacy default stream, long enough (~0.5 ms on an H100) that
// work queued behind them is still pending when the test reads its results.
class BusyDefaultStream {
 public:
  BusyDefaultStream() {
    EXPECT_EQ(cudaMalloc(&a_, kBytes), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&b_, kBytes), cudaSuccess);
  }
  ~BusyDefaultStream() {
    cudaDeviceSynchronize();
    cudaFree(a_);
    cudaFree(b_);
  }
  void occupy() {
    for (int i = 0; i < 10; ++i) {
      EXPECT_EQ(cudaMemcpyAsync(i % 2 ? a_ : b_, i % 2 ? b_ : a_, kBytes, cudaMemcpyDeviceToDevice,
                                cudaStreamLegacy),
                cudaSuccess);
    }
  }

 private:
  static constexpr std::size_t kBytes = 64u << 20;
  void* a_ = nullptr;
  void* b_ = nullptr;
};

TEST_F(StreamGpu, OpsRunOnTheCurrentStream) {
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  {
    BusyDefaultStream busy;
    // Inputs and poisoned outputs, all allocated and copied before the default stream is made
    // busy (an allocation may synchronise the device).
    Tensor a = random_tensor({256, 512}, DType::bf16, 140, 1);
    Tensor b = random_tensor({384, 512}, DType::bf16, 140, 2, 0.05);
    Tensor w = random_tensor({512}, DType::bf16, 140, 3);
    Tensor scores = random_tensor({16, 4096}, DType::f32, 140, 4);
    Tensor lengths = i32_tensor(std::vector<std::int32_t>(16, 4096));
    const Mirror a_dev(a), b_dev(b), w_dev(w), scores_dev(scores), lengths_dev(lengths);
    const Mirror sum_dev(poisoned({256, 512}, DType::bf16)),
        norm_dev(poisoned({256, 512}, DType::bf16)), c_dev(poisoned({256, 384}, DType::f32)),
        top_dev(poisoned({16, 2048}, DType::i32));
    // cuBLASLt's handle, workspace and plan for this shape are made here, before the busy work.
    ops::gemm(a_dev.on_gpu(), b_dev.on_gpu(), c_dev.on_gpu(), ops::BLayout::nt);
    dsattn::cuda::synchronize();
    const Tensor c_poisoned = poisoned({256, 384}, DType::f32);
    copy(c_poisoned, c_dev.on_gpu());

    // The CPU results.
    Tensor sum = Tensor::empty({256, 512}, DType::bf16),
           norm = Tensor::empty({256, 512}, DType::bf16);
    Tensor c = Tensor::empty({256, 384}, DType::f32), top = Tensor::empty({16, 2048}, DType::i32);
    ops::add(a, a, sum);
    ops::rms_norm(a, w, 1e-6f, norm);
    ops::gemm(a, b, c, ops::BLayout::nt);
    ops::topk(scores, lengths, top);

    busy.occupy();
    dsattn::cuda::StreamGuard guard(stream);
    ops::add(a_dev.on_gpu(), a_dev.on_gpu(), sum_dev.on_gpu());
    ops::rms_norm(a_dev.on_gpu(), w_dev.on_gpu(), 1e-6f, norm_dev.on_gpu());
    ops::gemm(a_dev.on_gpu(), b_dev.on_gpu(), c_dev.on_gpu(), ops::BLayout::nt);
    ops::topk(scores_dev.on_gpu(), lengths_dev.on_gpu(), top_dev.on_gpu());
    // Copies back on the current stream: each must see its op's output.
    EXPECT_TRUE(same_bytes(sum, sum_dev.fetch(), "add"));
    const Tensor norm_gpu = norm_dev.fetch(), c_gpu = c_dev.fetch();
    EXPECT_TRUE(same_bytes(top, top_dev.fetch(), "topk"));
    for (const auto& [name, out] : {std::pair{"rms_norm", &norm_gpu}, std::pair{"gemm", &c_gpu}}) {
      const std::vector<double> v = read_doubles(*out);
      const std::size_t non_finite = static_cast<std::size_t>(
          std::count_if(v.begin(), v.end(), [](double x) { return !std::isfinite(x); }));
      EXPECT_EQ(non_finite, 0u) << name << ": output still poisoned: the op ran on another stream";
    }
  }
  EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

}  // namespace
}  // namespace dsattn::gpu_test
