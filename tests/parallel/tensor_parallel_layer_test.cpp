// TensorParallelLayer on a group of threads (the all-reduce of thread_communicator.h): every
// rank ends with the same bits, the sum of the rank-local shares, on the path the unsharded
// layer takes.
#include <gtest/gtest.h>

#include <mutex>

#include "core/error_message.h"
#include "parallel/rank_sum_check.h"

namespace dsattn::tp_test {
namespace {

using dsattn::testing::thrown_message;

// Every rank runs the scenario through its TensorParallelLayer, the checked forward in place;
// returns what each rank saw.
std::vector<LayerRun> run_group(const AttentionConfig& config, const LayerWeights& weights,
                                const Policy& policy, const Scenario& s, LatentFormat format,
                                const std::vector<Tensor>& hidden, int world_size) {
  std::vector<LayerRun> runs(world_size);
  run_ranks(world_size, [&](int rank, parallel::Communicator& comm) {
    const parallel::HeadShard shard = parallel::head_shard(config, rank, world_size);
    const parallel::TensorParallelLayer layer(
        parallel::rank_local_layer(config, weights, shard, policy), shard, comm);
    runs[rank] = run_scenario(
        config,
        [&](const Batch& b, const TensorView& in, const LayerCacheView& cache,
            const TensorView& out,
            const ForwardOptions& o) { return layer.forward(b, in, cache, out, o); },
        s, format, hidden, Device::cpu(), /*in_place=*/true);
  });
  return runs;
}

class TensorParallelLayerThreads
    : public ::testing::TestWithParam<std::tuple<int, const char*, LatentFormat>> {};

TEST_P(TensorParallelLayerThreads, EveryRankHoldsTheSumOfTheSharesBitForBit) {
  const auto [n, policy_text, format] = GetParam();
  const AttentionConfig config = split_config(format);
  const LayerWeights weights = LayerWeights::synthetic(config, 41);
  const Policy policy = Policy::parse(policy_text);
  const Scenario s{"Mixed", {{20, 9}, {0, 45}, {40, 6}}, ForwardMode::prefill, 8};
  const std::vector<Tensor> hidden = scenario_inputs(config, s, 900);

  const std::vector<LayerRun> ranks = run_group(config, weights, policy, s, format, hidden, n);
  std::vector<Tensor> shares;
  for (int r = 0; r < n; ++r) {
    const parallel::HeadShard shard = parallel::head_shard(config, r, n);
    shares.push_back(
        run_layer(parallel::rank_local_layer(config, weights, shard, policy), s, format, hidden, {})
            .output);
  }
  const Tensor expected = sum_in_rank_order(shares);
  const LayerRun full = run_layer(AttentionLayer(config, weights, policy), s, format, hidden, {});
  for (int r = 0; r < n; ++r) {
    EXPECT_TRUE(same_bits(ranks[r].output, expected))
        << "rank " << r << " does not hold the sum of the rank-local shares";
    EXPECT_EQ(ranks[r].paths, full.paths) << "rank " << r;
    EXPECT_EQ(ranks[r].cached, full.cached) << "rank " << r;
    EXPECT_EQ(topk_difference(ranks[r], full), "") << "rank " << r;
  }
  EXPECT_LE(testing::relative_difference(ranks[0].output, full.output), testing::kBf16Agreement);
}

INSTANTIATE_TEST_SUITE_P(Groups, TensorParallelLayerThreads,
                         ::testing::Values(std::tuple{1, "per-request", LatentFormat::bf16},
                                           std::tuple{2, "per-request", LatentFormat::bf16},
                                           std::tuple{4, "mla", LatentFormat::fp8},
                                           std::tuple{8, "threshold", LatentFormat::bf16}),
                         [](const auto& info) {
                           std::string p = std::get<1>(info.param);
                           for (char& ch : p) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return fmt::format("N{}_{}", std::get<0>(info.param), p);
                         });

TEST(TensorParallelLayerRefusals, ShardAndCommunicatorMustAgree) {
  const AttentionConfig config = split_config(LatentFormat::bf16);
  const LayerWeights weights = LayerWeights::synthetic(config, 41);
  ThreadGroup group(2);
  ThreadCommunicator rank1(group, 1);
  const parallel::HeadShard shard0 = parallel::head_shard(config, 0, 2);
  std::string m = thrown_message<InvalidArgument>([&] {
    parallel::TensorParallelLayer(parallel::rank_local_layer(config, weights, shard0), shard0,
                                  rank1);
  });
  EXPECT_NE(m.find("communicator is rank 1 of 2, but the layer's head shard is rank 0 of 2"),
            std::string::npos)
      << m;
  ThreadCommunicator rank0(group, 0);
  m = thrown_message<InvalidArgument>(
      [&] { parallel::TensorParallelLayer(AttentionLayer(config, weights), shard0, rank0); });
  EXPECT_NE(m.find("must have the shard's 4 heads, got 8"), std::string::npos) << m;
}

TEST(TensorParallelLayerRefusals, AllReduceTakesContiguousBf16Only) {
  ThreadGroup group(1);
  ThreadCommunicator comm(group, 0);
  const Tensor f32 = Tensor::empty({4, 8}, DType::f32);
  std::string m = thrown_message<InvalidArgument>([&] { comm.all_reduce_sum(f32); });
  EXPECT_NE(m.find("all_reduce_sum tensor must have dtype bf16, got f32"), std::string::npos) << m;
  const Tensor wide = Tensor::empty({4, 8}, DType::bf16);
  m = thrown_message<InvalidArgument>([&] { comm.all_reduce_sum(wide.view().slice(1, 0, 4)); });
  EXPECT_NE(m.find("must be contiguous"), std::string::npos) << m;
}

// A refused forward (a batch whose block table is too short) is refused on every rank before
// anything is communicated, so no rank waits for the all-reduce of another.
TEST(TensorParallelLayerRefusals, BadBatchIsRefusedOnEveryRankWithoutHanging) {
  const AttentionConfig config = split_config(LatentFormat::bf16);
  const LayerWeights weights = LayerWeights::synthetic(config, 41);
  std::mutex mutex;
  int refused = 0;
  run_ranks(2, [&](int rank, parallel::Communicator& comm) {
    const parallel::HeadShard shard = parallel::head_shard(config, rank, 2);
    const parallel::TensorParallelLayer layer(parallel::rank_local_layer(config, weights, shard),
                                              shard, comm);
    CacheOptions o;
    o.num_pages = 2;
    PagedKvCache cache(config, o);
    BlockTable table;
    cache.reserve(table, 10);
    Batch b;
    b.requests.push_back({0, 100, table});  // needs two pages, the table has one
    const Tensor in = testing::random_hidden(100, config.hidden_size, 3);
    const Tensor out = Tensor::empty({100, config.hidden_size}, DType::bf16);
    try {
      layer.forward(b, in, cache.layer(0), out);
    } catch (const InvalidArgument&) {
      const std::lock_guard<std::mutex> lock(mutex);
      ++refused;
    }
  });
  EXPECT_EQ(refused, 2);
}

}  // namespace
}  // namespace dsattn::tp_test
