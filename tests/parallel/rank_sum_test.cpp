// The rank-local forwards of a head split, summed over the ranks, give the unsharded layer's
// output within the tolerance scheme, on every path (policies per-request, threshold, mha, mla),
// with cached prefixes prefilled in chunks, for prefill, decode and speculative verify, with bf16
// and FP8 latent caches. Every rank takes the unsharded layer's paths, selects its keys, and
// writes the same cache bytes (the latent and indexer caches are replicated).
#include <gtest/gtest.h>

#include "parallel/rank_sum_check.h"

namespace dsattn::tp_test {
namespace {

constexpr std::int64_t kTopk = 32;

// Prefixes prefilled in chunks of 8 and contexts on both sides of index_topk (32).
const Scenario kMixedPrefill{"MixedPrefill", {{20, 9}, {0, 45}, {40, 6}}, ForwardMode::prefill, 8};
// Every context within index_topk: dense MHA is exact for the whole batch.
const Scenario kShortPrefill{"ShortPrefill", {{12, 10}, {0, 32}, {25, 7}}, ForwardMode::prefill, 5};
const Scenario kDecode{"Decode", {{10, 1}, {31, 1}, {50, 1}}, ForwardMode::decode, 16};
// Three draft tokens per request; the second request's cross index_topk.
const Scenario kVerify{"Verify", {{20, 3}, {30, 3}, {44, 3}}, ForwardMode::decode, 16};
const Scenario kShortVerify{"ShortVerify", {{10, 1}, {28, 3}}, ForwardMode::decode, 7};

struct RankSumCase {
  int world_size;
  LatentFormat format;
  const char* policy;
  Scenario scenario;

  std::string name() const {
    std::string p = policy;
    for (char& ch : p) {
      if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
    }
    return fmt::format("N{}_{}_{}_{}", world_size, format == LatentFormat::fp8 ? "Fp8" : "Bf16", p,
                       scenario.name);
  }
};

void PrintTo(const RankSumCase& c, std::ostream* os) { *os << c.name(); }

class RankSum : public ::testing::TestWithParam<RankSumCase> {};

TEST_P(RankSum, SumOverRanksEqualsUnshardedLayer) {
  const RankSumCase& c = GetParam();
  const AttentionConfig config = split_config(c.format, kTopk);
  const LayerWeights weights = LayerWeights::synthetic(config, 31);
  const Policy policy = Policy::parse(c.policy);
  const std::vector<Tensor> hidden = scenario_inputs(config, c.scenario, 500);

  const LayerRun full =
      run_layer(AttentionLayer(config, weights, policy), c.scenario, c.format, hidden, {});
  std::vector<Tensor> shares;
  for (int r = 0; r < c.world_size; ++r) {
    const parallel::HeadShard shard = parallel::head_shard(config, r, c.world_size);
    const LayerRun rank = run_layer(parallel::rank_local_layer(config, weights, shard, policy),
                                    c.scenario, c.format, hidden, {});
    EXPECT_EQ(rank.paths, full.paths) << "rank " << r << " took " << paths_string(rank.paths)
                                      << ", the unsharded layer " << paths_string(full.paths);
    EXPECT_EQ(topk_difference(rank, full), "") << "rank " << r;
    EXPECT_EQ(rank.cached, full.cached) << "rank " << r << "'s replicated cache differs";
    shares.push_back(rank.output);
  }
  const Tensor sum = sum_in_rank_order(shares);

  const Reference ref = reference_outputs(config, weights, c.scenario, c.format, hidden, full);
  EXPECT_EQ(tolerance_failure("the unsharded layer", full.output, ref), "");
  EXPECT_EQ(tolerance_failure("the sum over ranks", sum, ref), "");
  EXPECT_LE(testing::relative_difference(sum, full.output), testing::kBf16Agreement);
}

std::vector<RankSumCase> rank_sum_cases() {
  std::vector<RankSumCase> cases;
  for (int n : {2, 4}) {
    for (LatentFormat f : {LatentFormat::bf16, LatentFormat::fp8}) {
      for (const char* policy : {"per-request", "threshold", "threshold=16", "mla"}) {
        for (const Scenario& s : {kMixedPrefill, kShortPrefill, kDecode, kVerify}) {
          cases.push_back({n, f, policy, s});
        }
      }
      for (const Scenario& s : {kShortPrefill, kShortVerify}) cases.push_back({n, f, "mha", s});
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Paths, RankSum, ::testing::ValuesIn(rank_sum_cases()),
                         [](const auto& info) { return info.param.name(); });

// The paths each case exercises: a test table that silently ran one path only would prove little.
TEST(RankSumCoverage, ScenariosReachBothPaths) {
  const AttentionConfig config = split_config(LatentFormat::bf16, kTopk);
  const Batch mixed = [] {
    Batch b;
    for (const auto& r : kMixedPrefill.requests)
      b.requests.push_back({r.prefix_len, r.extend_len, {}});
    return b;
  }();
  const std::vector<Path> paths = plan_batch(mixed, config, Policy::parse("per-request"));
  EXPECT_EQ(paths, (std::vector<Path>{Path::dense_mha, Path::sparse_mla, Path::sparse_mla}));
}

// A forced mha on a context past index_topk is refused by every rank alike, before it writes.
TEST(RankSumRefusal, MhaPastTopkIsRefusedOnEveryRank) {
  const AttentionConfig config = split_config(LatentFormat::bf16, kTopk);
  const LayerWeights weights = LayerWeights::synthetic(config, 31);
  const std::vector<Tensor> hidden = scenario_inputs(config, kMixedPrefill, 500);
  for (int r = 0; r < 2; ++r) {
    const AttentionLayer layer = parallel::rank_local_layer(
        config, weights, parallel::head_shard(config, r, 2), Policy::parse("mha"));
    try {
      run_layer(layer, kMixedPrefill, LatentFormat::bf16, hidden, {});
      ADD_FAILURE() << "rank " << r << " ran a forced mha past index_topk";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("not exact"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace dsattn::tp_test
