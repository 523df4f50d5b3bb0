#include <cub/block/block_scan.cuh>

#include "dsattn/ops/cuda/common.cuh"

namespace dsattn::ops::cuda {

namespace {

constexpr int kThreads = 512;

// An unsigned key that orders like the scores: larger score, larger key; NaN lowest; +0 and -0
// equal (the CPU compares them equal, so the lower position wins between them).
__device__ __forceinline__ std::uint32_t order_key(float f) {
  if (isnan(f)) return 0u;
  if (f == 0.0f) f = 0.0f;
  const std::uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// One block per row. Radix select finds the key T of the k-th largest score in four 8-bit
// passes; then one pass in position order keeps every score above T and the lowest-positioned
// ones equal to T, writing the selected positions in ascending order.
__global__ void topk_kernel(TopkParams p) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int histogram[256];
  __shared__ std::uint32_t s_prefix;
  __shared__ int s_remaining;
  __shared__ int s_carry[2];

  const std::int64_t r = blockIdx.x;
  const int n = p.lengths[r], k = p.k;
  std::int32_t* o = p.out + r * p.stride_out;
  if (n <= k) {  // every position is selected; the scores are not read
    for (int i = threadIdx.x; i < k; i += blockDim.x) o[i] = i < n ? i : -1;
    return;
  }
  const float* row = p.scores + r * p.stride_scores;

  std::uint32_t prefix = 0, mask = 0;
  int remaining = k;  // how many of the candidates matching `prefix` are still to be taken
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) histogram[i] = 0;
    __syncthreads();
    for (int s = threadIdx.x; s < n; s += blockDim.x) {
      const std::uint32_t key = order_key(row[s]);
      if ((key & mask) == prefix) atomicAdd(&histogram[(key >> shift) & 255u], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int above = 0, bucket = 255;
      for (; bucket > 0; --bucket) {
        if (above + histogram[bucket] >= remaining) break;
        above += histogram[bucket];
      }
      s_prefix = prefix | (static_cast<std::uint32_t>(bucket) << shift);
      s_remaining = remaining - above;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 255u << shift;
  }
  // prefix is T; `remaining` scores equal to T are taken, lowest positions first.
  if (threadIdx.x == 0) s_carry[0] = s_carry[1] = 0;
  __syncthreads();
  for (int base = 0; base < n; base += blockDim.x) {
    const int s = base + threadIdx.x;
    const std::uint32_t key = s < n ? order_key(row[s]) : 0u;
    const int equal = s < n && key == prefix;
    int equal_before, equal_total;
    Scan(scan_storage).ExclusiveSum(equal, equal_before, equal_total);
    __syncthreads();
    const int take = s < n && (key > prefix || (equal && s_carry[1] + equal_before < remaining));
    int out_before, taken;
    Scan(scan_storage).ExclusiveSum(take, out_before, taken);
    if (take) o[s_carry[0] + out_before] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
      s_carry[0] += taken;
      s_carry[1] += equal_total;
    }
    __syncthreads();
  }
}

}  // namespace

cudaError_t launch_topk(const TopkParams& p, cudaStream_t stream) {
  topk_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda
