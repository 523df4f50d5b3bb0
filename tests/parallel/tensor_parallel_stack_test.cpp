// A residual stack run tensor-parallel on a group of threads: after every prefill and decode
// forward, every rank carries the same residual stream, which follows the unsharded stack's.
#include <gtest/gtest.h>

#include "core/error_message.h"
#include "dsattn/parallel/tensor_parallel_stack.h"
#include "parallel/rank_sum_check.h"

namespace dsattn::tp_test {
namespace {

using dsattn::testing::thrown_message;

constexpr std::int64_t kLayers = 3;

// A prefill of two requests (one past index_topk) then three decode steps; returns the residual
// stream after each forward, [rows, D] on the host.
std::vector<Tensor> serve(const AttentionStack& stack, const AttentionConfig& config) {
  CacheOptions o;
  o.num_layers = kLayers;
  o.num_pages = 4;
  PagedKvCache cache(config, o);
  BlockTable a, b;
  cache.reserve(a, 48);
  cache.reserve(b, 20);
  std::vector<Tensor> streams;
  Batch prefill;
  prefill.requests = {{0, 45, a}, {0, 17, b}};
  Tensor hidden = testing::random_hidden(62, config.hidden_size, 5);
  stack.forward(prefill, hidden, cache);
  streams.push_back(hidden);
  for (std::int64_t step = 0; step < 3; ++step) {
    Batch decode;
    decode.mode = ForwardMode::decode;
    decode.requests = {{45 + step, 1, a}, {17 + step, 1, b}};
    Tensor h = testing::random_hidden(2, config.hidden_size, 60 + step);
    stack.forward(decode, h, cache);
    streams.push_back(h);
  }
  return streams;
}

class TensorParallelStackThreads : public ::testing::TestWithParam<int> {};

TEST_P(TensorParallelStackThreads, EveryRankCarriesTheSameStreamAsTheUnshardedStack) {
  const int n = GetParam();
  const AttentionConfig config = split_config(LatentFormat::bf16);
  const AttentionStack full = AttentionStack::synthetic(config, kLayers, 17);
  const std::vector<Tensor> expected = serve(full, config);
  std::vector<std::vector<Tensor>> ranks(n);
  run_ranks(n, [&](int rank, parallel::Communicator& comm) {
    const AttentionStack mine = parallel::rank_local_stack(
        full, parallel::head_shard(config, rank, n), comm, Device::cpu());
    ASSERT_EQ(mine.num_layers(), kLayers);
    EXPECT_EQ(mine.layer(0).config().num_heads, config.num_heads / n);
    ranks[rank] = serve(mine, config);
  });
  for (std::size_t f = 0; f < expected.size(); ++f) {
    for (int r = 1; r < n; ++r) {
      EXPECT_TRUE(same_bits(ranks[r][f], ranks[0][f])) << "forward " << f << " rank " << r;
    }
    // Request b (every context within index_topk) follows the unsharded stack to bf16 rounding.
    // Request a's rows are not compared with it: past index_topk, a later layer's top-k over FP8
    // indexer scores may break a near-tie differently once the residual stream differs by one
    // rounding, as it would under any other summation order.
    const std::int64_t b_first = f == 0 ? 45 : 1, b_end = expected[f].size(0);
    EXPECT_LE(testing::relative_difference(ranks[0][f].view().slice(0, b_first, b_end),
                                           expected[f].view().slice(0, b_first, b_end)),
              testing::kBf16Agreement)
        << "forward " << f;
  }
}

INSTANTIATE_TEST_SUITE_P(Groups, TensorParallelStackThreads, ::testing::Values(1, 2, 4),
                         [](const auto& info) { return fmt::format("N{}", info.param); });

TEST(TensorParallelStackRefusals, CommunicatorMustMatchTheShard) {
  const AttentionConfig config = split_config(LatentFormat::bf16);
  const AttentionStack full = AttentionStack::synthetic(config, 1, 17);
  ThreadGroup group(4);
  ThreadCommunicator comm(group, 1);
  const std::string m = thrown_message<InvalidArgument>([&] {
    parallel::rank_local_stack(full, parallel::head_shard(config, 1, 2), comm, Device::cpu());
  });
  EXPECT_NE(m.find("communicator is rank 1 of 4, but the stack's head shard is rank 1 of 2"),
            std::string::npos)
      << m;
}

TEST(AttentionStackParts, NormsMustFitTheLayers) {
  const AttentionConfig config = split_config(LatentFormat::bf16);
  auto layers = [&] {
    std::vector<AttentionLayer> v;
    v.emplace_back(config, LayerWeights::synthetic(config, 1));
    return v;
  };
  std::string m = thrown_message<InvalidArgument>([&] { AttentionStack(layers(), {}); });
  EXPECT_NE(m.find("one input norm per layer (1), got 0"), std::string::npos) << m;
  m = thrown_message<InvalidArgument>([&] { AttentionStack({}, {}); });
  EXPECT_NE(m.find("at least one layer, got none"), std::string::npos) << m;
  std::vector<Tensor> wrong;
  wrong.push_back(Tensor::empty({config.hidden_size + 1}, DType::bf16));
  m = thrown_message<InvalidArgument>([&] { AttentionStack(layers(), wrong); });
  EXPECT_NE(m.find("input norm of layer 0 must have shape [96], got [97]"), std::string::npos) << m;
}

}  // namespace
}  // namespace dsattn::tp_test
