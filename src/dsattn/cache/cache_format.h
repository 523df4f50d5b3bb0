// Byte layouts of the paged caches, shared by the cache storage and the ops that read it.
#pragma once

#include <cstdint>

namespace dsattn {

// Tokens per cache page: 64 unless the cache is made with another (CacheOptions::page_size, a
// multiple of kPageSizeStep up to kMaxPageSize, as serving engines choose theirs).
inline constexpr std::int64_t kPageSize = 64;
inline constexpr std::int64_t kPageSizeStep = 16, kMaxPageSize = 256;

// How the latent [c_kv, k_pe] of a token is cached.
//   bf16: kv_lora_rank + d_rope bf16 values (1152 bytes for DeepSeek-V3.2)
//   fp8:  c_kv as e4m3 with one f32 scale per 128 values, k_pe as bf16 (656 bytes;
//   ops/latent_fp8.h)
enum class LatentFormat { bf16, fp8 };

// Width in bytes of one cached indexer key: d_I e4m3 values, then one f32 scale per 128 values
// (132 bytes for DeepSeek-V3.2's d_I = 128).
inline constexpr std::int64_t index_key_bytes(std::int64_t index_head_dim) {
  return index_head_dim + 4 * (index_head_dim / 128);
}

// How a page of the indexer-key cache orders its bytes (index_key_bytes(d_I) per token either
// way, so both fill the same [num_slots, index_key_bytes] u8 tensor):
//   rows:       token after token, each its d_I e4m3 values then its d_I / 128 f32 scales;
//   page_major: per page, the page_size tokens' values (d_I bytes each), then their scales (the
//               layout vLLM's indexer cache uses). Pages are then whole blocks of page_size ·
//               index_key_bytes bytes, so the tensor must be contiguous.
enum class IndexKeyLayout { rows, page_major };

// The index head dim whose cached keys are `key_bytes` wide (the inverse of index_key_bytes
// where one exists: a multiple of 128; check index_key_bytes of the result).
inline constexpr std::int64_t index_head_dim_of(std::int64_t key_bytes) {
  return key_bytes * 32 / 33;
}

// Byte offsets, from the start of the cache, of a slot's values and of its first scale.
struct IndexKeyOffsets {
  std::int64_t values, scales;
};
inline constexpr IndexKeyOffsets index_key_offsets(IndexKeyLayout layout, std::int64_t slot,
                                                   std::int64_t page_size,
                                                   std::int64_t index_head_dim,
                                                   std::int64_t row_stride) {
  if (layout == IndexKeyLayout::rows) {
    return {slot * row_stride, slot * row_stride + index_head_dim};
  }
  const std::int64_t page = slot / page_size, offset = slot % page_size;
  const std::int64_t base = page * page_size * index_key_bytes(index_head_dim);
  return {base + offset * index_head_dim,
          base + page_size * index_head_dim + offset * 4 * (index_head_dim / 128)};
}

// Width in bytes of one FP8 latent row: kv_lora_rank e4m3 values, one f32 scale per 128 of
// them, then rope_dim bf16 values (656 bytes for DeepSeek-V3.2).
inline constexpr std::int64_t latent_fp8_bytes(std::int64_t kv_lora_rank, std::int64_t rope_dim) {
  return kv_lora_rank + 4 * (kv_lora_rank / 128) + 2 * rope_dim;
}

// Pages needed to hold `tokens` positions.
inline constexpr std::int64_t pages_for(std::int64_t tokens, std::int64_t page_size = kPageSize) {
  return (tokens + page_size - 1) / page_size;
}

}  // namespace dsattn
