// Straightforward attention kernels for every head size: one warp per (query row, head), keys
// visited in order with an online softmax, f32 FMAs. They serve the shapes the tensor-core
// kernels do not instantiate (small test configurations) and are the GPU reference for them.
#include "dsattn/ops/cuda/common.cuh"

namespace dsattn::ops::cuda {

namespace {

constexpr int kMaxPerLane = 24;  // head dims up to 768

struct Online {
  float max = -INFINITY, sum = 0.0f;
  float o[kMaxPerLane];
};

// Adds key j's score `x` and value row `v` (lane-strided, d_v values) to the running softmax.
template <typename LoadV>
__device__ __forceinline__ void online_update(Online& st, float x, int d_v, LoadV load_v) {
  const float new_max = fmaxf(st.max, x);
  const float correction = __expf(st.max - new_max);
  const float p = __expf(x - new_max);
  st.sum = st.sum * correction + p;
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int e = threadIdx.x % 32 + 32 * i;
    if (e < d_v) st.o[i] = st.o[i] * correction + p * load_v(e);
  }
  st.max = new_max;
}

__global__ void mha_generic_kernel(MhaParams p) {
  const std::int64_t warp = blockIdx.x * std::int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (warp >= p.total_q * p.heads) return;
  const int lane = threadIdx.x % 32;
  const std::int64_t row = warp / p.heads;
  const int h = static_cast<int>(warp % p.heads);
  int b = 0;
  while (b + 1 < p.batch && p.cu_q[b + 1] <= row) ++b;
  const std::int64_t n_q = p.cu_q[b + 1] - p.cu_q[b], n_k = p.cu_k[b + 1] - p.cu_k[b];
  const std::int64_t visible = n_k - n_q + (row - p.cu_q[b]) + 1;
  float qr[kMaxPerLane];
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int e = lane + 32 * i;
    qr[i] = e < p.d_qk ? bf(p.q, row * p.sq0 + h * p.sq1 + e) : 0.0f;
  }
  Online st;
  for (int i = 0; i < kMaxPerLane; ++i) st.o[i] = 0.0f;
  const std::uint32_t* words = p.key_mask == nullptr ? nullptr : p.key_mask + row * p.s_mask;
  bool any = false;
  for (std::int64_t j = 0; j < visible; ++j) {
    if (words != nullptr && (j / 32 >= p.mask_words || ((words[j / 32] >> (j % 32)) & 1u) == 0)) {
      continue;
    }
    any = true;
    const std::int64_t key = p.cu_k[b] + j;
    float dot = 0.0f;
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int e = lane + 32 * i;
      if (e < p.d_qk) dot += qr[i] * bf(p.k, key * p.sk0 + h * p.sk1 + e);
    }
    online_update(st, warp_sum(dot) * p.scale, p.d_v,
                  [&](int e) { return bf(p.v, key * p.sv0 + h * p.sv1 + e); });
  }
  auto* out = static_cast<__nv_bfloat16*>(p.out) + row * p.so0 + h * p.so1;
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int e = lane + 32 * i;
    if (e < p.d_v) out[e] = __float2bfloat16_rn(any ? st.o[i] / st.sum : 0.0f);
  }
  if (p.lse != nullptr && lane == 0) {
    p.lse[row * p.s_lse + h] = any ? st.max + logf(st.sum) : -INFINITY;
  }
}

// Loads element e of the cached latent row: bf16 directly, or dequantised from the FP8 format
// (rounded to bf16, as the CPU backend reads it).
struct LatentRow {
  const void* row;
  bool fp8;
  int r;  // kv_lora_rank: FP8 values before it, bf16 rope after the scales
  __device__ float operator()(int e) const {
    if (!fp8) return __bfloat162float(static_cast<const __nv_bfloat16*>(row)[e]);
    const auto* bytes = static_cast<const std::uint8_t*>(row);
    if (e < r) {
      const float scale = reinterpret_cast<const float*>(bytes + r)[e / 128];
      return __bfloat162float(__float2bfloat16_rn(from_e4m3(bytes[e]) * scale));
    }
    return __bfloat162float(
        reinterpret_cast<const __nv_bfloat16*>(bytes + r + 4 * (r / 128))[e - r]);
  }
};

__global__ void sparse_mla_generic_kernel(SparseMlaParams p) {
  const std::int64_t warp = blockIdx.x * std::int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (warp >= p.n * p.heads) return;
  const int lane = threadIdx.x % 32;
  const std::int64_t row = warp / p.heads;
  const int h = static_cast<int>(warp % p.heads);
  float qr[kMaxPerLane];
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int e = lane + 32 * i;
    qr[i] = e < p.d_qk ? bf(p.q, row * p.sq0 + h * p.sq1 + e) : 0.0f;
  }
  Online st;
  for (int i = 0; i < kMaxPerLane; ++i) st.o[i] = 0.0f;
  bool any = false;
  const int entries =
      p.topk_length == nullptr ? p.topk : min(max(p.topk_length[row * p.s_topk_length], 0), p.topk);
  for (int j = 0; j < entries; ++j) {
    const std::int32_t slot = p.indices[row * p.stride_indices + j];
    if (slot < 0 || slot >= p.slots) continue;
    any = true;
    const LatentRow kr{static_cast<const std::uint8_t*>(p.kv) + slot * p.kv_row_bytes, p.fp8,
                       p.d_v};
    float dot = 0.0f;
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int e = lane + 32 * i;
      if (e < p.d_qk) dot += qr[i] * kr(e);
    }
    online_update(st, warp_sum(dot) * p.scale, p.d_v, kr);
  }
  auto* out = static_cast<__nv_bfloat16*>(p.out) + row * p.so0 + h * p.so1;
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int e = lane + 32 * i;
    if (e < p.d_v) out[e] = __float2bfloat16_rn(any ? st.o[i] / st.sum : 0.0f);
  }
  if (p.lse != nullptr && lane == 0) {
    p.lse[row * p.s_lse + h] = any ? st.max + logf(st.sum) : -INFINITY;
  }
}

}  // namespace

cudaError_t launch_mha_generic(const MhaParams& p, cudaStream_t stream) {
  if (p.d_qk > 32 * kMaxPerLane || p.d_v > 32 * kMaxPerLane) return cudaErrorInvalidValue;
  mha_generic_kernel<<<blocks_for(p.total_q * p.heads, 4), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_sparse_mla_generic(const SparseMlaParams& p, cudaStream_t stream) {
  if (p.d_qk > 32 * kMaxPerLane || p.d_v > 32 * kMaxPerLane) return cudaErrorInvalidValue;
  sparse_mla_generic_kernel<<<blocks_for(p.n * p.heads, 4), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda
