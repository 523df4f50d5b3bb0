// Bad input to the layer: each is refused with a message naming what is wrong, before anything
// is written to the cache or the output.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "layer_test_util.h"

namespace dsattn {
namespace {

using ::testing::HasSubstr;

class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    CacheOptions opts;
    opts.num_pages = 4;
    cache = std::make_unique<PagedKvCache>(config, opts);
    cache->reserve(table, 40);
    // A valid first forward so that the cache holds real data to protect.
    Batch b;
    b.requests.push_back({0, 20, table});
    Tensor in = testing::random_hidden(20, config.hidden_size, 1);
    Tensor out = Tensor::empty({20, config.hidden_size}, DType::bf16);
    layer.forward(b, in, cache->layer(0), out);
    before = testing::snapshot(cache->layer(0));
  }

  // Expects `batch` with inputs of `rows` rows to be refused with `message`, the cache and the
  // output untouched.
  void expect_refused(const Batch& batch, std::int64_t rows, const std::string& message,
                      DType in_dtype = DType::bf16, std::int64_t width = -1) {
    if (width < 0) width = config.hidden_size;
    Tensor in = Tensor::empty({rows, width}, in_dtype);
    if (in_dtype == DType::bf16) fill_uniform(in, 3, 3, 1.0f);
    Tensor out = Tensor::empty({rows, width}, DType::bf16);
    for (std::int64_t i = 0; i < out.numel(); ++i) out.ptr<bf16>()[i] = bf16::from_bits(0x1234);
    try {
      layer.forward(batch, in, cache->layer(0), out);
      ADD_FAILURE() << "expected an error containing: " << message;
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(message));
    }
    EXPECT_EQ(testing::snapshot(cache->layer(0)), before) << "cache changed by a refused call";
    for (std::int64_t i = 0; i < out.numel(); ++i) {
      ASSERT_EQ(out.ptr<bf16>()[i].bits, 0x1234) << "output written by a refused call at " << i;
    }
  }

  AttentionConfig config = testing::small_config(32);
  AttentionLayer layer{config, LayerWeights::synthetic(config, 2)};
  std::unique_ptr<PagedKvCache> cache;
  BlockTable table;
  std::vector<std::uint8_t> before;
};

TEST_F(BadInput, EmptyBatch) { expect_refused(Batch{}, 1, "batch must hold at least one request"); }

TEST_F(BadInput, ZeroNewTokens) {
  Batch b;
  b.requests.push_back({20, 0, table});
  expect_refused(b, 1, "request 0: extend_len must be >= 1");
}

TEST_F(BadInput, NegativePrefix) {
  Batch b;
  b.requests.push_back({-1, 2, table});
  expect_refused(b, 2, "request 0: prefix_len must be >= 0, got -1");
}

TEST_F(BadInput, PositionsPastTheBlockTable) {
  Batch b;
  b.requests.push_back({20, 100, table});  // 120 positions, the table covers 64
  expect_refused(b, 100, "request 0: block table must cover 120 positions");
}

TEST_F(BadInput, PageOutsideTheCache) {
  const BlockTable bad = {0, 99};
  Batch b;
  b.requests.push_back({60, 10, bad});
  expect_refused(b, 10, "block_table[1] = 99 is outside the cache's [0, 4) pages");
}

TEST_F(BadInput, PageSharedByTwoRequests) {
  Batch b;
  b.requests.push_back({20, 5, table});
  b.requests.push_back({20, 5, table});
  expect_refused(b, 10, "request 1: page");
}

// A block table naming a page the cache has not handed out (released, or never allocated) would
// read or overwrite whatever request gets that page next.
TEST_F(BadInput, FreePage) {
  const BlockTable bad = {table[0], (table[0] + 2) % 4};
  Batch b;
  b.requests.push_back({60, 10, bad});
  expect_refused(b, 10, "block_table[1] = " + std::to_string(bad[1]) + " is a free page");
}

// Pages are shared read-only: a request may read pages another one writes in the same batch only
// if neither writes them.
TEST_F(BadInput, ReadingAPageAnotherRequestWrites) {
  BlockTable other = {table[0]};
  cache->reserve(other, 80);  // its own second page
  Batch b;
  b.requests.push_back({20, 5, table});  // writes page table[0]
  b.requests.push_back({64, 5, other});  // reads page table[0] as its prefix
  expect_refused(b, 10, "which writes its new tokens there");
}

// Across forwards: a page holding another live request's tokens never receives new ones (that
// would change the other request's output without a word).
TEST_F(BadInput, WritingIntoAnotherRequestsPage) {
  BlockTable other;
  cache->reserve(other, 64);                    // a request of its own, which has not run yet
  const BlockTable bad = {other[0], table[0]};  // its second page is the first request's first
  Batch b;
  b.requests.push_back({64, 4, bad});
  expect_refused(b, 4,
                 "request 0: block_table[1] = " + std::to_string(table[0]) +
                     " holds tokens of another sequence (page 0 of the block table that starts "
                     "with page " +
                     std::to_string(table[0]) + ")");
}

// The refusal above leaves nothing recorded: the page's own request goes on writing it, a
// request sharing its first page (a prefix cache) writes its own pages, and a page released and
// handed out again belongs to its new request.
TEST_F(BadInput, OwnSharedAndReusedPagesAreAccepted) {
  BlockTable other;
  cache->reserve(other, 64);
  const std::int32_t other_page = other[0];
  const BlockTable bad = {other[0], table[0]};
  Batch refused;
  refused.requests.push_back({64, 4, bad});
  Tensor in = testing::random_hidden(4, config.hidden_size, 5);
  Tensor out = Tensor::empty({4, config.hidden_size}, DType::bf16);
  EXPECT_THROW(layer.forward(refused, in, cache->layer(0), out), Error);

  const auto run = [&](const RequestInput& r) {
    Batch b;
    b.requests.push_back(r);
    Tensor x = testing::random_hidden(r.extend_len, config.hidden_size, 6);
    Tensor y = Tensor::empty({r.extend_len, config.hidden_size}, DType::bf16);
    layer.forward(b, x, cache->layer(0), y);
  };
  run({20, 4, table});  // the owner writes its page again after the refused call
  run({16, 4, table});  // and rewrites positions it wrote before (a rejected draft token)
  BlockTable sharing = {table[0]};
  cache->reserve(sharing, 80);  // shares the first page, writes a page of its own
  run({64, 16, sharing});
  run({0, 8, other});  // `other` runs now: its page holds its tokens
  BlockTable reused;
  cache->reserve(reused, 10);
  cache->release(other);
  cache->reserve(reused, 70);  // `other`'s page, handed out again as this table's second
  ASSERT_EQ(reused[1], other_page);
  run({0, 70, reused});
}

// Requests that share a prefix's first page are one sequence to the first-page rule; with
// sequence ids a request writing a sibling's page at the same place of the table (its block
// table then equals the sibling's up to that page) is refused, while each sequence goes on
// writing, and rewriting, its own pages.
TEST_F(BadInput, SequenceIdsTellApartRequestsSharingAPrefix) {
  BlockTable first = {table[0]}, second = {table[0]};
  cache->reserve(first, 80);
  cache->reserve(second, 80);
  const auto run = [&](std::int64_t prefix, std::int64_t extend, const BlockTable& t,
                       std::int64_t id) {
    Batch b;
    b.requests.push_back({prefix, extend, t, id});
    Tensor x = testing::random_hidden(extend, config.hidden_size, 7);
    Tensor y = Tensor::empty({extend, config.hidden_size}, DType::bf16);
    layer.forward(b, x, cache->layer(0), y);
  };
  run(0, 64, table, 7);    // the shared prefix page, written by sequence 7
  run(64, 10, first, 1);   // sequence 1 writes its own second page
  run(64, 10, second, 2);  // and sequence 2 its own
  Batch b;
  b.requests.push_back({74, 2, first, 2});  // sequence 2 with sequence 1's block table
  before = testing::snapshot(cache->layer(0));
  expect_refused(b, 2,
                 "request 0: block_table[1] = " + std::to_string(first[1]) +
                     " holds tokens of sequence 1 (page 1 of its block table)");
  run(74, 2, first, 1);  // the owner goes on
  run(72, 4, first, 1);  // and rewrites positions it wrote (rejected draft tokens)
  // Without ids the two share the first page: the rule by first page cannot tell them apart.
  run(76, 2, first, -1);
}

TEST_F(BadInput, SequenceIdsAreCheckedInTheBatch) {
  BlockTable other;
  cache->reserve(other, 10);
  Batch twice;
  twice.requests.push_back({20, 5, table, 3});
  twice.requests.push_back({0, 5, other, 3});
  expect_refused(twice, 10, "request 1: sequence_id 3 is also request 0's");
  Batch negative;
  negative.requests.push_back({20, 5, table, -2});
  expect_refused(negative, 5, "request 0: sequence_id must be >= 0 (or -1 for none), got -2");
}

TEST_F(BadInput, HiddenRowsDoNotMatchTheBatch) {
  Batch b;
  b.requests.push_back({20, 5, table});
  expect_refused(b, 6, "hidden_in must have shape [5, 96], got [6, 96]");
}

TEST_F(BadInput, HiddenWidthIsWrong) {
  Batch b;
  b.requests.push_back({20, 5, table});
  expect_refused(b, 5, "hidden_in must have shape [5, 96], got [5, 64]", DType::bf16, 64);
}

TEST_F(BadInput, HiddenDtypeIsWrong) {
  Batch b;
  b.requests.push_back({20, 5, table});
  expect_refused(b, 5, "hidden_in must have dtype bf16, got f32", DType::f32);
}

TEST_F(BadInput, ContextPastMaxPositions) {
  AttentionConfig short_config = config;
  short_config.max_position_embeddings = 30;
  AttentionLayer short_layer(short_config, LayerWeights::synthetic(short_config, 2));
  Batch b;
  b.requests.push_back({20, 15, table});
  Tensor in = testing::random_hidden(15, config.hidden_size, 5);
  Tensor out = Tensor::empty({15, config.hidden_size}, DType::bf16);
  EXPECT_THROW(
      {
        try {
          short_layer.forward(b, in, cache->layer(0), out);
        } catch (const InvalidArgument& e) {
          EXPECT_THAT(e.what(), HasSubstr("exceeds max_position_embeddings 30"));
          throw;
        }
      },
      InvalidArgument);
  EXPECT_EQ(testing::snapshot(cache->layer(0)), before);
}

TEST(BadConfig, IndexTopkZeroIsRefused) {
  AttentionConfig c = testing::small_config(32);
  c.index_topk = 0;
  try {
    c.validate();
    FAIL() << "index_topk = 0 must be refused";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("index_topk must be a positive integer, got 0"));
  }
  EXPECT_THROW(LayerWeights::synthetic(c, 1), ConfigError);
}

TEST(BadConfig, MalformedConfigJsonIsRefused) {
  EXPECT_THROW(AttentionConfig::from_json_text("{\"index_topk\": 0}", "config.json"), ConfigError);
  EXPECT_THROW(AttentionConfig::from_json_text("{\"hidden_size\": \"big\"}", "config.json"),
               ConfigError);
  EXPECT_THROW(AttentionConfig::from_json_text("{not json", "config.json"), ConfigError);
}

TEST(BadCache, FullCacheIsAClearErrorAndLeavesTablesAlone) {
  const AttentionConfig c = testing::small_config(32);
  CacheOptions opts;
  opts.num_pages = 2;
  PagedKvCache cache(c, opts);
  BlockTable a, b;
  cache.reserve(a, 100);  // both pages
  try {
    cache.reserve(b, 10);
    FAIL() << "a full cache must be refused";
  } catch (const CacheFull& e) {
    EXPECT_THAT(e.what(), HasSubstr("kv cache full: 1 pages needed, 0 of 2 free"));
  }
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(a.size(), 2u);
  EXPECT_EQ(cache.free_pages(), 0);
}

}  // namespace
}  // namespace dsattn
