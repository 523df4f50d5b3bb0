// topk against a full sort: the k best scores (ties to the lower position, NaN last), reported
// as a set in ascending position order with -1 padding; rows no longer than k are never read.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include "dsattn/ops/topk.h"
#include "op_test_util.h"

namespace dsattn::test {
namespace {

// Row r of the expected output: sort every (score, position) pair of the row's prefix by score,
// keep the first k, then list those positions in ascending order. A row no longer than k
// selects 0 .. length-1 and is not read.
std::vector<std::int32_t> reference_topk(const float* s, std::int64_t length, std::int64_t k) {
  std::vector<std::int32_t> order;
  if (length <= k) {
    for (std::int32_t p = 0; p < length; ++p) order.push_back(p);
    order.resize(static_cast<std::size_t>(k), -1);
    return order;
  }
  std::vector<std::pair<float, std::int32_t>> numbers;
  std::vector<std::int32_t> nans;
  for (std::int32_t p = 0; p < length; ++p) {
    if (std::isnan(s[p])) {
      nans.push_back(p);
    } else {
      numbers.emplace_back(s[p], p);
    }
  }
  std::sort(numbers.begin(), numbers.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  for (const auto& [score, p] : numbers) order.push_back(p);
  order.insert(order.end(), nans.begin(), nans.end());  // already in position order
  order.resize(static_cast<std::size_t>(k));
  std::sort(order.begin(), order.end());
  return order;
}

struct TopkCase {
  const char* name;
  std::int64_t rows, n, k;
  int distinct_values;  // 0: continuous scores; otherwise scores take this many values (ties)
  bool specials;        // sprinkle NaN, ±inf and ±0
};

void PrintTo(const TopkCase& c, std::ostream* os) { *os << c.name; }

class TopkTest : public ::testing::TestWithParam<TopkCase> {};

TEST_P(TopkTest, EqualsSortedReference) {
  const TopkCase c = GetParam();
  std::mt19937 rng(static_cast<unsigned>(c.n * 7 + c.k));
  // Scores are rows of a wider tensor; out is a column window of a wider one.
  Tensor scores_backing = Tensor::empty({c.rows, c.n + 3}, DType::f32);
  fill_uniform(scores_backing, 90, c.n, 1.0f);
  const TensorView scores = scores_backing.view().slice(1, 3, 3 + c.n);
  float* base = scores_backing.ptr<float>();
  std::uniform_int_distribution<int> level(0, std::max(c.distinct_values, 1) - 1);
  std::uniform_int_distribution<int> pick(0, 19);
  for (std::int64_t r = 0; r < c.rows; ++r) {
    float* s = base + r * (c.n + 3) + 3;
    for (std::int64_t j = 0; j < c.n; ++j) {
      if (c.distinct_values > 0) s[j] = static_cast<float>(level(rng)) * 0.25f;
      if (c.specials) {
        switch (pick(rng)) {
          case 0:
            s[j] = std::numeric_limits<float>::quiet_NaN();
            break;
          case 1:
            s[j] = std::numeric_limits<float>::infinity();
            break;
          case 2:
            s[j] = -std::numeric_limits<float>::infinity();
            break;
          case 3:
            s[j] = -0.0f;
            break;
          case 4:
            s[j] = 0.0f;
            break;
          default:
            break;
        }
      }
    }
  }
  // Lengths: empty, shorter than k, exactly k, the full row, and random ones.
  Tensor lengths = Tensor::empty({c.rows}, DType::i32);
  std::uniform_int_distribution<std::int32_t> any_length(0, static_cast<std::int32_t>(c.n));
  const std::int64_t fixed[] = {0, std::min(c.k, c.n) / 2, std::min(c.k, c.n), c.n};
  for (std::int64_t r = 0; r < c.rows; ++r) {
    lengths.ptr<std::int32_t>()[r] = static_cast<std::int32_t>(r < 4 ? fixed[r] : any_length(rng));
  }
  // A row no longer than k selects all of its positions whatever its scores hold: give those
  // rows garbage (NaN, infinities, huge values) that a score-reading selection would mishandle.
  const float garbage[] = {std::numeric_limits<float>::quiet_NaN(),
                           -std::numeric_limits<float>::infinity(), 3e38f,
                           std::numeric_limits<float>::infinity(), -3e38f};
  for (std::int64_t r = 0; r < c.rows; ++r) {
    if (lengths.ptr<std::int32_t>()[r] > c.k) continue;
    float* s = base + r * (c.n + 3) + 3;
    for (std::int64_t j = 0; j < c.n; ++j) s[j] = garbage[(r + j) % 5];
  }

  Tensor out_backing = Tensor::empty({c.rows, c.k + 2}, DType::i32);
  poison(out_backing);
  const TensorView out = out_backing.view().slice(1, 1, 1 + c.k);
  const std::vector<std::uint8_t> before = snapshot(out_backing);
  ops::topk(scores, lengths, out);
  EXPECT_TRUE(only_view_written(out_backing, before, out));

  for (std::int64_t r = 0; r < c.rows; ++r) {
    const std::int64_t len = lengths.ptr<std::int32_t>()[r];
    const std::vector<std::int32_t> want = reference_topk(scores.row<float>(r), len, c.k);
    const std::vector<std::int32_t> got(out.row<std::int32_t>(r), out.row<std::int32_t>(r) + c.k);
    for (std::int64_t i = 0; i < c.k; ++i) {
      ASSERT_EQ(got[i], want[i]) << "row " << r << " (length " << len << "), rank " << i;
    }
  }
}

const TopkCase kTopkCases[] = {
    // name, rows, n, k, distinct values, specials
    {"Random_N300_K64", 12, 300, 64, 0, false},
    {"Specials_N300_K64", 12, 300, 64, 0, true},
    {"FourValueTies_N500_K100", 10, 500, 100, 4, false},
    {"TiesAndSpecials_N257_K31", 9, 257, 31, 3, true},
    {"KLargerThanRow_N6_K10", 5, 6, 10, 0, true},
    {"K1_N1000", 6, 1000, 1, 2, false},
    {"Model_N8192_K2048", 5, 8192, 2048, 0, false},
    {"ModelTies_N8192_K2048", 4, 8192, 2048, 64, false},
};
INSTANTIATE_TEST_SUITE_P(Shapes, TopkTest, ::testing::ValuesIn(kTopkCases),
                         [](const auto& info) { return std::string(info.param.name); });

// One row of scores through topk with k = `k`.
std::vector<std::int32_t> topk_of_row(const std::vector<float>& row, std::int64_t length,
                                      std::int64_t k) {
  const auto n = static_cast<std::int64_t>(row.size());
  Tensor scores = Tensor::empty({1, n}, DType::f32);
  std::copy(row.begin(), row.end(), scores.ptr<float>());
  Tensor lengths = i32_tensor({static_cast<std::int32_t>(length)});
  Tensor out = Tensor::empty({1, k}, DType::i32);
  poison(out);
  ops::topk(scores, lengths, out);
  return read_i32(out);
}

TEST(TopkTest, TiedBoundaryKeepsLowerPositions) {
  // Five equal scores (positions 1, 3, 4, 6, 7) compete for the last places.
  const std::vector<float> row = {9, 1, 5, 1, 1, 7, 1, 1};
  EXPECT_EQ(topk_of_row(row, 8, 6), (std::vector<std::int32_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(topk_of_row(row, 8, 4), (std::vector<std::int32_t>{0, 1, 2, 5}));
  // Only the prefix of the row's length competes.
  const std::vector<float> rising = {1, 2, 3, 4, 5, 6, 7, 100};
  EXPECT_EQ(topk_of_row(rising, 8, 2), (std::vector<std::int32_t>{6, 7}));
  EXPECT_EQ(topk_of_row(rising, 7, 2), (std::vector<std::int32_t>{5, 6}));
  // The output is ordered by position, not by score.
  EXPECT_EQ(topk_of_row({1, 2, 3, 4, 5}, 5, 3), (std::vector<std::int32_t>{2, 3, 4}));
  EXPECT_EQ(topk_of_row({5, 4, 3, 2, 1}, 5, 3), (std::vector<std::int32_t>{0, 1, 2}));
}

TEST(TopkTest, NaNRanksBelowEveryNumber) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  // Three numbers (one of them -inf) and five NaN: k = 5 takes the numbers, then the two NaN at
  // the lowest positions.
  const std::vector<float> row = {nan, 2, nan, nan, -inf, nan, 0.5f, nan};
  EXPECT_EQ(topk_of_row(row, 8, 5), (std::vector<std::int32_t>{0, 1, 2, 4, 6}));
  EXPECT_EQ(topk_of_row(row, 8, 2), (std::vector<std::int32_t>{1, 6}));
  EXPECT_EQ(topk_of_row(row, 8, 3), (std::vector<std::int32_t>{1, 4, 6}));
  // A row no longer than k selects everything, NaN included, padded with -1.
  EXPECT_EQ(topk_of_row(row, 3, 5), (std::vector<std::int32_t>{0, 1, 2, -1, -1}));
  EXPECT_EQ(topk_of_row(row, 0, 2), (std::vector<std::int32_t>{-1, -1}));
}

TEST(TopkTest, RowsNoLongerThanKAreNotRead) {
  // Every score row on a page of its own; the rows with length <= k sit on pages that fault on
  // any access, so an implementation that reads them dies.
  GuardedPages pages(8);
  const std::int64_t rows = 8, n = 300, k = 40;
  const std::int64_t row_floats = pages.page_bytes() / static_cast<std::int64_t>(sizeof(float));
  ASSERT_GE(row_floats, n);
  const std::int32_t length_of[rows] = {0, 300, 1, 40, 41, 39, 299, 17};
  std::mt19937 rng(4242);
  std::uniform_real_distribution<float> score(-1.0f, 1.0f);
  for (std::int64_t r = 0; r < rows; ++r) {
    float* s = static_cast<float*>(pages.page(r));
    for (std::int64_t j = 0; j < n; ++j) s[j] = score(rng);
  }
  std::vector<std::vector<std::int32_t>> want(rows);
  for (std::int64_t r = 0; r < rows; ++r) {
    want[r] = reference_topk(static_cast<const float*>(pages.page(r)), length_of[r], k);
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    if (length_of[r] <= k) pages.protect(r);
  }
  const std::int64_t shape[] = {rows, n}, strides[] = {row_floats, 1};
  const TensorView scores(pages.page(0), DType::f32, Device::cpu(), shape, strides);
  Tensor lengths = i32_tensor(std::vector<std::int32_t>(length_of, length_of + rows));
  Tensor out = Tensor::empty({rows, k}, DType::i32);
  poison(out);

  if (!runs_without_fault([&] { ops::topk(scores, lengths, out); })) return;
  ops::topk(scores, lengths, out);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::vector<std::int32_t> got(out.ptr<std::int32_t>() + r * k,
                                        out.ptr<std::int32_t>() + (r + 1) * k);
    EXPECT_EQ(got, want[r]) << "row " << r << " (length " << length_of[r] << ")";
  }
}

TEST(TopkTest, RejectsBadArguments) {
  const std::int64_t rows = 3, n = 8;
  Tensor scores = random_tensor({rows, n}, DType::f32, 91, 1);
  Tensor lengths = Tensor::empty({rows}, DType::i32);
  for (int r = 0; r < rows; ++r) lengths.ptr<std::int32_t>()[r] = r + 2;
  Tensor out = Tensor::empty({rows, 4}, DType::i32);
  poison(out);
  Tensor too_long = Tensor::empty({rows}, DType::i32);
  Tensor negative = Tensor::empty({rows}, DType::i32);
  for (int r = 0; r < rows; ++r) {
    too_long.ptr<std::int32_t>()[r] = r == 1 ? n + 1 : n;
    negative.ptr<std::int32_t>()[r] = r == 2 ? -1 : 0;
  }
  Tensor lengths_short = Tensor::empty({rows - 1}, DType::i32);
  Tensor lengths_f32 = random_tensor({rows}, DType::f32, 91, 2);
  Tensor scores_bf16 = random_tensor({rows, n}, DType::bf16, 91, 3);
  Tensor scores_wide = random_tensor({rows, 2 * n}, DType::f32, 91, 4);
  const TensorView scores_every_other = strided_view(scores_wide, {rows, n}, {2 * n, 2});
  Tensor out_f32 = random_tensor({rows, 4}, DType::f32, 91, 5);
  Tensor out_empty = Tensor::empty({rows, 0}, DType::i32);
  Tensor out_rows = Tensor::empty({rows + 1, 4}, DType::i32);

  EXPECT_TRUE(rejects([&] { ops::topk(scores, too_long, out); }, "lengths[1]", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::topk(scores, negative, out); }, "lengths[2]", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::topk(scores, lengths_short, out); }, "lengths must have shape",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::topk(scores, lengths_f32, out); }, "lengths must have dtype i32",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::topk(scores_bf16, lengths, out); }, "scores must have dtype f32",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::topk(scores_every_other, lengths, out); },
                      "scores must have a unit stride", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::topk(scores, lengths, out_f32); }, "out must have dtype i32",
                      {watch(out_f32)}));
  EXPECT_TRUE(rejects([&] { ops::topk(scores, lengths, out_empty); }, "k > 0"));
  EXPECT_TRUE(rejects([&] { ops::topk(scores, lengths, out_rows); }, "out must have shape",
                      {watch(out_rows)}));
  EXPECT_TRUE(rejects([&] { ops::topk(scores, on_cuda(lengths), out); }, "lengths is on cuda:0",
                      {watch(out)}));
}

// topk_slots gives the slot of each position topk selects, looked up here in the row's request's
// (strided) block table: rows of several requests in mixed order, lengths on both sides of k
// (the short rows select every position without scores), a table exactly as long as the longest
// row needs.
TEST(TopkSlotsTest, IsTopkThenTheSlotMap) {
  for (std::int64_t page_size : {std::int64_t{4}, std::int64_t{16}}) {
    SCOPED_TRACE(fmt::format("page size {}", page_size));
    const std::int64_t requests = 3, rows = 7, n = 61, k = 9;
    const std::int64_t max_pages = (n + page_size - 1) / page_size;
    std::mt19937 rng(static_cast<unsigned>(500 + page_size));
    const BlockTables tables = random_block_tables(requests, max_pages, rng);
    Tensor scores = random_tensor({rows, n}, DType::f32, 93, static_cast<std::uint64_t>(page_size));
    Tensor lengths = i32_tensor({61, 3, 40, 9, 0, 10, 61});
    Tensor row_request = i32_tensor({2, 0, 1, 1, 0, 2, 0});
    Tensor want = Tensor::empty({rows, k}, DType::i32);
    ops::topk(scores, lengths, want);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int32_t* table = tables.view.row<std::int32_t>(row_request.ptr<std::int32_t>()[r]);
      for (std::int32_t& p : std::span(want.ptr<std::int32_t>() + r * k, k)) {
        if (p >= 0) p = static_cast<std::int32_t>(table[p / page_size] * page_size + p % page_size);
      }
    }
    Tensor got = Tensor::empty({rows, k}, DType::i32);
    poison(got);
    ops::topk_slots(scores, lengths, row_request, tables.view, page_size, got);
    EXPECT_EQ(read_i32(got), read_i32(want));
    EXPECT_EQ(got.ptr<std::int32_t>()[4 * k], -1) << "a row of length 0 selects nothing";
  }
}

TEST(TopkSlotsTest, RejectsBadArgumentsWithoutWriting) {
  const std::int64_t rows = 3, n = 20, k = 4, page_size = 4;
  std::mt19937 rng(510);
  const BlockTables tables = random_block_tables(2, 5, rng);        // 20 positions a request
  const BlockTables short_tables = random_block_tables(2, 4, rng);  // 16
  Tensor scores = random_tensor({rows, n}, DType::f32, 94, 1);
  Tensor lengths = i32_tensor({20, 17, 5});
  Tensor row_request = i32_tensor({1, 0, 1});
  Tensor request_past = i32_tensor({1, 2, 0});
  Tensor request_short = i32_tensor({1, 0});
  Tensor out = Tensor::empty({rows, k}, DType::i32);
  poison(out);
  EXPECT_TRUE(rejects(
      [&] { ops::topk_slots(scores, lengths, row_request, short_tables.view, page_size, out); },
      "lengths[0] = 20 reaches past the block table's 16 positions", {watch(out)}));
  EXPECT_TRUE(
      rejects([&] { ops::topk_slots(scores, lengths, request_past, tables.view, page_size, out); },
              "row_request", {watch(out)}));
  EXPECT_TRUE(
      rejects([&] { ops::topk_slots(scores, lengths, request_short, tables.view, page_size, out); },
              "row_request must have shape", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::topk_slots(scores, lengths, row_request, tables.view, 0, out); },
                      "page_size must be in [1, 2^31), got 0", {watch(out)}));
  EXPECT_TRUE(rejects(
      [&] { ops::topk_slots(scores, lengths, row_request, on_cuda(tables.view), page_size, out); },
      "block_tables is on cuda:0", {watch(out)}));
}

}  // namespace
}  // namespace dsattn::test
