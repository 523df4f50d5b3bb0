#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "dsattn/ops/cpu/cpu_ops.h"

namespace dsattn::ops::cpu {

namespace {

// Dequantises one cached key: d e4m3 values and d/128 f32 scales.
void dequantize_key(const std::uint8_t* values, const std::uint8_t* scales, std::int64_t d,
                    float* out) {
  for (std::int64_t b = 0; b < d / kQuantBlock; ++b) {
    float scale;
    std::memcpy(&scale, scales + 4 * b, 4);
    for (std::int64_t j = b * kQuantBlock; j < (b + 1) * kQuantBlock; ++j) {
      out[j] = fp8_e4m3::from_bits(values[j]).to_float() * scale;
    }
  }
}

}  // namespace

namespace {

// One request: n_q query rows against n_k keys, its queries being its newest positions.
void request_scores(const TensorView& q, const TensorView& q_scale, const TensorView& weights,
                    const TensorView& key_cache, IndexKeyLayout key_layout,
                    const std::int32_t* table, std::int64_t page_size, std::int64_t row0,
                    std::int64_t n_q, std::int64_t n_k, std::int64_t skip_rows_up_to,
                    const TensorView& scores) {
  const std::int64_t heads = q.size(1), d = q.size(2);
  // Rows that see at most skip_rows_up_to keys are left alone; they are the first rows.
  std::int64_t first = 0;
  while (first < n_q && n_k - n_q + first + 1 <= skip_rows_up_to) ++first;
  if (first == n_q) return;

  // Queries in chunks of about 4096 (query, head) rows, keys in blocks of kKeyBlock: logits =
  // Q_chunk · K_blockᵀ, then the weighted ReLU sum. The buffers stay the same size whatever the
  // context (32 MiB of logits, 1 MiB of keys), so a long context costs no more memory here than
  // its scores.
  constexpr std::int64_t kKeyBlock = 2048;
  const std::int64_t chunk = std::max<std::int64_t>(1, 4096 / heads);
  std::vector<float> q_f32(static_cast<std::size_t>(chunk * heads * d));
  std::vector<float> keys(static_cast<std::size_t>(std::min(n_k, kKeyBlock) * d));
  std::vector<float> logits(static_cast<std::size_t>(chunk * heads * std::min(n_k, kKeyBlock)));
  for (std::int64_t t0 = first; t0 < n_q; t0 += chunk) {
    const std::int64_t rows = std::min(chunk, n_q - t0);
    for (std::int64_t t = 0; t < rows; ++t) {
      for (std::int64_t h = 0; h < heads; ++h) {
        const std::int64_t row = row0 + t0 + t;
        const std::uint8_t* src = q.ptr<std::uint8_t>() + row * q.stride(0) + h * q.stride(1);
        const float* sc = q_scale.ptr<float>() + row * q_scale.stride(0) + h * q_scale.stride(1);
        float* dst = q_f32.data() + (t * heads + h) * d;
        for (std::int64_t j = 0; j < d; ++j) {
          dst[j] = fp8_e4m3::from_bits(src[j]).to_float() * sc[j / kQuantBlock];
        }
      }
    }
    // Keys past the chunk's last row's view are masked without being scored.
    const std::int64_t seen = n_k - n_q + t0 + rows;
    for (std::int64_t k0 = 0; k0 < seen; k0 += kKeyBlock) {
      const std::int64_t block = std::min(kKeyBlock, seen - k0);
#pragma omp parallel for schedule(static)
      for (std::int64_t s = 0; s < block; ++s) {
        const std::int64_t pos = k0 + s;
        const std::int64_t slot = table[pos / page_size] * page_size + pos % page_size;
        const IndexKeyOffsets at =
            index_key_offsets(key_layout, slot, page_size, d, key_cache.stride(0));
        const std::uint8_t* cache = key_cache.ptr<std::uint8_t>();
        dequantize_key(cache + at.values, cache + at.scales, d, keys.data() + s * d);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows * heads, block, d, 1.0f,
                  q_f32.data(), d, keys.data(), d, 0.0f, logits.data(), block);
#pragma omp parallel for schedule(static)
      for (std::int64_t t = 0; t < rows; ++t) {
        const std::int64_t i = t0 + t, row = row0 + i;
        const std::int64_t limit = n_k - n_q + i;  // last visible key position
        const float* w = weights.ptr<float>() + row * weights.stride(0);
        float* out = scores.row<float>(row);
        for (std::int64_t s = 0; s < block; ++s) {
          if (k0 + s > limit) continue;  // masked below
          float acc = 0.0f;
          for (std::int64_t h = 0; h < heads; ++h) {
            acc += w[h * weights.stride(1)] * std::max(logits[(t * heads + h) * block + s], 0.0f);
          }
          out[k0 + s] = acc;
        }
      }
    }
#pragma omp parallel for schedule(static)
    for (std::int64_t t = 0; t < rows; ++t) {
      float* out = scores.row<float>(row0 + t0 + t);
      for (std::int64_t s = n_k - n_q + t0 + t + 1; s < n_k; ++s) {
        out[s] = -std::numeric_limits<float>::infinity();
      }
    }
  }
}

}  // namespace

void indexer_scores(const TensorView& q, const TensorView& q_scale, const TensorView& weights,
                    const TensorView& key_cache, const TensorView& block_tables,
                    std::int64_t page_size, const TensorView& cu_q, const TensorView& context_lens,
                    std::int64_t skip_rows_up_to, const TensorView& scores,
                    IndexKeyLayout key_layout) {
  const std::int32_t* cq = cu_q.ptr<std::int32_t>();
  const std::int32_t* len = context_lens.ptr<std::int32_t>();
  for (std::int64_t b = 0; b + 1 < cu_q.size(0); ++b) {
    request_scores(q, q_scale, weights, key_cache, key_layout, block_tables.row<std::int32_t>(b),
                   page_size, cq[b], cq[b + 1] - cq[b], len[b], skip_rows_up_to, scores);
  }
}

}  // namespace dsattn::ops::cpu
