// Paged-cache addressing and row copies: positions -> slots through a block table, and a round
// trip of rows through a paged layout with scatter_rows / gather_rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/ops/cache_ops.h"
#include "op_test_util.h"

namespace dsattn::test {
namespace {

TEST(PositionsToSlotsTest, FollowsTheBlockTable) {
  for (std::int64_t page_size : {std::int64_t{4}, kPageSize}) {
    const std::vector<std::int32_t> table = {5, 2, 9, 0, 7};
    const std::int64_t capacity = static_cast<std::int64_t>(table.size()) * page_size;
    std::vector<std::int32_t> positions;
    for (std::int64_t p = 0; p < capacity; p += 3)
      positions.push_back(static_cast<std::int32_t>(p));
    positions.push_back(static_cast<std::int32_t>(capacity - 1));  // the last covered position
    std::vector<std::int32_t> slots(positions.size(), kI32Poison);
    ops::positions_to_slots(table, page_size, positions, slots);
    for (std::size_t i = 0; i < positions.size(); ++i) {
      const std::int64_t page = positions[i] / page_size, offset = positions[i] % page_size;
      EXPECT_EQ(slots[i], table[page] * page_size + offset)
          << "position " << positions[i] << " with page size " << page_size;
    }
  }
}

TEST(PositionsToSlotsTest, RejectsPositionsOutsideTheTableWithoutWriting) {
  const std::vector<std::int32_t> table = {3, 1};
  // The bad position comes last, after valid ones, so a half-written result would show.
  const std::vector<std::int32_t> past_end = {0, 5, 7, 8};
  const std::vector<std::int32_t> negative = {1, 2, -1};
  std::vector<std::int32_t> slots4(4, kI32Poison), slots3(3, kI32Poison);
  EXPECT_TRUE(rejects([&] { ops::positions_to_slots(table, 4, past_end, slots4); },
                      "positions[3]: position 8", {watch(slots4)}));
  EXPECT_TRUE(rejects([&] { ops::positions_to_slots(table, 4, negative, slots3); },
                      "positions[2]: position -1", {watch(slots3)}));
  EXPECT_TRUE(rejects([&] { ops::positions_to_slots(table, 4, past_end, slots3); }, "slots",
                      {watch(slots3)}));
  EXPECT_TRUE(rejects([&] { ops::positions_to_slots(table, 0, negative, slots3); }, "page_size",
                      {watch(slots3)}));
  const std::vector<std::int32_t> no_table;
  EXPECT_TRUE(rejects([&] { ops::positions_to_slots(no_table, 4, negative, slots3); }, "position",
                      {watch(slots3)}));
}

struct RoundTripCase {
  const char* name;
  DType dtype;
  std::int64_t width;  // elements per row
};

void PrintTo(const RoundTripCase& c, std::ostream* os) { *os << c.name; }

class PagedRoundTripTest : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(PagedRoundTripTest, ScatterThenGatherReturnsTheRows) {
  const RoundTripCase c = GetParam();
  const std::int64_t page_size = 8, pages = 6, n = 29;
  const std::size_t esize = dtype_size(c.dtype);
  // A shuffled block table: logical page i lives in physical page table[i].
  std::vector<std::int32_t> table(pages);
  std::iota(table.begin(), table.end(), 0);
  std::mt19937 rng(17);
  std::shuffle(table.begin(), table.end(), rng);
  // Positions [5, 5 + n): a request whose first tokens are already cached.
  std::vector<std::int32_t> positions(n);
  std::iota(positions.begin(), positions.end(), 5);
  std::vector<std::int32_t> slot_list(n);
  ops::positions_to_slots(table, page_size, positions, slot_list);
  Tensor slots = Tensor::empty({n}, DType::i32);
  std::memcpy(slots.ptr<std::int32_t>(), slot_list.data(), n * 4);

  // Rows are a column window of a wider tensor, as when a projection's output is split.
  Tensor rows_backing = Tensor::empty({n, c.width + 3}, c.dtype);
  for (std::size_t i = 0; i < rows_backing.nbytes(); ++i) {
    static_cast<std::uint8_t*>(rows_backing.view().data())[i] = static_cast<std::uint8_t>(rng());
  }
  const TensorView rows = rows_backing.view().slice(1, 1, 1 + c.width);
  Tensor cache = Tensor::empty({pages * page_size, c.width}, c.dtype);
  poison(cache);
  const std::vector<std::uint8_t> cache_before = snapshot(cache);

  ops::scatter_rows(rows, slots, cache);
  std::vector<bool> written(pages * page_size, false);
  for (std::int64_t t = 0; t < n; ++t) {
    const auto* want = static_cast<const std::uint8_t*>(rows.data()) + t * rows.stride(0) * esize;
    const auto* got =
        static_cast<const std::uint8_t*>(cache.view().data()) + slot_list[t] * c.width * esize;
    EXPECT_EQ(std::memcmp(got, want, c.width * esize), 0)
        << "row " << t << " at slot " << slot_list[t];
    written[slot_list[t]] = true;
  }
  for (std::int64_t s = 0; s < pages * page_size; ++s) {
    if (written[s]) continue;
    EXPECT_EQ(
        std::memcmp(cache_before.data() + s * c.width * esize,
                    static_cast<const std::uint8_t*>(cache.view().data()) + s * c.width * esize,
                    c.width * esize),
        0)
        << "slot " << s << " was not addressed but changed";
  }

  // Gather in reverse order into a column window of a wider output.
  Tensor reversed = Tensor::empty({n}, DType::i32);
  for (std::int64_t t = 0; t < n; ++t) reversed.ptr<std::int32_t>()[t] = slot_list[n - 1 - t];
  Tensor out_backing = Tensor::empty({n, c.width + 4}, c.dtype);
  poison(out_backing);
  const TensorView out = out_backing.view().slice(1, 2, 2 + c.width);
  const std::vector<std::uint8_t> out_before = snapshot(out_backing);
  ops::gather_rows(cache, reversed, out);
  for (std::int64_t t = 0; t < n; ++t) {
    const auto* want =
        static_cast<const std::uint8_t*>(rows.data()) + (n - 1 - t) * rows.stride(0) * esize;
    const auto* got = static_cast<const std::uint8_t*>(out.data()) + t * out.stride(0) * esize;
    EXPECT_EQ(std::memcmp(got, want, c.width * esize), 0) << "gathered row " << t;
  }
  EXPECT_TRUE(only_view_written(out_backing, out_before, out));
}

// The bf16 latent cache (576 per token) and the indexer-key cache (132 bytes per token).
INSTANTIATE_TEST_SUITE_P(Caches, PagedRoundTripTest,
                         ::testing::Values(RoundTripCase{"Latent576Bf16", DType::bf16, 576},
                                           RoundTripCase{"IndexKey132Bytes", DType::u8, 132},
                                           RoundTripCase{"OddF32", DType::f32, 5}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ScatterGatherTest, RejectsBadArguments) {
  const std::int64_t n = 3, w = 16, num_slots = 10;
  Tensor rows = random_tensor({n, w}, DType::bf16, 60, 1);
  Tensor cache = random_tensor({num_slots, w}, DType::bf16, 60, 2);
  Tensor out = random_tensor({n, w}, DType::bf16, 60, 3);
  auto slot_tensor = [](std::vector<std::int32_t> v) {
    Tensor t = Tensor::empty({static_cast<std::int64_t>(v.size())}, DType::i32);
    std::memcpy(t.ptr<std::int32_t>(), v.data(), v.size() * 4);
    return t;
  };
  Tensor slots = slot_tensor({4, 0, 9});
  Tensor past_end = slot_tensor({4, 10, 1});
  Tensor negative = slot_tensor({4, 1, -1});
  Tensor too_few = slot_tensor({4, 1});
  Tensor slots_f32 = random_tensor({n}, DType::f32, 60, 4);
  Tensor rows_f32 = random_tensor({n, w}, DType::f32, 60, 5);
  Tensor rows_narrow = random_tensor({n, w - 1}, DType::bf16, 60, 6);
  Tensor cache_wide = random_tensor({num_slots, 2 * w}, DType::bf16, 60, 7);
  const TensorView cache_every_other = strided_view(cache_wide, {num_slots, w}, {2 * w, 2});

  EXPECT_TRUE(
      rejects([&] { ops::scatter_rows(rows, past_end, cache); }, "slots[1] = 10", {watch(cache)}));
  EXPECT_TRUE(
      rejects([&] { ops::scatter_rows(rows, negative, cache); }, "slots[2] = -1", {watch(cache)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows, too_few, cache); }, "slots must have shape",
                      {watch(cache)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows, slots_f32, cache); },
                      "slots must have dtype i32", {watch(cache)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows_f32, slots, cache); },
                      "rows must have the cache's dtype", {watch(cache)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows_narrow, slots, cache); }, "rows must have shape",
                      {watch(cache)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows, slots, cache_every_other); },
                      "cache must have a unit stride", {watch(cache_wide)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows, slots, on_cuda(cache)); }, "cache is on cuda:0",
                      {watch(cache)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows, on_cuda(slots), cache); }, "slots is on cuda:0",
                      {watch(cache)}));

  EXPECT_TRUE(
      rejects([&] { ops::gather_rows(cache, past_end, out); }, "slots[1] = 10", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::gather_rows(cache, too_few, out); }, "slots must have shape",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::gather_rows(cache, slots, rows_f32); },
                      "out must have the cache's dtype", {watch(rows_f32)}));
  EXPECT_TRUE(rejects([&] { ops::gather_rows(cache, slots, rows_narrow); }, "out must have shape",
                      {watch(rows_narrow)}));
  EXPECT_TRUE(rejects([&] { ops::gather_rows(cache, slots, on_cuda(out)); }, "out is on cuda:0",
                      {watch(out)}));
}

}  // namespace
}  // namespace dsattn::test
