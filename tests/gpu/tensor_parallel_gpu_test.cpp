// Tensor parallelism over heads on the GPU:
//   - every rank-local layer of a head split on one GPU, the shares summed: the unsharded
//     layer's output within the tolerance scheme, on every path (also at DeepSeek-V3.2's head
//     dims, where a rank's 32 or 16 heads run the tensor-core kernels);
//   - TensorParallelLayer over an NCCL communicator of one rank: the plain layer, bit for bit, and
//     so is a one-rank stack whose decode steps (all-reduce included) replay a CUDA graph;
//   - with two or more GPUs, one NCCL rank per GPU: every rank holds the same bits, within the
//     tolerance scheme of the float64 reference (skipped on a single GPU).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <thread>

#include "dsattn/layer/decode_graph.h"
#include "dsattn/parallel/nccl_communicator.h"
#include "dsattn/parallel/tensor_parallel_stack.h"
#include "gpu_test_util.h"
#include "parallel/rank_sum_check.h"

namespace dsattn::gpu_test {
namespace {

using tp_test::LayerRun;
using tp_test::Scenario;

const Scenario kMixedPrefill{"MixedPrefill", {{20, 9}, {0, 45}, {40, 6}}, ForwardMode::prefill, 8};
const Scenario kShortPrefill{"ShortPrefill", {{12, 10}, {0, 32}, {25, 7}}, ForwardMode::prefill, 5};
const Scenario kDecode{"Decode", {{10, 1}, {31, 1}, {50, 1}}, ForwardMode::decode, 16};
const Scenario kVerify{"Verify", {{20, 3}, {30, 3}, {44, 3}}, ForwardMode::decode, 16};

struct SplitCase {
  int world_size;
  LatentFormat format;
  const char* policy;
  Scenario scenario;
  bool model_head_dims = false;  // DeepSeek-V3.2's head dims and 64 heads (32 or 16 per rank)

  std::string name() const {
    std::string p = policy;
    for (char& ch : p) {
      if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
    }
    return fmt::format("{}N{}_{}_{}_{}", model_head_dims ? "ModelHeads_" : "", world_size,
                       format == LatentFormat::fp8 ? "Fp8" : "Bf16", p, scenario.name);
  }
};

void PrintTo(const SplitCase& c, std::ostream* os) { *os << c.name(); }

// DeepSeek-V3.2's head dims (q 192 = 128 + 64, v 128, latent 512 + 64), so that the tensor-core
// MHA and sparse MLA kernels serve the ranks' heads; the other dims small.
AttentionConfig model_head_config() {
  AttentionConfig c;
  c.hidden_size = 256;
  c.num_heads = 64;
  c.q_lora_rank = 128;
  c.index_n_heads = 4;
  c.index_topk = 32;
  return c;
}

AttentionConfig config_of(const SplitCase& c) {
  return c.model_head_dims ? model_head_config() : tp_test::split_config(c.format);
}

class RankSumOnOneGpu : public GpuParamTest<SplitCase> {};

TEST_P(RankSumOnOneGpu, SumOverRanksEqualsUnshardedLayer) {
  const SplitCase& c = GetParam();
  const AttentionConfig config = config_of(c);
  const LayerWeights weights = LayerWeights::synthetic(config, 31);
  const Policy policy = Policy::parse(c.policy);
  const std::vector<Tensor> hidden = tp_test::scenario_inputs(config, c.scenario, 500);

  const LayerRun full = tp_test::run_layer(AttentionLayer(config, weights.to(gpu()), policy),
                                           c.scenario, c.format, hidden, gpu());
  std::vector<Tensor> shares;
  for (int r = 0; r < c.world_size; ++r) {
    const parallel::HeadShard shard = parallel::head_shard(config, r, c.world_size);
    const LayerRun rank =
        tp_test::run_layer(parallel::rank_local_layer(config, weights, shard, policy, gpu()),
                           c.scenario, c.format, hidden, gpu());
    EXPECT_EQ(rank.paths, full.paths)
        << "rank " << r << " took " << tp_test::paths_string(rank.paths);
    EXPECT_EQ(tp_test::topk_difference(rank, full), "") << "rank " << r;
    EXPECT_EQ(rank.cached, full.cached) << "rank " << r << "'s replicated cache differs";
    shares.push_back(rank.output);
  }
  const Tensor sum = tp_test::sum_in_rank_order(shares);
  const tp_test::Reference ref =
      tp_test::reference_outputs(config, weights, c.scenario, c.format, hidden, full);
  EXPECT_EQ(tp_test::tolerance_failure("the unsharded layer", full.output, ref), "");
  EXPECT_EQ(tp_test::tolerance_failure("the sum over ranks", sum, ref), "");
  EXPECT_LE(testing::relative_difference(sum, full.output), testing::kBf16Agreement);
}

std::vector<SplitCase> split_cases() {
  std::vector<SplitCase> cases;
  for (int n : {2, 4}) {
    for (LatentFormat f : {LatentFormat::bf16, LatentFormat::fp8}) {
      for (const char* policy : {"per-request", "threshold", "mla"}) {
        for (const Scenario& s : {kMixedPrefill, kDecode, kVerify}) {
          cases.push_back({n, f, policy, s});
        }
      }
      cases.push_back({n, f, "mha", kShortPrefill});
      // 32 and 16 heads per rank at the model's head dims.
      for (const char* policy : {"per-request", "mla"}) {
        for (const Scenario& s : {kMixedPrefill, kVerify}) {
          cases.push_back({n, f, policy, s, /*model_head_dims=*/true});
        }
      }
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Paths, RankSumOnOneGpu, ::testing::ValuesIn(split_cases()),
                         [](const auto& info) { return info.param.name(); });

class NcclGpu : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    if (!parallel::nccl_available()) GTEST_SKIP() << "this build has no NCCL";
  }
};

// A group of one rank: the head shard is the whole layer and the all-reduce leaves the output as
// it is, so the tensor-parallel layer is the plain layer bit for bit, on every path.
TEST_F(NcclGpu, OneRankGroupEqualsPlainLayerBitForBit) {
  const int devices[] = {0};
  auto group = parallel::NcclCommunicator::local_group(devices);
  ASSERT_EQ(group.size(), 1u);
  EXPECT_EQ(group[0]->rank(), 0);
  EXPECT_EQ(group[0]->world_size(), 1);
  for (LatentFormat format : {LatentFormat::bf16, LatentFormat::fp8}) {
    const AttentionConfig config = tp_test::split_config(format);
    const LayerWeights weights = LayerWeights::synthetic(config, 43);
    for (const Scenario& s : {kMixedPrefill, kDecode, kVerify}) {
      const std::vector<Tensor> hidden = tp_test::scenario_inputs(config, s, 700);
      const parallel::HeadShard shard = parallel::head_shard(config, 0, 1);
      const parallel::TensorParallelLayer tp(
          parallel::rank_local_layer(config, weights, shard, {}, gpu()), shard, *group[0]);
      const LayerRun ranked = tp_test::run_scenario(
          config,
          [&](const Batch& b, const TensorView& in, const LayerCacheView& cache,
              const TensorView& out,
              const ForwardOptions& o) { return tp.forward(b, in, cache, out, o); },
          s, format, hidden, gpu(), /*in_place=*/true);
      const LayerRun plain =
          tp_test::run_layer(AttentionLayer(config, weights.to(gpu())), s, format, hidden, gpu());
      EXPECT_TRUE(tp_test::same_bits(ranked.output, plain.output)) << s.name;
      EXPECT_EQ(ranked.paths, plain.paths) << s.name;
      EXPECT_EQ(ranked.cached, plain.cached) << s.name;
    }
  }
}

TEST_F(NcclGpu, AllReduceRefusesTensorsItCannotSum) {
  const int devices[] = {0};
  auto group = parallel::NcclCommunicator::local_group(devices);
  const Tensor host = Tensor::empty({4, 8}, DType::bf16);
  EXPECT_TRUE(throws_naming<InvalidArgument>([&] { group[0]->all_reduce_sum(host); },
                                             {"all_reduce_sum tensor", "cuda:0", "cpu"}));
  const Tensor f32 = Tensor::empty({4, 8}, DType::f32, gpu());
  EXPECT_TRUE(throws_naming<InvalidArgument>([&] { group[0]->all_reduce_sum(f32); },
                                             {"dtype bf16", "f32"}));
  EXPECT_TRUE(throws_naming<InvalidArgument>(
      [&] { parallel::NcclCommunicator::local_group(std::vector<int>{cuda::device_count()}); },
      {"NCCL device must be in [0,"}));
  EXPECT_TRUE(throws_naming<InvalidArgument>(
      [&] { parallel::NcclCommunicator(parallel::NcclUniqueId::create(), 2, 2, 0); },
      {"NCCL rank must be in [0, 2), got 2"}));
}

// A prefill of two requests (one past index_topk) through `stack`, then three decode steps
// replayed from one DecodeGraph (the all-reduce of a tensor-parallel stack captured with them);
// returns the residual stream after each, on the host.
std::vector<Tensor> serve_with_graph(const AttentionStack& stack, const AttentionConfig& config,
                                     Device device) {
  CacheOptions o;
  o.num_layers = stack.num_layers();
  o.num_pages = 4;
  o.device = device;
  PagedKvCache cache(config, o);
  BlockTable a, b;
  cache.reserve(a, 48);
  cache.reserve(b, 20);
  std::vector<Tensor> streams;
  Batch prefill;
  prefill.requests = {{0, 45, a}, {0, 17, b}};
  const Tensor hidden = testing::random_hidden(62, config.hidden_size, 5).to(device);
  stack.forward(prefill, hidden, cache);
  streams.push_back(hidden.to(Device::cpu()));
  DecodeGraph graph(stack, cache, 2, 1, 48);
  for (std::int64_t step = 0; step < 3; ++step) {
    const std::vector<RequestInput> requests = {{45 + step, 1, a}, {17 + step, 1, b}};
    copy(testing::random_hidden(2, config.hidden_size, 60 + step), graph.hidden());
    graph.step(requests);
    graph.synchronize();
    Tensor out = Tensor::empty({2, config.hidden_size}, DType::bf16);
    copy(graph.hidden(), out);
    streams.push_back(out);
  }
  return streams;
}

// The stack of a one-rank group, its decode steps captured in a CUDA graph with the NCCL
// all-reduce: the plain stack's residual stream, bit for bit.
TEST_F(NcclGpu, OneRankStackWithDecodeGraphEqualsPlainStackBitForBit) {
  const int devices[] = {0};
  auto group = parallel::NcclCommunicator::local_group(devices);
  const AttentionConfig config = tp_test::split_config(LatentFormat::bf16);
  const AttentionStack full = AttentionStack::synthetic(config, 2, 19);
  const AttentionStack plain = AttentionStack::synthetic(config, 2, 19, {}, gpu());
  const AttentionStack tp =
      parallel::rank_local_stack(full, parallel::head_shard(config, 0, 1), *group[0], gpu());
  const std::vector<Tensor> expected = serve_with_graph(plain, config, gpu());
  const std::vector<Tensor> got = serve_with_graph(tp, config, gpu());
  for (std::size_t f = 0; f < expected.size(); ++f) {
    EXPECT_TRUE(tp_test::same_bits(got[f], expected[f])) << "forward " << f;
  }
}

// One NCCL rank per GPU (two, four or eight of them), one thread each: every rank ends with the
// same bits, which pass the tolerance scheme against the float64 reference on every path.
TEST_F(NcclGpu, OneRankPerGpuHoldsTheSameBitsWithinTolerance) {
  const int gpus = cuda::device_count();
  if (gpus < 2) GTEST_SKIP() << "needs two or more GPUs, found " << gpus;
  const int n = gpus >= 8 ? 8 : gpus >= 4 ? 4 : 2;
  std::vector<int> devices(n);
  for (int d = 0; d < n; ++d) devices[d] = d;
  auto group = parallel::NcclCommunicator::local_group(devices);
  for (LatentFormat format : {LatentFormat::bf16, LatentFormat::fp8}) {
    const AttentionConfig config = tp_test::split_config(format);
    const LayerWeights weights = LayerWeights::synthetic(config, 47);
    for (const char* policy_text : {"per-request", "mla"}) {
      const Policy policy = Policy::parse(policy_text);
      for (const Scenario& s : {kMixedPrefill, kDecode, kVerify}) {
        const std::vector<Tensor> hidden = tp_test::scenario_inputs(config, s, 800);
        std::vector<LayerRun> runs(n);
        std::vector<std::string> errors(n);
        std::vector<std::thread> threads;
        for (int r = 0; r < n; ++r) {
          threads.emplace_back([&, r] {
            try {
              if (cudaSetDevice(r) != cudaSuccess) fail("cudaSetDevice({}) failed", r);
              const parallel::HeadShard shard = parallel::head_shard(config, r, n);
              const parallel::TensorParallelLayer tp(
                  parallel::rank_local_layer(config, weights, shard, policy, Device::cuda(r)),
                  shard, *group[r]);
              runs[r] = tp_test::run_scenario(
                  config,
                  [&](const Batch& b, const TensorView& in, const LayerCacheView& cache,
                      const TensorView& out,
                      const ForwardOptions& o) { return tp.forward(b, in, cache, out, o); },
                  s, format, hidden, Device::cuda(r), /*in_place=*/true);
            } catch (const std::exception& e) {
              errors[r] = e.what();
            }
          });
        }
        for (std::thread& t : threads) t.join();
        for (int r = 0; r < n; ++r) ASSERT_EQ(errors[r], "") << "rank " << r;
        const std::string what = fmt::format("{} ranks, {}, {}", n, policy_text, s.name);
        for (int r = 1; r < n; ++r) {
          EXPECT_TRUE(tp_test::same_bits(runs[r].output, runs[0].output)) << what << " rank " << r;
          EXPECT_EQ(runs[r].paths, runs[0].paths) << what << " rank " << r;
        }
        const tp_test::Reference ref =
            tp_test::reference_outputs(config, weights, s, format, hidden, runs[0]);
        EXPECT_EQ(tp_test::tolerance_failure(what.c_str(), runs[0].output, ref), "");
      }
    }
  }
}

}  // namespace
}  // namespace dsattn::gpu_test
