// Paged-cache addressing and row copies: positions -> slots through a block table (on the host,
// and in place over selected index rows of several requests), and a round trip of rows through a
// paged layout with scatter_rows / gather_rows.
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

TEST(MapPositionsToSlotsTest, FollowsEachRowsBlockTable) {
  for (std::int64_t page_size : {std::int64_t{4}, kPageSize}) {
    SCOPED_TRACE(fmt::format("page size {}", page_size));
    const std::int64_t requests = 3, max_pages = 5, rows = 9, k = 11;
    const std::int64_t capacity = max_pages * page_size;
    std::mt19937 rng(static_cast<unsigned>(300 + page_size));
    const BlockTables tables = random_block_tables(requests, max_pages, rng);
    // Rows of the three requests in mixed order; positions anywhere in the table (the first
    // and last covered ones included), about a quarter of them -1.
    std::vector<std::int32_t> request_of(rows);
    for (std::int64_t r = 0; r < rows; ++r) request_of[r] = static_cast<std::int32_t>((r * 2) % 3);
    Tensor row_request = i32_tensor(request_of);
    Tensor idx_backing = Tensor::empty({rows, k + 3}, DType::i32);
    for (std::int64_t i = 0; i < idx_backing.numel(); ++i) {
      idx_backing.ptr<std::int32_t>()[i] = static_cast<std::int32_t>(rng() % 1000) - 500;
    }
    const TensorView indices = idx_backing.view().slice(1, 2, 2 + k);
    std::uniform_int_distribution<std::int32_t> position(0,
                                                         static_cast<std::int32_t>(capacity - 1));
    std::bernoulli_distribution hole(0.25);
    for (std::int64_t r = 0; r < rows; ++r) {
      std::int32_t* row = indices.row<std::int32_t>(r);
      for (std::int64_t j = 0; j < k; ++j) row[j] = hole(rng) ? -1 : position(rng);
    }
    indices.row<std::int32_t>(0)[0] = 0;
    indices.row<std::int32_t>(1)[k - 1] = static_cast<std::int32_t>(capacity - 1);
    const std::vector<std::int32_t> positions = read_i32(indices);

    const std::vector<std::uint8_t> before = snapshot(idx_backing);
    const std::vector<std::uint8_t> tables_before = snapshot(tables.backing);
    ops::map_positions_to_slots(indices, row_request, tables.view, page_size);
    EXPECT_TRUE(only_view_written(idx_backing, before, indices));
    EXPECT_EQ(snapshot(tables.backing), tables_before) << "block_tables is read only";
    const std::vector<std::int32_t> got = read_i32(indices);
    std::int64_t mapped = 0;
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int32_t* table = tables.view.row<std::int32_t>(request_of[r]);
      for (std::int64_t j = 0; j < k; ++j) {
        const std::int32_t p = positions[r * k + j];
        const std::int64_t want = p < 0 ? -1 : table[p / page_size] * page_size + p % page_size;
        ASSERT_EQ(got[r * k + j], want) << "indices[" << r << ", " << j << "]: position " << p
                                        << " of request " << request_of[r];
        mapped += p >= 0;
      }
    }
    EXPECT_GT(mapped, rows * k / 2);
  }
}

TEST(MapPositionsToSlotsTest, RejectsBadArgumentsWithoutWriting) {
  const std::int64_t requests = 3, max_pages = 5, page_size = 4, rows = 4, k = 4;
  std::mt19937 rng(310);
  const BlockTables tables = random_block_tables(requests, max_pages, rng);
  Tensor row_request = i32_tensor({2, 0, 1, 2});
  // Valid positions first, so that a half-written result would show.
  Tensor indices = Tensor::empty({rows, k}, DType::i32);
  for (std::int64_t i = 0; i < rows * k; ++i) {
    indices.ptr<std::int32_t>()[i] = static_cast<std::int32_t>((i * 7) % 20);
  }
  Tensor past_end = Tensor::empty({rows, k}, DType::i32);
  std::copy_n(indices.ptr<std::int32_t>(), rows * k, past_end.ptr<std::int32_t>());
  past_end.ptr<std::int32_t>()[2 * k + 3] = 20;
  Tensor below = Tensor::empty({rows, k}, DType::i32);
  std::copy_n(indices.ptr<std::int32_t>(), rows * k, below.ptr<std::int32_t>());
  below.ptr<std::int32_t>()[3 * k + 1] = -2;
  Tensor request_past = i32_tensor({2, 3, 1, 0});
  Tensor request_negative = i32_tensor({0, 1, 2, -1});
  Tensor request_short = i32_tensor({0, 1, 2});
  Tensor indices_f32 = random_tensor({rows, k}, DType::f32, 311, 1);
  Tensor tables_f32 = random_tensor({requests, max_pages}, DType::f32, 311, 2);
  Tensor indices_wide = Tensor::empty({rows, 2 * k}, DType::i32);
  std::fill_n(indices_wide.ptr<std::int32_t>(), 2 * rows * k, 1);
  const TensorView indices_every_other = strided_view(indices_wide, {rows, k}, {2 * k, 2});
  const auto map = [&](const TensorView& idx, const TensorView& req, const TensorView& tab,
                       std::int64_t ps) { ops::map_positions_to_slots(idx, req, tab, ps); };

  EXPECT_TRUE(rejects([&] { map(past_end, row_request, tables.view, page_size); },
                      "indices[2, 3] = 20 is outside the block table's [0, 20)",
                      {watch(past_end)}));
  EXPECT_TRUE(rejects([&] { map(below, row_request, tables.view, page_size); },
                      "indices[3, 1] = -2", {watch(below)}));
  // With pages of 3 the table covers only [0, 15).
  EXPECT_TRUE(rejects([&] { map(indices, row_request, tables.view, 3); },
                      "is outside the block table's [0, 15)", {watch(indices)}));
  EXPECT_TRUE(rejects([&] { map(indices, request_past, tables.view, page_size); },
                      "row_request[1] = 3 is outside [0, 3)", {watch(indices)}));
  EXPECT_TRUE(rejects([&] { map(indices, request_negative, tables.view, page_size); },
                      "row_request[3] = -1", {watch(indices)}));
  EXPECT_TRUE(rejects([&] { map(indices, request_short, tables.view, page_size); },
                      "row_request must have shape [4]", {watch(indices)}));
  EXPECT_TRUE(rejects([&] { map(indices, row_request, tables.view, 0); },
                      "page_size must be positive", {watch(indices)}));
  EXPECT_TRUE(rejects([&] { map(indices_f32, row_request, tables.view, page_size); },
                      "indices must have dtype i32", {watch(indices_f32)}));
  EXPECT_TRUE(rejects([&] { map(indices_every_other, row_request, tables.view, page_size); },
                      "indices must have a unit stride", {watch(indices_wide)}));
  EXPECT_TRUE(rejects([&] { map(indices, row_request, tables_f32, page_size); },
                      "block_tables must have dtype i32", {watch(indices)}));
  EXPECT_TRUE(rejects([&] { map(indices, row_request, on_cuda(tables.view), page_size); },
                      "block_tables is on cuda:0", {watch(indices)}));
  EXPECT_TRUE(rejects([&] { map(indices, on_cuda(row_request), tables.view, page_size); },
                      "row_request is on cuda:0", {watch(indices)}));
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

TEST(ScatterGatherTest, ScatterSkipsRowsIndexedMinusOne) {
  const std::int64_t w = 8, num_rows = 6;
  Tensor rows = random_tensor({3, w}, DType::bf16, 61, 1);
  Tensor dst = random_tensor({num_rows, w}, DType::bf16, 61, 2);
  Tensor before = random_tensor({num_rows, w}, DType::bf16, 61, 2);  // dst's values
  ops::scatter_rows(rows, i32_tensor({4, -1, 0}), dst);
  for (std::int64_t r = 0; r < num_rows; ++r) {
    const bf16* want = r == 4   ? rows.view().row<bf16>(0)
                       : r == 0 ? rows.view().row<bf16>(2)
                                : before.view().row<bf16>(r);
    for (std::int64_t j = 0; j < w; ++j) {
      EXPECT_EQ(dst.view().row<bf16>(r)[j].bits, want[j].bits) << "row " << r;
    }
  }
}

// Index-key rows written page-major land where a page-major copy of the same rows written as
// rows has them (values of page p's slots in slot order, then their scales), for pages of 16 and
// 64, d_I 128 and 256; -1 writes nothing; every other byte keeps its value.
TEST(WriteIndexKeysTest, PageMajorPutsEachPagesValuesThenItsScales) {
  for (const auto& [d, page_size] : {std::pair<std::int64_t, std::int64_t>{128, 16},
                                     std::pair<std::int64_t, std::int64_t>{256, 64}}) {
    SCOPED_TRACE(fmt::format("d_I {}, page size {}", d, page_size));
    const std::int64_t bytes = index_key_bytes(d), slots = 3 * page_size;
    Tensor rows = random_bytes({5, bytes}, 621);
    Tensor as_rows = random_bytes({slots, bytes}, 622);
    Tensor paged = page_major_copy(as_rows, page_size);
    // First and last slot of a page, one in the middle of another, a skipped row.
    Tensor slot_ids = i32_tensor({0, static_cast<std::int32_t>(page_size - 1), -1,
                                  static_cast<std::int32_t>(2 * page_size + 5),
                                  static_cast<std::int32_t>(page_size)});
    ops::write_index_keys(rows, slot_ids, as_rows, page_size, IndexKeyLayout::rows);
    ops::write_index_keys(rows, slot_ids, paged, page_size, IndexKeyLayout::page_major);
    EXPECT_EQ(snapshot(paged), snapshot(page_major_copy(as_rows, page_size)));
    EXPECT_EQ(std::memcmp(as_rows.view().row<std::uint8_t>(page_size - 1),
                          rows.view().row<std::uint8_t>(1), bytes),
              0);
  }
}

TEST(WriteIndexKeysTest, PageMajorRejectsBadArgumentsWithoutWriting) {
  const std::int64_t bytes = index_key_bytes(128), page_size = 16;
  Tensor rows = random_bytes({2, bytes}, 631);
  Tensor cache = random_bytes({2 * page_size, bytes}, 632);
  Tensor ragged = random_bytes({2 * page_size + 3, bytes}, 633);
  Tensor wide = random_bytes({2 * page_size, bytes + 4}, 634);
  const TensorView strided = wide.view().slice(1, 0, bytes);
  Tensor odd_rows = random_bytes({2, 130}, 635);
  Tensor odd_cache = random_bytes({2 * page_size, 130}, 636);
  Tensor slots = i32_tensor({3, 17});
  const auto write = [&](const TensorView& r, const TensorView& s, const TensorView& c) {
    ops::write_index_keys(r, s, c, page_size, IndexKeyLayout::page_major);
  };
  EXPECT_TRUE(rejects([&] { write(rows, slots, ragged); },
                      "cache in the page-major layout must hold whole pages of 16 slots, got 35",
                      {watch(ragged)}));
  EXPECT_TRUE(rejects([&] { write(rows, slots, strided); },
                      "cache in the page-major layout must be contiguous, got a row stride of 136",
                      {watch(wide)}));
  EXPECT_TRUE(rejects([&] { write(odd_rows, slots, odd_cache); },
                      "rows must be index-key rows of d + 4 * d / 128 bytes", {watch(odd_cache)}));
  EXPECT_TRUE(rejects(
      [&] {
        write(rows, i32_tensor({3, 32}), cache);
      },
      "slots[1] = 32 is outside [0, 32) (or -1)", {watch(cache)}));
  EXPECT_TRUE(
      rejects([&] { ops::write_index_keys(rows, slots, cache, 0, IndexKeyLayout::page_major); },
              "page_size must be positive, got 0", {watch(cache)}));
}

// Views of build_decode_tables' outputs laid out one after another in `buffer` (i32): `batch`
// requests of `tokens` rows, `pages` table entries each, then the fault word.
ops::DecodeTables decode_tables_in(const Tensor& buffer, std::int64_t batch, std::int64_t tokens,
                                   std::int64_t pages) {
  std::int32_t* o = buffer.ptr<std::int32_t>();
  const std::int64_t rows = batch * tokens;
  const auto at = [&](std::int64_t offset, std::vector<std::int64_t> shape) {
    return TensorView(o + offset, DType::i32, Device::cpu(), shape);
  };
  ops::DecodeTables t;
  t.positions = at(0, {rows});
  t.visible = at(rows, {rows});
  t.slots = at(2 * rows, {rows});
  t.row_request = at(3 * rows, {rows});
  t.cu_q = at(4 * rows, {batch + 1});
  t.context_lens = at(4 * rows + batch + 1, {batch});
  t.block_tables = at(4 * rows + 2 * batch + 1, {batch, pages});
  t.faults = at(4 * rows + 2 * batch + 1 + batch * pages, {1});
  return t;
}

// Request b of `tokens` rows after prefix[b] cached tokens: positions, slots through its table,
// contexts; a bad length is clamped and a bad page read as page 0 (its new tokens not written),
// each reported in `faults`, which accumulates.
TEST(BuildDecodeTablesTest, DerivesEachRowAndMakesFaultsHarmless) {
  const std::int64_t tokens = 2, page_size = 4, num_pages = 10, max_context = 12, max_pages = 3;
  // Rows wider than max_pages: the extra column is never read.
  Tensor tables_in = i32_tensor({7, 2, 9, 99,   //
                                 1, 3, 5, 99,   //
                                 4, -3, 8, 99,  //
                                 6, 0, 10, 99});
  TensorView tables_view = tables_in.view().reshape({4, 4});
  // out: the 41 + 12 table entries, then the fault word; `faults` is copied in and out of it.
  const auto build = [&](std::vector<std::int32_t> prefix, Tensor& out, Tensor& faults) {
    Tensor p = i32_tensor(prefix);
    out = Tensor::empty({4 * 8 + 5 + 4 + 4 * max_pages + 1}, DType::i32);
    std::fill_n(out.ptr<std::int32_t>(), out.numel(), kI32Poison);
    ops::DecodeTables t = decode_tables_in(out, 4, tokens, max_pages);
    t.faults.ptr<std::int32_t>()[0] = faults.ptr<std::int32_t>()[0];
    ops::build_decode_tables(p, tables_view, tokens, page_size, num_pages, max_context, t);
    faults.ptr<std::int32_t>()[0] = t.faults.ptr<std::int32_t>()[0];
  };
  Tensor out, faults = i32_tensor({0});
  // Request 0: positions 5, 6 on page 2 (table entry 1); request 1: 0, 1; request 2 reads the
  // bad page -3 (index 1) for positions 4, 5; request 3: prefix 11 leaves no room, clamped to 10.
  build({5, 0, 4, 11}, out, faults);
  const std::int32_t* o = out.ptr<std::int32_t>();
  const std::vector<std::int32_t> positions = {5, 6, 0, 1, 4, 5, 10, 11};
  const std::vector<std::int32_t> slots = {2 * 4 + 1, 2 * 4 + 2, 1 * 4 + 0, 1 * 4 + 1,
                                           -1,        -1,        -1,        -1};
  for (int r = 0; r < 8; ++r) {
    EXPECT_EQ(o[r], positions[r]) << "positions[" << r << "]";
    EXPECT_EQ(o[8 + r], positions[r] + 1) << "visible[" << r << "]";
    EXPECT_EQ(o[24 + r], r / 2) << "row_request[" << r << "]";
  }
  // Request 3's pages: 6, 0 and 10 (outside the cache): positions 10, 11 fall on page index 2.
  for (int r = 0; r < 8; ++r) EXPECT_EQ(o[16 + r], slots[r]) << "slots[" << r << "]";
  EXPECT_EQ(std::vector<std::int32_t>(o + 32, o + 37), (std::vector<std::int32_t>{0, 2, 4, 6, 8}));
  EXPECT_EQ(std::vector<std::int32_t>(o + 37, o + 41), (std::vector<std::int32_t>{7, 2, 6, 12}));
  // Pages a request sees are copied (bad ones as 0), the rest are 0.
  EXPECT_EQ(std::vector<std::int32_t>(o + 41, o + 41 + 12),
            (std::vector<std::int32_t>{7, 2, 0, 1, 0, 0, 4, 0, 0, 6, 0, 0}));
  EXPECT_EQ(faults.ptr<std::int32_t>()[0], ops::kDecodeFaultContext | ops::kDecodeFaultPage);

  // Clean lengths and pages add no fault; the bits or into what is there.
  Tensor clean = i32_tensor({0});
  build({0, 1, 0, 2}, out, clean);
  EXPECT_EQ(clean.ptr<std::int32_t>()[0], 0);
  build({-4, 1, 0, 2}, out, clean);
  EXPECT_EQ(clean.ptr<std::int32_t>()[0], ops::kDecodeFaultContext);
  EXPECT_EQ(out.ptr<std::int32_t>()[0], 0) << "a negative prefix is clamped to 0 for the reads";
  EXPECT_EQ(out.ptr<std::int32_t>()[16], -1) << "a clamped request writes nothing";
  EXPECT_EQ(out.ptr<std::int32_t>()[17], -1) << "a clamped request writes nothing";
  EXPECT_EQ(out.ptr<std::int32_t>()[18], 1 * 4 + 1) << "the next request writes";

  // Prefix -1 marks an inactive row: no fault, nothing written, no page of its table read.
  Tensor quiet = i32_tensor({0});
  Tensor garbage_tables = i32_tensor({-9, 99, -9, 99,  //
                                      1, 3, 5, 99,     //
                                      4, 6, 8, 99,     //
                                      6, 0, 7, 99});
  {
    const TensorView saved = tables_view;
    tables_view = garbage_tables.view().reshape({4, 4});
    build({-1, 0, 4, 2}, out, quiet);
    tables_view = saved;
  }
  EXPECT_EQ(quiet.ptr<std::int32_t>()[0], 0);
  const std::int32_t* o2 = out.ptr<std::int32_t>();
  EXPECT_EQ(o2[16], -1);
  EXPECT_EQ(o2[17], -1);
  EXPECT_EQ(o2[0], 0);
  EXPECT_EQ(o2[37], 2) << "an inactive row's context is its own tokens";
  EXPECT_EQ(std::vector<std::int32_t>(o2 + 41, o2 + 44), (std::vector<std::int32_t>{0, 0, 0}));
}

TEST(BuildDecodeTablesTest, RejectsBadArguments) {
  Tensor prefix = i32_tensor({0, 1});
  Tensor tables = i32_tensor({0, 1, 2, 3});
  const TensorView two_pages = tables.view().reshape({2, 2});
  Tensor buf = Tensor::empty({2 * 4 + 3 + 2 + 2 * 2 + 1}, DType::i32);
  const ops::DecodeTables t = decode_tables_in(buf, 2, 1, 2);
  EXPECT_TRUE(rejects([&] { ops::build_decode_tables(prefix, two_pages, 1, 4, 8, 12, t); },
                      "block_tables: expected at least 3 pages a row (max_context 12 at "
                      "page_size 4), got 2",
                      {watch(buf)}));
  EXPECT_TRUE(rejects([&] { ops::build_decode_tables(prefix, two_pages, 2, 4, 8, 1, t); },
                      "max_context must be >= tokens (2), got 1", {watch(buf)}));
  EXPECT_TRUE(rejects(
      [&] { ops::build_decode_tables(prefix, two_pages, 1, 4, std::int64_t(1) << 30, 8, t); },
      "the cache's slots (num_pages x page_size = 1073741824 x 4) must fit int32", {watch(buf)}));
  EXPECT_TRUE(rejects([&] { ops::build_decode_tables(prefix, two_pages, 2, 4, 8, 8, t); },
                      "positions must have shape [4]", {watch(buf)}));
}

TEST(BuildPrefillTablesTest, CopiesEachRequestsPagesAndMakesBadEntriesHarmless) {
  const std::int64_t page_size = 4, num_pages = 10, max_pages = 3;
  // Rows wider than max_pages: the extra column is never read.
  Tensor tables_in = i32_tensor({7, 2, 9, 99,  //
                                 1, 3, 5, 99,  //
                                 4, -3, 8, 99});
  // Request 0: 2 cached + 3 new (positions 2..4, pages 7 and 2); request 1: 0 + 1; request 2:
  // 3 + 3 (positions 3..5), its page entry 1 is -3: position 3 is written, 4 and 5 are not.
  Tensor prefix = i32_tensor({2, 0, 3}), cu = i32_tensor({0, 3, 4, 7});
  Tensor tables = Tensor::empty({3, max_pages}, DType::i32);
  Tensor slots = Tensor::empty({7}, DType::i32);
  std::fill_n(tables.ptr<std::int32_t>(), tables.numel(), kI32Poison);
  std::fill_n(slots.ptr<std::int32_t>(), slots.numel(), kI32Poison);
  Tensor faults = i32_tensor({0});
  ops::build_prefill_tables(prefix, cu, tables_in.view().reshape({3, 4}), page_size, num_pages,
                            tables.view().reshape({3, max_pages}), slots, faults);
  EXPECT_EQ(std::vector<std::int32_t>(tables.ptr<std::int32_t>(), tables.ptr<std::int32_t>() + 9),
            (std::vector<std::int32_t>{7, 2, 0, 1, 0, 0, 4, 0, 0}));
  EXPECT_EQ(
      std::vector<std::int32_t>(slots.ptr<std::int32_t>(), slots.ptr<std::int32_t>() + 7),
      (std::vector<std::int32_t>{7 * 4 + 2, 7 * 4 + 3, 2 * 4 + 0, 1 * 4 + 0, 4 * 4 + 3, -1, -1}));
  EXPECT_EQ(faults.ptr<std::int32_t>()[0], ops::kDecodeFaultPage);
}

TEST(BuildPrefillTablesTest, RejectsBadArguments) {
  Tensor prefix = i32_tensor({0, 1}), cu = i32_tensor({0, 1, 2}), faults = i32_tensor({0});
  Tensor tables_in = i32_tensor({0, 1, 2, 3});
  Tensor out = Tensor::empty({6}, DType::i32), slots = Tensor::empty({2}, DType::i32);
  const TensorView two_pages = tables_in.view().reshape({2, 2});
  const TensorView three_pages = out.view().reshape({2, 3});
  EXPECT_TRUE(rejects(
      [&] { ops::build_prefill_tables(prefix, cu, two_pages, 4, 8, three_pages, slots, faults); },
      "block_tables: expected at least 3 pages a row (the width of tables), got 2",
      {watch(out), watch(slots)}));
  EXPECT_TRUE(rejects(
      [&] {
        ops::build_prefill_tables(prefix, prefix, two_pages, 4, 8,
                                  out.view().slice(0, 0, 4).reshape({2, 2}), slots, faults);
      },
      "cu_tokens must have shape [3]", {watch(out), watch(slots)}));
  EXPECT_TRUE(rejects(
      [&] {
        ops::build_prefill_tables(prefix, cu, two_pages, 0, 8,
                                  out.view().slice(0, 0, 4).reshape({2, 2}), slots, faults);
      },
      "page_size must be positive, got 0", {watch(out), watch(slots)}));
  // Offsets that would store past `slots`.
  const TensorView two = out.view().slice(0, 0, 4).reshape({2, 2});
  for (const auto& [offsets, message] :
       {std::pair{std::vector<std::int32_t>{0, 2, 1}, "cu_tokens must be non-decreasing"},
        std::pair{std::vector<std::int32_t>{0, 1, 3},
                  "cu_tokens[2] must equal the 2 packed rows"}}) {
    Tensor bad = i32_tensor(offsets);
    EXPECT_TRUE(rejects(
        [&] { ops::build_prefill_tables(prefix, bad, two_pages, 4, 8, two, slots, faults); },
        message, {watch(out), watch(slots)}));
  }
}

TEST(ScatterGatherTest, RejectsBadArguments) {
  const std::int64_t n = 3, w = 16, num_rows = 10;
  Tensor rows = random_tensor({n, w}, DType::bf16, 60, 1);
  Tensor table = random_tensor({num_rows, w}, DType::bf16, 60, 2);
  Tensor out = random_tensor({n, w}, DType::bf16, 60, 3);
  Tensor index = i32_tensor({4, 0, 9});
  Tensor past_end = i32_tensor({4, 10, 1});
  Tensor negative = i32_tensor({4, 1, -1});
  Tensor below_skip = i32_tensor({4, 1, -2});
  Tensor too_few = i32_tensor({4, 1});
  Tensor index_f32 = random_tensor({n}, DType::f32, 60, 4);
  Tensor index_wide = i32_tensor({4, 7, 0, 2, 9, 5});
  const TensorView index_every_other = strided_view(index_wide, {n}, {2});
  Tensor rows_f32 = random_tensor({n, w}, DType::f32, 60, 5);
  Tensor rows_narrow = random_tensor({n, w - 1}, DType::bf16, 60, 6);
  Tensor table_wide = random_tensor({num_rows, 2 * w}, DType::bf16, 60, 7);
  const TensorView table_every_other = strided_view(table_wide, {num_rows, w}, {2 * w, 2});

  // scatter_rows(rows, index, dst)
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows, past_end, table); },
                      "index[1] = 10 is outside [0, 10)", {watch(table)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows, below_skip, table); },
                      "index[2] = -2 is outside [0, 10) (or -1)", {watch(table)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows, too_few, table); }, "index must have shape [3]",
                      {watch(table)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows, index_f32, table); },
                      "index must have dtype i32", {watch(table)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows, index_every_other, table); },
                      "index must be contiguous", {watch(table)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows_f32, index, table); },
                      "rows must have the dtype of dst, bf16, got f32", {watch(table)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows_narrow, index, table); },
                      "rows must have shape [*, 16]", {watch(table)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows, index, table_every_other); },
                      "dst must have a unit stride", {watch(table_wide)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows, index, on_cuda(table)); }, "dst is on cuda:0",
                      {watch(table)}));
  EXPECT_TRUE(rejects([&] { ops::scatter_rows(rows, on_cuda(index), table); }, "index is on cuda:0",
                      {watch(table)}));

  // gather_rows(src, index, out)
  EXPECT_TRUE(rejects([&] { ops::gather_rows(table, past_end, out); },
                      "index[1] = 10 is outside [0, 10)", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::gather_rows(table, negative, out); },
                      "index[2] = -1 is outside [0, 10)", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::gather_rows(table, too_few, out); }, "index must have shape [3]",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::gather_rows(table, index, rows_f32); },
                      "out must have the dtype of src, bf16, got f32", {watch(rows_f32)}));
  EXPECT_TRUE(rejects([&] { ops::gather_rows(table, index, rows_narrow); },
                      "out must have shape [*, 16]", {watch(rows_narrow)}));
  EXPECT_TRUE(rejects([&] { ops::gather_rows(table_every_other, index, out); },
                      "src must have a unit stride", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::gather_rows(table, index, on_cuda(out)); }, "out is on cuda:0",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::gather_rows(on_cuda(table), index, out); }, "src is on cuda:0",
                      {watch(out)}));
}

}  // namespace
}  // namespace dsattn::test
