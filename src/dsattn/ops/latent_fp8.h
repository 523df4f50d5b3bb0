// The FP8 format of the latent cache: 656 bytes per token = kv_lora_rank (512) e4m3 values of
// c_kv, one f32 scale per 128 of them (4), then the d_rope (64) bf16 values of k_pe, unquantised.
#pragma once

#include "dsattn/cache/cache_format.h"
#include "dsattn/core/tensor.h"

namespace dsattn::ops {

// rows[t] = [e4m3(c_kv / scale), scales, k_pe] with scale = max(amax, 1e-4) / 448 per 128 values.
//   latent: [n, kv_lora_rank + rope_dim] bf16; rows: [n, latent_fp8_bytes] u8 (rows may be strided)
void quantize_latent_fp8(const TensorView& latent, std::int64_t kv_lora_rank,
                         const TensorView& rows);
// latent[t] = [dequant(c_kv), k_pe], rounded to bf16.
void dequantize_latent_fp8(const TensorView& rows, std::int64_t kv_lora_rank,
                           const TensorView& latent);

}  // namespace dsattn::ops
