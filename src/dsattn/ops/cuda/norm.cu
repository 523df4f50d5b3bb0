#include "dsattn/ops/cuda/common.cuh"

namespace dsattn::ops::cuda {

namespace {

constexpr int kThreads = 256;

// Sum over the block, broadcast to every thread.
__device__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < blockDim.x / 32 ? scratch[lane] : 0.0f;
  v = warp_sum(v);
  __syncthreads();
  return v;
}

// One block per row.
__global__ void rms_norm_kernel(NormParams p) {
  __shared__ float scratch[32];
  const std::int64_t in = blockIdx.x * p.stride_x;
  auto* out = static_cast<__nv_bfloat16*>(p.out) + blockIdx.x * p.stride_out;
  float ss = 0.0f;
  for (std::int64_t j = threadIdx.x; j < p.n; j += blockDim.x) {
    const float v = bf(p.x, in + j);
    ss += v * v;
  }
  ss = block_sum(ss, scratch);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(p.n) + p.eps);
  for (std::int64_t j = threadIdx.x; j < p.n; j += blockDim.x) {
    out[j] = __float2bfloat16_rn(bf(p.x, in + j) * inv * bf(p.weight, j));
  }
}

__global__ void layer_norm_kernel(NormParams p) {
  __shared__ float scratch[32];
  const std::int64_t in = blockIdx.x * p.stride_x;
  auto* out = static_cast<__nv_bfloat16*>(p.out) + blockIdx.x * p.stride_out;
  float sum = 0.0f;
  for (std::int64_t j = threadIdx.x; j < p.n; j += blockDim.x) sum += bf(p.x, in + j);
  const float mean = block_sum(sum, scratch) / static_cast<float>(p.n);
  float var = 0.0f;
  for (std::int64_t j = threadIdx.x; j < p.n; j += blockDim.x) {
    const float d = bf(p.x, in + j) - mean;
    var += d * d;
  }
  const float inv = 1.0f / sqrtf(block_sum(var, scratch) / static_cast<float>(p.n) + p.eps);
  for (std::int64_t j = threadIdx.x; j < p.n; j += blockDim.x) {
    out[j] = __float2bfloat16_rn((bf(p.x, in + j) - mean) * inv * bf(p.weight, j) + bf(p.bias, j));
  }
}

}  // namespace

cudaError_t launch_rms_norm(const NormParams& p, cudaStream_t stream) {
  rms_norm_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_layer_norm(const NormParams& p, cudaStream_t stream) {
  layer_norm_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda
