// Requests whose context exceeds index_topk: dense MHA is refused where it is not exact, the
// per-request planner sends them to sparse MLA (masked MHA when forced), and mixed batches keep
// the caller's order.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dsattn/layer/paths.h"
#include "dsattn/reference/layer_check.h"
#include "layer_test_util.h"

namespace dsattn {
namespace {

using ::testing::HasSubstr;

constexpr std::int64_t kTopk = 32;

TEST(LongContext, SparseMlaMatchesReferenceOnSelectedKeys) {
  reference::CheckCase c;
  c.config = testing::small_config(kTopk);
  c.requests = {{0, 80}, {50, 30}};  // contexts 80 and 80, both past index_topk
  c.seed = 3;
  const reference::CaseReport r = reference::check_case(c);
  EXPECT_TRUE(r.pass) << r.to_string();
  for (const reference::PolicyCheck& check : r.checks) {
    const Path want = check.policy == "masked" ? Path::masked_mha : Path::sparse_mla;
    for (Path p : check.paths) EXPECT_EQ(p, want) << check.policy;
  }
}

TEST(LongContext, MixedBatchRoutesPerRequestAndMatchesReference) {
  reference::CheckCase c;
  c.config = testing::small_config(kTopk);
  c.requests = {{0, 20}, {0, 70}, {10, 5}, {40, 10}};
  c.seed = 5;
  const reference::CaseReport r = reference::check_case(c, {Policy::parse("per-request")});
  ASSERT_EQ(r.checks.size(), 1u);
  const std::vector<Path> want = {Path::dense_mha, Path::sparse_mla, Path::dense_mha,
                                  Path::sparse_mla};
  EXPECT_EQ(r.checks[0].paths, want);
  EXPECT_TRUE(r.pass) << r.to_string();
}

class MixedBatchOrder : public ::testing::Test {
 protected:
  AttentionConfig config = testing::small_config(kTopk);
  AttentionLayer layer{config, LayerWeights::synthetic(config, 9)};
};

// Each request's rows of a mixed batch equal the rows of the same request run on its own.
TEST_F(MixedBatchOrder, RowsLandInCallersOrder) {
  const std::vector<std::int64_t> lengths = {70, 20, 45, 10};  // long, short, long, short
  CacheOptions opts;
  opts.num_pages = 64;
  PagedKvCache together(config, opts), alone(config, opts);
  std::vector<BlockTable> t_tables(lengths.size()), a_tables(lengths.size());
  std::vector<Tensor> inputs;
  Batch batch;
  std::int64_t total = 0;
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    together.reserve(t_tables[i], lengths[i]);
    alone.reserve(a_tables[i], lengths[i]);
    inputs.push_back(testing::random_hidden(lengths[i], config.hidden_size, 100 + i));
    batch.requests.push_back({0, lengths[i], t_tables[i]});
    total += lengths[i];
  }
  Tensor in = Tensor::empty({total, config.hidden_size}, DType::bf16);
  Tensor out = Tensor::empty({total, config.hidden_size}, DType::bf16);
  std::int64_t row = 0;
  for (const Tensor& x : inputs) {
    std::memcpy(in.ptr<bf16>() + row * config.hidden_size, x.ptr<bf16>(), x.nbytes());
    row += x.size(0);
  }
  const ForwardResult fr = layer.forward(batch, in, together.layer(0), out);
  EXPECT_EQ(fr.paths, (std::vector<Path>{Path::sparse_mla, Path::dense_mha, Path::sparse_mla,
                                         Path::dense_mha}));
  row = 0;
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    Batch single;
    single.requests.push_back({0, lengths[i], a_tables[i]});
    Tensor o = Tensor::empty({lengths[i], config.hidden_size}, DType::bf16);
    layer.forward(single, inputs[i], alone.layer(0), o);
    const TensorView rows = out.view().slice(0, row, row + lengths[i]);
    EXPECT_LE(testing::relative_difference(rows, o), 1e-2) << "request " << i;
    row += lengths[i];
  }
}

TEST_F(MixedBatchOrder, ForcedMhaIsRefusedPastTopkAndLeavesCacheUnchanged) {
  CacheOptions opts;
  opts.num_pages = 8;
  PagedKvCache cache(config, opts);
  BlockTable short_table, long_table;
  cache.reserve(short_table, 10);
  cache.reserve(long_table, kTopk + 1);
  Batch batch;
  batch.requests.push_back({0, 10, short_table});
  batch.requests.push_back({0, kTopk + 1, long_table});
  Tensor in = testing::random_hidden(10 + kTopk + 1, config.hidden_size, 1);
  Tensor out = Tensor::empty({10 + kTopk + 1, config.hidden_size}, DType::bf16);
  const auto before = testing::snapshot(cache.layer(0));
  AttentionLayer forced(config, LayerWeights::synthetic(config, 9), Policy::parse("mha"));
  try {
    forced.forward(batch, in, cache.layer(0), out);
    FAIL() << "mha past index_topk must be refused";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("policy mha is not exact for request 1"));
    EXPECT_THAT(e.what(), HasSubstr("exceeds index_topk 32"));
  }
  EXPECT_EQ(testing::snapshot(cache.layer(0)), before);
}

// A long prefill scores its rows in windows when the scores would pass the budget: every
// window's clipped requests let each row see exactly the keys it sees in one pass.
TEST(ScoreWindows, ClipRequestsSoThatEveryRowSeesItsOwnKeys) {
  CacheOptions opts;
  opts.num_pages = 64;
  const AttentionConfig config = testing::small_config(kTopk);
  PagedKvCache cache(config, opts);
  const std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {
      {30, 50}, {0, 70}, {5, 1}, {0, 40}};
  std::vector<BlockTable> tables(shapes.size());
  Batch batch;
  PathGroup group;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    cache.reserve(tables[i], shapes[i].first + shapes[i].second);
    batch.requests.push_back({shapes[i].first, shapes[i].second, tables[i]});
    group.requests.push_back(i);
  }
  group.build(batch, cache.page_size());
  const std::int64_t n = 50 + 70 + 1 + 40, max_k = 80;
  const SparseMeta whole = SparseMeta::build(batch, group, true, Device::cpu(), kPageSize);
  EXPECT_TRUE(whole.windows.empty());
  const SparseMeta meta =
      SparseMeta::build(batch, group, true, Device::cpu(), kPageSize, 7 * max_k * 4);
  ASSERT_EQ(meta.windows.size(), std::size_t((n + 6) / 7));
  const std::int32_t* visible = meta.visible.ptr<std::int32_t>();
  std::int64_t expected_begin = 0;
  for (const ScoreWindow& w : meta.windows) {
    EXPECT_EQ(w.row_begin, expected_begin);
    EXPECT_LE(w.row_end - w.row_begin, 7);
    expected_begin = w.row_end;
    const std::int32_t* cu = w.cu_q.ptr<std::int32_t>();
    const std::int32_t* lens = w.context_lens.ptr<std::int32_t>();
    const std::int64_t requests = w.request_end - w.request_begin;
    ASSERT_EQ(w.cu_q.size(0), requests + 1);
    EXPECT_EQ(cu[requests], w.row_end - w.row_begin);
    std::int64_t widest = 0;
    for (std::int64_t g = 0; g < requests; ++g) {
      const std::int64_t n_q = cu[g + 1] - cu[g], n_k = lens[g];
      EXPECT_GT(n_q, 0) << "window " << w.row_begin << " request " << g;
      widest = std::max(widest, n_k);
      for (std::int64_t i = 0; i < n_q; ++i) {
        // The op's rule: row i of a request sees n_k - n_q + i + 1 keys.
        const std::int64_t row = w.row_begin + cu[g] + i;
        EXPECT_EQ(n_k - n_q + i + 1, visible[row]) << "row " << row;
        // The window's request is the request owning that row.
        EXPECT_EQ(meta.row_request.ptr<std::int32_t>()[row], w.request_begin + g) << "row " << row;
      }
    }
    EXPECT_EQ(w.max_k, widest);
  }
  EXPECT_EQ(expected_begin, n);
}

// The layer gives the same outputs with its scores in windows of a few rows.
TEST_F(MixedBatchOrder, ScoresInWindowsGiveTheSameOutputs) {
  CacheOptions opts;
  opts.num_pages = 64;
  PagedKvCache cache(config, opts);
  BlockTable a, b;
  cache.reserve(a, 30 + 50);
  cache.reserve(b, 70);
  Batch prefix;
  prefix.requests.push_back({0, 30, a});
  Tensor prefix_in = testing::random_hidden(30, config.hidden_size, 7);
  Tensor prefix_out = Tensor::empty({30, config.hidden_size}, DType::bf16);
  layer.forward(prefix, prefix_in, cache.layer(0), prefix_out);
  Batch batch;
  batch.requests.push_back({30, 50, a});
  batch.requests.push_back({0, 70, b});
  Tensor in = testing::random_hidden(120, config.hidden_size, 8);
  Tensor whole = Tensor::empty({120, config.hidden_size}, DType::bf16);
  Tensor windowed = Tensor::empty({120, config.hidden_size}, DType::bf16);
  layer.forward(batch, in, cache.layer(0), whole);
  ForwardOptions small;
  small.max_score_bytes = 9 * 80 * 4;  // windows of 9 rows
  layer.forward(batch, in, cache.layer(0), windowed, small);
  EXPECT_LE(testing::relative_difference(windowed, whole), 1e-2);
}

}  // namespace
}  // namespace dsattn
