#include "dsattn/ops/cuda/common.cuh"

namespace dsattn::ops::cuda {

namespace {

// One thread per (token, head, pair). The angle is computed in double, as on the CPU: positions
// reach 10^5 and an f32 angle would be off by ~1e-2 radians.
__global__ void rope_kernel(RopeParams p) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i >= p.tokens * p.heads * p.pairs) return;
  const std::int64_t pair = i % p.pairs, h = (i / p.pairs) % p.heads, t = i / (p.pairs * p.heads);
  double s, c;
  sincos(static_cast<double>(p.positions[t]) * p.inv_freq[pair], &s, &c);
  const float cs = static_cast<float>(c * p.mscale), sn = static_cast<float>(s * p.mscale);
  auto* v = static_cast<__nv_bfloat16*>(p.x) + t * p.stride_token + h * p.stride_head;
  const std::int64_t a = p.interleaved ? 2 * pair : pair;
  const std::int64_t b = p.interleaved ? 2 * pair + 1 : pair + p.pairs;
  const float x0 = __bfloat162float(v[a]), x1 = __bfloat162float(v[b]);
  v[a] = __float2bfloat16_rn(x0 * cs - x1 * sn);
  v[b] = __float2bfloat16_rn(x0 * sn + x1 * cs);
}

}  // namespace

cudaError_t launch_rope(const RopeParams& p, cudaStream_t stream) {
  rope_kernel<<<blocks_for(p.tokens * p.heads * p.pairs, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda
