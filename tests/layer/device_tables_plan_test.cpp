// A plan over block tables in a device tensor (AttentionLayer::plan with block_tables): the same
// forward as a plan over the batch's host tables, on every path; an entry outside the cache is
// read as page 0, written nowhere and reported, without changing the other requests' results;
// refusals before anything is written.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "dsattn/core/error.h"
#include "dsattn/layer/attention_layer.h"
#include "layer_test_util.h"

namespace dsattn {
namespace {

using ::testing::HasSubstr;

Tensor i32_tensor(const std::vector<std::int32_t>& values, std::int64_t rows, std::int64_t cols) {
  Tensor t = Tensor::empty({rows, cols}, DType::i32);
  std::copy(values.begin(), values.end(), t.ptr<std::int32_t>());
  return t;
}

// Requests with contexts 12 + 8 (dense where exact), 36 + 4 (past index_topk 32) and 30 + 10
// (crossing it), on pages of 16 given in a shuffled order, over a cache of 12 pages whose view has
// no allocator (the caller's cache): once with host block tables, once with a device tensor of
// them, each in its own copy of the cache.
struct Fixture {
  AttentionConfig config = testing::small_config(32);
  AttentionLayer layer{config, LayerWeights::synthetic(config, 51)};
  PagedKvCache host_cache{config, options()}, device_cache{config, options()};
  std::vector<BlockTable> tables{{7, 2}, {0, 11, 5}, {9, 3, 6}};
  std::vector<std::int64_t> prefix{12, 36, 30}, extend{8, 4, 10};

  static CacheOptions options() {
    CacheOptions o;
    o.num_pages = 12;
    o.page_size = 16;
    return o;
  }
  static LayerCacheView callers(const PagedKvCache& cache) {
    LayerCacheView v = cache.layer(0);
    v.allocator = nullptr;
    return v;
  }

  Fixture() {
    for (PagedKvCache* cache : {&host_cache, &device_cache}) {
      for (const TensorView& t : {cache->layer(0).latent, cache->layer(0).index_keys}) {
        std::memset(t.data(), 0, t.numel() * dtype_size(t.dtype()));
      }
    }
    Batch first;
    for (std::size_t i = 0; i < 3; ++i) first.requests.push_back({0, prefix[i], tables[i]});
    const Tensor x = testing::random_hidden(first.total_tokens(), config.hidden_size, 52);
    Tensor y = Tensor::empty({first.total_tokens(), config.hidden_size}, DType::bf16);
    layer.forward(first, x, callers(host_cache), y);
    layer.forward(first, x, callers(device_cache), y);
  }

  Batch host_batch() const {
    Batch b;
    for (std::size_t i = 0; i < 3; ++i) b.requests.push_back({prefix[i], extend[i], tables[i]});
    return b;
  }
  Batch lengths_only() const {
    Batch b;
    for (std::size_t i = 0; i < 3; ++i) b.requests.push_back({prefix[i], extend[i], {}});
    return b;
  }
  // The tables as an engine keeps them: rows of 4 pages, the unused entries -1.
  Tensor device_tables() const {
    std::vector<std::int32_t> rows;
    for (const BlockTable& t : tables) {
      for (std::size_t j = 0; j < 4; ++j) rows.push_back(j < t.size() ? t[j] : -1);
    }
    return i32_tensor(rows, 3, 4);
  }
};

TEST(DeviceTablesPlan, RunsAsThePlanOverHostTablesOnEveryPath) {
  for (const Policy& policy : {Policy::parse("per-request"), Policy::parse("mla"),
                               Policy::parse("masked"), testing::row_split_policy()}) {
    SCOPED_TRACE(policy.to_string());
    Fixture f;
    f.layer.set_policy(policy);
    const std::int64_t T = f.host_batch().total_tokens();
    const Tensor x = testing::random_hidden(T, f.config.hidden_size, 53);
    const ForwardPlan host = f.layer.plan(f.host_batch(), Fixture::callers(f.host_cache));
    const Tensor tables = f.device_tables();
    const ForwardPlan device =
        f.layer.plan(f.lengths_only(), tables.view(), Fixture::callers(f.device_cache));
    EXPECT_EQ(device.paths(), host.paths());
    Tensor want = Tensor::empty({T, f.config.hidden_size}, DType::bf16);
    Tensor got = testing::random_hidden(T, f.config.hidden_size, 99);  // poisoned
    f.layer.run(host, x, Fixture::callers(f.host_cache), want);
    f.layer.run(device, x, Fixture::callers(f.device_cache), got);
    ASSERT_EQ(std::memcmp(got.ptr<bf16>(), want.ptr<bf16>(), got.numel() * 2), 0);
    EXPECT_TRUE(testing::snapshot(f.host_cache.layer(0)) ==
                testing::snapshot(f.device_cache.layer(0)));
    EXPECT_TRUE(device.faults().empty());
  }
}

// Request 1's third page entry (positions 32..47: its new tokens 36..39) is outside the cache.
TEST(DeviceTablesPlan, AnEntryOutsideTheCacheIsReportedAndWrittenNowhere) {
  Fixture f;
  f.layer.set_policy(testing::row_split_policy());
  const std::int64_t T = f.host_batch().total_tokens();
  const Tensor x = testing::random_hidden(T, f.config.hidden_size, 54);
  Tensor tables = f.device_tables();
  tables.ptr<std::int32_t>()[1 * 4 + 2] = 12;  // one past the last page
  const ForwardPlan device =
      f.layer.plan(f.lengths_only(), tables.view(), Fixture::callers(f.device_cache));
  ASSERT_EQ(device.faults().size(), 1u);
  EXPECT_THAT(device.faults()[0], HasSubstr("outside the cache's pages [0, 12)"));
  const std::vector<std::uint8_t> before = testing::snapshot(f.device_cache.layer(0));
  Tensor got = Tensor::empty({T, f.config.hidden_size}, DType::bf16);
  f.layer.run(device, x, Fixture::callers(f.device_cache), got);

  const ForwardPlan host = f.layer.plan(f.host_batch(), Fixture::callers(f.host_cache));
  Tensor want = Tensor::empty({T, f.config.hidden_size}, DType::bf16);
  f.layer.run(host, x, Fixture::callers(f.host_cache), want);
  // Requests 0 and 2 (rows 0-7 and 12-21) are unchanged; request 1 wrote nothing.
  const std::int64_t row_bytes = f.config.hidden_size * 2;
  for (const auto& [first, rows] : {std::pair{0, 8}, std::pair{12, 10}}) {
    EXPECT_EQ(std::memcmp(got.ptr<bf16>() + first * f.config.hidden_size,
                          want.ptr<bf16>() + first * f.config.hidden_size, rows * row_bytes),
              0)
        << "rows from " << first;
  }
  // The two caches agree everywhere (latents and index keys) except where the host-table run
  // wrote request 1's positions 36..39 (page 5, offsets 4..7): there the device-table run wrote
  // nothing, so those slots hold what they held before.
  std::vector<std::uint8_t> expected = testing::snapshot(f.host_cache.layer(0));
  const LayerCacheView v = f.host_cache.layer(0);
  const std::int64_t latent_row = v.latent.size(1) * 2, key_row = v.index_keys.size(1);
  const std::int64_t keys_at = v.latent.size(0) * latent_row;
  for (std::int64_t slot = 5 * 16 + 4; slot < 5 * 16 + 8; ++slot) {
    std::memcpy(expected.data() + slot * latent_row, before.data() + slot * latent_row, latent_row);
    std::memcpy(expected.data() + keys_at + slot * key_row,
                before.data() + keys_at + slot * key_row, key_row);
  }
  EXPECT_TRUE(testing::snapshot(f.device_cache.layer(0)) == expected);
}

TEST(DeviceTablesPlan, RefusalsNameTheArgument) {
  Fixture f;
  const Tensor tables = f.device_tables();
  const std::vector<std::uint8_t> untouched = testing::snapshot(f.device_cache.layer(0));
  const auto refused = [&](const Batch& b, const TensorView& t, const LayerCacheView& cache,
                           const std::string& message) {
    SCOPED_TRACE(message);
    try {
      f.layer.plan(b, t, cache);
      ADD_FAILURE() << "not refused";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr(message));
    }
  };
  refused(f.lengths_only(), tables.view(), f.device_cache.layer(0),
          "a plan over device block tables is for the caller's cache");
  refused(f.host_batch(), tables.view(), Fixture::callers(f.device_cache),
          "request 0: its block table comes from block_tables");
  refused(f.lengths_only(), tables.view().slice(1, 0, 2), Fixture::callers(f.device_cache),
          "request 1: block_tables rows hold 2 pages, its context of 40 tokens needs 3");
  refused(f.lengths_only(), tables.view().slice(0, 0, 2), Fixture::callers(f.device_cache),
          "block_tables");
  Batch bad = f.lengths_only();
  bad.requests[2].extend_len = 0;
  refused(bad, tables.view(), Fixture::callers(f.device_cache),
          "request 2: prefix_len must be >= 0 and extend_len >= 1");
  Batch with_id = f.lengths_only();
  with_id.requests[1].sequence_id = 4;
  refused(with_id, tables.view(), Fixture::callers(f.device_cache),
          "request 1: sequence_id 4 is for a cache with a page allocator");
  Batch too_long = f.lengths_only();
  too_long.requests[0].prefix_len = f.config.max_position_embeddings;
  refused(too_long, tables.view(), Fixture::callers(f.device_cache),
          "exceeds max_position_embeddings");
  refused(Batch{}, tables.view().slice(0, 0, 0), Fixture::callers(f.device_cache),
          "expected at least one request");
  EXPECT_TRUE(testing::snapshot(f.device_cache.layer(0)) == untouched) << "a refusal wrote";
}

}  // namespace
}  // namespace dsattn
