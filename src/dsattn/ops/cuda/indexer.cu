#include "dsattn/ops/cuda/common.cuh"

namespace dsattn::ops::cuda {

namespace {

constexpr int kKeysPerBlock = 128;
constexpr int kHeadDim = 128;  // the indexer head dim: one FP8 scale per key and per query head

__device__ int request_of(const std::int32_t* cu, int batch, std::int64_t row) {
  int lo = 0, hi = batch - 1;  // the last b with cu[b] <= row
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu[mid] <= row)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// One block per (query row, 128 keys), a thread per key; the row's dequantised queries and
// weights sit in shared memory. A straightforward kernel, correct for every shape the layer
// makes, on f32 FMAs rather than tensor cores.
__global__ void indexer_scores_kernel(IndexerParams p) {
  extern __shared__ float smem[];       // [heads * 128] queries, then [heads] weights
  const std::int64_t row = blockIdx.x;  // rows on x: a prefill may exceed 65535 of them
  const int b = request_of(p.cu_q, p.batch, row);
  const std::int64_t n_q = p.cu_q[b + 1] - p.cu_q[b], n_k = p.context_lens[b];
  const std::int64_t visible = n_k - n_q + (row - p.cu_q[b]) + 1;
  if (visible <= p.skip_rows_up_to) return;  // top-k takes all its keys without scores
  if (blockIdx.y * std::int64_t(kKeysPerBlock) >= n_k) return;

  float* qf = smem;
  float* w = smem + p.heads * kHeadDim;
  for (int j = threadIdx.x; j < p.heads * kHeadDim; j += blockDim.x) {
    const int h = j / kHeadDim, e = j % kHeadDim;
    qf[j] = from_e4m3(p.q[row * p.stride_q_row + h * p.stride_q_head + e]) *
            p.q_scale[row * p.stride_qs_row + h * p.stride_qs_head];
  }
  for (int h = threadIdx.x; h < p.heads; h += blockDim.x) w[h] = p.weights[row * p.stride_w + h];
  __syncthreads();
  const std::int64_t s = blockIdx.y * std::int64_t(kKeysPerBlock) + threadIdx.x;
  if (s >= n_k) return;
  float* out = p.scores + row * p.stride_scores;
  if (s >= visible) {
    out[s] = -INFINITY;
    return;
  }
  const std::int32_t* table = p.block_tables + b * p.stride_tables;
  const std::int64_t slot = table[s / p.page_size] * p.page_size + s % p.page_size;
  const std::uint8_t* key = p.keys + slot * p.stride_key;
  const float* scale = reinterpret_cast<const float*>(key + kHeadDim);
  if (p.page_major) {  // the page's values, then its scales (page_size · 132 bytes a page)
    const std::int64_t page = slot / p.page_size, offset = slot % p.page_size;
    const std::uint8_t* base = p.keys + page * p.page_size * (kHeadDim + 4);
    key = base + offset * kHeadDim;
    scale = reinterpret_cast<const float*>(base + p.page_size * kHeadDim) + offset;
  }
  const float key_scale = *scale;
  float kf[kHeadDim];
  for (int e = 0; e < kHeadDim; ++e) kf[e] = from_e4m3(key[e]) * key_scale;
  float acc = 0.0f;
  for (int h = 0; h < p.heads; ++h) {
    float dot = 0.0f;
    const float* qh = qf + h * kHeadDim;
    for (int e = 0; e < kHeadDim; ++e) dot += qh[e] * kf[e];
    acc += w[h] * fmaxf(dot, 0.0f);
  }
  out[s] = acc;
}

}  // namespace

cudaError_t launch_indexer_scores(const IndexerParams& p, cudaStream_t stream) {
  const std::size_t smem = sizeof(float) * (p.heads * kHeadDim + p.heads);
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(
        indexer_scores_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  const dim3 grid(static_cast<unsigned>(p.total_q), blocks_for(p.max_k, kKeysPerBlock));
  indexer_scores_kernel<<<grid, kKeysPerBlock, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda
