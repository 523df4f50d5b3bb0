// Decode in one CUDA graph: replays give the same outputs as the layer's regular forward, for a
// batch mixing contexts below and above index_topk (the indexer is skipped inside the kernels
// for the short ones), step after step.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "decode_test_util.h"
#include "dsattn/core/cuda_runtime.h"
#include "dsattn/core/random.h"
#include "dsattn/layer/decode_graph.h"

namespace dsattn {
namespace {

using ::testing::HasSubstr;

class DecodeGraphGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "needs a CUDA GPU (sm_90)";
  }
};

using gpu_test::prefill_prompts;
using gpu_test::Prefilled;

// With `index_share`, layers 1 and 2 of three take layer 0's top-k (IndexShare) inside the graph.
void run_steps(LatentFormat format, bool index_share = false) {
  AttentionConfig c = gpu_test::decode_test_config(32);
  if (index_share) c.shared_topk_layers = {false, true, true};
  const AttentionStack stack =
      AttentionStack::synthetic(c, index_share ? 3 : 2, 17, {}, Device::cuda(0));
  // Contexts 9..., 31 -> 32 (crosses index_topk during the steps), 40 and 90 (long).
  const std::vector<std::int64_t> prompts = {8, 30, 40, 90};
  const std::int64_t steps = 4, max_context = 96;
  Prefilled a = prefill_prompts(stack, prompts, max_context, format);
  Prefilled b = prefill_prompts(stack, prompts, max_context, format);
  DecodeGraph graph(stack, *a.cache, static_cast<std::int64_t>(prompts.size()), 1, max_context);
  for (std::int64_t s = 0; s < steps; ++s) {
    std::vector<RequestInput> reqs_a, reqs_b;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      reqs_a.push_back({prompts[i] + s, 1, a.tables[i]});
      reqs_b.push_back({prompts[i] + s, 1, b.tables[i]});
    }
    Tensor x =
        Tensor::empty({static_cast<std::int64_t>(prompts.size()), c.hidden_size}, DType::bf16);
    fill_uniform(x, 100 + s, 2, 1.0f);
    // The graph's residual stream, on its own stream.
    {
      cuda::StreamGuard none(nullptr);
      copy(x.to(Device::cuda(0)), graph.hidden());
    }
    graph.step(reqs_a);
    graph.synchronize();
    Tensor via_graph =
        Tensor::empty({static_cast<std::int64_t>(prompts.size()), c.hidden_size}, DType::bf16);
    copy(graph.hidden(), via_graph);
    // The regular forward on the twin cache.
    Batch batch;
    batch.mode = ForwardMode::decode;
    batch.requests = reqs_b;
    const Tensor xd = x.to(Device::cuda(0));
    stack.forward(batch, xd, *b.cache);
    const Tensor via_forward = xd.to(Device::cpu());
    for (std::int64_t i = 0; i < via_graph.numel(); ++i) {
      ASSERT_EQ(via_graph.ptr<bf16>()[i].bits, via_forward.ptr<bf16>()[i].bits)
          << "step " << s << " element " << i;
    }
  }
  EXPECT_TRUE(graph.captured());
  EXPECT_GT(graph.reserved_bytes(), 0u);
}

TEST_F(DecodeGraphGpu, ReplaysMatchTheForwardAcrossTopkBf16Cache) { run_steps(LatentFormat::bf16); }
TEST_F(DecodeGraphGpu, ReplaysMatchTheForwardAcrossTopkFp8Cache) { run_steps(LatentFormat::fp8); }
TEST_F(DecodeGraphGpu, ReplaysMatchTheForwardWithIndexShare) {
  run_steps(LatentFormat::fp8, /*index_share=*/true);
}

TEST_F(DecodeGraphGpu, RefusesABatchThatDoesNotFit) {
  const AttentionConfig c = gpu_test::decode_test_config(32);
  const AttentionStack stack = AttentionStack::synthetic(c, 1, 17, {}, Device::cuda(0));
  Prefilled a = prefill_prompts(stack, {8, 9}, 64, LatentFormat::bf16);
  DecodeGraph graph(stack, *a.cache, 2, 1, 64);
  const std::vector<RequestInput> one = {{8, 1, a.tables[0]}};
  try {
    graph.step(one);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("decode graph step needs 2 requests, got 1"));
  }
  const std::vector<RequestInput> too_long = {{8, 1, a.tables[0]}, {64, 1, a.tables[1]}};
  try {
    graph.step(too_long);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("context of 65 exceeds the graph's max_context 64"));
  }
}

}  // namespace
}  // namespace dsattn
