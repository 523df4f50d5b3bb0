// Byte layouts of the paged caches, shared by the cache storage and the ops that read it.
#pragma once

#include <cstdint>

namespace dsattn {

// Tokens per cache page.
inline constexpr std::int64_t kPageSize = 64;

// Width in bytes of one cached indexer key: d_I e4m3 values, then one f32 scale per 128 values
// (132 bytes for DeepSeek-V3.2's d_I = 128).
inline constexpr std::int64_t index_key_bytes(std::int64_t index_head_dim) {
  return index_head_dim + 4 * (index_head_dim / 128);
}

// Pages needed to hold `tokens` positions.
inline constexpr std::int64_t pages_for(std::int64_t tokens) {
  return (tokens + kPageSize - 1) / kPageSize;
}

}  // namespace dsattn
