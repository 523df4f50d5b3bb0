// Top-k selection: one block per row, radix select on order-preserving 32-bit keys.
//
// The row's keys are loaded once into shared memory (rows up to kMaxCached scores; longer rows
// are re-read from global memory on each pass). Up to four 8-bit histogram passes find the key
// T of the k-th largest score, stopping early once the remaining candidates are all taken; a
// final pass over contiguous per-thread chunks keeps every key above T and the lowest-positioned
// keys equal to T, writing positions in ascending order after one block scan.
#include <cub/block/block_scan.cuh>

#include "dsattn/ops/cuda/common.cuh"

namespace dsattn::ops::cuda {

namespace {

constexpr int kThreads = 512;
constexpr int kMaxCached = 48 * 1024;  // scores per row kept in shared memory (192 KiB)

// An unsigned key that orders like the scores: larger score, larger key; NaN lowest; +0 and -0
// equal (the CPU compares them equal, so the lower position wins between them).
__device__ __forceinline__ std::uint32_t order_key(float f) {
  if (isnan(f)) return 0u;
  if (f == 0.0f) f = 0.0f;
  const std::uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct RowKeys {
  const float* row;
  const std::uint32_t* cached;  // null when the row is read from global memory
  __device__ std::uint32_t operator[](int s) const {
    return cached ? cached[s] : order_key(row[s]);
  }
};

// Warp 0 finds, from the highest bucket down, the bucket holding the `remaining`-th candidate:
// returns it in *bucket, with how many candidates lie above it in *above and in it in *count.
__device__ void find_bucket(const int* histogram, int remaining, int* bucket, int* above,
                            int* count) {
  const int lane = threadIdx.x;  // called by warp 0 only
  // Lane l owns buckets 255 - 8l down to 248 - 8l.
  int counts[8], sum = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    counts[i] = histogram[255 - 8 * lane - i];
    sum += counts[i];
  }
  int inclusive = sum;  // candidates in buckets above and including this lane's
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive += v;
  }
  const unsigned reached = __ballot_sync(0xffffffffu, inclusive >= remaining);
  const int owner = __ffs(reached) - 1;
  if (lane == owner) {
    int acc = inclusive - sum;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (acc + counts[i] >= remaining) {
        *bucket = 255 - 8 * lane - i;
        *above = acc;
        *count = counts[i];
        break;
      }
      acc += counts[i];
    }
  }
}

__global__ void __launch_bounds__(kThreads) topk_kernel(TopkParams p, int cached_capacity) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int histogram[256];
  __shared__ int s_bucket, s_above, s_count;
  extern __shared__ std::uint32_t cached[];

  const std::int64_t r = blockIdx.x;
  const int n = p.lengths[r], k = p.k;
  std::int32_t* o = p.out + r * p.stride_out;
  if (n <= k) {  // every position is selected; the scores are not read
    for (int i = threadIdx.x; i < k; i += blockDim.x) o[i] = i < n ? i : -1;
    return;
  }
  const float* row = p.scores + r * p.stride_scores;
  const bool use_cache = n <= cached_capacity;
  if (use_cache) {
    for (int s = threadIdx.x; s < n; s += blockDim.x) cached[s] = order_key(row[s]);
  }
  const RowKeys keys{row, use_cache ? cached : nullptr};

  std::uint32_t prefix = 0, mask = 0;
  int remaining = k;  // how many of the candidates matching `prefix` under `mask` to take
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) histogram[i] = 0;
    __syncthreads();
    for (int s = threadIdx.x; s < n; s += blockDim.x) {
      const std::uint32_t key = keys[s];
      if ((key & mask) == prefix) atomicAdd(&histogram[(key >> shift) & 255u], 1);
    }
    __syncthreads();
    if (threadIdx.x < 32) find_bucket(histogram, remaining, &s_bucket, &s_above, &s_count);
    __syncthreads();
    const int bucket = s_bucket;
    remaining -= s_above;
    prefix |= static_cast<std::uint32_t>(bucket) << shift;
    mask |= 255u << shift;
    // Every candidate left in the bucket is taken: no need to tell them apart further. (The
    // count is read from s_count: the histogram may already be cleared for the next pass.)
    if (s_count == remaining) break;
  }

  // Keys with (key & mask) above prefix are taken; of those equal, the first `remaining` in
  // position order. Each thread owns a contiguous chunk, so one scan orders the output.
  const int per = (n + kThreads - 1) / kThreads;
  const int begin = min(n, static_cast<int>(threadIdx.x) * per), end = min(n, begin + per);
  int above = 0, equal = 0;
  for (int s = begin; s < end; ++s) {
    const std::uint32_t key = keys[s] & mask;
    above += key > prefix;
    equal += key == prefix;
  }
  int equal_before;
  Scan(scan_storage).ExclusiveSum(equal, equal_before);
  __syncthreads();
  const int equal_taken = max(0, min(equal, remaining - equal_before));
  int out_before;
  Scan(scan_storage).ExclusiveSum(above + equal_taken, out_before);
  int equal_left = equal_taken;
  for (int s = begin; s < end; ++s) {
    const std::uint32_t key = keys[s] & mask;
    if (key > prefix || (key == prefix && equal_left-- > 0)) o[out_before++] = s;
  }
}

}  // namespace

cudaError_t launch_topk(const TopkParams& p, cudaStream_t stream) {
  const int capacity = static_cast<int>(std::min<std::int64_t>(p.cols, kMaxCached));
  const std::size_t smem = sizeof(std::uint32_t) * static_cast<std::size_t>(capacity);
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(
        topk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  topk_kernel<<<static_cast<unsigned>(p.rows), kThreads, smem, stream>>>(p, capacity);
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda
