#include "dsattn/ops/cuda/common.cuh"

namespace dsattn::ops::cuda {

namespace {

// One warp per row of 128; lane l holds elements 4l .. 4l+3. The butterflies are those of the
// CPU's Sylvester-order transform, each output formed from the same two operands in the same
// order, so the result is bit-identical to the CPU backend.
__global__ void hadamard128_kernel(HadamardParams p) {
  const std::int64_t row = blockIdx.x * std::int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (row >= p.rows) return;
  const int lane = threadIdx.x % 32;
  auto* v = static_cast<__nv_bfloat16*>(p.x) + row * p.stride + 4 * lane;
  float e[4];
  for (int i = 0; i < 4; ++i) e[i] = __bfloat162float(v[i]);
  for (int h = 1; h < 4; h *= 2) {  // within the thread
    for (int i = 0; i < 4; ++i) {
      if ((i & h) == 0) {
        const float a = e[i], b = e[i + h];
        e[i] = a + b;
        e[i + h] = a - b;
      }
    }
  }
  for (int lane_mask = 1; lane_mask < 32; lane_mask *= 2) {  // across lanes: h = 4 · lane_mask
    const bool upper = (lane & lane_mask) != 0;
    for (int i = 0; i < 4; ++i) {
      const float other = __shfl_xor_sync(0xffffffffu, e[i], lane_mask);
      e[i] = upper ? other - e[i] : e[i] + other;
    }
  }
  const float scale = 1.0f / sqrtf(128.0f);  // the host computes the same f32 expression
  for (int i = 0; i < 4; ++i) v[i] = __float2bfloat16_rn(e[i] * scale);
}

// One warp per block of 128 values.
__global__ void quantize_kernel(QuantizeParams p) {
  const std::int64_t w = blockIdx.x * std::int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (w >= p.rows * p.blocks) return;
  const std::int64_t r = w / p.blocks, b = w % p.blocks;
  const int lane = threadIdx.x % 32;
  const std::int64_t in = r * p.stride_x + b * 128 + 4 * lane;
  float e[4], amax = 0.0f;
  for (int i = 0; i < 4; ++i) {
    e[i] = bf(p.x, in + i);
    amax = fmaxf(amax, fabsf(e[i]));
  }
  amax = warp_max(amax);
  const float s = fmaxf(amax, 1e-4f) / 448.0f;
  std::uint8_t* out = p.q + r * p.stride_q + b * 128 + 4 * lane;
  for (int i = 0; i < 4; ++i) out[i] = to_e4m3(e[i] / s);
  if (lane == 0) p.scale[r * p.stride_scale + b] = s;
}

}  // namespace

cudaError_t launch_hadamard128(const HadamardParams& p, cudaStream_t stream) {
  hadamard128_kernel<<<blocks_for(p.rows, 8), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_quantize_fp8_block128(const QuantizeParams& p, cudaStream_t stream) {
  quantize_kernel<<<blocks_for(p.rows * p.blocks, 8), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda
