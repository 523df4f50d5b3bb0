// The keys the layer selects agree with the float64 reference indexer wherever the reference
// scores are not within FP8 rounding of the k-th: for DeepSeek-V3.2's indexer RoPE (pairs by
// halves) and GLM-5's (interleaved pairs), which select different keys.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "dsattn/reference/reference_layer.h"
#include "layer_test_util.h"

namespace dsattn {
namespace {

constexpr std::int64_t kTokens = 96, kTopk = 32;

// Per query row, the selected key positions of one forward.
std::vector<std::set<std::int32_t>> selected_keys(const AttentionConfig& config,
                                                  const LayerWeights& weights,
                                                  const Tensor& hidden) {
  AttentionLayer layer(config, weights);
  CacheOptions opts;
  opts.num_pages = 2;
  PagedKvCache cache(config, opts);
  BlockTable table;
  cache.reserve(table, kTokens);
  Batch b;
  b.requests.push_back({0, kTokens, table});
  Tensor out = Tensor::empty({kTokens, config.hidden_size}, DType::bf16);
  ForwardOptions fo;
  fo.record_topk = true;
  const ForwardResult r = layer.forward(b, hidden, cache.layer(0), out, fo);
  const Tensor& sel = r.topk_positions.at(0);
  std::vector<std::set<std::int32_t>> keys(kTokens);
  for (std::int64_t t = 0; t < kTokens; ++t) {
    for (std::int64_t j = 0; j < sel.size(1); ++j) {
      const std::int32_t p = sel.ptr<std::int32_t>()[t * sel.size(1) + j];
      if (p >= 0) keys[static_cast<std::size_t>(t)].insert(p);
    }
  }
  return keys;
}

// Checks rows that see more than kTopk keys: a key whose reference score is clearly above the
// k-th is selected, one clearly below the (k+1)-th is not. Returns the keys so checked.
std::int64_t expect_agreement(const std::vector<std::set<std::int32_t>>& keys,
                              const std::vector<double>& ref) {
  std::int64_t checked = 0;
  for (std::int64_t t = kTopk; t < kTokens; ++t) {
    const std::int64_t visible = t + 1;
    std::vector<double> row(ref.begin() + t * kTokens, ref.begin() + t * kTokens + visible);
    std::vector<double> sorted = row;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    const double top = std::max(std::fabs(sorted.front()), std::fabs(sorted.back()));
    const double margin = 0.05 * top;  // far beyond FP8 e4m3's rounding of q and k
    for (std::int64_t s = 0; s < visible; ++s) {
      const bool chosen =
          keys[static_cast<std::size_t>(t)].count(static_cast<std::int32_t>(s)) != 0;
      if (row[s] > sorted[kTopk - 1] + margin) {
        EXPECT_TRUE(chosen) << "row " << t << " key " << s;
        ++checked;
      } else if (row[s] < sorted[kTopk] - margin) {
        EXPECT_FALSE(chosen) << "row " << t << " key " << s;
        ++checked;
      }
    }
  }
  return checked;
}

TEST(IndexerSelection, AgreesWithFloat64ForBothRopeLayouts) {
  AttentionConfig halves = testing::small_config(kTopk);
  AttentionConfig interleaved = halves;
  interleaved.indexer_rope_interleave = true;
  const LayerWeights weights = LayerWeights::synthetic(halves, 5);
  const Tensor hidden = testing::random_hidden(kTokens, halves.hidden_size, 6);
  reference::Request req;
  req.hidden = hidden;
  req.extend_len = kTokens;

  std::vector<std::vector<std::set<std::int32_t>>> selections;
  for (const AttentionConfig& c : {halves, interleaved}) {
    SCOPED_TRACE(c.indexer_rope_interleave ? "interleaved" : "halves");
    selections.push_back(selected_keys(c, weights, hidden));
    const std::int64_t checked =
        expect_agreement(selections.back(), reference::indexer_scores(c, weights, req));
    // Most of each row is decided away from the boundary.
    EXPECT_GT(checked, (kTokens - kTopk) * kTopk);
  }
  // The pairing changes the scores, and so the keys chosen.
  std::int64_t differing_rows = 0;
  for (std::int64_t t = kTopk; t < kTokens; ++t) {
    differing_rows +=
        selections[0][static_cast<std::size_t>(t)] != selections[1][static_cast<std::size_t>(t)];
  }
  EXPECT_GT(differing_rows, (kTokens - kTopk) / 2);
}

}  // namespace
}  // namespace dsattn
