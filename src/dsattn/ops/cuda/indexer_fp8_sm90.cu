// The lightning indexer's scores on Hopper's FP8 tensor cores (wgmma, sm_90a), for the model's
// shape: 64 index heads of 128 e4m3 values, keys read straight from the paged 132-byte cache.
//
// Keys are the M side of the product and (query, head) pairs the N side, so that the sum over a
// query's heads runs along a thread's own accumulator columns and one quad of lanes: no
// cross-warp reduction. Per CTA: the rows of one request that its warpgroups own (two each; one
// in a decode step) against one split of the request's keys; each warpgroup scores every 64-key
// tile of the split with four m64n128k32 (m64n64k32) MMAs. All threads copy tiles with cp.async
// into a ring of 128-byte-swizzled stages, two tiles a step: 4-byte copies from the row layout
// (rows of 132 bytes are only 4-byte aligned), 16-byte copies of a page-major tile's values
// (one 8 KB block in its page). The warpgroups synchronise through mbarriers only (a pair has
// landed; all have finished with a pair), never a CTA barrier, and each starts one tile behind the
// one before it, so that one's epilogue (ReLU, head weights, quad sum, key scale, causal mask,
// store) runs while the others' MMAs keep the tensor cores busy. Prefill: four warpgroups, each
// with one tile's accumulators (128 registers a thread), issuing a tile and scoring it; decode and
// short verify steps: one warpgroup, which issues both tiles' MMAs and scores the first while the
// second's run. A decode step (one row per request) gives that warpgroup one query, N = 64: half
// the MMA work and half the epilogue of a pair of queries, and registers and shared memory for
// three CTAs a multiprocessor.
//
// The per-token key scale and the per-(query, head) query scale come out of the ReLU because
// both are non-negative, as the quantiser makes them: Σ_h w_h ReLU(q_s k_s dot) = k_s Σ_h (w_h q_s)
// ReLU(dot).
#include <algorithm>
#include <cub/block/block_scan.cuh>

#include "dsattn/ops/cuda/barriers.cuh"
#include "dsattn/ops/cuda/common.cuh"
#include "dsattn/ops/cuda/ptx.cuh"
#include "dsattn/ops/cuda/wgmma.cuh"

namespace dsattn::ops::cuda {

namespace {

constexpr int kHeads = kIndexerSm90Heads;  // index heads (the N of one query)
constexpr int kDim = 128;            // bytes of one e4m3 key or query head; one f32 scale each
constexpr int kRowBytes = kDim + 4;  // a cached key: its values, then its scale
constexpr int kKeysPerTile = 64;     // the M of one MMA
// Pairs of key tiles in the ring of a CTA of G warpgroups: during step u a warpgroup scores pair
// u and loads its share of pair u + kLoadAhead into the stages of pair u + kLoadAhead - P. With
// several warpgroups another one, up to a step behind, may still be scoring that pair, so P =
// kLoadAhead + 2; a CTA of one warpgroup needs only kLoadAhead + 1, and the smaller ring lets
// three such CTAs share a multiprocessor.
constexpr int kLoadAhead = 2;
template <int G>
constexpr int kPairStages = G == 1 ? kLoadAhead + 1 : kLoadAhead + 2;
// CTAs a multiprocessor holds, which the key splits are sized for: a one-query CTA (decode) fits
// three (166 registers a thread, 59 KiB of shared memory); the others two by the grid's count.
template <int G, int QG>
constexpr int kCtasPerSm = G == 1 && QG == 1 ? 3 : 2;
constexpr int kKeyTileBytes = kKeysPerTile * kDim;
// The most keys one CTA scores (the launch's split length is at most this), and the most pages
// of whole tiles such a split touches (it starts at a multiple of 64 keys, so at most one page
// beyond its length's worth).
constexpr int kMaxKeysPerSplit = 4096;
constexpr int kMaxSplitPages = kMaxKeysPerSplit / kKeysPerTile + 1;

// G warpgroups, each scoring QG query rows: 4 for prefill; 1 for decode and short
// verify steps (one or two rows per request), so that a CTA's other warpgroups do not run
// their MMAs on missing queries.
template <int G, int QG>
struct Smem {
  static constexpr int P = kPairStages<G>;
  alignas(1024) std::uint8_t queries[G][QG * kHeads * kDim];
  alignas(1024) std::uint8_t keys[2 * P][kKeyTileBytes];
  float key_scales[2 * P][kKeysPerTile];
  float weights[G * QG][kHeads];  // head weight x query scale
  // Per pair stage: every thread's copies have landed (each thread arrives when its own do);
  // every thread has finished reading it.
  std::uint64_t full[P], empty[P];
  // When pages hold whole tiles: the block-table entries of the split's pages, read once so
  // that a tile's copies do not wait for a global load.
  std::int32_t split_pages[kMaxSplitPages];
  int request, block;  // this CTA's request and query block within it
};

// CTA y-slot -> (request, query block): request b owns ceil(n_q(b) / kQueriesPerCta) slots, in
// order. Returns false for the spare slots past the last request's.
template <int G, int QG>
__device__ bool find_query_block(const IndexerParams& p, Smem<G, QG>& s) {
  constexpr int kQueriesPerCta = G * QG, kThreads = 128 * G;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  const int slot = static_cast<int>(blockIdx.x);
  if (threadIdx.x == 0) s.request = -1;
  __syncthreads();
  int before = 0;  // slots of the requests already passed
  for (int base = 0; base < p.batch; base += kThreads) {
    const int b = base + static_cast<int>(threadIdx.x);
    const int blocks =
        b < p.batch ? (p.cu_q[b + 1] - p.cu_q[b] + kQueriesPerCta - 1) / kQueriesPerCta : 0;
    int first, total;
    Scan(scan).ExclusiveSum(blocks, first, total);
    if (slot >= before + first && slot < before + first + blocks) {
      s.request = b;
      s.block = slot - before - first;
    }
    before += total;
    __syncthreads();  // the scan storage is reused
  }
  return s.request >= 0;
}

// Copies the 64 keys from `tile_begin` (those below `end`; zeros past it) and their scales into
// a stage: a warp per key row per step, 4 bytes per lane, then one scale per thread of the first
// 64. When pages hold whole tiles (page_size a multiple of 64, the model's 64 among them; tiles
// start at multiples of 64) a tile's slots are consecutive: one entry of the split's pages (in
// shared memory) per tile and addresses that step by a constant. Other page sizes look each
// key's page up in the block table.
__device__ __forceinline__ void copy4(std::uint32_t dst, const std::uint8_t* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 4 : 0));
}

// 16 bytes, issued only when `valid` (no zero-fill); L2 only, as the keys are read once.
__device__ __forceinline__ void copy16_if(std::uint32_t dst, const std::uint8_t* src, bool valid) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %2, 0;\n@p cp.async.cg.shared.global [%0], [%1], "
      "16;\n}\n" ::"r"(dst),
      "l"(src), "r"(static_cast<int>(valid)));
}

// A copy that is issued only when `valid` (no zero-fill).
__device__ __forceinline__ void copy4_if(std::uint32_t dst, const std::uint8_t* src, bool valid) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %2, 0;\n@p cp.async.ca.shared.global [%0], [%1], 4;\n}\n" ::
          "r"(dst),
      "l"(src), "r"(static_cast<int>(valid)));
}

template <int G, int QG>
__device__ void load_key_tile(const IndexerParams& p, const std::int32_t* table, int first_page,
                              int tile_begin, int end, Smem<G, QG>& s, int stage) {
  constexpr int kThreads = 128 * G;
  constexpr int kWarps = kThreads / 32;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int page_size = static_cast<int>(p.page_size);
  // This lane's 4 bytes of row i * kWarps + warp, the i-th row it copies. With one warpgroup
  // (4 warps) consecutive rows of a lane differ in row % 8, hence in their swizzle.
  const std::uint32_t tile_base = ptx::smem_addr(s.keys[stage]);
  const auto dst = [&](int i) {
    return tile_base + wgmma::swizzled_offset(i * kWarps + warp, lane * 4);
  };
  const bool scale_thread = threadIdx.x < kKeysPerTile;
  const std::uint32_t scale_dst = ptx::smem_addr(&s.key_scales[stage][threadIdx.x % kKeysPerTile]);
  if (p.page_size % kKeysPerTile == 0) {
    // The tile's page and offset: by shifts for a power-of-two page size (no integer division
    // in the loop).
    const int page = p.page_shift >= 0 ? tile_begin >> p.page_shift : tile_begin / page_size;
    const int offset = tile_begin - page * page_size;
    const std::int64_t first_slot =
        tile_begin < end ? std::int64_t(s.split_pages[page - first_page]) * page_size + offset : 0;
    const int valid_rows = min(kKeysPerTile, end - tile_begin);
    if (p.page_major) {
      // The tile's values are 8 KB in one piece (16-byte copies), its scales 256 bytes after the
      // page's values.
      const std::uint8_t* page_bytes = p.keys + (first_slot - offset) * kRowBytes;
      const std::uint8_t* values = page_bytes + offset * kDim;
      constexpr int kChunksPerRow = kDim / 16;
      static_assert(kKeysPerTile * kChunksPerRow % kThreads == 0);
#pragma unroll
      for (int i = 0; i < kKeysPerTile * kChunksPerRow / kThreads; ++i) {
        const int c = i * kThreads + static_cast<int>(threadIdx.x);
        const int row = c / kChunksPerRow, chunk = c % kChunksPerRow;
        copy16_if(tile_base + wgmma::swizzled_offset(row, chunk * 16),
                  values + row * kDim + chunk * 16, row < valid_rows);
      }
      if (scale_thread) {
        copy4_if(scale_dst, page_bytes + page_size * kDim + (offset + threadIdx.x) * 4,
                 static_cast<int>(threadIdx.x) < valid_rows);
      }
      return;
    }
    const std::uint8_t* tile = p.keys + first_slot * p.stride_key;
    if (p.stride_key == kRowBytes) {
      // The cache's own rows: the eight rows of this lane differ by constant offsets. Rows past
      // the end are not copied; their scores are never stored (each key row of the product
      // depends on its own row of keys only).
      const std::uint8_t* src = tile + warp * kRowBytes + lane * 4;
#pragma unroll
      for (int i = 0; i < kKeysPerTile / kWarps; ++i) {
        copy4_if(dst(i), src + i * kWarps * kRowBytes, i * kWarps + warp < valid_rows);
      }
      if (scale_thread) {
        copy4_if(scale_dst, tile + threadIdx.x * kRowBytes + kDim,
                 static_cast<int>(threadIdx.x) < valid_rows);
      }
      return;
    }
    const int stride = static_cast<int>(p.stride_key);
    const std::uint8_t* src = tile + warp * stride + lane * 4;
#pragma unroll
    for (int i = 0; i < kKeysPerTile / kWarps; ++i) {
      const bool valid = i * kWarps + warp < valid_rows;
      copy4(dst(i), src + (valid ? i * kWarps * stride : 0), valid);
    }
    if (scale_thread) {
      const bool valid = static_cast<int>(threadIdx.x) < valid_rows;
      copy4(scale_dst, tile + (valid ? static_cast<int>(threadIdx.x) * stride : 0) + kDim, valid);
    }
    return;
  }
  // A key's values and its scale (null past the end).
  struct Key {
    const std::uint8_t *values, *scale;
  };
  const auto key_at = [&](int row) -> Key {
    const int pos = tile_begin + row;
    if (pos >= end) return {nullptr, nullptr};
    const std::int64_t page = table[pos / page_size];
    const int offset = pos % page_size;
    if (p.page_major) {
      const std::uint8_t* page_bytes = p.keys + page * page_size * kRowBytes;
      return {page_bytes + offset * kDim, page_bytes + page_size * kDim + offset * 4};
    }
    const std::uint8_t* row_bytes = p.keys + (page * page_size + offset) * p.stride_key;
    return {row_bytes, row_bytes + kDim};
  };
#pragma unroll
  for (int i = 0; i < kKeysPerTile / kWarps; ++i) {
    const Key key = key_at(i * kWarps + warp);
    copy4(dst(i), key.values ? key.values + lane * 4 : p.keys, key.values != nullptr);
  }
  if (scale_thread) {
    const Key key = key_at(static_cast<int>(threadIdx.x));
    copy4(scale_dst, key.scale ? key.scale : p.keys, key.scale != nullptr);
  }
}

// This thread's share of tiles 2u and 2u + 1 of the split, into the stages of pair u once every
// thread has finished with the pair that used them before; the thread arrives on the pair's
// full barrier when its copies land.
template <int G, int QG>
__device__ void load_key_pair(const IndexerParams& p, const std::int32_t* table, int first_page,
                              int split_begin, int u, int end, Smem<G, QG>& s) {
  constexpr int P = kPairStages<G>;
  const int ring = u % P, stage = 2 * ring;
  if (u >= P) {
    barriers::mbarrier_wait(ptx::smem_addr(&s.empty[ring]), (u / P - 1) & 1);
  }
  load_key_tile(p, table, first_page, split_begin + 2 * u * kKeysPerTile, end, s, stage);
  load_key_tile(p, table, first_page, split_begin + (2 * u + 1) * kKeysPerTile, end, s, stage + 1);
  barriers::mbarrier_arrive_on_copies(ptx::smem_addr(&s.full[ring]));
}

// The one query row whose scores a thread stores (its quad's lane picks the query and key row).
struct StoreRow {
  float* out;  // the row of scores; null when the row is missing or skipped
  int limit;   // its last visible key position
  int half;    // which of the thread's two key rows it stores
};

// The epilogue of one key tile for one warpgroup: ReLU, head weights, the sum over heads (a
// thread's 16 columns per query, then its quad), the key scale, the causal mask, the store.
// `weight(q, j)`: the weight (head weight x query scale) of query q's head at the thread's
// column j of 16.
template <int QG, class Weight>
__device__ __forceinline__ void score_tile(const float (&acc)[32 * QG], const Weight& weight,
                                           const float* key_scales, int tile_begin, int end,
                                           const StoreRow& mine) {
  float sum[QG][2] = {};
#pragma unroll
  for (int i = 0; i < 32 * QG; ++i) {
    const int q = i / 32, half = (i / 2) % 2, j = ((i / 4) % 8) * 2 + i % 2;
    sum[q][half] = fmaf(weight(q, j), fmaxf(acc[i], 0.0f), sum[q][half]);
  }
#pragma unroll
  for (int q = 0; q < QG; ++q) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      sum[q][half] += __shfl_xor_sync(0xffffffffu, sum[q][half], 1);
      sum[q][half] += __shfl_xor_sync(0xffffffffu, sum[q][half], 2);
    }
  }
  // Lane c of each quad stores, with two queries, query c % 2 of its key row c / 2; with one,
  // key row c (lanes 0 and 1).
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int c = lane % 4;
  float v;
  if constexpr (QG == 2) {
    v = c == 0 ? sum[0][0] : c == 1 ? sum[1][0] : c == 2 ? sum[0][1] : sum[1][1];
  } else {
    if (c >= 2) return;
    v = c == 0 ? sum[0][0] : sum[0][1];
  }
  const int row = ((static_cast<int>(threadIdx.x) / 32) % 4) * 16 + lane / 4 + mine.half * 8;
  const int pos = tile_begin + row;
  if (mine.out == nullptr || pos >= end) return;
  mine.out[pos] = pos <= mine.limit ? v * key_scales[row] : -INFINITY;
}

template <int G, int QG>
__global__ void __launch_bounds__(128 * G, G == 1 && QG == 1 ? kCtasPerSm<1, 1> : 1)
    indexer_fp8_sm90_kernel(IndexerParams p) {
  constexpr int kWarpgroups = G, kQueriesPerCta = G * QG, kThreads = 128 * G;
  constexpr int P = kPairStages<G>;
  extern __shared__ std::uint8_t smem_raw[];
  Smem<G, QG>& s = *reinterpret_cast<Smem<G, QG>*>(
      (reinterpret_cast<std::uintptr_t>(smem_raw) + 1023) & ~std::uintptr_t(1023));
  if (!find_query_block(p, s)) return;
  const int b = s.request;
  const int n_q = p.cu_q[b + 1] - p.cu_q[b], n_k = p.context_lens[b];
  const int first = s.block * kQueriesPerCta;  // the CTA's first query within the request
  const int rows_here = min(kQueriesPerCta, n_q - first);
  const std::int64_t row0 = p.cu_q[b] + first;

  // Row i of the CTA sees keys 0 .. limit(i); it is written unless missing or skipped.
  const auto limit = [&](int i) { return n_k - n_q + first + i; };
  const auto written = [&](int i) { return i < rows_here && limit(i) + 1 > p.skip_rows_up_to; };
  int last_visible = 0;  // keys the CTA must score: up to its last written row's visible count
  bool any = false;
#pragma unroll
  for (int i = 0; i < kQueriesPerCta; ++i) {
    if (written(i)) last_visible = max(last_visible, limit(i) + 1);
    any |= written(i);
  }
  const int split_begin = static_cast<int>(blockIdx.y) * p.keys_per_split;
  const int split_end = min(n_k, split_begin + p.keys_per_split);
  if (!any || split_begin >= split_end) return;

  const int score_end = min(split_end, last_visible);  // keys to score; -inf past them
  const int tiles =
      score_end > split_begin ? (score_end - split_begin + kKeysPerTile - 1) / kKeysPerTile : 0;
  const int tiles_end = min(split_end, split_begin + tiles * kKeysPerTile);

  if (tiles > 0) {
    const std::int32_t* table = p.block_tables + b * p.stride_tables;
    // Queries: warpgroup g's B tile holds rows (query QG·g + n / 64, head n % 64), zeros for
    // missing queries; weights folded with the query scales.
    for (int c = threadIdx.x; c < kWarpgroups * QG * kHeads * (kDim / 16); c += kThreads) {
      const int g = c / (QG * kHeads * (kDim / 16));
      const int rem = c % (QG * kHeads * (kDim / 16));
      const int n = rem / (kDim / 16), chunk = rem % (kDim / 16);
      const int query = g * QG + n / kHeads, head = n % kHeads;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (query < rows_here) {
        v = *reinterpret_cast<const uint4*>(p.q + (row0 + query) * p.stride_q_row +
                                            head * p.stride_q_head + chunk * 16);
      }
      *reinterpret_cast<uint4*>(s.queries[g] + wgmma::swizzled_offset(n, chunk * 16)) = v;
    }
    for (int i = threadIdx.x; i < kQueriesPerCta * kHeads; i += kThreads) {
      const int query = i / kHeads, head = i % kHeads;
      float w = 0.0f;
      if (query < rows_here) {
        const std::int64_t row = row0 + query;
        w = p.weights[row * p.stride_w + head] *
            p.q_scale[row * p.stride_qs_row + head * p.stride_qs_head];
      }
      s.weights[query][head] = w;
    }
    const bool whole_tiles = p.page_size % kKeysPerTile == 0;
    const int first_page = whole_tiles ? split_begin / static_cast<int>(p.page_size) : 0;
    if (whole_tiles) {
      const int pages = (split_end - 1) / static_cast<int>(p.page_size) - first_page + 1;
      for (int i = threadIdx.x; i < pages; i += kThreads) s.split_pages[i] = table[first_page + i];
    }
    if (threadIdx.x == 0) {
      for (int r = 0; r < P; ++r) {
        barriers::mbarrier_init(ptx::smem_addr(&s.full[r]), kThreads);
        barriers::mbarrier_init(ptx::smem_addr(&s.empty[r]), kThreads);
      }
    }
    wgmma::fence_proxy_async_smem();
    __syncthreads();  // the queries, weights and barriers are ready
    const int pairs = (tiles + 1) / 2;
#pragma unroll
    for (int u = 0; u < kLoadAhead; ++u) {
      if (u < pairs) load_key_pair(p, table, first_page, split_begin, u, split_end, s);
    }

    const int group = static_cast<int>(threadIdx.x) / 128,
              lane = static_cast<int>(threadIdx.x) % 32;
    // With more than two warpgroups (128 registers a thread) each holds one tile's accumulators
    // and reads its weights from shared memory; otherwise both tiles' and the weights stay in
    // registers.
    constexpr bool kOneAccumulator = G > 2;
    const auto weight_in_smem = [&](int q, int j) {
      return s.weights[group * QG + q][(j / 2) * 8 + (lane % 4) * 2 + j % 2];
    };
    float w[kOneAccumulator ? 1 : QG][16];
    if constexpr (!kOneAccumulator) {
#pragma unroll
      for (int q = 0; q < QG; ++q) {
#pragma unroll
        for (int j = 0; j < 16; ++j) w[q][j] = weight_in_smem(q, j);
      }
    }
    const auto weight = [&](int q, int j) {
      if constexpr (kOneAccumulator) {
        return weight_in_smem(q, j);
      } else {
        return w[q][j];
      }
    };
    const std::uint32_t queries = ptx::smem_addr(s.queries[group]);
    StoreRow mine;
    {
      const int query = group * QG + (QG == 2 ? (lane % 4) % 2 : 0);
      mine.out = written(query) ? p.scores + (row0 + query) * p.stride_scores : nullptr;
      mine.limit = limit(query);
      mine.half = QG == 2 ? (lane % 4) / 2 : lane % 4;  // with one query: lanes 0 and 1 store
    }

    // Step u: wait for pair u, issue both tiles' MMAs, load this thread's share of pair
    // u + kLoadAhead, score the first tile while the second's MMAs run, score the second, release
    // the pair. A pair past the last tile scores zeros and stores nothing.
    float acc0[32 * QG], acc1[kOneAccumulator ? 1 : 32 * QG];
    const auto issue = [&](auto& acc, std::uint32_t keys) {
#pragma unroll
      for (int k = 0; k < kDim / 32; ++k) {
        const std::uint64_t a = wgmma::desc_k_major_sw128(keys + 32 * k),
                            b = wgmma::desc_k_major_sw128(queries + 32 * k);
        if constexpr (QG == 2) {
          wgmma::mma_m64n128k32_e4m3(acc, a, b, k > 0);
        } else {
          wgmma::mma_m64n64k32_e4m3(acc, a, b, k > 0);
        }
      }
      wgmma::commit_group();
    };
    // Each warpgroup after the first starts once the one before it has its first tile's scores
    // (named barriers over each pair), so that their epilogues alternate with each other's MMAs.
    constexpr int kStagger = 1;  // barriers kStagger .. kStagger + G - 2
    if (group > 0) barriers::role_sync(kStagger + group - 1, 256);
    for (int u = 0; u < pairs; ++u) {
      const int ring = u % P, stage = 2 * ring;
      barriers::mbarrier_wait(ptx::smem_addr(&s.full[ring]), (u / P) & 1);
      // The copies landed in the generic proxy; the MMAs read through the async proxy.
      wgmma::fence_proxy_async_smem();
      const int begin = split_begin + 2 * u * kKeysPerTile;
      if constexpr (kOneAccumulator) {
        // One tile at a time: the other warpgroups' MMAs overlap this one's epilogues.
        wgmma::fence();
        wgmma::fence_operands(acc0);
        issue(acc0, ptx::smem_addr(s.keys[stage]));
        if (u + kLoadAhead < pairs) {
          load_key_pair(p, table, first_page, split_begin, u + kLoadAhead, split_end, s);
        }
        wgmma::wait_group<0>();
        wgmma::fence_operands(acc0);
        if (group + 1 < kWarpgroups && u == 0) barriers::role_arrive(kStagger + group, 256);
        score_tile<QG>(acc0, weight, s.key_scales[stage], begin, split_end, mine);
        wgmma::fence();
        wgmma::fence_operands(acc0);
        issue(acc0, ptx::smem_addr(s.keys[stage + 1]));
        wgmma::wait_group<0>();
        wgmma::fence_operands(acc0);
        score_tile<QG>(acc0, weight, s.key_scales[stage + 1], begin + kKeysPerTile, split_end,
                       mine);
      } else {
        wgmma::fence();
        wgmma::fence_operands(acc0);
        wgmma::fence_operands(acc1);
        issue(acc0, ptx::smem_addr(s.keys[stage]));
        issue(acc1, ptx::smem_addr(s.keys[stage + 1]));
        if (u + kLoadAhead < pairs) {
          load_key_pair(p, table, first_page, split_begin, u + kLoadAhead, split_end, s);
        }
        wgmma::wait_group<1>();
        wgmma::fence_operands(acc0);
        if (group + 1 < kWarpgroups && u == 0) barriers::role_arrive(kStagger + group, 256);
        score_tile<QG>(acc0, weight, s.key_scales[stage], begin, split_end, mine);
        wgmma::wait_group<0>();
        wgmma::fence_operands(acc1);
        score_tile<QG>(acc1, weight, s.key_scales[stage + 1], begin + kKeysPerTile, split_end,
                       mine);
      }
      barriers::mbarrier_arrive(ptx::smem_addr(&s.empty[ring]));
    }
  }

  // Keys of the split past every scored tile are masked for each written row.
  for (int i = 0; i < kQueriesPerCta; ++i) {
    if (!written(i)) continue;
    float* out = p.scores + (row0 + i) * p.stride_scores;
    for (int pos = tiles_end + static_cast<int>(threadIdx.x); pos < split_end; pos += kThreads) {
      out[pos] = -INFINITY;
    }
  }
}

}  // namespace

bool indexer_fp8_sm90_supports(const IndexerParams& p) {
  const auto aligned = [](const void* ptr, std::int64_t n) {
    return reinterpret_cast<std::uintptr_t>(ptr) % n == 0;
  };
  return p.heads == kHeads && p.stride_q_head % 16 == 0 && p.stride_q_row % 16 == 0 &&
         aligned(p.q, 16) && p.stride_key % 4 == 0 && p.stride_key < (1 << 20) &&
         aligned(p.keys, p.page_major ? 16 : 4) && p.max_k <= (std::int64_t(1) << 30) &&
         p.total_q <= (std::int64_t(1) << 30) && p.page_size > 0 &&
         p.page_size <= (std::int64_t(1) << 30) &&
         (!p.page_major || p.page_size <= (std::int64_t(1) << 20));  // int offsets in a page
}

namespace {

template <int G, int QG>
cudaError_t launch_with(IndexerParams p, cudaStream_t stream) {
  constexpr int kQueriesPerCta = G * QG;
  // Query blocks: each request's rows in groups of kQueriesPerCta (at most one spare per
  // request; none with one query a CTA). Keys are split so that a small batch of long contexts
  // (decode) still fills the chip, in splits of 256 to 4096 keys: about two CTAs per
  // multiprocessor; for one-query CTAs as many splits as the chip holds in one wave (a second,
  // partial wave would leave most multiprocessors idle while it runs), unless the 4096-key
  // ceiling needs more (long contexts: several full waves).
  const std::int64_t slots = kCtasPerSm<G, QG> * multiprocessor_count();
  std::int64_t blocks, wanted_splits;
  if constexpr (kQueriesPerCta == 1) {
    blocks = p.total_q;
    wanted_splits = std::max<std::int64_t>(1, slots / blocks);
  } else {
    blocks = (p.total_q + kQueriesPerCta - 1) / kQueriesPerCta + p.batch;
    wanted_splits = (slots + blocks - 1) / blocks;
  }
  std::int64_t per_split = (p.max_k + wanted_splits - 1) / wanted_splits;
  per_split = (per_split + kKeysPerTile - 1) / kKeysPerTile * kKeysPerTile;
  p.keys_per_split = static_cast<int>(std::clamp<std::int64_t>(per_split, 256, kMaxKeysPerSplit));
  p.page_shift = -1;
  for (int shift = 0; shift < 31; ++shift) {
    if ((std::int64_t(1) << shift) == p.page_size) p.page_shift = shift;
  }
  const std::int64_t splits = (p.max_k + p.keys_per_split - 1) / p.keys_per_split;
  if (blocks > 0x7fffffff || splits > 65535) return cudaErrorInvalidConfiguration;

  const int smem = static_cast<int>(sizeof(Smem<G, QG>)) + 1024;  // + alignment slack
  const cudaError_t set = cudaFuncSetAttribute(indexer_fp8_sm90_kernel<G, QG>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (set != cudaSuccess) return set;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(splits));
  indexer_fp8_sm90_kernel<G, QG><<<grid, 128 * G, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_indexer_fp8_sm90(IndexerParams p, cudaStream_t stream) {
  if (p.total_q == 0 || p.max_k == 0) return cudaSuccess;
  // Decode and short verify steps (at most two rows per request on average) take one
  // warpgroup per CTA; prefills four, sharing each key tile between eight queries (measured on
  // the H100: 637 FP8 TFLOPS at 4K, against 531 with two warpgroups of two accumulators each).
  // With one row per request (decode), the warpgroup's N holds one query instead of a pair.
  if (p.total_q > 2 * std::int64_t(p.batch)) return launch_with<4, 2>(p, stream);
  if (p.total_q <= std::int64_t(p.batch)) return launch_with<1, 1>(p, stream);
  return launch_with<1, 2>(p, stream);
}

}  // namespace dsattn::ops::cuda
