// The planner's policies, decided from request shapes alone.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dsattn/layer/planner.h"
#include "layer_test_util.h"

namespace dsattn {
namespace {

using ::testing::HasSubstr;

Batch make_batch(ForwardMode mode, std::vector<std::pair<std::int64_t, std::int64_t>> shapes) {
  Batch b;
  b.mode = mode;
  for (auto [prefix, extend] : shapes) b.requests.push_back({prefix, extend, {}});
  return b;
}

const AttentionConfig kConfig = testing::small_config(100);
constexpr Path kMha = Path::dense_mha;
constexpr Path kMla = Path::sparse_mla;
constexpr Path kSplit = Path::row_split;
constexpr Path kMasked = Path::masked_mha;

TEST(Planner, PerRequestTakesMhaExactlyWhereExact) {
  const Batch b = make_batch(ForwardMode::prefill, {{0, 100}, {0, 101}, {60, 40}, {60, 41}});
  EXPECT_EQ(plan_batch(b, kConfig, Policy::parse("per-request")),
            (std::vector<Path>{kMha, kMla, kMha, kMla}));
}

TEST(Planner, ThresholdIsAllOrNothingForTheBatch) {
  const Batch short_batch = make_batch(ForwardMode::prefill, {{0, 50}, {10, 40}});
  const Batch mixed = make_batch(ForwardMode::prefill, {{0, 50}, {0, 51}});
  EXPECT_EQ(plan_batch(short_batch, kConfig, Policy::parse("threshold=50")),
            (std::vector<Path>{kMha, kMha}));
  EXPECT_EQ(plan_batch(mixed, kConfig, Policy::parse("threshold=50")),
            (std::vector<Path>{kMla, kMla}));
  // Plain "threshold" means N = index_topk.
  EXPECT_EQ(plan_batch(mixed, kConfig, Policy::parse("threshold")),
            (std::vector<Path>{kMha, kMha}));
}

TEST(Planner, ThresholdAboveTopkIsRefused) {
  const Batch b = make_batch(ForwardMode::prefill, {{0, 5}});
  try {
    plan_batch(b, kConfig, Policy::parse("threshold=101"));
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("threshold=101 exceeds index_topk 100"));
  }
}

TEST(Planner, ForcedPolicies) {
  const Batch b = make_batch(ForwardMode::prefill, {{0, 10}, {0, 101}});
  EXPECT_EQ(plan_batch(b, kConfig, Policy::parse("mla")), (std::vector<Path>{kMla, kMla}));
  EXPECT_EQ(plan_batch(b, kConfig, Policy::parse("masked")), (std::vector<Path>{kMasked, kMasked}));
  try {
    plan_batch(b, kConfig, Policy::parse("mha"));
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("policy mha is not exact for request 1"));
    EXPECT_THAT(e.what(), HasSubstr("context of 101 tokens exceeds index_topk 100"));
  }
}

TEST(Planner, DecodeRunsOnSparseMlaUnlessForced) {
  const Batch b = make_batch(ForwardMode::decode, {{10, 1}, {50, 3}});
  for (const char* p : {"per-request", "threshold", "mla"}) {
    EXPECT_EQ(plan_batch(b, kConfig, Policy::parse(p)), (std::vector<Path>{kMla, kMla})) << p;
  }
  EXPECT_EQ(plan_batch(b, kConfig, Policy::parse("mha")), (std::vector<Path>{kMha, kMha}));
}

TEST(Planner, PolicyParsing) {
  EXPECT_EQ(Policy::parse("threshold=2048").threshold, 2048);
  EXPECT_EQ(Policy::parse("threshold=2048").to_string(), "threshold=2048");
  EXPECT_EQ(Policy::parse("per-request").to_string(), "per-request");
  EXPECT_EQ(Policy::parse("auto").to_string(), "auto");
  EXPECT_EQ(Policy::parse("masked").to_string(), "masked");
  EXPECT_EQ(Policy{}.kind, Policy::Kind::automatic);
  for (const char* bad :
       {"", "auto-ish", "threshold=", "threshold=0", "threshold=-3", "threshold=12x", "MHA"}) {
    EXPECT_THROW(Policy::parse(bad), InvalidArgument) << bad;
  }
  try {
    Policy::parse("sparse");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("policy must be one of auto, per-request, threshold, "
                                    "threshold=N, mha, mla, masked; got 'sparse'"));
  }
}

// A profile where dense MHA costs only its decompression (per context token) and sparse MLA
// only its attention (per selected pair): dense wins for fresh prompts, sparse for a few new rows
// over a long prefix, and nothing changes the rules of exactness or of decode.
CostProfile decompress_versus_pairs() {
  CostProfile p;
  p.decompress_s_per_flop = 1e-12;
  p.mla_s_per_flop = 1e-12;
  return p;
}

TEST(Planner, AutoTakesTheCheaperExactPath) {
  const CostProfile profile = decompress_versus_pairs();
  const Batch b = make_batch(ForwardMode::prefill, {{0, 100}, {96, 4}, {0, 101}, {60, 40}});
  for (const auto& [prefix, extend] :
       std::vector<std::pair<std::int64_t, std::int64_t>>{{0, 100}, {96, 4}, {60, 40}}) {
    const PathWork w = path_work({prefix, extend, {}}, kConfig);
    SCOPED_TRACE(fmt::format("{} + {}", prefix, extend));
    EXPECT_EQ(profile.dense_seconds(w) <= profile.sparse_seconds(w), (prefix == 0 || prefix == 60));
  }
  // {0, 101} passes index_topk on its last row: its first 100 rows take the dense path.
  EXPECT_EQ(plan_batch(b, kConfig, Policy::parse("auto"), &profile),
            (std::vector<Path>{kMha, kMla, kSplit, kMha}));
  // Without a profile: the per-request rule.
  EXPECT_EQ(plan_batch(b, kConfig, Policy::parse("auto")),
            plan_batch(b, kConfig, Policy::parse("per-request")));
  // Decode stays on sparse MLA whatever the costs.
  CostProfile dense_free;
  dense_free.mla_s_per_flop = dense_free.absorb_s_per_flop = 1.0;
  const Batch decode = make_batch(ForwardMode::decode, {{10, 1}, {50, 1}});
  EXPECT_EQ(plan_batch(decode, kConfig, Policy::parse("auto"), &dense_free),
            (std::vector<Path>{kMla, kMla}));
  // Dense MHA is never taken where it is not exact, however cheap: a request past index_topk
  // splits its rows, one whose prefix is already there stays sparse.
  const Batch past = make_batch(ForwardMode::prefill, {{0, 101}, {100, 1}});
  EXPECT_EQ(plan_batch(past, kConfig, Policy::parse("auto"), &dense_free),
            (std::vector<Path>{kSplit, kMla}));
  // Where the sparse rows cost more than sparse MLA for all saves, no split.
  CostProfile sparse_free;
  sparse_free.decompress_s_per_flop = sparse_free.attention_s_per_flop = 1.0;
  EXPECT_EQ(plan_batch(past, kConfig, Policy::parse("auto"), &sparse_free),
            (std::vector<Path>{kMla, kMla}));
}

// Row split: the rows whose own context is at most index_topk, and the two requests they become.
TEST(Planner, RowSplitCutsAtIndexTopk) {
  EXPECT_EQ(dense_rows({0, 250, {}}, kConfig), 100);
  EXPECT_EQ(dense_rows({30, 250, {}}, kConfig), 70);
  EXPECT_EQ(dense_rows({30, 20, {}}, kConfig), 20);  // all rows: dense MHA is exact
  EXPECT_EQ(dense_rows({100, 20, {}}, kConfig), 0);  // none
  EXPECT_EQ(dense_rows({150, 20, {}}, kConfig), 0);
  const std::vector<std::int32_t> table = {3, 1, 4};
  Batch b = make_batch(ForwardMode::prefill, {{10, 5}, {30, 250}, {120, 8}, {90, 40}});
  b.requests[1].block_table = table;
  const RowSplitBatch w = split_rows(b, {kMha, kSplit, kMla, kMasked}, kConfig);
  ASSERT_EQ(w.batch.requests.size(), 5u);
  EXPECT_EQ(w.batch.requests[1].prefix_len, 30);
  EXPECT_EQ(w.batch.requests[1].extend_len, 70);
  EXPECT_EQ(w.batch.requests[2].prefix_len, 100);
  EXPECT_EQ(w.batch.requests[2].extend_len, 180);
  EXPECT_EQ(w.batch.requests[2].block_table.data(), table.data());
  EXPECT_EQ(w.paths, (std::vector<Path>{kMha, kMha, kMla, kMla, kMasked}));
  EXPECT_EQ(w.origin, (std::vector<std::size_t>{0, 1, 1, 2, 3}));
  EXPECT_EQ(w.batch.total_tokens(), b.total_tokens());
}

// Masked MHA enters auto's choice only where dense MHA is not exact, only for prefill and only
// with a profile that measured it; there it is taken where it is predicted the cheapest.
TEST(Planner, AutoTakesMaskedMhaWhereItIsCheapest) {
  CostProfile profile;
  profile.mla_s_per_flop = 1e-12;  // sparse MLA pays for its pairs, masked MHA for nothing
  const Batch b = make_batch(ForwardMode::prefill, {{0, 100}, {0, 150}, {140, 10}});
  const Policy automatic = Policy::parse("auto");
  EXPECT_EQ(plan_batch(b, kConfig, automatic, &profile), (std::vector<Path>{kMha, kSplit, kMla}));
  profile.has_masked = true;
  EXPECT_EQ(plan_batch(b, kConfig, automatic, &profile),
            (std::vector<Path>{kMha, kMasked, kMasked}));
  const PathCosts c = predict_paths({0, 100, {}}, kConfig, profile);
  EXPECT_FALSE(c.masked_mha.has_value());  // dense MHA is exact there
  // Its attention over every causal pair priced above sparse MLA's: not taken.
  profile.masked_attention_s_per_flop = 1e-9;
  EXPECT_EQ(plan_batch(b, kConfig, automatic, &profile), (std::vector<Path>{kMha, kSplit, kMla}));
  profile.masked_attention_s_per_flop = 0;
  const Batch decode = make_batch(ForwardMode::decode, {{140, 1}});
  EXPECT_EQ(plan_batch(decode, kConfig, automatic, &profile), (std::vector<Path>{kMla}));
  // The predicted time: dense decompression, the sparse path's scores, masked attention.
  profile.decompress_s_per_flop = 2e-12;
  profile.score_s_per_pair = 3e-9;
  profile.masked_attention_s_per_flop = 5e-13;
  const PathWork w = path_work({140, 10, {}}, kConfig);
  EXPECT_DOUBLE_EQ(*predict_paths({140, 10, {}}, kConfig, profile).masked_mha,
                   2e-12 * w.decompress_flops + 3e-9 * w.score_pairs + 5e-13 * w.attention_flops);
}

}  // namespace
}  // namespace dsattn
