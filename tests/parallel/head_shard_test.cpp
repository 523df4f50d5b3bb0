// Which heads each rank owns, the slices of the weights it holds, and the refusals.
#include <gtest/gtest.h>

#include <cstring>

#include "core/error_message.h"
#include "dsattn/parallel/head_shard.h"
#include "parallel/rank_sum_check.h"

namespace dsattn::parallel {
namespace {

using dsattn::testing::thrown_message;

// Element (i, j) of a 2-D bf16 host tensor, as bits.
std::uint16_t bits(const Tensor& t, std::int64_t i, std::int64_t j) {
  return t.ptr<bf16>()[i * t.size(1) + j].bits;
}

TEST(HeadShard, RanksOwnContiguousEqualRangesThatCoverEveryHead) {
  AttentionConfig config;  // DeepSeek-V3.2: 128 heads
  for (int n : {1, 2, 4, 8, 16, 128}) {
    std::int64_t next = 0;
    for (int r = 0; r < n; ++r) {
      const HeadShard s = head_shard(config, r, n);
      EXPECT_EQ(s.rank, r);
      EXPECT_EQ(s.world_size, n);
      EXPECT_EQ(s.num_heads, 128 / n);
      EXPECT_EQ(s.head_begin, next) << "rank " << r << " of " << n;
      next = s.head_end();
    }
    EXPECT_EQ(next, 128) << n << " ranks";
  }
}

TEST(HeadShard, RefusesWorldSizesThatDoNotDivideTheHeadsAndRanksOutOfRange) {
  AttentionConfig config;
  std::string m = thrown_message<InvalidArgument>([&] { head_shard(config, 0, 3); });
  EXPECT_NE(m.find("must divide the 128 attention heads"), std::string::npos) << m;
  EXPECT_NE(m.find("got 3"), std::string::npos) << m;
  m = thrown_message<InvalidArgument>([&] { head_shard(config, 0, 0); });
  EXPECT_NE(m.find("world size must be >= 1, got 0"), std::string::npos) << m;
  m = thrown_message<InvalidArgument>([&] { head_shard(config, 0, 256); });
  EXPECT_NE(m.find("got 256"), std::string::npos) << m;
  m = thrown_message<InvalidArgument>([&] { head_shard(config, 4, 4); });
  EXPECT_NE(m.find("rank must be in [0, 4), got 4"), std::string::npos) << m;
  m = thrown_message<InvalidArgument>([&] { head_shard(config, -1, 2); });
  EXPECT_NE(m.find("rank must be in [0, 2), got -1"), std::string::npos) << m;
}

TEST(HeadShard, ShardConfigKeepsEverythingButTheHeadCount) {
  const AttentionConfig config = tp_test::split_config(LatentFormat::bf16);
  const AttentionConfig local = shard_config(config, head_shard(config, 1, 4));
  EXPECT_EQ(local.num_heads, 2);
  AttentionConfig back = local;
  back.num_heads = config.num_heads;
  EXPECT_EQ(back.hidden_size, config.hidden_size);
  EXPECT_EQ(back.index_n_heads, config.index_n_heads);
  EXPECT_EQ(local.softmax_scale(), config.softmax_scale());
  HeadShard forged = head_shard(config, 1, 4);
  forged.head_begin = 3;
  const std::string m = thrown_message<InvalidArgument>([&] { shard_config(config, forged); });
  EXPECT_NE(m.find("must hold heads [2, 4) of 8, got [3, 5)"), std::string::npos) << m;
}

class ShardWeights : public ::testing::TestWithParam<int> {};

TEST_P(ShardWeights, EachRankHoldsItsHeadsRowsAndColumnsAndSharesTheRest) {
  const int n = GetParam();
  const AttentionConfig c = tp_test::split_config(LatentFormat::bf16);
  const LayerWeights full = LayerWeights::synthetic(c, 7);
  const std::int64_t q_rows = c.qk_head_dim(), kv_rows = c.qk_nope_head_dim + c.v_head_dim;
  for (int r = 0; r < n; ++r) {
    const HeadShard s = head_shard(c, r, n);
    const LayerWeights w = shard_weights(full, c, s);
    EXPECT_NO_THROW(w.validate(shard_config(c, s)));
    for (std::int64_t h = 0; h < s.num_heads; ++h) {
      const std::int64_t g = s.head_begin + h;  // the head in the unsharded layer
      for (std::int64_t i = 0; i < q_rows; ++i) {
        for (std::int64_t j = 0; j < c.q_lora_rank; ++j) {
          ASSERT_EQ(bits(w.q_b_proj, h * q_rows + i, j), bits(full.q_b_proj, g * q_rows + i, j))
              << "q_b_proj rank " << r << " head " << h << " row " << i;
        }
      }
      for (std::int64_t i = 0; i < kv_rows; ++i) {
        for (std::int64_t j = 0; j < c.kv_lora_rank; ++j) {
          ASSERT_EQ(bits(w.kv_b_proj, h * kv_rows + i, j), bits(full.kv_b_proj, g * kv_rows + i, j))
              << "kv_b_proj rank " << r << " head " << h << " row " << i;
        }
      }
      for (std::int64_t i = 0; i < c.hidden_size; ++i) {
        for (std::int64_t j = 0; j < c.v_head_dim; ++j) {
          ASSERT_EQ(bits(w.o_proj, i, h * c.v_head_dim + j),
                    bits(full.o_proj, i, g * c.v_head_dim + j))
              << "o_proj rank " << r << " head " << h << " column " << j;
        }
      }
    }
    for (auto [mine, theirs] : {std::pair{&w.q_a_proj, &full.q_a_proj},
                                {&w.q_a_layernorm, &full.q_a_layernorm},
                                {&w.kv_a_proj_with_mqa, &full.kv_a_proj_with_mqa},
                                {&w.kv_a_layernorm, &full.kv_a_layernorm},
                                {&w.indexer_wq_b, &full.indexer_wq_b},
                                {&w.indexer_wk, &full.indexer_wk},
                                {&w.indexer_k_norm, &full.indexer_k_norm},
                                {&w.indexer_k_norm_bias, &full.indexer_k_norm_bias},
                                {&w.indexer_weights_proj, &full.indexer_weights_proj}}) {
      EXPECT_EQ(mine->view().data(), theirs->view().data()) << "a replicated weight was copied";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, ShardWeights, ::testing::Values(1, 2, 4, 8),
                         [](const auto& info) { return fmt::format("N{}", info.param); });

TEST(ShardWeightsRefusals, WeightsThatDoNotFitTheConfigAreRefused) {
  const AttentionConfig c = tp_test::split_config(LatentFormat::bf16);
  AttentionConfig other = c;
  other.num_heads = 4;
  const LayerWeights wrong = LayerWeights::synthetic(other, 7);
  const std::string m =
      thrown_message<InvalidArgument>([&] { shard_weights(wrong, c, head_shard(c, 0, 2)); });
  EXPECT_NE(m.find("q_b_proj"), std::string::npos) << m;
}

}  // namespace
}  // namespace dsattn::parallel
