// The key mask of masked MHA from a top-k selection: one CTA per row builds the row's bit words
// in shared memory (positions arrive in any order, so bits are or-ed in with shared atomics)
// and writes them out whole, so that the mask needs no clearing pass of its own.
#include "dsattn/ops/cuda/common.cuh"

namespace dsattn::ops::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void selection_mask_kernel(const SelectionMaskParams p) {
  extern __shared__ std::uint32_t words[];
  const std::int64_t row = blockIdx.x;
  for (std::int64_t w = threadIdx.x; w < p.words; w += kThreads) words[w] = 0;
  __syncthreads();
  const std::int32_t* selected = p.selected + row * p.stride_selected;
  for (std::int64_t i = threadIdx.x; i < p.k; i += kThreads) {
    const std::int32_t pos = selected[i];
    if (pos >= 0 && pos / 32 < p.words) atomicOr(&words[pos / 32], 1u << (pos % 32));
  }
  __syncthreads();
  std::uint32_t* out = p.mask + row * p.stride_mask;
  for (std::int64_t w = threadIdx.x; w < p.words; w += kThreads) out[w] = words[w];
}

}  // namespace

// The words of a row live in shared memory: up to 48 KB (393,216 keys) without opting in.
constexpr std::int64_t kMaxSelectionMaskWords = 48 * 1024 / 4;

cudaError_t launch_selection_mask(const SelectionMaskParams& p, cudaStream_t stream) {
  if (p.words > kMaxSelectionMaskWords || p.n > 0x7fffffff) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  selection_mask_kernel<<<static_cast<unsigned>(p.n), kThreads, p.words * 4, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda
