// A batch planned once (AttentionLayer::plan) and run (AttentionLayer::run): the forward's result
// on every path, on the layer that planned it and on another layer of the same cache, again and
// again; plans made for another cache or layer shape refused before anything is written; the
// plan claims its pages as a forward does.
#include <gtest/gtest.h>

#include <gmock/gmock.h>

#include <cstring>
#include <string>

#include "dsattn/core/error.h"
#include "dsattn/layer/attention_layer.h"
#include "layer_test_util.h"

namespace dsattn {
namespace {

using ::testing::HasSubstr;

void expect_same_bits(const TensorView& a, const TensorView& b, const std::string& what) {
  ASSERT_EQ(a.numel(), b.numel()) << what;
  ASSERT_EQ(std::memcmp(a.data(), b.data(), a.numel() * dtype_size(a.dtype())), 0) << what;
}

// Two caches of two layers each, filled alike with a first chunk of three requests, and the
// second chunk's batch over them: contexts of 12 + 8 (dense where exact), 36 + 4 past index_topk
// 32 and 30 + 10 crossing it inside the extend (row split under row_split_policy()).
struct Fixture {
  AttentionConfig config = testing::small_config(32);
  AttentionLayer first{config, LayerWeights::synthetic(config, 21)};
  AttentionLayer second{config, LayerWeights::synthetic(config, 22)};
  PagedKvCache planned{config, options()}, forwarded{config, options()};
  std::vector<BlockTable> tables = std::vector<BlockTable>(3);
  Batch batch;

  static CacheOptions options() {
    CacheOptions o;
    o.num_layers = 2;
    o.num_pages = 10;  // 8 for the batch, 2 spare
    o.page_size = 16;
    return o;
  }

  Fixture() {
    const std::int64_t prefix[] = {12, 36, 30}, extend[] = {8, 4, 10};
    Batch chunk;
    for (std::size_t i = 0; i < 3; ++i) {
      planned.reserve(tables[i], prefix[i] + extend[i]);
      chunk.requests.push_back({0, prefix[i], tables[i]});
      batch.requests.push_back({prefix[i], extend[i], tables[i]});
    }
    // The second cache hands out the same pages in the same order.
    std::vector<BlockTable> same(3);
    for (std::size_t i = 0; i < 3; ++i) forwarded.reserve(same[i], prefix[i] + extend[i]);
    EXPECT_EQ(same, tables);
    // Slots no forward writes compare equal too.
    for (PagedKvCache* cache : {&planned, &forwarded}) {
      for (std::int64_t l = 0; l < 2; ++l) {
        for (const TensorView& t : {cache->layer(l).latent, cache->layer(l).index_keys}) {
          std::memset(t.data(), 0, t.numel() * dtype_size(t.dtype()));
        }
      }
    }
    const Tensor x = testing::random_hidden(chunk.total_tokens(), config.hidden_size, 23);
    Tensor y = Tensor::empty({chunk.total_tokens(), config.hidden_size}, DType::bf16);
    for (PagedKvCache* cache : {&planned, &forwarded}) {
      for (std::int64_t l = 0; l < 2; ++l) {
        (l == 0 ? first : second).forward(chunk, x, cache->layer(l), y);
      }
    }
  }
};

TEST(ForwardPlan, RunsGiveTheForwardsResultOnEveryPathAndLayer) {
  for (const Policy& policy : {Policy::parse("per-request"), Policy::parse("mla"),
                               Policy::parse("masked"), testing::row_split_policy()}) {
    SCOPED_TRACE(policy.to_string());
    Fixture f;
    f.first.set_policy(policy);
    f.second.set_policy(policy);
    const std::int64_t T = f.batch.total_tokens();
    const Tensor x = testing::random_hidden(T, f.config.hidden_size, 24);
    const ForwardPlan plan = f.first.plan(f.batch, f.planned.layer(0));
    ASSERT_EQ(plan.total_tokens(), T);
    ASSERT_EQ(plan.num_requests(), 3);

    for (std::int64_t l = 0; l < 2; ++l) {
      const AttentionLayer& layer = l == 0 ? f.first : f.second;
      Tensor expected = Tensor::empty({T, f.config.hidden_size}, DType::bf16);
      Tensor expected_lse = Tensor::empty({T, f.config.num_heads}, DType::f32);
      ForwardOptions fo;
      fo.lse = expected_lse.view();
      const ForwardResult want = layer.forward(f.batch, x, f.forwarded.layer(l), expected, fo);
      EXPECT_EQ(want.paths, plan.paths());

      // Twice: a plan may be run again, with the same result.
      for (int repeat = 0; repeat < 2; ++repeat) {
        Tensor got = testing::random_hidden(T, f.config.hidden_size, 99);  // poisoned
        Tensor lse = Tensor::empty({T, f.config.num_heads}, DType::f32);
        std::fill_n(lse.ptr<float>(), lse.numel(), std::nanf(""));
        RunOptions ro;
        ro.lse = lse.view();
        const ForwardResult r = layer.run(plan, x, f.planned.layer(l), got, ro);
        EXPECT_EQ(r.paths, plan.paths());
        const std::string what = "layer " + std::to_string(l) + ", run " + std::to_string(repeat);
        expect_same_bits(got, expected, what + ": output");
        expect_same_bits(lse, expected_lse, what + ": lse");
        const std::vector<std::uint8_t> a = testing::snapshot(f.planned.layer(l));
        const std::vector<std::uint8_t> b = testing::snapshot(f.forwarded.layer(l));
        EXPECT_TRUE(a == b) << what << ": the caches differ";
      }
    }
  }
}

TEST(ForwardPlan, ThePathsArePlannedOnce) {
  Fixture f;
  f.first.set_policy(testing::row_split_policy());
  const ForwardPlan plan = f.first.plan(f.batch, f.planned.layer(0));
  EXPECT_EQ(plan.paths(), (std::vector<Path>{Path::dense_mha, Path::sparse_mla, Path::row_split}));
  // The plan keeps its paths whatever policy the layer that runs it has now.
  f.first.set_policy(Policy::parse("mla"));
  const std::int64_t T = f.batch.total_tokens();
  const Tensor x = testing::random_hidden(T, f.config.hidden_size, 24);
  Tensor y = Tensor::empty({T, f.config.hidden_size}, DType::bf16);
  EXPECT_EQ(f.first.run(plan, x, f.planned.layer(0), y).paths, plan.paths());
}

TEST(ForwardPlan, PlansForAnotherCacheOrLayerAreRefusedBeforeAnyWrite) {
  Fixture f;
  const std::int64_t T = f.batch.total_tokens();
  const ForwardPlan plan = f.first.plan(f.batch, f.planned.layer(0));
  const Tensor x = testing::random_hidden(T, f.config.hidden_size, 24);
  Tensor out = testing::random_hidden(T, f.config.hidden_size, 25);
  const Tensor out_before = out.to(Device::cpu());
  const std::vector<std::uint8_t> cache_before = testing::snapshot(f.planned.layer(0));
  const auto expect_refused = [&](const AttentionLayer& layer, const ForwardPlan& p,
                                  const LayerCacheView& cache, const TensorView& in,
                                  const std::string& message) {
    SCOPED_TRACE(message);
    try {
      layer.run(p, in, cache, out);
      ADD_FAILURE() << "not refused";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr(message));
    }
    expect_same_bits(out, out_before, "hidden_out");
    EXPECT_TRUE(testing::snapshot(f.planned.layer(0)) == cache_before) << "the cache was written";
  };

  expect_refused(f.first, ForwardPlan(), f.planned.layer(0), x, "this plan is empty");

  // Another page size (the same tensors viewed as pages of 32 tokens).
  LayerCacheView other_pages = f.planned.layer(0);
  other_pages.page_size = 32;
  other_pages.num_pages = 5;
  other_pages.allocator = nullptr;
  expect_refused(f.first, plan, other_pages, x,
                 "it was made for a cache of 10 pages of 16 tokens (bf16 latents, rows index "
                 "keys), this cache has 5 pages of 32 tokens");

  // A layer of another shape.
  AttentionConfig wider = f.config;
  wider.num_heads = 4;
  const AttentionLayer other(wider, LayerWeights::synthetic(wider, 26));
  CacheOptions o = Fixture::options();
  PagedKvCache other_cache(wider, o);
  expect_refused(other, plan, other_cache.layer(0), x, "it was made for a layer of shape D96 H2");

  // Hidden states of another batch.
  const Tensor shorter = testing::random_hidden(T - 1, f.config.hidden_size, 27);
  expect_refused(f.first, plan, f.planned.layer(0), shorter, "hidden_in");
}

TEST(ForwardPlan, APlanClaimsItsPagesAsAForwardDoes) {
  const AttentionConfig config = testing::small_config(32);
  const AttentionLayer layer(config, LayerWeights::synthetic(config, 31));
  CacheOptions o;
  o.num_pages = 4;
  o.page_size = 16;
  PagedKvCache cache(config, o);
  BlockTable table;
  cache.reserve(table, 16);
  Batch mine;
  mine.requests.push_back({0, 8, table, /*sequence_id=*/1});
  const ForwardPlan plan = layer.plan(mine, cache.layer(0));
  // Before any run, another sequence may no longer write into that page.
  Batch theirs;
  theirs.requests.push_back({8, 4, table, /*sequence_id=*/2});
  try {
    layer.plan(theirs, cache.layer(0));
    ADD_FAILURE() << "a second sequence's plan into the first one's page was not refused";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("holds tokens of sequence 1"));
  }
  // The same sequence goes on in its page.
  Batch next;
  next.requests.push_back({8, 4, table, /*sequence_id=*/1});
  EXPECT_NO_THROW(layer.plan(next, cache.layer(0)));
}

// The pages a plan checked and claimed are one allocator's: another cache of the same geometry,
// or the same cache once pages were released (they may be another request's by now), is refused.
TEST(ForwardPlan, APlanRunsOnlyOnItsCacheWhileItsPagesStayAllocated) {
  Fixture f;
  const std::int64_t T = f.batch.total_tokens();
  const ForwardPlan plan = f.first.plan(f.batch, f.planned.layer(0));
  const Tensor x = testing::random_hidden(T, f.config.hidden_size, 24);
  Tensor y = Tensor::empty({T, f.config.hidden_size}, DType::bf16);
  try {
    f.first.run(plan, x, f.forwarded.layer(0), y);
    ADD_FAILURE() << "a plan ran on another cache of the same geometry";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("it was made on another cache"));
  }
  f.first.run(plan, x, f.planned.layer(1), y);  // another layer of its cache is fine
  BlockTable spare;
  f.planned.reserve(spare, 1);  // the cache's spare page...
  f.planned.release(spare);     // ...given back
  try {
    f.first.run(plan, x, f.planned.layer(0), y);
    ADD_FAILURE() << "a plan ran after pages of its cache were released";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("pages of its cache were released since it was made"));
  }
}

TEST(ForwardPlan, BadBatchesAreRefusedAtPlanTime) {
  const AttentionConfig config = testing::small_config(32);
  const AttentionLayer layer(config, LayerWeights::synthetic(config, 32));
  CacheOptions o;
  o.num_pages = 2;
  o.page_size = 16;
  PagedKvCache cache(config, o);
  BlockTable table;
  cache.reserve(table, 16);
  Batch too_long;
  too_long.requests.push_back({10, 10, table});  // 20 positions, one page of 16
  EXPECT_THROW(layer.plan(too_long, cache.layer(0)), InvalidArgument);
  Batch ok;
  ok.requests.push_back({0, 4, table});
  EXPECT_THROW(layer.plan(ok, cache.layer(0), /*max_score_bytes=*/0), InvalidArgument);
}

}  // namespace
}  // namespace dsattn
