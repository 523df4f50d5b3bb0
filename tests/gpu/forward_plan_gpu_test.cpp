// AttentionLayer::run on the GPU: a planned prefill batch (dense, row-split and sparse requests,
// or masked MHA) runs inside a CUDA graph capture (global mode, as torch.cuda.graph uses), which
// fails on any upload or synchronisation, and the graph's replay gives the layer's forward bit
// for bit, on the layer that planned it and on a second layer of the same cache.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <memory>
#include <random>

#include "decode_test_util.h"
#include "dsattn/core/cuda_runtime.h"
#include "dsattn/core/random.h"
#include "dsattn/layer/attention_stack.h"
#include "dsattn/ops/cache_ops.h"
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

// build_prefill_tables on the GPU gives the CPU's tables, slots and faults, bad entries included.
TEST_F(ForwardPlanGpu, PrefillTablesMatchTheCpu) {
  std::mt19937 gen(8);
  const std::int64_t batch = 29, page_size = 16, num_pages = 40, max_pages = 9, width = 11;
  std::vector<std::int32_t> prefix(batch), cu{0}, entries(batch * width);
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t context = std::uniform_int_distribution<int>(1, max_pages * page_size)(gen);
    const std::int64_t extend = std::uniform_int_distribution<std::int64_t>(1, context)(gen);
    prefix[b] = static_cast<std::int32_t>(context - extend);
    cu.push_back(static_cast<std::int32_t>(cu.back() + extend));
  }
  for (auto& e : entries) e = std::uniform_int_distribution<int>(-2, num_pages + 1)(gen);
  const auto host = [](const std::vector<std::int32_t>& v, std::vector<std::int64_t> shape) {
    Tensor t = Tensor::empty(shape, DType::i32);
    std::copy(v.begin(), v.end(), t.ptr<std::int32_t>());
    return t;
  };
  const Tensor p = host(prefix, {batch}), c = host(cu, {batch + 1});
  const Tensor in = host(entries, {batch, width});
  const auto build = [&](Device d) {
    Tensor tables = test::poisoned({batch, max_pages}, DType::i32).to(d);
    Tensor slots = test::poisoned({cu.back()}, DType::i32).to(d);
    Tensor faults = host({0}, {1}).to(d);
    ops::build_prefill_tables(p.to(d), c.to(d), in.to(d), page_size, num_pages, tables, slots,
                              faults);
    return std::vector<Tensor>{tables.to(Device::cpu()), slots.to(Device::cpu()),
                               faults.to(Device::cpu())};
  };
  const std::vector<Tensor> cpu = build(Device::cpu()), dev = build(gpu());
  EXPECT_TRUE(test::same_bytes(dev[0], cpu[0], "tables"));
  EXPECT_TRUE(test::same_bytes(dev[1], cpu[1], "slots"));
  EXPECT_TRUE(test::same_bytes(dev[2], cpu[2], "faults"));
  EXPECT_EQ(cpu[2].ptr<std::int32_t>()[0], ops::kDecodeFaultPage);
}

// A plan over device block tables (the caller's cache: a view without an allocator), run on
// another stream than the one it was planned on, gives the plan over the same tables on the
// host, bit for bit.
TEST_F(ForwardPlanGpu, DeviceTablesPlanRunsAsTheHostTablesPlan) {
  const AttentionConfig c = gpu_test::decode_test_config(32);
  AttentionStack stack = AttentionStack::synthetic(c, 1, 33, Policy::parse("mla"), gpu());
  const std::vector<std::int64_t> prefix = {12, 36, 30}, extend = {8, 4, 10};
  Prefilled a = prefill_prompts(stack, prefix, 64, LatentFormat::bf16, 16);
  Prefilled b = prefill_prompts(stack, prefix, 64, LatentFormat::bf16, 16);
  stack.set_policy(dense_free_policy());
  const AttentionLayer& layer = stack.layer(0);
  LayerCacheView view_a = a.cache->layer(0), view_b = b.cache->layer(0);
  view_a.allocator = view_b.allocator = nullptr;
  Batch host_batch, lengths;
  std::vector<std::int32_t> rows;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    host_batch.requests.push_back({prefix[i], extend[i], b.tables[i]});
    lengths.requests.push_back({prefix[i], extend[i], {}});
    for (std::size_t j = 0; j < 4; ++j) rows.push_back(a.tables[i][j]);
  }
  Tensor tables_host = Tensor::empty({3, 4}, DType::i32);
  std::copy(rows.begin(), rows.end(), tables_host.ptr<std::int32_t>());
  const Tensor tables = tables_host.to(gpu());
  const std::int64_t T = host_batch.total_tokens();
  Tensor x_host = Tensor::empty({T, c.hidden_size}, DType::bf16);
  fill_uniform(x_host, 78, 1, 1.0f);
  const Tensor x = x_host.to(gpu());
  const ForwardPlan device_plan = layer.plan(lengths, tables.view(), view_a);
  const ForwardPlan host_plan = layer.plan(host_batch, view_b);
  EXPECT_EQ(device_plan.paths(), host_plan.paths());
  const Tensor got = test::poisoned({T, c.hidden_size}, DType::bf16).to(gpu());
  const Tensor want = Tensor::empty({T, c.hidden_size}, DType::bf16, gpu());
  // Planned on the default stream, run on another: the plan is complete when plan() returns.
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  {
    cuda::StreamGuard on(stream);
    layer.run(device_plan, x, view_a, got);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  }
  cudaStreamDestroy(stream);
  layer.run(host_plan, x, view_b, want);
  EXPECT_TRUE(test::same_bytes(got.to(Device::cpu()), want.to(Device::cpu()), "output"));
  EXPECT_TRUE(device_plan.faults().empty());
}

}  // namespace
}  // namespace dsattn
