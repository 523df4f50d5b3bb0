// IndexShare (GLM-5.2): a layer without indexer weights attends to the keys that the last earlier
// layer with an indexer selected, in a layer pair, in a stack and through a checkpoint.
#include <gmock/gmock-matchers.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "core/error_message.h"
#include "core/temp_dir.h"
#include "dsattn/layer/attention_stack.h"
#include "dsattn/model/checkpoint_writer.h"
#include "dsattn/reference/compare.h"
#include "dsattn/reference/reference_layer.h"
#include "layer_test_util.h"

namespace dsattn {
namespace {

using ::dsattn::testing::thrown_message;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr std::int64_t kTokens = 80;  // past index_topk = 32: the sparse path

struct Pair {
  AttentionConfig config = testing::small_config(32);
  AttentionLayer full{config, LayerWeights::synthetic(config, 11)};
  LayerWeights shared_weights = [this] {
    LayerWeights w = LayerWeights::synthetic(config, 12);
    w.drop_indexer();
    return w;
  }();
  AttentionLayer shared{config, shared_weights};
  PagedKvCache cache = [this] {
    CacheOptions opts;
    opts.num_layers = 2;
    opts.num_pages = 4;
    return PagedKvCache(config, opts);
  }();
  BlockTable table;
  Batch batch;

  explicit Pair(std::int64_t tokens = kTokens) {
    cache.reserve(table, tokens);
    batch.requests.push_back({0, tokens, table});
  }
};

std::vector<std::vector<std::int32_t>> allowed_keys(const Tensor& positions) {
  std::vector<std::vector<std::int32_t>> keys(static_cast<std::size_t>(positions.size(0)));
  for (std::int64_t t = 0; t < positions.size(0); ++t) {
    for (std::int64_t j = 0; j < positions.size(1); ++j) {
      const std::int32_t p = positions.ptr<std::int32_t>()[t * positions.size(1) + j];
      if (p >= 0) keys[static_cast<std::size_t>(t)].push_back(p);
    }
    std::sort(keys[static_cast<std::size_t>(t)].begin(), keys[static_cast<std::size_t>(t)].end());
  }
  return keys;
}

// On either path that selects keys: sparse MLA and masked MHA.
class IndexSharePaths : public ::testing::TestWithParam<const char*> {};

TEST_P(IndexSharePaths, SharedLayerAttendsToTheEarlierLayersSelection) {
  const Policy policy = Policy::parse(GetParam());
  const Path path = policy.kind == Policy::Kind::masked ? Path::masked_mha : Path::sparse_mla;
  Pair p;
  p.full.set_policy(policy);
  p.shared.set_policy(policy);
  const Tensor x0 = testing::random_hidden(kTokens, p.config.hidden_size, 1);
  const Tensor x1 = testing::random_hidden(kTokens, p.config.hidden_size, 2);
  Tensor y0 = Tensor::empty({kTokens, p.config.hidden_size}, DType::bf16);
  Tensor y1 = Tensor::empty({kTokens, p.config.hidden_size}, DType::bf16);
  ForwardOptions fo;
  fo.record_topk = true;
  SharedTopk shared;
  const ForwardResult r0 = p.full.forward(p.batch, x0, p.cache.layer(0), y0, fo, &shared);
  const ForwardResult r1 = p.shared.forward(p.batch, x1, p.cache.layer(1), y1, fo, &shared);
  ASSERT_EQ(r0.paths, std::vector<Path>{path});
  ASSERT_EQ(r1.paths, std::vector<Path>{path});
  const Tensor& selected = r0.topk_positions[0];
  ASSERT_EQ(r1.topk_positions[0].size(0), kTokens);
  EXPECT_TRUE(std::equal(selected.ptr<std::int32_t>(),
                         selected.ptr<std::int32_t>() + selected.numel(),
                         r1.topk_positions[0].ptr<std::int32_t>()));

  // The shared layer's output is its own attention over the first layer's key sets.
  reference::Request req;
  req.hidden = x1;
  req.extend_len = kTokens;
  req.allowed_keys = allowed_keys(selected);
  using reference::Precision;
  const auto ref = reference::attention_layer(p.config, p.shared_weights, req, Precision::float64);
  const auto plain =
      reference::attention_layer(p.config, p.shared_weights, req, Precision::plain_bf16);
  const auto engine = reference::compare(reference::to_doubles(y1), ref);
  EXPECT_TRUE(reference::within_tolerance(engine, reference::compare(plain, ref)))
      << engine.to_string();
  // Those key sets matter: dense causal attention over every key is far from it.
  reference::Request dense = req;
  dense.allowed_keys.clear();
  const auto dense_ref =
      reference::attention_layer(p.config, p.shared_weights, dense, Precision::float64);
  EXPECT_GT(reference::compare(dense_ref, ref).max_abs_error, 20 * engine.max_abs_error);
}

INSTANTIATE_TEST_SUITE_P(Paths, IndexSharePaths, ::testing::Values("mla", "masked"));

// One forward with a masked-MHA group and a sparse-MLA group (auto with a profile where masked
// MHA pays only for decompression, so a fresh long prompt takes it and a few rows over a long
// prefix stay sparse): the shared layer reads each group's selection from the earlier layer.
TEST(IndexShare, MaskedAndSparseGroupsInOneForward) {
  const AttentionConfig config = testing::small_config(32);
  auto profile = std::make_shared<CostProfile>();
  profile->has_masked = true;
  profile->decompress_s_per_flop = 0.5e-12;
  profile->mla_s_per_flop = 1e-12;
  Policy automatic = Policy::parse("auto");
  automatic.profile = profile;
  const LayerWeights full_weights = LayerWeights::synthetic(config, 31);
  LayerWeights shared_weights = LayerWeights::synthetic(config, 32);
  shared_weights.drop_indexer();
  AttentionLayer full(config, full_weights, automatic),
      shared_layer(config, shared_weights, automatic);
  CacheOptions opts;
  opts.num_layers = 2;
  opts.num_pages = 8;
  PagedKvCache cache(config, opts);
  BlockTable a, b;
  cache.reserve(a, 80);
  cache.reserve(b, 204);
  Batch prefix;
  prefix.requests.push_back({0, 200, b});
  const Tensor xp = testing::random_hidden(200, config.hidden_size, 6);
  Tensor yp = Tensor::empty({200, config.hidden_size}, DType::bf16);
  SharedTopk shared;
  full.forward(prefix, xp, cache.layer(0), yp, {}, &shared);
  shared_layer.forward(prefix, xp, cache.layer(1), yp, {}, &shared);

  Batch batch;
  batch.requests.push_back({0, 80, a});
  batch.requests.push_back({200, 4, b});
  const Tensor x0 = testing::random_hidden(84, config.hidden_size, 7);
  const Tensor x1 = testing::random_hidden(84, config.hidden_size, 8);
  Tensor y0 = Tensor::empty({84, config.hidden_size}, DType::bf16);
  Tensor y1 = Tensor::empty({84, config.hidden_size}, DType::bf16);
  ForwardOptions fo;
  fo.record_topk = true;
  const ForwardResult r0 = full.forward(batch, x0, cache.layer(0), y0, fo, &shared);
  const ForwardResult r1 = shared_layer.forward(batch, x1, cache.layer(1), y1, fo, &shared);
  const std::vector<Path> want = {Path::masked_mha, Path::sparse_mla};
  ASSERT_EQ(r0.paths, want);
  ASSERT_EQ(r1.paths, want);
  for (std::size_t i = 0; i < 2; ++i) {
    const Tensor& mine = r1.topk_positions[i];
    const Tensor& theirs = r0.topk_positions[i];
    ASSERT_EQ(mine.numel(), theirs.numel());
    EXPECT_TRUE(std::equal(theirs.ptr<std::int32_t>(), theirs.ptr<std::int32_t>() + theirs.numel(),
                           mine.ptr<std::int32_t>()))
        << "request " << i;
  }
  // The fresh prompt's rows (the masked group) against the reference over the first layer's
  // key sets.
  reference::Request req;
  const Tensor fresh_rows = Tensor::empty({80, config.hidden_size}, DType::bf16);
  copy(x1.view().slice(0, 0, 80), fresh_rows);
  req.hidden = fresh_rows;
  req.extend_len = 80;
  req.allowed_keys = allowed_keys(r0.topk_positions[0]);
  using reference::Precision;
  const auto ref = reference::attention_layer(config, shared_weights, req, Precision::float64);
  const auto plain = reference::attention_layer(config, shared_weights, req, Precision::plain_bf16);
  const auto engine = reference::compare(reference::to_doubles(y1.view().slice(0, 0, 80)), ref);
  EXPECT_TRUE(reference::within_tolerance(engine, reference::compare(plain, ref)))
      << engine.to_string();
}

TEST(IndexShare, SharedLayerWithoutAnEarlierTopkIsRefusedBeforeWriting) {
  Pair p;
  const Tensor x = testing::random_hidden(kTokens, p.config.hidden_size, 3);
  Tensor y = Tensor::empty({kTokens, p.config.hidden_size}, DType::bf16);
  const auto before = testing::snapshot(p.cache.layer(1));
  EXPECT_THAT(
      thrown_message<InvalidArgument>([&] { p.shared.forward(p.batch, x, p.cache.layer(1), y); }),
      AllOf(HasSubstr("IndexShare"), HasSubstr("no earlier layer")));
  SharedTopk empty;
  EXPECT_THAT(thrown_message<InvalidArgument>(
                  [&] { p.shared.forward(p.batch, x, p.cache.layer(1), y, {}, &empty); }),
              HasSubstr("IndexShare"));
  EXPECT_EQ(testing::snapshot(p.cache.layer(1)), before);
}

// Requests on the dense path select every key anyway: a shared layer needs no top-k for them.
TEST(IndexShare, DenseRequestsNeedNoSharedTopk) {
  Pair p(24);
  const Tensor x = testing::random_hidden(24, p.config.hidden_size, 4);
  Tensor y = Tensor::empty({24, p.config.hidden_size}, DType::bf16);
  EXPECT_EQ(p.shared.forward(p.batch, x, p.cache.layer(1), y).paths,
            std::vector<Path>{Path::dense_mha});
}

// A stack carries the top-k from each layer with an indexer to the layers after it without one,
// and refuses to start with a layer without one.
TEST(IndexShare, StackCarriesTheTopk) {
  AttentionConfig config = testing::small_config(32);
  config.shared_topk_layers = {false, true, true, false, true};
  const AttentionStack stack = AttentionStack::synthetic(config, 5, 21);
  for (std::int64_t l = 0; l < 5; ++l)
    EXPECT_EQ(stack.layer(l).has_indexer(), !config.shares_topk(l));
  CacheOptions opts;
  opts.num_layers = 5;
  opts.num_pages = 4;
  PagedKvCache cache(config, opts);
  BlockTable table;
  cache.reserve(table, kTokens);
  Batch b;
  b.requests.push_back({0, kTokens, table});
  Tensor hidden = testing::random_hidden(kTokens, config.hidden_size, 5);
  const ForwardResult r = stack.forward(b, hidden, cache);
  EXPECT_EQ(r.paths, std::vector<Path>{Path::sparse_mla});
  for (std::int64_t i = 0; i < hidden.numel(); ++i) {
    ASSERT_TRUE(std::isfinite(hidden.ptr<bf16>()[i].to_float())) << i;
  }

  std::vector<AttentionLayer> layers{stack.layer(1)};
  std::vector<Tensor> norms{stack.input_norm(1)};
  EXPECT_THAT(
      thrown_message<InvalidArgument>([&] { AttentionStack(std::move(layers), std::move(norms)); }),
      HasSubstr("first layer"));
}

// A checkpoint holds no indexer weights for shared layers; a stack may not start at one.
TEST(IndexShare, CheckpointLayersWithoutIndexer) {
  testing::TempDir dir;
  AttentionConfig config = testing::small_config(32);
  config.index_topk_freq = 2;
  config.index_skip_topk_offset = 1;  // layers 1 and 3 share
  write_synthetic_checkpoint(dir.path().string(), config, 4, 30, false);
  const Checkpoint ck = Checkpoint::open(dir.path().string());
  EXPECT_TRUE(ck.config().shares_topk(1));
  EXPECT_FALSE(ck.config().shares_topk(2));
  EXPECT_TRUE(ck.contains("model.layers.0.self_attn.indexer.wq_b.weight"));
  EXPECT_FALSE(ck.contains("model.layers.1.self_attn.indexer.wq_b.weight"));
  EXPECT_FALSE(ck.contains("model.layers.3.self_attn.indexer.k_norm.bias"));
  EXPECT_FALSE(load_layer_weights(ck, 3).has_indexer());
  EXPECT_TRUE(load_layer_weights(ck, 2).has_indexer());
  const AttentionStack stack = AttentionStack::from_checkpoint(ck, 0, 4);
  EXPECT_FALSE(stack.layer(1).has_indexer());
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { AttentionStack::from_checkpoint(ck, 3, 1); }),
              AllOf(HasSubstr("layer 3"), HasSubstr("start at layer 2")));
}

TEST(IndexShare, WeightsHaveAllIndexerTensorsOrNone) {
  const AttentionConfig config = testing::small_config(32);
  LayerWeights w = LayerWeights::synthetic(config, 1);
  w.indexer_wk = Tensor();
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { w.validate(config); }),
              HasSubstr("indexer.wk"));
  w.drop_indexer();
  EXPECT_NO_THROW(w.validate(config));
  w.indexer_k_norm = LayerWeights::synthetic(config, 1).indexer_k_norm;
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { w.validate(config); }),
              AllOf(HasSubstr("indexer.k_norm"), HasSubstr("all five")));
}

}  // namespace
}  // namespace dsattn
