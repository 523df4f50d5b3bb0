// What the top-k kernels share: the order-preserving keys of the scores and the radix passes
// over them. Device code only.
#pragma once

#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "dsattn/ops/cuda/params.h"

namespace dsattn::ops::cuda {

// What a top-k kernel writes for a selected position of row r: the position itself, or its
// cache slot when the params carry block tables (topk_slots).
struct SelectedValue {
  const std::int32_t* table;  // the row's request's block-table row, or nullptr
  std::int64_t width;
  int page_size;

  __device__ SelectedValue(const TopkParams& p, std::int64_t r)
      : table(p.block_tables == nullptr
                  ? nullptr
                  : p.block_tables + std::int64_t{p.row_request[r]} * p.stride_tables),
        width(p.table_width),
        page_size(p.page_size) {}

  __device__ std::int32_t operator()(int pos) const {
    if (table == nullptr) return pos;
    const int page = pos / page_size;
    return page < width ? table[page] * page_size + pos % page_size : -1;
  }
};

// An unsigned key that orders like the scores: larger score, larger key; NaN lowest; +0 and -0
// equal (the CPU compares them equal, so the lower position wins between them).
__device__ __forceinline__ std::uint32_t order_key(float f) {
  if (isnan(f)) return 0u;
  if (f == 0.0f) f = 0.0f;
  const std::uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The radix passes over the keys, from the top: 11, 11 and 10 bits.
struct RadixPass {
  int shift, bins;
};
__host__ __device__ constexpr RadixPass radix_pass(int pass) {
  return pass == 0 ? RadixPass{21, 2048} : pass == 1 ? RadixPass{10, 2048} : RadixPass{0, 1024};
}

// A radix pass's choice: the bucket holding the remaining-th key, the keys in buckets above it,
// and the keys in it.
struct Choice {
  int bucket, above, count;
};

// Finds, from the highest of `bins` buckets down, the bucket holding the `remaining`-th key, for a
// block of kThreads threads that each walk bins / kThreads consecutive buckets (at most
// kMaxBins / kThreads); count(b) is bucket b's count (a kernel sums its histograms there). The
// choice goes through *choice, which every thread reads after the block's barrier. kScan is the
// block scan's algorithm (each kernel keeps the one it was measured fastest with).
template <int kThreads, int kMaxBins, cub::BlockScanAlgorithm kScan, class Count>
__device__ __forceinline__ Choice choose_bucket(Count&& count, int bins, int remaining,
                                                Choice* choice) {
  using Scan = cub::BlockScan<int, kThreads, kScan>;
  __shared__ typename Scan::TempStorage scan_storage;
  constexpr int kMaxPerThread = kMaxBins / kThreads;
  const int per_thread = bins / kThreads;
  const int top = bins - 1 - static_cast<int>(threadIdx.x) * per_thread;  // thread's highest bin
  int counts[kMaxPerThread] = {}, sum = 0;
#pragma unroll
  for (int i = 0; i < kMaxPerThread; ++i) {
    if (i >= per_thread) break;
    counts[i] = count(top - i);
    sum += counts[i];
  }
  int inclusive;
  Scan(scan_storage).InclusiveSum(sum, inclusive);
  if (inclusive >= remaining && inclusive - sum < remaining) {
    int acc = inclusive - sum;
#pragma unroll
    for (int i = 0; i < kMaxPerThread; ++i) {
      if (i >= per_thread) break;
      if (acc + counts[i] >= remaining) {
        *choice = {top - i, acc, counts[i]};
        break;
      }
      acc += counts[i];
    }
  }
  __syncthreads();
  return *choice;
}

}  // namespace dsattn::ops::cuda
