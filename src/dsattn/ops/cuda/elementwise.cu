#include "dsattn/ops/cuda/common.cuh"

namespace dsattn::ops::cuda {

namespace {

__global__ void add_kernel(AddParams p) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i >= p.rows * p.n) return;
  const std::int64_t r = i / p.n, j = i % p.n;
  static_cast<__nv_bfloat16*>(p.out)[r * p.stride_out + j] =
      __float2bfloat16_rn(bf(p.a, r * p.stride_a + j) + bf(p.b, r * p.stride_b + j));
}

// expf (full precision), not __expf: the result then differs from the CPU backend by f32
// rounding only, far below bf16.
__global__ void silu_mul_kernel(SiluMulParams p) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i >= p.rows * p.n) return;
  const std::int64_t r = i / p.n, j = i % p.n;
  const float g = bf(p.x, r * p.stride_x + j), u = bf(p.x, r * p.stride_x + p.n + j);
  static_cast<__nv_bfloat16*>(p.out)[r * p.stride_out + j] =
      __float2bfloat16_rn(g / (1.0f + expf(-g)) * u);
}

template <typename T>
__global__ void strided_copy_kernel(StridedCopyParams p, std::int64_t total) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  std::int64_t rem = i, from = 0, to = 0;
  for (int k = 3; k >= 0; --k) {
    const std::int64_t idx = rem % p.shape[k];
    rem /= p.shape[k];
    from += idx * p.src_strides[k];
    to += idx * p.dst_strides[k];
  }
  static_cast<T*>(p.dst)[to] = static_cast<const T*>(p.src)[from];
}

}  // namespace

cudaError_t launch_add(const AddParams& p, cudaStream_t stream) {
  add_kernel<<<blocks_for(p.rows * p.n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_silu_mul(const SiluMulParams& p, cudaStream_t stream) {
  silu_mul_kernel<<<blocks_for(p.rows * p.n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_strided_copy(const StridedCopyParams& p, cudaStream_t stream) {
  const std::int64_t total = p.shape[0] * p.shape[1] * p.shape[2] * p.shape[3];
  const unsigned grid = blocks_for(total, 256);
  if (p.element_bytes == 1) {
    strided_copy_kernel<std::uint8_t><<<grid, 256, 0, stream>>>(p, total);
  } else if (p.element_bytes == 2) {
    strided_copy_kernel<std::uint16_t><<<grid, 256, 0, stream>>>(p, total);
  } else {
    strided_copy_kernel<std::uint32_t><<<grid, 256, 0, stream>>>(p, total);
  }
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda
