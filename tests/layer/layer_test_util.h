// Shared pieces of the layer tests: a small DeepSeek-V3.2-shaped configuration, seeded inputs,
// a single-request runner over a private cache, and the page-major index-key check.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "dsattn/cache/paged_kv_cache.h"
#include "dsattn/core/random.h"
#include "dsattn/layer/attention_layer.h"
#include "dsattn/reference/layer_check.h"

namespace dsattn::testing {

// Every dimension of the model, shrunk so that a float64 reference runs in milliseconds; the
// indexer keeps its real head dim (Hadamard and FP8 blocks of 128).
inline AttentionConfig small_config(std::int64_t index_topk = 32) {
  AttentionConfig c;
  c.hidden_size = 96;
  c.num_heads = 2;
  c.q_lora_rank = 48;
  c.kv_lora_rank = 64;
  c.qk_nope_head_dim = 32;
  c.qk_rope_head_dim = 16;
  c.v_head_dim = 32;
  c.index_n_heads = 4;
  c.index_head_dim = 128;
  c.index_topk = index_topk;
  return c;
}

// GLM-5's attention shapes per head (q/k 192 + 64, v 256, latent 512 + 64, 32 index heads with
// interleaved RoPE, plain RoPE at theta 1e6 and so no mscale), with few heads and a small hidden
// size so that the float64 reference stays quick.
inline AttentionConfig glm5_shaped_config(std::int64_t heads, std::int64_t index_topk) {
  AttentionConfig c = AttentionConfig::glm5();
  c.hidden_size = 256;
  c.num_heads = heads;
  c.q_lora_rank = 128;
  c.index_topk = index_topk;
  return c;
}

// auto with a profile where dense work is free: every prefill request whose context passes
// index_topk inside its extend takes the row split, every other one its cheaper whole path.
inline Policy row_split_policy() {
  auto dense_free = std::make_shared<CostProfile>();
  dense_free->mla_s_per_flop = dense_free->absorb_s_per_flop = dense_free->score_s_per_pair = 1.0;
  Policy p = Policy::parse("auto");
  p.profile = dense_free;
  return p;
}

// Seeded hidden states, uniform with unit RMS.
inline Tensor random_hidden(std::int64_t rows, std::int64_t d, std::uint64_t seed) {
  Tensor t = Tensor::empty({rows, d}, DType::bf16);
  fill_uniform(t, seed, 4242, 1.0f);
  return t;
}

// max |a - b| / max |b| over two bf16 tensors (or tensor slices) of equal size.
inline double relative_difference(const TensorView& a, const TensorView& b) {
  double diff = 0, scale = 0;
  const bf16* x = a.ptr<bf16>();
  const bf16* y = b.ptr<bf16>();
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    diff = std::max(diff, double(std::fabs(x[i].to_float() - y[i].to_float())));
    scale = std::max(scale, double(std::fabs(y[i].to_float())));
  }
  return scale > 0 ? diff / scale : diff;
}

// Byte-for-byte snapshot of one layer's caches.
inline std::vector<std::uint8_t> snapshot(const LayerCacheView& cache) {
  std::vector<std::uint8_t> bytes;
  for (const TensorView* t : {&cache.latent, &cache.index_keys}) {
    const auto* p = static_cast<const std::uint8_t*>(t->data());
    bytes.insert(bytes.end(), p, p + t->numel() * dtype_size(t->dtype()));
  }
  return bytes;
}

// The cached bytes (latent and indexer key) of positions [0, n) of one request, in order.
inline std::vector<std::uint8_t> cached_rows(const LayerCacheView& cache, const BlockTable& table,
                                             std::int64_t n) {
  std::vector<std::uint8_t> bytes;
  for (std::int64_t p = 0; p < n; ++p) {
    const std::int64_t slot = table[p / cache.page_size] * cache.page_size + p % cache.page_size;
    for (const TensorView* t : {&cache.latent, &cache.index_keys}) {
      const std::size_t row = t->size(1) * dtype_size(t->dtype());
      const auto* base = static_cast<const std::uint8_t*>(t->data()) + slot * row;
      bytes.insert(bytes.end(), base, base + row);
    }
  }
  return bytes;
}

// Two bf16 tensors agree to bf16 rounding: a few units in the last place of the largest value.
inline constexpr double kBf16Agreement = 1.0 / 64;

// Case `c` on a page-major index-key cache: it passes the float64 check, and every policy's
// output equals the row layout's bit for bit (the same keys, read from other addresses).
inline void expect_page_major_matches_rows(reference::CheckCase c) {
  c.index_key_layout = IndexKeyLayout::rows;
  const reference::CaseReport rows = reference::check_case(c);
  c.index_key_layout = IndexKeyLayout::page_major;
  const reference::CaseReport paged = reference::check_case(c);
  EXPECT_TRUE(paged.pass) << c.to_string() << "\n" << paged.to_string();
  ASSERT_EQ(paged.checks.size(), rows.checks.size());
  for (std::size_t i = 0; i < rows.checks.size(); ++i) {
    EXPECT_EQ(paged.checks[i].output, rows.checks[i].output)
        << c.to_string() << ", policy " << rows.checks[i].policy;
  }
}

}  // namespace dsattn::testing
