// The layer's log-sum-exp output (ForwardOptions::lse): every new row of every path written, and
// the dense form (decompressed keys) and the absorbed sparse form agree where both are exact,
// whole paths and row splits alike.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "dsattn/cache/paged_kv_cache.h"
#include "dsattn/core/error.h"
#include "dsattn/layer/attention_layer.h"
#include "layer_test_util.h"

namespace dsattn {
namespace {

struct LseRun {
  Tensor out, lse;
  std::vector<Path> paths;
};

// A fresh cache; each request's prefix written by one earlier forward, then the batch with lse.
LseRun run_batch(const AttentionConfig& config, const LayerWeights& weights, const Policy& policy,
                 const std::vector<std::pair<std::int64_t, std::int64_t>>& requests) {
  AttentionLayer layer(config, weights, policy);
  CacheOptions opts;
  opts.num_pages = 16;
  PagedKvCache cache(config, opts);
  std::vector<BlockTable> tables(requests.size());
  Batch batch;
  std::int64_t seed = 100, tokens = 0;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const auto [prefix, extend] = requests[i];
    cache.reserve(tables[i], prefix + extend);
    if (prefix > 0) {
      Batch first;
      first.requests.push_back({0, prefix, tables[i]});
      const Tensor in = testing::random_hidden(prefix, config.hidden_size, ++seed);
      Tensor out = Tensor::empty({prefix, config.hidden_size}, DType::bf16);
      layer.forward(first, in, cache.layer(0), out);
    }
    batch.requests.push_back({prefix, extend, tables[i]});
    tokens += extend;
  }
  const Tensor in = testing::random_hidden(tokens, config.hidden_size, 7);
  LseRun r;
  r.out = Tensor::empty({tokens, config.hidden_size}, DType::bf16);
  r.lse = Tensor::empty({tokens, config.num_heads}, DType::f32);
  float* lse = r.lse.ptr<float>();
  for (std::int64_t i = 0; i < r.lse.numel(); ++i) lse[i] = std::numeric_limits<float>::quiet_NaN();
  ForwardOptions options;
  options.lse = r.lse.view();
  r.paths = layer.forward(batch, in, cache.layer(0), r.out, options).paths;
  return r;
}

// max |a - b| over two [T, H] f32 tensors; NaN (a row left unwritten) counts as infinite.
double max_abs_difference(const Tensor& a, const Tensor& b) {
  double diff = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double d = std::fabs(double(a.ptr<float>()[i]) - double(b.ptr<float>()[i]));
    diff = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(diff, d);
  }
  return diff;
}

// Both forms round their operands to bf16 (relative 2^-9) before scores of magnitude a few
// units: their log-sum-exps differ by a few hundredths at most.
constexpr double kLseAgreement = 0.05;

TEST(LayerLse, DenseAndSparseFormsAgreeOnEveryRow) {
  const AttentionConfig config = testing::small_config(64);
  const LayerWeights weights = LayerWeights::synthetic(config, 3);
  const std::vector<std::pair<std::int64_t, std::int64_t>> requests = {
      {0, 30}, {20, 12}, {63, 1}, {5, 40}};
  const LseRun mha = run_batch(config, weights, Policy::parse("mha"), requests);
  const LseRun mla = run_batch(config, weights, Policy::parse("mla"), requests);
  for (Path p : mha.paths) EXPECT_EQ(p, Path::dense_mha);
  for (Path p : mla.paths) EXPECT_EQ(p, Path::sparse_mla);
  // Rows differ between heads and tokens (not one value written everywhere).
  EXPECT_NE(mha.lse.ptr<float>()[0], mha.lse.ptr<float>()[1]);
  EXPECT_NE(mha.lse.ptr<float>()[0], mha.lse.ptr<float>()[config.num_heads]);
  EXPECT_LE(max_abs_difference(mha.lse, mla.lse), kLseAgreement);
  EXPECT_LE(testing::relative_difference(mha.out, mla.out), testing::kBf16Agreement);
}

// A row split writes its dense rows and its sparse rows (beside requests on each whole path);
// with contexts past index_topk the sparse rows attend to fewer keys than the whole context, so
// the comparison is with the sparse path run alone.
TEST(LayerLse, RowSplitWritesBothPartsAsTheSparsePathDoes) {
  const AttentionConfig config = testing::small_config(48);
  const LayerWeights weights = LayerWeights::synthetic(config, 4);
  const std::vector<std::pair<std::int64_t, std::int64_t>> requests = {
      {0, 100}, {30, 40}, {10, 20}, {60, 5}};
  const LseRun split = run_batch(config, weights, testing::row_split_policy(), requests);
  const LseRun mla = run_batch(config, weights, Policy::parse("mla"), requests);
  EXPECT_EQ(split.paths, (std::vector<Path>{Path::row_split, Path::row_split, Path::dense_mha,
                                            Path::sparse_mla}));
  EXPECT_LE(max_abs_difference(split.lse, mla.lse), kLseAgreement);
}

TEST(LayerLse, WrongShapeOrDtypeIsRefused) {
  const AttentionConfig config = testing::small_config(64);
  AttentionLayer layer(config, LayerWeights::synthetic(config, 3));
  CacheOptions opts;
  opts.num_pages = 2;
  PagedKvCache cache(config, opts);
  BlockTable table;
  cache.reserve(table, 8);
  Batch batch;
  batch.requests.push_back({0, 8, table});
  const Tensor in = testing::random_hidden(8, config.hidden_size, 1);
  Tensor out = Tensor::empty({8, config.hidden_size}, DType::bf16);
  Tensor short_lse = Tensor::empty({7, config.num_heads}, DType::f32);
  Tensor bf16_lse = Tensor::empty({8, config.num_heads}, DType::bf16);
  ForwardOptions options;
  options.lse = short_lse.view();
  EXPECT_THROW(
      {
        try {
          layer.forward(batch, in, cache.layer(0), out, options);
        } catch (const InvalidArgument& e) {
          EXPECT_NE(std::string(e.what()).find("lse must have shape [8, "), std::string::npos)
              << e.what();
          throw;
        }
      },
      InvalidArgument);
  options.lse = bf16_lse.view();
  EXPECT_THROW(layer.forward(batch, in, cache.layer(0), out, options), InvalidArgument);
}

}  // namespace
}  // namespace dsattn
