// Device-side dequantisation of the FP8 latent rows (cache/cache_format.h: kv_lora_rank e4m3
// codes, one f32 scale per 128 of them, then the bf16 rope part), rounded to bf16 exactly as the
// CPU backend reads them. Device code only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "dsattn/ops/cuda/ptx.cuh"

namespace dsattn::ops::cuda {

// Two e4m3 codes (low byte first) times the block scale, as a bf16 pair: e4m3 -> f16 and
// f16 -> f32 are exact, then one f32 product rounded to bf16.
__device__ __forceinline__ std::uint32_t dequant_e4m3x2(std::uint32_t codes, float scale) {
  const __half2_raw h =
      __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(codes), __NV_E4M3);
  const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&h));
  return ptx::pack_bf16(f.x * scale, f.y * scale);
}

}  // namespace dsattn::ops::cuda
