// Cache reads and writes on the GPU, bit for bit against the CPU backend: row gathers and
// scatters of every row format (the kernel picks 16-, 4- or 1-byte words from the alignment),
// and the in-place mapping of selected positions to cache slots.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/ops/cache_ops.h"
#include "gpu_test_util.h"

namespace dsattn::gpu_test {
namespace {

struct RowsCase {
  const char* name;
  DType dtype;
  std::int64_t width;        // elements per row
  std::int64_t table_rows;   // rows of the cache
  std::int64_t moved;        // rows gathered or scattered
  std::int64_t pad, offset;  // the moved rows are a column window [offset, offset + width) of
                             // rows `pad` elements wider (0, 0: contiguous)
};

void PrintTo(const RowsCase& c, std::ostream* os) { *os << c.name; }

class RowsGpu : public GpuParamTest<RowsCase> {
 protected:
  // A tensor of random bits with rows `pad` wider than the case's width.
  static Tensor random_rows(std::int64_t rows, const RowsCase& c, std::uint64_t seed) {
    Tensor t = Tensor::empty({rows, c.width + c.pad}, c.dtype);
    fill_random_bytes(t, seed);
    return t;
  }
  // Distinct cache rows in random order (a scatter must not write one row twice).
  static Tensor shuffled_index(const RowsCase& c, std::uint64_t seed) {
    std::vector<std::int32_t> all(static_cast<std::size_t>(c.table_rows));
    std::iota(all.begin(), all.end(), 0);
    std::mt19937 rng(static_cast<unsigned>(seed));
    std::shuffle(all.begin(), all.end(), rng);
    all.resize(static_cast<std::size_t>(c.moved));
    return i32_tensor(all);
  }
};

TEST_P(RowsGpu, GatherMatchesCpu) {
  const RowsCase c = GetParam();
  Tensor src_backing = random_rows(c.table_rows, c, 50);
  const TensorView src = src_backing.view().slice(1, c.offset, c.offset + c.width);
  // Gathers may repeat a row: draw with replacement.
  std::vector<std::int32_t> idx(static_cast<std::size_t>(c.moved));
  for (std::size_t i = 0; i < idx.size(); ++i) {
    idx[i] = static_cast<std::int32_t>(mix64(i + 51) % static_cast<std::uint64_t>(c.table_rows));
  }
  Tensor index = i32_tensor(idx);
  Tensor out_backing = Tensor::empty({c.moved, c.width + c.pad}, c.dtype);
  poison(out_backing);
  const TensorView out = out_backing.view().slice(1, c.pad - c.offset, c.pad - c.offset + c.width);
  const Mirror src_dev(src_backing), index_dev(index), out_dev(out_backing);
  ops::gather_rows(src, index, out);
  ops::gather_rows(src_dev.on_gpu(src), index_dev.on_gpu(), out_dev.on_gpu(out));
  EXPECT_TRUE(same_bytes(out_backing, out_dev.fetch(), "gathered rows"));
}

TEST_P(RowsGpu, ScatterMatchesCpu) {
  const RowsCase c = GetParam();
  Tensor rows_backing = random_rows(c.moved, c, 52);
  const TensorView rows = rows_backing.view().slice(1, c.offset, c.offset + c.width);
  Tensor index = shuffled_index(c, 53);
  // The cache: poisoned, so rows (and bytes around the window) not written stay poisoned.
  Tensor dst_backing = Tensor::empty({c.table_rows, c.width + c.pad}, c.dtype);
  poison(dst_backing);
  const TensorView dst = dst_backing.view().slice(1, c.pad - c.offset, c.pad - c.offset + c.width);
  const Mirror rows_dev(rows_backing), index_dev(index), dst_dev(dst_backing);
  ops::scatter_rows(rows, index, dst);
  ops::scatter_rows(rows_dev.on_gpu(rows), index_dev.on_gpu(), dst_dev.on_gpu(dst));
  EXPECT_TRUE(same_bytes(dst_backing, dst_dev.fetch(), "cache after the scatter"));
}

const RowsCase kRowsCases[] = {
    // bf16 latent rows (1152 B: 16-byte words), FP8 latent rows (656 B: 16-byte words), indexer
    // keys (132 B: 4-byte words), f32 rows.
    {"LatentBf16", DType::bf16, 576, 700, 300, 0, 0},
    {"LatentFp8", DType::u8, latent_fp8_bytes(512, 64), 640, 257, 0, 0},
    {"IndexKeys", DType::u8, index_key_bytes(128), 1000, 999, 0, 0},
    {"F32Rows", DType::f32, 40, 100, 64, 0, 0},
    // Windows of wider rows: 4-byte aligned (a bf16 window at an even offset), and odd byte
    // offsets and widths that only single bytes can move.
    {"Bf16Window", DType::bf16, 64, 300, 200, 512, 2},
    {"OddBytes", DType::u8, 7, 50, 33, 6, 3},
};
INSTANTIATE_TEST_SUITE_P(Formats, RowsGpu, ::testing::ValuesIn(kRowsCases),
                         [](const auto& info) { return std::string(info.param.name); });

// Index-key rows written page-major (each page's values, then its scales) land on the GPU where
// the CPU puts them, for pages of 16 and 64 and d_I 128 and 256, slots in shuffled order with
// skipped rows; every other byte keeps its poison.
using IndexKeysGpu = GpuTest;

TEST_F(IndexKeysGpu, WritePageMajorMatchesCpu) {
  for (const auto& [d, page_size] : {std::pair<std::int64_t, std::int64_t>{128, 16},
                                     std::pair<std::int64_t, std::int64_t>{256, 64}}) {
    SCOPED_TRACE(fmt::format("d_I {}, page size {}", d, page_size));
    const std::int64_t bytes = index_key_bytes(d), slots = 9 * page_size, n = 5 * page_size + 3;
    Tensor rows = Tensor::empty({n, bytes}, DType::u8);
    fill_random_bytes(rows, 54);
    std::vector<std::int32_t> order(static_cast<std::size_t>(slots));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937(55));
    order.resize(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < order.size(); i += 7) order[i] = -1;
    Tensor index = i32_tensor(order);
    Tensor cache = poisoned({slots, bytes}, DType::u8);
    const Mirror rows_dev(rows), index_dev(index), cache_dev(cache);
    ops::write_index_keys(rows, index, cache, page_size, IndexKeyLayout::page_major);
    ops::write_index_keys(rows_dev.on_gpu(), index_dev.on_gpu(), cache_dev.on_gpu(), page_size,
                          IndexKeyLayout::page_major);
    EXPECT_TRUE(same_bytes(cache, cache_dev.fetch(), "page-major cache after the write"));
  }
}

// ---------------------------------------------------------------------------------------------
// map_positions_to_slots

using MapPositionsGpu = GpuTest;

TEST_F(MapPositionsGpu, MatchesCpuWithHolesAndStridedRows) {
  const std::int64_t requests = 5, max_pages = 40, page_size = kPageSize, rows = 300, k = 257;
  // Block tables: distinct random pages out of a pool, as the page allocator hands them out.
  std::vector<std::int32_t> pages(static_cast<std::size_t>(requests * max_pages));
  std::iota(pages.begin(), pages.end(), 0);
  std::mt19937 rng(54);
  std::shuffle(pages.begin(), pages.end(), rng);
  Tensor tables = Tensor::empty({requests, max_pages}, DType::i32);
  std::copy(pages.begin(), pages.end(), tables.ptr<std::int32_t>());
  // Each row belongs to a request with a context length; its indices are positions inside that
  // context (in ascending order, as top-k writes them) followed by -1 holes.
  std::vector<std::int32_t> row_request(static_cast<std::size_t>(rows));
  Tensor indices_backing = Tensor::empty({rows, k + 3}, DType::i32);
  poison(indices_backing);
  const TensorView indices = indices_backing.view().slice(1, 1, 1 + k);
  for (std::int64_t r = 0; r < rows; ++r) {
    row_request[r] = static_cast<std::int32_t>(mix64(static_cast<std::uint64_t>(r)) % requests);
    const std::int64_t context =
        1 + static_cast<std::int64_t>(mix64(static_cast<std::uint64_t>(r) + 1000) %
                                      static_cast<std::uint64_t>(max_pages * page_size));
    std::vector<std::int32_t> picked;
    for (std::int64_t j = 0; j < k; ++j) {
      const auto p = static_cast<std::int32_t>(mix64(static_cast<std::uint64_t>(r * k + j) + 7) %
                                               static_cast<std::uint64_t>(context));
      picked.push_back(p);
    }
    std::sort(picked.begin(), picked.end());
    picked.erase(std::unique(picked.begin(), picked.end()), picked.end());
    if (r % 7 == 0) picked.resize(picked.size() / 3);  // a short row: many holes
    picked.resize(static_cast<std::size_t>(k), -1);
    std::copy(picked.begin(), picked.end(), indices.row<std::int32_t>(r));
  }
  Tensor req = i32_tensor(row_request);

  const Mirror indices_dev(indices_backing), req_dev(req), tables_dev(tables);
  ops::map_positions_to_slots(indices, req, tables, page_size);
  ops::map_positions_to_slots(indices_dev.on_gpu(indices), req_dev.on_gpu(), tables_dev.on_gpu(),
                              page_size);
  EXPECT_TRUE(same_bytes(indices_backing, indices_dev.fetch(), "slots"));
}

// A page size other than the cache's 64 (the op takes it as an argument).
TEST_F(MapPositionsGpu, MatchesCpuWithPageSize16) {
  const std::int64_t page_size = 16;
  Tensor tables_2d = i32_tensor({7, 3, 9, 1, 0, 5, 2, 8});
  const TensorView tables = tables_2d.view().reshape({2, 4});
  Tensor indices = Tensor::empty({3, 6}, DType::i32);
  const std::vector<std::int32_t> values = {0,  15, 16, 33, 63, -1, 1,  2,  17,
                                            40, -1, -1, 62, 48, 47, 31, 30, 0};
  std::copy(values.begin(), values.end(), indices.ptr<std::int32_t>());
  Tensor req = i32_tensor({1, 0, 1});
  const Mirror indices_dev(indices), req_dev(req), tables_dev(tables_2d);
  ops::map_positions_to_slots(indices, req, tables, page_size);
  ops::map_positions_to_slots(indices_dev.on_gpu(), req_dev.on_gpu(), tables_dev.on_gpu(tables),
                              page_size);
  EXPECT_TRUE(same_bytes(indices, indices_dev.fetch(), "slots"));
}

}  // namespace
}  // namespace dsattn::gpu_test
