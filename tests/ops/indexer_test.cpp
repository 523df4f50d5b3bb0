// The lightning indexer's scores over packed requests against a float64 sum over heads of
// ReLU(q · k), with keys read from 132-byte cache rows through each request's block table,
// bottom-right causal masking per request, and rows short enough to skip left untouched.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/ops/indexer.h"
#include "op_test_util.h"

namespace dsattn::test {
namespace {

// A random e4m3 code that is a number (0x7f and 0xff are NaN).
std::uint8_t random_code(std::mt19937& rng) {
  for (;;) {
    const auto b = static_cast<std::uint8_t>(rng());
    if ((b & 0x7f) != 0x7f) return b;
  }
}

struct IndexerCase {
  const char* name;
  std::int64_t heads, dim, page_size;
  std::vector<std::pair<std::int64_t, std::int64_t>> requests;  // (query rows, context)
  std::int64_t extra_columns;                                   // scores has max n_k + this
  std::int64_t skip_rows_up_to;
};

void PrintTo(const IndexerCase& c, std::ostream* os) { *os << c.name; }

class IndexerScoresTest : public ::testing::TestWithParam<IndexerCase> {};

TEST_P(IndexerScoresTest, MatchesFloat64WeightedReluSum) {
  const IndexerCase c = GetParam();
  const std::int64_t H = c.heads, d = c.dim, ps = c.page_size;
  const std::int64_t blocks = d / 128, row_bytes = index_key_bytes(d);
  const std::int64_t batch = static_cast<std::int64_t>(c.requests.size());
  std::vector<std::int32_t> cq{0}, lens;
  std::int64_t max_k = 0, max_pages = 1;
  for (const auto& [n_q, n_k] : c.requests) {
    cq.push_back(cq.back() + static_cast<std::int32_t>(n_q));
    lens.push_back(static_cast<std::int32_t>(n_k));
    max_k = std::max(max_k, n_k);
    max_pages = std::max(max_pages, (n_k + ps - 1) / ps + 1);  // one spare entry at least
  }
  const std::int64_t total_q = cq.back(), cols = max_k + c.extra_columns;
  const std::int64_t num_pages = batch * max_pages + 3, num_slots = num_pages * ps;
  Tensor cu_q = i32_tensor(cq), context_lens = i32_tensor(lens);
  std::mt19937 rng(static_cast<unsigned>(max_k * 131 + H + ps));
  std::uniform_real_distribution<float> scale_dist(0.002f, 0.02f);

  // Key cache: each row is d e4m3 codes, then one f32 scale per 128 of them.
  Tensor key_cache = Tensor::empty({num_slots, row_bytes}, DType::u8);
  for (std::int64_t s = 0; s < num_slots; ++s) {
    std::uint8_t* row = key_cache.ptr<std::uint8_t>() + s * row_bytes;
    for (std::int64_t j = 0; j < d; ++j) row[j] = random_code(rng);
    for (std::int64_t b = 0; b < blocks; ++b) {
      const float sc = scale_dist(rng);
      std::memcpy(row + d + 4 * b, &sc, 4);
    }
  }
  // Block tables: each request's pages are distinct physical pages in shuffled order, as
  // columns [2, 2 + max_pages) of a wider tensor. Entries past a request's context are -1 and
  // the columns around the window hold garbage: none of them may be read.
  std::vector<std::int32_t> pages(num_pages);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), rng);
  Tensor tables_backing = Tensor::empty({batch, max_pages + 4}, DType::i32);
  poison(tables_backing);
  const TensorView block_tables = tables_backing.view().slice(1, 2, 2 + max_pages);
  for (std::int64_t b = 0; b < batch; ++b) {
    std::int32_t* table = block_tables.row<std::int32_t>(b);
    const std::int64_t used = (lens[b] + ps - 1) / ps;
    for (std::int64_t p = 0; p < max_pages; ++p)
      table[p] = p < used ? pages[b * max_pages + p] : -1;
  }
  // The slot of position s of request b.
  const auto slot_of = [&](std::int64_t b, std::int64_t s) {
    return block_tables.row<std::int32_t>(b)[s / ps] * ps + s % ps;
  };

  Tensor q = Tensor::empty({total_q, H, d}, DType::fp8_e4m3);
  for (std::int64_t i = 0; i < q.numel(); ++i) q.ptr<std::uint8_t>()[i] = random_code(rng);
  Tensor q_scale = Tensor::empty({total_q, H, blocks}, DType::f32);
  for (std::int64_t i = 0; i < q_scale.numel(); ++i) q_scale.ptr<float>()[i] = scale_dist(rng);
  // Weights of both signs, as rows of a wider tensor; scores likewise.
  Tensor w_backing = random_tensor({total_q, H + 3}, DType::f32, 70, H);
  const TensorView weights = w_backing.view().slice(1, 1, 1 + H);
  Tensor scores_backing = random_tensor({total_q, cols + 5}, DType::f32, 71, cols);
  const TensorView scores = scores_backing.view().slice(1, 2, 2 + cols);

  // Dequantised operands in double.
  std::vector<double> keys(static_cast<std::size_t>(num_slots * d));
  for (std::int64_t s = 0; s < num_slots; ++s) {
    const std::uint8_t* row = key_cache.ptr<std::uint8_t>() + s * row_bytes;
    for (std::int64_t j = 0; j < d; ++j) {
      float sc;
      std::memcpy(&sc, row + d + 4 * (j / 128), 4);
      keys[s * d + j] = decode_e4m3(row[j]) * sc;
    }
  }
  std::vector<double> queries(static_cast<std::size_t>(total_q * H * d));
  for (std::int64_t i = 0; i < total_q * H; ++i) {
    for (std::int64_t j = 0; j < d; ++j) {
      queries[i * d + j] = decode_e4m3(q.ptr<std::uint8_t>()[i * d + j]) *
                           q_scale.ptr<float>()[i * blocks + j / 128];
    }
  }
  const std::vector<double> w = read_doubles(weights);

  poison(scores);
  const std::vector<std::uint8_t> before = snapshot(scores_backing);
  ops::indexer_scores(q, q_scale, weights, key_cache, block_tables, ps, cu_q, context_lens,
                      c.skip_rows_up_to, scores);
  const std::vector<double> out = read_doubles(scores);
  EXPECT_TRUE(only_view_written(scores_backing, before, scores));
  // Whether scores[row, s] still holds its poison, bit for bit.
  const auto untouched = [&](std::int64_t row, std::int64_t s) {
    const auto* now = reinterpret_cast<const std::uint8_t*>(scores.row<float>(row) + s);
    const std::int64_t at = now - static_cast<const std::uint8_t*>(scores_backing.view().data());
    return std::memcmp(now, before.data() + at, sizeof(float)) == 0;
  };

  // The scores are f32 sums of d products per head and then of H weighted terms. Recursive f32
  // summation of n terms errs by at most (n - 1)·u·Σ|terms| (u = 2^-24), the dequantisations and
  // products add a few roundings per term, and ReLU never enlarges an error. So any f32
  // evaluation order stays within (d + H + 8)·u·Σ_h |w_h|·Σ_j |q_j k_j| of the exact value.
  const double gamma = static_cast<double>(d + H + 8) * 0x1p-24;
  std::int64_t computed_rows = 0, skipped_rows = 0;
  double largest = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t n_q = c.requests[b].first, n_k = c.requests[b].second;
    for (std::int64_t i = 0; i < n_q; ++i) {
      const std::int64_t row = cq[b] + i, visible = n_k - n_q + i + 1;
      if (visible <= c.skip_rows_up_to) {
        ++skipped_rows;
        for (std::int64_t s = 0; s < cols; ++s) {
          ASSERT_TRUE(untouched(row, s))
              << "request " << b << " row " << i << " sees " << visible
              << " keys and must be skipped, but scores[" << row << ", " << s << "] was written";
        }
        continue;
      }
      ++computed_rows;
      for (std::int64_t s = 0; s < cols; ++s) {
        const double got = out[row * cols + s];
        if (s >= n_k) {
          ASSERT_TRUE(untouched(row, s)) << "scores[" << row << ", " << s << "] lies past request "
                                         << b << "'s " << n_k << " keys but was written";
          continue;
        }
        if (s >= visible) {
          ASSERT_EQ(got, -std::numeric_limits<double>::infinity())
              << "scores[" << row << ", " << s << "] must be masked to -inf";
          continue;
        }
        const double* key = &keys[static_cast<std::size_t>(slot_of(b, s) * d)];
        double acc = 0, mass = 0;
        float acc_f = 0;
        for (std::int64_t h = 0; h < H; ++h) {
          const double* qh = &queries[static_cast<std::size_t>((row * H + h) * d)];
          double dot = 0, abs_dot = 0;
          float dot_f = 0;
          for (std::int64_t j = 0; j < d; ++j) {
            dot += qh[j] * key[j];
            abs_dot += std::fabs(qh[j] * key[j]);
            dot_f += static_cast<float>(qh[j]) * static_cast<float>(key[j]);
          }
          const double wh = w[row * H + h];
          acc += wh * std::max(dot, 0.0);
          mass += std::fabs(wh) * abs_dot;
          acc_f += static_cast<float>(wh) * std::max(dot_f, 0.0f);
        }
        const double bound = gamma * mass;
        ASSERT_LE(std::fabs(acc_f - acc), bound) << "the bound itself is wrong";
        ASSERT_TRUE(std::isfinite(got)) << "scores[" << row << ", " << s << "] = " << got;
        ASSERT_LE(std::fabs(got - acc), bound)
            << "scores[" << row << ", " << s << "] (request " << b << ", row " << i << ", key " << s
            << ") = " << got << ", reference " << acc;
        largest = std::max(largest, std::fabs(acc));
      }
    }
  }
  // The case exercises what it claims: computed rows hold non-zero scores, and a threshold
  // skips some rows.
  EXPECT_EQ(computed_rows + skipped_rows, total_q);
  if (computed_rows > 0) {
    EXPECT_GT(largest, 0.0);
  }
  if (c.skip_rows_up_to > 0) {
    EXPECT_GT(skipped_rows, 0);
  }

  // The same keys page-major give the same scores bit for bit (the same arithmetic on the same
  // values), and write the same cells.
  const Tensor paged = page_major_copy(key_cache, ps);
  Tensor again_backing = Tensor::empty({total_q, cols + 5}, DType::f32);
  std::memcpy(again_backing.view().data(), before.data(), before.size());
  const TensorView again = again_backing.view().slice(1, 2, 2 + cols);
  ops::indexer_scores(q, q_scale, weights, paged, block_tables, ps, cu_q, context_lens,
                      c.skip_rows_up_to, again, IndexKeyLayout::page_major);
  EXPECT_EQ(snapshot(again_backing), snapshot(scores_backing));
}

const IndexerCase kIndexerCases[] = {
    // name, H_I, d_I, page size, requests (queries, context), extra columns, skip rows up to
    // A decode row over a prefix, a chunk over a prefix, a fresh prefill, a request with a
    // context but no query, and a short one.
    {"MixedBatch_H64", 64, 128, 16, {{1, 100}, {6, 41}, {16, 16}, {0, 7}, {3, 3}}, 0, 0},
    {"MixedBatchModelPages_H8", 8, 128, kPageSize, {{2, 9}, {1, 130}, {5, 5}}, 7, 0},
    // Rows that see at most 12 keys are left alone: all of request 1, the first 12 rows of
    // request 2, none of requests 0 and 3.
    {"SkipShortRows_H8", 8, 128, 4, {{1, 30}, {1, 5}, {20, 20}, {4, 50}}, 3, 12},
    // Every row short enough: nothing is written.
    {"SkipEveryRow_H4", 4, 128, 4, {{2, 9}, {1, 1}, {3, 10}}, 2, 10},
    {"TwoScaleBlocks_H4", 4, 256, 8, {{5, 23}, {2, 9}}, 3, 0},
    // Contexts of several key blocks (2048 keys each on the CPU), ending inside one, exactly at
    // one's end and one key past it.
    {"LongContextKeyBlocks_H8", 8, 128, kPageSize, {{3, 4500}, {2, 2048}, {1, 2049}}, 5, 0},
    // More (query, head) rows than one chunk holds (4096 on the CPU): rows in chunks of 4, the
    // keys each chunk scores ending at its last row's view.
    {"QueryChunks_H1024", 1024, 128, 16, {{9, 40}, {5, 5}}, 2, 0},
};
INSTANTIATE_TEST_SUITE_P(Shapes, IndexerScoresTest, ::testing::ValuesIn(kIndexerCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(IndexerScoresTest, RejectsBadArguments) {
  // Two requests with pages of 4: (2 queries, context 4) on page 2, and (1 query, context 7) on
  // pages 0 and 3 of a 4-page cache; seven score columns.
  const std::int64_t n_q = 3, heads = 3, d = 128, ps = 4, slots = 16, cols = 7;
  std::mt19937 rng(81);
  Tensor q = Tensor::empty({n_q, heads, d}, DType::fp8_e4m3);
  for (std::int64_t i = 0; i < q.numel(); ++i) q.ptr<std::uint8_t>()[i] = random_code(rng);
  Tensor q_scale = random_tensor({n_q, heads, 1}, DType::f32, 80, 1);
  Tensor weights = random_tensor({n_q, heads}, DType::f32, 80, 2);
  Tensor key_cache = Tensor::empty({slots, index_key_bytes(d)}, DType::u8);
  for (std::int64_t i = 0; i < key_cache.numel(); ++i) {
    key_cache.ptr<std::uint8_t>()[i] = random_code(rng);
  }
  const auto table = [](std::int64_t rows, std::int64_t width, std::vector<std::int32_t> e) {
    Tensor t = Tensor::empty({rows, width}, DType::i32);
    std::copy(e.begin(), e.end(), t.ptr<std::int32_t>());
    return t;
  };
  Tensor block_tables = table(2, 3, {2, -1, -1, 0, 3, -1});
  Tensor cu_q = i32_tensor({0, 2, 3}), context_lens = i32_tensor({4, 7});
  Tensor scores = random_tensor({n_q, cols}, DType::f32, 80, 3);

  Tensor q_bf16 = random_tensor({n_q, heads, d}, DType::bf16, 80, 4);
  Tensor q_odd = Tensor::empty({n_q, heads, 96}, DType::fp8_e4m3);
  Tensor q_scale_wrong = random_tensor({n_q, heads, 2}, DType::f32, 80, 5);
  Tensor weights_wrong = random_tensor({n_q, heads + 1}, DType::f32, 80, 6);
  Tensor cache_no_scale = Tensor::empty({slots, d}, DType::u8);
  Tensor cache_f32 = Tensor::empty({slots, index_key_bytes(d)}, DType::f32);
  Tensor scores_rows = random_tensor({n_q + 1, cols}, DType::f32, 80, 7);
  Tensor scores_bf16 = random_tensor({n_q, cols}, DType::bf16, 80, 8);
  Tensor scores_narrow = random_tensor({n_q, 6}, DType::f32, 80, 9);
  Tensor scores_wide = random_tensor({n_q, 2 * cols}, DType::f32, 80, 10);
  const TensorView scores_every_other = strided_view(scores_wide, {n_q, cols}, {2 * cols, 2});
  Tensor i32_f32 = random_tensor({2}, DType::f32, 80, 11);
  const auto call = [&](const TensorView& qv, const TensorView& qs, const TensorView& wv,
                        const TensorView& kc, const TensorView& bt, std::int64_t page_size,
                        const TensorView& cuq, const TensorView& lens, std::int64_t skip,
                        const TensorView& out) {
    ops::indexer_scores(qv, qs, wv, kc, bt, page_size, cuq, lens, skip, out);
  };
  // The good call with other metadata.
  const auto with_meta = [&](const TensorView& bt, const TensorView& cuq, const TensorView& lens) {
    call(q, q_scale, weights, key_cache, bt, ps, cuq, lens, 0, scores);
  };
  // The good call with another q, q_scale, weights, key_cache or scores.
  const auto with = [&](const TensorView& qv, const TensorView& qs, const TensorView& wv,
                        const TensorView& kc, const TensorView& out) {
    call(qv, qs, wv, kc, block_tables, ps, cu_q, context_lens, 0, out);
  };

  EXPECT_TRUE(rejects([&] { with(q_bf16, q_scale, weights, key_cache, scores); },
                      "q must have dtype fp8_e4m3 or u8", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { with(q_odd, q_scale, weights, key_cache, scores); }, "multiple of 128",
                      {watch(scores)}));
  EXPECT_TRUE(rejects([&] { with(q, q_scale_wrong, weights, key_cache, scores); },
                      "q_scale must have shape", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { with(q, q_scale, weights_wrong, key_cache, scores); },
                      "weights must have shape", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { with(q, q_scale, weights, cache_no_scale, scores); },
                      "key_cache must have shape [*, 132]", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { with(q, q_scale, weights, cache_f32, scores); },
                      "key_cache must have dtype u8", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { with(q, q_scale, weights, key_cache, scores_rows); },
                      "scores must have shape [3, *]", {watch(scores_rows)}));
  EXPECT_TRUE(rejects([&] { with(q, q_scale, weights, key_cache, scores_bf16); },
                      "scores must have dtype f32", {watch(scores_bf16)}));
  EXPECT_TRUE(rejects([&] { with(q, q_scale, weights, key_cache, scores_every_other); },
                      "scores must have a unit stride", {watch(scores_wide)}));
  // Request 1 has a context of 7, one more than 6 score columns.
  EXPECT_TRUE(rejects([&] { with(q, q_scale, weights, key_cache, scores_narrow); },
                      "request 1 has a context of 7, more than the 6 score columns",
                      {watch(scores_narrow)}));
  EXPECT_TRUE(rejects(
      [&] {
        call(q, q_scale, weights, key_cache, block_tables, ps, cu_q, context_lens, -1, scores);
      },
      "skip_rows_up_to must be >= 0", {watch(scores)}));
  EXPECT_TRUE(rejects(
      [&] { call(q, q_scale, weights, key_cache, block_tables, 0, cu_q, context_lens, 0, scores); },
      "page_size must be positive", {watch(scores)}));
  // A page-major key cache is read page by page: whole pages, contiguous.
  Tensor cache_wide = Tensor::empty({slots, index_key_bytes(d) + 4}, DType::u8);
  const TensorView cache_strided = cache_wide.view().slice(1, 0, index_key_bytes(d));
  const auto page_major = [&](const TensorView& cache, std::int64_t page_size) {
    ops::indexer_scores(q, q_scale, weights, cache, block_tables, page_size, cu_q, context_lens, 0,
                        scores, IndexKeyLayout::page_major);
  };
  EXPECT_TRUE(rejects([&] { page_major(cache_strided, ps); },
                      "key_cache in the page-major layout must be contiguous, got a row stride of "
                      "136 bytes for rows of 132",
                      {watch(scores)}));
  EXPECT_TRUE(rejects([&] { page_major(key_cache, 3); },
                      "key_cache in the page-major layout must hold whole pages of 3 slots, got 16",
                      {watch(scores)}));

  // Query offsets.
  Tensor cu_q_start = i32_tensor({1, 2, 3});
  EXPECT_TRUE(rejects([&] { with_meta(block_tables, cu_q_start, context_lens); },
                      "cu_q[0] must be 0", {watch(scores)}));
  Tensor cu_q_down = i32_tensor({0, 3, 2, 3});
  EXPECT_TRUE(rejects(
      [&] {
        with_meta(block_tables, cu_q_down, i32_tensor({4, 4, 7}));
      },
      "cu_q must be non-decreasing, got 2 after 3", {watch(scores)}));
  Tensor cu_q_over = i32_tensor({0, 2, 4});
  EXPECT_TRUE(rejects([&] { with_meta(block_tables, cu_q_over, context_lens); },
                      "cu_q[2] must equal the 3 packed rows, got 4", {watch(scores)}));
  Tensor cu_q_2d = Tensor::empty({3, 1}, DType::i32);
  EXPECT_TRUE(rejects([&] { with_meta(block_tables, cu_q_2d, context_lens); },
                      "cu_q must have shape [batch + 1]", {watch(scores)}));
  // Contexts: request 0 would have 2 queries but a context of 1.
  EXPECT_TRUE(rejects(
      [&] {
        with_meta(block_tables, cu_q, i32_tensor({1, 7}));
      },
      "request 0 has 2 query rows (cu_q) but a context of 1", {watch(scores)}));
  EXPECT_TRUE(rejects(
      [&] {
        with_meta(block_tables, cu_q, i32_tensor({4, 7, 1}));
      },
      "context_lens must have shape [2]", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { with_meta(block_tables, cu_q, i32_f32); },
                      "context_lens must have dtype i32", {watch(scores)}));
  // Block tables: too few pages for a context of 5, pages outside the cache, shape and dtype.
  Tensor one_page = table(2, 1, {2, 0});
  EXPECT_TRUE(rejects(
      [&] {
        with_meta(one_page, cu_q, i32_tensor({4, 5}));
      },
      "request 1 has a context of 5 but block_tables covers 4 positions", {watch(scores)}));
  Tensor page_past = table(2, 3, {2, -1, -1, 0, 4, -1});
  EXPECT_TRUE(rejects([&] { with_meta(page_past, cu_q, context_lens); },
                      "block_tables[1, 1] = 4 is outside the cache's 4 pages", {watch(scores)}));
  Tensor page_negative = table(2, 3, {-1, 2, 2, 0, 3, -1});
  EXPECT_TRUE(rejects([&] { with_meta(page_negative, cu_q, context_lens); },
                      "block_tables[0, 0] = -1", {watch(scores)}));
  Tensor tables_rows = table(3, 3, {2, -1, -1, 0, 3, -1, 1, 1, 1});
  EXPECT_TRUE(rejects([&] { with_meta(tables_rows, cu_q, context_lens); },
                      "block_tables must have shape [2, *]", {watch(scores)}));
  Tensor tables_f32 = random_tensor({2, 3}, DType::f32, 80, 12);
  EXPECT_TRUE(rejects([&] { with_meta(tables_f32, cu_q, context_lens); },
                      "block_tables must have dtype i32", {watch(scores)}));

  EXPECT_TRUE(rejects([&] { with_meta(block_tables, on_cuda(cu_q), context_lens); },
                      "cu_q is on cuda:0", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { with_meta(block_tables, cu_q, on_cuda(context_lens)); },
                      "context_lens is on cuda:0", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { with_meta(on_cuda(block_tables), cu_q, context_lens); },
                      "block_tables is on cuda:0", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { with(q, q_scale, weights, on_cuda(key_cache), scores); },
                      "key_cache is on cuda:0", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { with(q, q_scale, weights, key_cache, on_cuda(scores)); },
                      "scores is on cuda:0", {watch(scores)}));
}

TEST(IndexerScoresTest, RefusesDeviceMetadataWithoutReadingIt) {
  // context_lens or block_tables claimed on a GPU next to host cu_q: their entries are device
  // memory the host must not read. Here they sit on pages that fault on any access.
  const std::int64_t n_q = 2, heads = 2, d = 128, ps = 4, slots = 8;
  std::mt19937 rng(82);
  Tensor q = Tensor::empty({n_q, heads, d}, DType::fp8_e4m3);
  for (std::int64_t i = 0; i < q.numel(); ++i) q.ptr<std::uint8_t>()[i] = random_code(rng);
  Tensor q_scale = random_tensor({n_q, heads, 1}, DType::f32, 83, 1);
  Tensor weights = random_tensor({n_q, heads}, DType::f32, 83, 2);
  Tensor key_cache = Tensor::empty({slots, index_key_bytes(d)}, DType::u8);
  for (std::int64_t i = 0; i < key_cache.numel(); ++i) {
    key_cache.ptr<std::uint8_t>()[i] = random_code(rng);
  }
  Tensor cu_q = i32_tensor({0, n_q});
  Tensor host_lens = i32_tensor({6});
  Tensor host_tables = Tensor::empty({1, 2}, DType::i32);
  host_tables.ptr<std::int32_t>()[0] = 1;
  host_tables.ptr<std::int32_t>()[1] = 0;
  Tensor scores = random_tensor({n_q, 6}, DType::f32, 83, 3);
  GuardedPages device_memory(2);
  std::memcpy(device_memory.page(0), host_lens.ptr<std::int32_t>(), 4);
  std::memcpy(device_memory.page(1), host_tables.ptr<std::int32_t>(), 8);
  device_memory.protect(0);
  device_memory.protect(1);
  const TensorView device_lens(device_memory.page(0), DType::i32, Device::cuda(), {1});
  const TensorView device_tables(device_memory.page(1), DType::i32, Device::cuda(), {1, 2});
  const auto call = [&](const TensorView& tables, const TensorView& lens) {
    ops::indexer_scores(q, q_scale, weights, key_cache, tables, ps, cu_q, lens, 0, scores);
  };
  if (!runs_without_fault([&] {
        (void)rejects([&] { call(host_tables, device_lens); }, "context_lens");
        (void)rejects([&] { call(device_tables, host_lens); }, "block_tables");
      })) {
    return;
  }
  EXPECT_TRUE(rejects([&] { call(host_tables, device_lens); }, "context_lens is on cuda:0",
                      {watch(scores)}));
  EXPECT_TRUE(rejects([&] { call(device_tables, host_lens); }, "block_tables is on cuda:0",
                      {watch(scores)}));
}

}  // namespace
}  // namespace dsattn::test
