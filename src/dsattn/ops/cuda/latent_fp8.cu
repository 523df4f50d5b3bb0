#include "dsattn/ops/cuda/common.cuh"

namespace dsattn::ops::cuda {

namespace {

// One warp per token: blocks of 128 c_kv values (4 per lane), then the rope part.
__global__ void quantize_latent_kernel(LatentFp8Params p) {
  const std::int64_t t = blockIdx.x * std::int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (t >= p.n) return;
  const int lane = threadIdx.x % 32;
  const std::int64_t in = t * p.stride_latent;
  auto* out = static_cast<std::uint8_t*>(p.rows) + t * p.stride_rows;
  for (int b = 0; b < p.r / 128; ++b) {
    float e[4], amax = 0.0f;
    for (int i = 0; i < 4; ++i) {
      e[i] = bf(p.latent, in + b * 128 + 4 * lane + i);
      amax = fmaxf(amax, fabsf(e[i]));
    }
    amax = warp_max(amax);
    const float s = fmaxf(amax, 1e-4f) / 448.0f;
    for (int i = 0; i < 4; ++i) out[b * 128 + 4 * lane + i] = to_e4m3(e[i] / s);
    if (lane == 0) reinterpret_cast<float*>(out + p.r)[b] = s;
  }
  auto* pe = reinterpret_cast<__nv_bfloat16*>(out + p.r + 4 * (p.r / 128));
  const auto* src = static_cast<const __nv_bfloat16*>(p.latent) + in + p.r;
  for (int j = lane; j < p.rope; j += 32) pe[j] = src[j];
}

__global__ void dequantize_latent_kernel(LatentFp8Params p) {
  const std::int64_t t = blockIdx.x * std::int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (t >= p.n) return;
  const int lane = threadIdx.x % 32;
  const auto* in = static_cast<const std::uint8_t*>(p.rows) + t * p.stride_rows;
  auto* out = static_cast<__nv_bfloat16*>(p.latent) + t * p.stride_latent;
  const auto* scales = reinterpret_cast<const float*>(in + p.r);
  for (int j = lane; j < p.r; j += 32)
    out[j] = __float2bfloat16_rn(from_e4m3(in[j]) * scales[j / 128]);
  const auto* pe = reinterpret_cast<const __nv_bfloat16*>(in + p.r + 4 * (p.r / 128));
  for (int j = lane; j < p.rope; j += 32) out[p.r + j] = pe[j];
}

}  // namespace

cudaError_t launch_latent_fp8(const LatentFp8Params& p, cudaStream_t stream) {
  if (p.quantize) {
    quantize_latent_kernel<<<blocks_for(p.n, 8), 256, 0, stream>>>(p);
  } else {
    dequantize_latent_kernel<<<blocks_for(p.n, 8), 256, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda
