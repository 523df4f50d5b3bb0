// The lightning indexer's scores (float64 rule, with the masked -inf columns, the skipped rows and
// the columns past each request's keys checked exactly) and top-k (the same positions as the CPU,
// in the same order, bit for bit).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/ops/cuda/kernel_choice.h"
#include "dsattn/ops/cuda/params.h"
#include "dsattn/ops/indexer.h"
#include "dsattn/ops/quantize.h"
#include "dsattn/ops/topk.h"
#include "gpu_test_util.h"

namespace dsattn::gpu_test {
namespace {

// ---------------------------------------------------------------------------------------------
// indexer_scores

struct IndexerCase {
  const char* name;
  std::int64_t heads, page_size;
  std::vector<std::pair<std::int64_t, std::int64_t>> requests;  // (query rows, context)
  std::int64_t skip_rows_up_to;
  std::int64_t extra_columns;  // scores has this many columns beyond the longest context
};

void PrintTo(const IndexerCase& c, std::ostream* os) { *os << c.name; }

class IndexerGpu : public GpuParamTest<IndexerCase> {};

TEST_P(IndexerGpu, MatchesFloat64AndLeavesUnwrittenColumns) {
  const IndexerCase c = GetParam();
  constexpr std::int64_t d = 128;
  const std::int64_t batch = static_cast<std::int64_t>(c.requests.size()), H = c.heads;
  const std::int64_t ps = c.page_size;
  std::vector<std::int32_t> cq{0}, context;
  std::int64_t max_k = 0, max_pages = 1, used_pages = 0;
  for (const auto& [nq, nk] : c.requests) {
    cq.push_back(cq.back() + static_cast<std::int32_t>(nq));
    context.push_back(static_cast<std::int32_t>(nk));
    max_k = std::max(max_k, nk);
    max_pages = std::max(max_pages, (nk + ps - 1) / ps + 1);  // one spare entry per table
    used_pages += (nk + ps - 1) / ps;
  }
  const std::int64_t total_q = cq.back();
  const std::int64_t pages = used_pages + 3, slots = pages * ps, row_bytes = index_key_bytes(d);

  // Queries and keys as the indexer path makes them: bf16 activations quantised per 128 values,
  // the keys straight into the cache's 132-byte rows.
  Tensor q_bf16 = random_tensor({total_q * H, d}, DType::bf16, 60, 1, 1.0);
  Tensor q = Tensor::empty({total_q, H, d}, DType::fp8_e4m3);
  Tensor q_scale = Tensor::empty({total_q, H, 1}, DType::f32);
  ops::quantize_fp8_block128(q_bf16, q.view().reshape({total_q * H, d}),
                             q_scale.view().reshape({total_q * H, 1}));
  Tensor k_bf16 = random_tensor({slots, d}, DType::bf16, 61, 1, 1.0);
  Tensor key_cache = Tensor::empty({slots, row_bytes}, DType::u8);
  ops::quantize_fp8_block128(
      k_bf16, reinterpret_view(key_cache, DType::u8, 0, {slots, d}, {row_bytes, 1}),
      reinterpret_view(key_cache, DType::f32, d, {slots, 1}, {row_bytes / 4, 1}));
  // Weights of both signs, as w = W_w x is; a column window of a wider tensor (strided rows).
  Tensor weights_backing = random_tensor({total_q, H + 3}, DType::f32, 62, 1, 0.5);
  const TensorView weights = weights_backing.view().slice(1, 1, 1 + H);
  const std::vector<double> wv = read_doubles(weights);
  // Block tables: distinct pages in random order; entries past a request's context are -1.
  std::vector<std::int32_t> page_ids(static_cast<std::size_t>(pages));
  std::iota(page_ids.begin(), page_ids.end(), 0);
  std::mt19937 rng(63);
  std::shuffle(page_ids.begin(), page_ids.end(), rng);
  Tensor tables = Tensor::empty({batch, max_pages}, DType::i32);
  std::size_t next_page = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t needed = (context[b] + ps - 1) / ps;
    for (std::int64_t p = 0; p < max_pages; ++p) {
      tables.ptr<std::int32_t>()[b * max_pages + p] = p < needed ? page_ids[next_page++] : -1;
    }
  }
  const auto slot_of = [&](std::int64_t b, std::int64_t s) {
    return static_cast<std::int64_t>(tables.ptr<std::int32_t>()[b * max_pages + s / ps]) * ps +
           s % ps;
  };
  Tensor cu_q = i32_tensor(cq), context_lens = i32_tensor(context);

  // Scores: a column window of a wider, poisoned tensor.
  const std::int64_t cols = max_k + c.extra_columns;
  Tensor scores_backing = poisoned({total_q, cols + 5}, DType::f32);
  const TensorView scores = scores_backing.view().slice(1, 2, 2 + cols);
  const Mirror q_dev(q), qs_dev(q_scale), w_dev(weights_backing), cache_dev(key_cache),
      tables_dev(tables), cu_q_dev(cu_q), lens_dev(context_lens), scores_dev(scores_backing);
  ops::indexer_scores(q, q_scale, weights, key_cache, tables, ps, cu_q, context_lens,
                      c.skip_rows_up_to, scores);
  ops::indexer_scores(q_dev.on_gpu(), qs_dev.on_gpu(), w_dev.on_gpu(weights), cache_dev.on_gpu(),
                      tables_dev.on_gpu(), ps, cu_q_dev.on_gpu(), lens_dev.on_gpu(),
                      c.skip_rows_up_to, scores_dev.on_gpu(scores));
  // The model's 64 heads take the tensor-core kernel; other head counts the generic one.
  EXPECT_EQ(ops::cuda::last_kernel("indexer_scores"),
            H == ops::cuda::kIndexerSm90Heads ? "indexer_fp8_sm90" : "indexer_generic");
  const Tensor fetched = scores_dev.fetch();

  // The same keys page-major (each page's values, then its scales) go through the same kernel's
  // arithmetic in the same order: the same bytes, skipped and unwritten entries included.
  const Tensor paged = page_major_copy(key_cache, ps);
  Tensor paged_scores = poisoned({total_q, cols + 5}, DType::f32);
  const Mirror paged_dev(paged), paged_scores_dev(paged_scores);
  ops::indexer_scores(q_dev.on_gpu(), qs_dev.on_gpu(), w_dev.on_gpu(weights), paged_dev.on_gpu(),
                      tables_dev.on_gpu(), ps, cu_q_dev.on_gpu(), lens_dev.on_gpu(),
                      c.skip_rows_up_to,
                      paged_scores_dev.on_gpu(paged_scores.view().slice(1, 2, 2 + cols)),
                      IndexKeyLayout::page_major);
  EXPECT_EQ(ops::cuda::last_kernel("indexer_scores"),
            H == ops::cuda::kIndexerSm90Heads ? "indexer_fp8_sm90" : "indexer_generic");
  EXPECT_TRUE(same_bytes(paged_scores_dev.fetch(), fetched, "page-major against row scores"));

  const auto key_value = [&](std::int64_t slot, std::int64_t e) {
    const std::uint8_t* row = key_cache.ptr<std::uint8_t>() + slot * row_bytes;
    float s;
    std::memcpy(&s, row + d, 4);
    return decode_e4m3(row[e]) * static_cast<double>(s);
  };
  // Entries that must stay unwritten enter the comparison as -inf on every side (after their
  // poison is checked), so that indices in messages are [row, column] of scores.
  const double minus_inf = -std::numeric_limits<double>::infinity();
  std::vector<double> gpu_v, cpu_v, ref_v;
  const auto* cpu_bits = static_cast<const std::uint32_t*>(scores_backing.view().data());
  const auto* gpu_bits = static_cast<const std::uint32_t*>(fetched.view().data());
  std::int64_t skipped_rows = 0, masked = 0, unwritten_bad = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t nq = c.requests[b].first, nk = c.requests[b].second;
    for (std::int64_t i = 0; i < nq; ++i) {
      const std::int64_t row = cq[b] + i, visible = nk - nq + i + 1;
      const bool skipped = visible <= c.skip_rows_up_to;
      skipped_rows += skipped;
      std::vector<double> qd(static_cast<std::size_t>(H * d));
      for (std::int64_t h = 0; h < H; ++h) {
        const double s = q_scale.ptr<float>()[row * H + h];
        for (std::int64_t e = 0; e < d; ++e) {
          qd[h * d + e] = decode_e4m3(q.ptr<std::uint8_t>()[(row * H + h) * d + e]) * s;
        }
      }
      for (std::int64_t col = 0; col < cols + 5; ++col) {
        const std::int64_t off = row * (cols + 5) + col, s = col - 2;
        const bool inside = s >= 0 && s < cols;
        if (skipped || s < 0 || s >= nk) {
          if (gpu_bits[off] != kF32Poison && unwritten_bad++ < 5) {
            ADD_FAILURE() << "the GPU wrote scores[" << row << ", " << s
                          << "], which lies outside its request's " << nk << " keys"
                          << (skipped ? " or in a skipped row" : "");
          }
          EXPECT_EQ(cpu_bits[off], kF32Poison) << "cpu scores[" << row << ", " << s << "]";
          if (inside) {
            gpu_v.push_back(minus_inf);
            cpu_v.push_back(minus_inf);
            ref_v.push_back(minus_inf);
          }
          continue;
        }
        double ref = minus_inf;
        if (s < visible) {
          const std::int64_t slot = slot_of(b, s);
          std::vector<double> kd(static_cast<std::size_t>(d));
          for (std::int64_t e = 0; e < d; ++e) kd[e] = key_value(slot, e);
          ref = 0;
          for (std::int64_t h = 0; h < H; ++h) {
            double dot = 0;
            for (std::int64_t e = 0; e < d; ++e) dot += qd[h * d + e] * kd[e];
            ref += wv[row * H + h] * std::max(dot, 0.0);
          }
        } else {
          ++masked;
        }
        float gv, cv;
        std::memcpy(&gv, &gpu_bits[off], 4);
        std::memcpy(&cv, &cpu_bits[off], 4);
        gpu_v.push_back(gv);
        cpu_v.push_back(cv);
        ref_v.push_back(ref);
      }
    }
  }
  EXPECT_EQ(unwritten_bad, 0) << "entries the GPU should have left alone";
  const std::vector<std::int64_t> shape{total_q, cols};
  EXPECT_TRUE(within_tolerance(gpu_v, cpu_v, ref_v, relative_atol(ref_v), shape));
  if (c.skip_rows_up_to > 0) {
    EXPECT_GT(skipped_rows, 0) << "the case should skip some rows";
  }
  // Decode rows see their whole context: only requests of several rows mask causal columns.
  const bool several_rows =
      std::any_of(c.requests.begin(), c.requests.end(), [](const auto& r) { return r.first > 1; });
  if (several_rows) {
    EXPECT_GT(masked, 0) << "the case should mask some columns";
  }
}

// `count` copies of one request shape.
std::vector<std::pair<std::int64_t, std::int64_t>> repeated(std::pair<std::int64_t, std::int64_t> r,
                                                            std::int64_t count) {
  return std::vector<std::pair<std::int64_t, std::int64_t>>(static_cast<std::size_t>(count), r);
}

const IndexerCase kIndexerCases[] = {
    // DeepSeek-V3.2's 64 heads: a decode row over a long prefix, a fresh prefill, a chunk over a
    // prefix, a request with keys but no query, a tiny request.
    {"H64_Mixed", 64, kPageSize, {{1, 300}, {40, 40}, {25, 180}, {0, 10}, {3, 3}}, 0, 7},
    // Rows that see at most 50 keys are skipped (top-k takes all their keys without scores).
    {"H64_SkipShortRows", 64, kPageSize, {{60, 60}, {1, 30}, {20, 70}, {2, 400}}, 50, 0},
    // The FP8 tensor-core kernel's shapes: a chunk of many query blocks over a prefix, its keys
    // in several splits and an odd number of 64-key tiles; speculative verify rows over long
    // contexts on pages of 16; a prefill chunk crossing index_topk = 2048, whose first rows are
    // skipped.
    {"H64_LongChunkOverPrefix", 64, kPageSize, {{130, 2100}, {3, 700}}, 0, 3},
    {"H64_Page16_VerifyRows", 64, 16, {{4, 1500}, {2, 999}, {1, 64}, {3, 3}}, 0, 0},
    {"H64_ChunkCrossingTopk", 64, kPageSize, {{70, 2100}, {1, 2049}}, 2048, 1},
    // Enough query blocks to fill the chip without splitting the keys: each CTA walks all its
    // 700 keys, 11 tiles in 6 pairs, round its ring of stages more than once (prefill: two
    // warpgroups a CTA; verify steps of two rows: one, whose four warps each copy rows of both
    // swizzle phases).
    {"H64_ManyRequests_RingWraps", 64, kPageSize, repeated({3, 700}, 150), 0, 5},
    {"H64_VerifyRows_RingWraps", 64, kPageSize, repeated({2, 700}, 300), 0, 9},
    // Decode steps (one row per request: the kernel's one-query warpgroup, N = 64): contexts
    // over several splits and odd tile counts, an empty request, pages of 16, skipped short
    // rows, and enough requests that several CTAs share a multiprocessor and the ring wraps.
    {"H64_DecodeRows_Splits",
     64,
     kPageSize,
     {{1, 9000}, {1, 70}, {0, 10}, {1, 4100}, {1, 1}},
     0,
     2},
    {"H64_Page16_DecodeRows", 64, 16, {{1, 1500}, {1, 999}, {1, 64}, {1, 3}}, 0, 0},
    {"H64_DecodeRows_SkipShort", 64, kPageSize, {{1, 30}, {1, 400}, {1, 2100}}, 50, 1},
    {"H64_DecodeRows_RingWraps", 64, kPageSize, repeated({1, 2000}, 200), 0, 3},
    // No more rows than requests, one of them with two (a verify step beside an idle request):
    // the one-query kernel, with a causal mask between the two rows.
    {"H64_OneQueryKernel_TwoRowRequest", 64, kPageSize, {{2, 1500}, {0, 100}, {1, 900}}, 0, 1},
    // Few heads, pages of 16, an empty request between others, contexts that are not multiples
    // of 128.
    {"H4_Page16_EmptyRequest", 4, 16, {{5, 129}, {0, 0}, {7, 7}, {1, 257}}, 0, 130},
    // More heads than 48 KiB of shared memory holds for one row's queries.
    {"H100_LargeSharedMemory", 100, kPageSize, {{3, 200}, {2, 2}}, 0, 1},
    // More query rows in one call than a grid's y dimension (65535) holds: a long prefill, here
    // as many small requests with one head to keep the tensors small.
    {"H1_MoreThan65535Rows", 1, 8, repeated({8, 8}, 8200), 0, 0},
};
INSTANTIATE_TEST_SUITE_P(Shapes, IndexerGpu, ::testing::ValuesIn(kIndexerCases),
                         [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------------------------
// topk

// How the scores of a row are drawn.
enum class Fill {
  continuous,  // uniform f32
  ties,        // 12 distinct values: long runs of ties straddle the k-th score
  nans,        // 3 of 4 scores NaN: fewer numbers than k, so NaNs are selected too
  specials,    // NaN, ±inf, ±0 and a few numbers
  zeros,       // +0 and -0 (equal) with a few negatives: the boundary falls among the zeros
  all_nan,     // every score NaN
  unread,      // length <= k: the scores are never read, so they are NaN here
  outlier,     // uniform f32 and one score near FLT_MAX: every other score shares one value bin
  narrow,      // 8 values within a few ulps of 1: the value range is tiny
  denormal,    // positive denormals only: the value range is itself denormal
  infinite,    // ±inf and NaN only: no finite score at all
};

struct TopkRow {
  std::int64_t length;
  Fill fill;
};

struct TopkCase {
  const char* name;
  std::int64_t n, k;
  std::vector<TopkRow> rows;
  // Where the n scores start in a row of n + pad: 3 misaligns every row (the kernel's scalar
  // path); 4 with n a multiple of 4 aligns them to 16 bytes (its vector path).
  std::int64_t pad = 3;
};

// `count` rows cycling through the given ones: enough rows that the kernel gives each row one
// block (or a cluster cut only for the cache), as in prefill.
std::vector<TopkRow> cycled(std::int64_t count, const std::vector<TopkRow>& pattern) {
  std::vector<TopkRow> rows;
  for (std::int64_t i = 0; i < count; ++i) rows.push_back(pattern[i % pattern.size()]);
  return rows;
}

void PrintTo(const TopkCase& c, std::ostream* os) { *os << c.name; }

class TopkGpu : public GpuParamTest<TopkCase> {};

void fill_row(float* s, std::int64_t n, Fill fill, std::uint64_t seed) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (std::int64_t j = 0; j < n; ++j) {
    const std::uint64_t h = mix64(seed * 1000003u + static_cast<std::uint64_t>(j));
    const float u = uniform_pm1(seed, 70, static_cast<std::uint64_t>(j));
    switch (fill) {
      case Fill::continuous:
        s[j] = u * 10.0f;
        break;
      case Fill::ties:
        s[j] = static_cast<float>(h % 12) * 0.5f - 2.0f;
        break;
      case Fill::nans:
        s[j] = h % 4 == 0 ? u : nan;
        break;
      case Fill::specials: {
        const float pick[] = {nan, inf, -inf, 0.0f, -0.0f, u, -nan};
        s[j] = pick[h % 7];
        break;
      }
      case Fill::zeros:
        s[j] = h % 5 == 0 ? -1.0f - std::fabs(u) : (h % 2 ? 0.0f : -0.0f);
        break;
      case Fill::outlier:
        s[j] = j == 17 ? 3e38f : u * 10.0f;
        break;
      case Fill::narrow:
        s[j] = 1.0f + static_cast<float>(h % 8) * 1.2e-7f;
        break;
      case Fill::denormal:
        s[j] = std::bit_cast<float>(static_cast<std::uint32_t>(1 + h % 5000));
        break;
      case Fill::infinite: {
        const float pick[] = {inf, -inf, nan};
        s[j] = pick[h % 3];
        break;
      }
      case Fill::all_nan:
      case Fill::unread:
        s[j] = nan;
        break;
    }
  }
}

// A case's scores, as rows of a wider tensor, and its lengths.
struct TopkInputs {
  Tensor scores_backing;
  TensorView scores;
  std::vector<std::int32_t> lengths;
};

TopkInputs topk_inputs(const TopkCase& c) {
  const std::int64_t rows = static_cast<std::int64_t>(c.rows.size());
  const std::int64_t width = c.n + c.pad;
  TopkInputs in;
  in.scores_backing = Tensor::empty({rows, width}, DType::f32);
  in.scores = in.scores_backing.view().slice(1, c.pad, c.pad + c.n);
  for (std::int64_t r = 0; r < rows; ++r) {
    fill_row(in.scores.row<float>(r), c.n, c.rows[r].fill, static_cast<std::uint64_t>(r + 71));
    std::fill_n(in.scores_backing.ptr<float>() + r * width, c.pad, 1e30f);  // outside: never read
    in.lengths.push_back(static_cast<std::int32_t>(c.rows[r].length));
  }
  return in;
}

// The kernel a case's rows take: up to 8,192 scores the register-resident kernel, and up to
// 32,768 when there are enough rows to fill the GPU one block a row; the others the sliced one.
std::string expected_topk_kernel(const TopkCase& c) {
  int device = 0, sms = 0;
  EXPECT_EQ(cudaGetDevice(&device), cudaSuccess);
  EXPECT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), cudaSuccess);
  const std::int64_t rows = static_cast<std::int64_t>(c.rows.size());
  return c.n <= 8192                   ? "topk_binned"
         : c.n <= 32768 && rows >= sms ? "topk_binned_wide"
                                       : "topk_sliced";
}

// Row by row, for a readable message: the first differing slot and the two selections there.
// Both outputs are [rows, k + 4] with the op's window at columns [1, 1 + k).
void expect_same_selection(const Tensor& cpu_backing, const Tensor& gpu_backing,
                           const std::vector<std::int32_t>& lengths, std::int64_t k) {
  for (std::size_t r = 0; r < lengths.size(); ++r) {
    const std::int32_t* cpu = cpu_backing.ptr<std::int32_t>() + r * (k + 4);
    const std::int32_t* gpu_row = gpu_backing.ptr<std::int32_t>() + r * (k + 4);
    for (std::int64_t j = 0; j < k + 4; ++j) {
      if (cpu[j] != gpu_row[j]) {
        ADD_FAILURE() << "row " << r << " (length " << lengths[r] << "): slot " << j - 1
                      << " holds " << gpu_row[j] << " on the GPU but " << cpu[j]
                      << " on the CPU (slots -1 and k are outside the output window)";
        break;
      }
    }
  }
  EXPECT_TRUE(same_bytes(cpu_backing, gpu_backing, "top-k selection"));
}

TEST_P(TopkGpu, SamePositionsAsCpu) {
  const TopkCase c = GetParam();
  const std::int64_t rows = static_cast<std::int64_t>(c.rows.size());
  const TopkInputs in = topk_inputs(c);
  Tensor len = i32_tensor(in.lengths);
  // out is a column window of a wider, poisoned tensor.
  Tensor out_backing = poisoned({rows, c.k + 4}, DType::i32);
  const TensorView out = out_backing.view().slice(1, 1, 1 + c.k);
  const Mirror scores_dev(in.scores_backing), len_dev(len), out_dev(out_backing);
  ops::topk(in.scores, len, out);
  ops::topk(scores_dev.on_gpu(in.scores), len_dev.on_gpu(), out_dev.on_gpu(out));
  const Tensor fetched = out_dev.fetch();
  EXPECT_EQ(ops::cuda::last_kernel("topk"), expected_topk_kernel(c));
  expect_same_selection(out_backing, fetched, in.lengths, c.k);
}

// topk_slots: each selected position's cache slot, through the block table of the row's request
// (three requests, rows in turn, pages in shuffled order, the table a column window of a wider
// tensor); rows that select every position map them as well. Pages of 16 (a warp's run of
// positions spans several), 64 (the default) and 256 (the largest).
TEST_P(TopkGpu, SameSlotsAsCpu) {
  const TopkCase c = GetParam();
  const std::int64_t rows = static_cast<std::int64_t>(c.rows.size());
  const std::int64_t requests = 3;
  const TopkInputs in = topk_inputs(c);
  Tensor len = i32_tensor(in.lengths);
  std::vector<std::int32_t> request_of(static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) request_of[r] = static_cast<std::int32_t>(r % requests);
  Tensor row_request = i32_tensor(request_of);
  for (const std::int64_t page_size : {16, 64, 256}) {
    SCOPED_TRACE(fmt::format("pages of {}", page_size));
    const std::int64_t max_pages = (c.n + page_size - 1) / page_size;
    std::vector<std::int32_t> pages(static_cast<std::size_t>(requests * max_pages));
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), std::mt19937(static_cast<unsigned>(c.n)));
    Tensor tables_backing = poisoned({requests, max_pages + 2}, DType::i32);
    const TensorView tables = tables_backing.view().slice(1, 1, 1 + max_pages);
    for (std::int64_t q = 0; q < requests; ++q) {
      std::copy_n(pages.begin() + q * max_pages, max_pages, tables.row<std::int32_t>(q));
    }
    Tensor out_backing = poisoned({rows, c.k + 4}, DType::i32);
    const TensorView out = out_backing.view().slice(1, 1, 1 + c.k);
    const Mirror scores_dev(in.scores_backing), len_dev(len), request_dev(row_request),
        tables_dev(tables_backing), out_dev(out_backing);
    ops::topk_slots(in.scores, len, row_request, tables, page_size, out);
    ops::topk_slots(scores_dev.on_gpu(in.scores), len_dev.on_gpu(), request_dev.on_gpu(),
                    tables_dev.on_gpu(tables), page_size, out_dev.on_gpu(out));
    const Tensor fetched = out_dev.fetch();
    EXPECT_EQ(ops::cuda::last_kernel("topk_slots"), expected_topk_kernel(c));
    expect_same_selection(out_backing, fetched, in.lengths, c.k);
  }
}

const TopkCase kTopkCases[] = {
    {"K2048_N8192",
     8192,
     2048,
     {{8192, Fill::continuous},
      {8192, Fill::ties},
      {5000, Fill::continuous},
      {2049, Fill::ties},
      {2048, Fill::unread},
      {100, Fill::unread},
      {0, Fill::unread},
      {7000, Fill::nans},
      {8192, Fill::specials},
      {6000, Fill::zeros},
      {3000, Fill::all_nan}}},
    {"K2048_N131072", 131072, 2048, {{131072, Fill::continuous}, {131072, Fill::ties}}},
    // Value bins that hold almost every score: the refinement walks the registers.
    {"K2048_N8192_Outlier", 8192, 2048,
     cycled(40, {{8192, Fill::outlier},
                 {8192, Fill::narrow},
                 {8000, Fill::continuous},
                 {7000, Fill::denormal},
                 {6000, Fill::infinite}})},
    // k of 10,000 over 20,000 scores, and the outlier and narrow rows at 40K (the sliced kernel).
    {"K10000_N20000", 20000, 10000, {{20000, Fill::continuous}, {19999, Fill::ties}}},
    {"K2048_N40000_Outlier_Aligned",
     40000,
     2048,
     {{40000, Fill::outlier}, {33333, Fill::narrow}, {20000, Fill::outlier}},
     4},
    {"K1_N777",
     777,
     1,
     {{777, Fill::continuous},
      {777, Fill::ties},
      {500, Fill::zeros},
      {1, Fill::unread},
      {2, Fill::all_nan},
      {777, Fill::specials}}},
    {"K64_N1000",
     1000,
     64,
     {{1000, Fill::ties},
      {65, Fill::continuous},
      {513, Fill::nans},
      {999, Fill::specials},
      {64, Fill::unread},
      {1000, Fill::zeros}}},
    // k not a multiple of anything the kernel uses, rows just above it.
    {"K600_N1537",
     1537,
     600,
     {{1537, Fill::continuous}, {601, Fill::ties}, {1200, Fill::specials}, {599, Fill::unread}}},
    // 16-byte aligned rows (the vector loads). Past 8K, each row is cut into slices, one per
    // block of a cluster (8 at 32K and 128K, where part of each slice is not cached); lengths not
    // a multiple of 4 end inside a vector.
    {"K2048_N8192_Aligned",
     8192,
     2048,
     {{8192, Fill::continuous},
      {8192, Fill::ties},
      {8190, Fill::continuous},
      {5001, Fill::specials},
      {2049, Fill::zeros},
      {7000, Fill::nans},
      {2048, Fill::unread},
      {3000, Fill::all_nan}},
     4},
    {"K2048_N32768_FewRows_Aligned",
     32768,
     2048,
     {{32768, Fill::continuous}, {32768, Fill::ties}, {30001, Fill::nans}, {20000, Fill::specials}},
     4},
    {"K2048_N131072_Aligned",
     131072,
     2048,
     {{131072, Fill::continuous}, {131071, Fill::ties}, {100003, Fill::zeros}},
     4},
    // Many rows: one block per row at 8K; at 40K each row's four blocks cache their slices.
    {"K2048_N8192_ManyRows_Aligned", 8192, 2048,
     cycled(300, {{8192, Fill::continuous},
                  {8191, Fill::ties},
                  {4000, Fill::specials},
                  {100, Fill::unread}}),
     4},
    {"K2048_N40000_ManyRows_Aligned", 40000, 2048,
     cycled(300, {{40000, Fill::continuous},
                  {39999, Fill::ties},
                  {12345, Fill::zeros},
                  {2048, Fill::unread}}),
     4},
    {"K2048_N40000_ManyRows", 40000, 2048,
     cycled(280, {{40000, Fill::continuous}, {29999, Fill::ties}})},
    // Rows of up to 32,768, enough to fill the GPU: the wide register-resident kernel, several
    // rows a block (each copied in while the block selects from the one before); aligned rows
    // (16-byte copies, 4-byte ones for a partial last chunk) here, misaligned ones (4-byte
    // copies) in the case after next.
    {"K2048_N32768_ManyRows_Aligned", 32768, 2048,
     cycled(300, {{32768, Fill::continuous},
                  {32767, Fill::ties},
                  {20001, Fill::specials},
                  {100, Fill::unread},
                  {32768, Fill::outlier},
                  {16000, Fill::narrow},
                  {2049, Fill::zeros},
                  {30000, Fill::nans}}),
     4},
    // Just enough rows for the wide kernel, just past the narrow one's 8,192: small enough for
    // compute-sanitizer.
    {"K2048_N8200_Wide_Aligned", 8200, 2048,
     cycled(140, {{8200, Fill::continuous},
                  {8197, Fill::ties},
                  {3000, Fill::unread},
                  {8199, Fill::specials}}),
     4},
    {"K2048_N20000_ManyRows", 20000, 2048,
     cycled(280, {{20000, Fill::continuous},
                  {19999, Fill::ties},
                  {8193, Fill::denormal},
                  {12345, Fill::infinite},
                  {3000, Fill::all_nan}})},
    {"K10000_N20000_ManyRows", 20000, 10000,
     cycled(200, {{20000, Fill::continuous}, {19998, Fill::ties}, {10001, Fill::zeros}}), 4},
};
INSTANTIATE_TEST_SUITE_P(Shapes, TopkGpu, ::testing::ValuesIn(kTopkCases),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace dsattn::gpu_test
