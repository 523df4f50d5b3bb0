// AttentionLayer::run on the GPU: a planned prefill batch (dense, row-split and sparse requests,
// or masked MHA) runs inside a CUDA graph capture (global mode, as torch.cuda.graph uses), which
// fails on any upload or synchronisation, and the graph's replay gives the layer's forward bit
// for bit, on the layer that planned it and on a second layer of the same cache.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <memory>

#include "decode_test_util.h"
#include "dsattn/core/cuda_runtime.h"
#include "dsattn/core/random.h"
#include "dsattn/layer/attention_stack.h"
#include "gpu_test_util.h"

namespace dsattn {
namespace {

using gpu_test::gpu;
using gpu_test::prefill_prompts;
using gpu_test::Prefilled;
namespace test = gpu_test;

class ForwardPlanGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "needs a CUDA GPU (sm_90)";
  }
};

// auto with a profile where dense work is free: the row split wherever a context passes
// index_topk inside the extend.
Policy dense_free_policy() {
  auto profile = std::make_shared<CostProfile>();
  profile->mla_s_per_flop = profile->absorb_s_per_flop = profile->score_s_per_pair = 1.0;
  Policy p = Policy::parse("auto");
  p.profile = profile;
  return p;
}

void captured_run_matches_the_forward(const Policy& policy, std::vector<Path> expected_paths) {
  const AttentionConfig c = gpu_test::decode_test_config(32);
  AttentionStack stack = AttentionStack::synthetic(c, 2, 31, Policy::parse("mla"), gpu());
  // Prefixes of 12, 36 and 30 tokens; this batch adds 8, 4 and 10 (contexts 20, 40 and 40).
  const std::vector<std::int64_t> prefix = {12, 36, 30}, extend = {8, 4, 10};
  Prefilled a = prefill_prompts(stack, prefix, 64, LatentFormat::bf16, 16);
  Prefilled b = prefill_prompts(stack, prefix, 64, LatentFormat::bf16, 16);
  stack.set_policy(policy);
  Batch batch_a, batch_b;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    batch_a.requests.push_back({prefix[i], extend[i], a.tables[i]});
    batch_b.requests.push_back({prefix[i], extend[i], b.tables[i]});
  }
  const std::int64_t T = batch_a.total_tokens();
  Tensor x_host = Tensor::empty({T, c.hidden_size}, DType::bf16);
  fill_uniform(x_host, 77, 1, 1.0f);
  const Tensor x = x_host.to(gpu());
  const ForwardPlan plan = stack.layer(0).plan(batch_a, a.cache->layer(0));
  EXPECT_EQ(plan.paths(), expected_paths);

  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  for (std::int64_t l = 0; l < 2; ++l) {
    SCOPED_TRACE("layer " + std::to_string(l));
    const AttentionLayer& layer = stack.layer(l);
    const Tensor out = test::poisoned({T, c.hidden_size}, DType::bf16).to(gpu());
    const Tensor lse = test::poisoned({T, c.num_heads}, DType::f32).to(gpu());
    RunOptions options;
    options.lse = lse.view();
    cuda::MemoryPool pool;  // the graph's temporaries: kept until the graph is gone
    cudaGraphExec_t exec = nullptr;
    {
      cuda::StreamGuard on(stream);
      cuda::MemoryPool::Use use(pool);
      layer.run(plan, x, a.cache->layer(l), out, options);  // warm: the pool gets its blocks
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      cudaGraph_t graph = nullptr;
      ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
      layer.run(plan, x, a.cache->layer(l), out, options);
      ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
      ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
      cudaGraphDestroy(graph);
      copy(test::poisoned({T, c.hidden_size}, DType::bf16), out);
      copy(test::poisoned({T, c.num_heads}, DType::f32), lse);
      ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    }
    const Tensor want = Tensor::empty({T, c.hidden_size}, DType::bf16, gpu());
    const Tensor want_lse = Tensor::empty({T, c.num_heads}, DType::f32, gpu());
    ForwardOptions fo;
    fo.lse = want_lse.view();
    layer.forward(batch_b, x, b.cache->layer(l), want, fo);
    EXPECT_TRUE(test::same_bytes(out.to(Device::cpu()), want.to(Device::cpu()), "output"));
    EXPECT_TRUE(test::same_bytes(lse.to(Device::cpu()), want_lse.to(Device::cpu()), "lse"));
    cudaGraphExecDestroy(exec);
  }
  cudaStreamDestroy(stream);
}

TEST_F(ForwardPlanGpu, DenseRowSplitAndSparseRunInACaptureAsTheForward) {
  captured_run_matches_the_forward(dense_free_policy(),
                                   {Path::dense_mha, Path::sparse_mla, Path::row_split});
}

TEST_F(ForwardPlanGpu, MaskedMhaRunsInACaptureAsTheForward) {
  captured_run_matches_the_forward(Policy::parse("masked"), std::vector<Path>(3, Path::masked_mha));
}

}  // namespace
}  // namespace dsattn
