#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "dsattn/ops/cpu/cpu_ops.h"

namespace dsattn::ops::cpu {

namespace {

// Copies head h of a [rows, H, d] bf16 view into a dense [rows, d] f32 matrix.
void widen_head(const TensorView& t, std::int64_t row0, std::int64_t rows, std::int64_t h,
                float* dst) {
  const std::int64_t d = t.size(2);
  for (std::int64_t r = 0; r < rows; ++r) {
    widen(t.ptr<bf16>() + (row0 + r) * t.stride(0) + h * t.stride(1), dst + r * d, d);
  }
}

// Whether key j is selected by a row's key_mask words (all keys are without words).
bool selected_key(const std::int32_t* words, std::int64_t n_words, std::int64_t j) {
  if (words == nullptr) return true;
  return j / 32 < n_words && ((static_cast<std::uint32_t>(words[j / 32]) >> (j % 32)) & 1u) != 0;
}

// In place: row i of s (n columns) becomes softmax over columns [0, visible[i]) (those of them
// whose bit is set in the row's words, when `mask` is given: row i's words at mask + i *
// mask_stride, mask_words of them), zeros elsewhere; a row with no such column becomes all
// zeros. When lse is given, lse[i * lse_stride] receives row i's log-sum-exp (-inf for a row
// with no visible column).
void masked_softmax_rows(float* s, std::int64_t rows, std::int64_t n, const std::int64_t* visible,
                         float* lse = nullptr, std::int64_t lse_stride = 0,
                         const std::int32_t* mask = nullptr, std::int64_t mask_stride = 0,
                         std::int64_t mask_words = 0) {
  for (std::int64_t i = 0; i < rows; ++i) {
    float* row = s + i * n;
    const std::int32_t* words = mask == nullptr ? nullptr : mask + i * mask_stride;
    const std::int64_t v = std::clamp<std::int64_t>(visible[i], 0, n);
    float max_v = -std::numeric_limits<float>::infinity();
    bool any = false;
    for (std::int64_t j = 0; j < v; ++j) {
      if (!selected_key(words, mask_words, j)) continue;
      max_v = any ? std::max(max_v, row[j]) : row[j];
      any = true;
    }
    float sum = 0.0f;
    for (std::int64_t j = 0; j < v; ++j) {
      row[j] = selected_key(words, mask_words, j) ? std::exp(row[j] - max_v) : 0.0f;
      sum += row[j];
    }
    const float inv = any ? 1.0f / sum : 0.0f;
    if (lse != nullptr) {
      lse[i * lse_stride] = any ? max_v + std::log(sum) : -std::numeric_limits<float>::infinity();
    }
    for (std::int64_t j = 0; j < v; ++j) row[j] *= inv;
    for (std::int64_t j = v; j < n; ++j) row[j] = 0.0f;
  }
}

// o = P · V over each row's visible keys only: a masked probability is 0, but 0 · NaN is NaN,
// so a masked key's non-finite value must never enter a row's sum. Rows go in blocks: the keys
// every row of a block sees (up to its first row's count) by one GEMM, the causal triangle
// after them row by row.
void causal_probs_times_values(const float* p, const float* v, std::int64_t rows, std::int64_t n,
                               std::int64_t d_v, const std::int64_t* visible, float* o) {
  constexpr std::int64_t kBlock = 64;
  for (std::int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const std::int64_t count = std::min(kBlock, rows - r0);
    const std::int64_t common = std::clamp<std::int64_t>(visible[r0], 0, n);
    float* out = o + r0 * d_v;
    if (common > 0) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, count, d_v, common, 1.0f, p + r0 * n,
                  n, v, d_v, 0.0f, out, d_v);
    } else {
      std::fill_n(out, count * d_v, 0.0f);
    }
    for (std::int64_t i = 0; i < count; ++i) {
      const std::int64_t end = std::clamp<std::int64_t>(visible[r0 + i], 0, n);
      for (std::int64_t j = common; j < end; ++j) {
        cblas_saxpy(static_cast<int>(d_v), p[(r0 + i) * n + j], v + j * d_v, 1, out + i * d_v, 1);
      }
    }
  }
}

// o = P · V for rows that see only their selected keys (masked MHA; the words as for
// masked_softmax_rows). Hidden probabilities are 0, which one GEMM over all keys may add when
// every value is finite; otherwise (0 · NaN is NaN) each row sums its own visible, selected keys,
// a zero probability included, as dense attention does.
void selected_probs_times_values(const float* p, const float* v, std::int64_t rows,
                                 std::int64_t n, std::int64_t d_v, const std::int64_t* visible,
                                 const std::int32_t* mask, std::int64_t mask_stride,
                                 std::int64_t mask_words, float* o) {
  if (std::all_of(v, v + n * d_v, [](float x) { return std::isfinite(x); })) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, d_v, n, 1.0f, p, n, v, d_v, 0.0f,
                o, d_v);
    return;
  }
  std::fill_n(o, rows * d_v, 0.0f);
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int32_t* words = mask + i * mask_stride;
    const std::int64_t end = std::clamp<std::int64_t>(visible[i], 0, n);
    for (std::int64_t j = 0; j < end; ++j) {
      if (selected_key(words, mask_words, j)) {
        cblas_saxpy(static_cast<int>(d_v), p[i * n + j], v + j * d_v, 1, o + i * d_v, 1);
      }
    }
  }
}

// Dequantises one FP8 latent row (latent_fp8.h) to f32: r e4m3 values with r/128 scales, then
// the bf16 rope part.
void widen_latent_fp8(const std::uint8_t* row, std::int64_t r, std::int64_t width, float* out) {
  for (std::int64_t b = 0; b < r / kQuantBlock; ++b) {
    float scale;
    std::memcpy(&scale, row + r + 4 * b, 4);
    for (std::int64_t j = b * kQuantBlock; j < (b + 1) * kQuantBlock; ++j) {
      // Rounded to bf16 as dequantize_latent_fp8 does, so both paths read identical values.
      out[j] = bf16::from_float(fp8_e4m3::from_bits(row[j]).to_float() * scale).to_float();
    }
  }
  const std::uint8_t* rope = row + r + 4 * (r / kQuantBlock);
  for (std::int64_t j = r; j < width; ++j) {
    bf16 v;
    std::memcpy(&v, rope + 2 * (j - r), sizeof(bf16));
    out[j] = v.to_float();
  }
}

}  // namespace

void mha_varlen_causal(const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& cu_q, const TensorView& cu_k, std::int64_t /*max_q*/,
                       float scale, const TensorView& out, const TensorView& lse,
                       const TensorView& key_mask) {
  const std::int64_t batch = cu_q.size(0) - 1, heads = q.size(1);
  const std::int64_t d_qk = q.size(2), d_v = v.size(2);
  const std::int32_t* cq = cu_q.ptr<std::int32_t>();
  const std::int32_t* ck = cu_k.ptr<std::int32_t>();
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t q0 = cq[b], nq = cq[b + 1] - cq[b];
    const std::int64_t k0 = ck[b], nk = ck[b + 1] - ck[b];
    if (nq == 0) continue;
    std::vector<std::int64_t> visible(nq);
    for (std::int64_t i = 0; i < nq; ++i) visible[i] = nk - nq + i + 1;
#pragma omp parallel for schedule(dynamic, 1)
    for (std::int64_t h = 0; h < heads; ++h) {
      std::vector<float> qh(nq * d_qk), kh(nk * d_qk), vh(nk * d_v), s(nq * nk), o(nq * d_v);
      widen_head(q, q0, nq, h, qh.data());
      widen_head(k, k0, nk, h, kh.data());
      widen_head(v, k0, nk, h, vh.data());
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, d_qk, scale, qh.data(), d_qk,
                  kh.data(), d_qk, 0.0f, s.data(), nk);
      const bool masked = !key_mask.empty();
      masked_softmax_rows(s.data(), nq, nk, visible.data(),
                          lse.empty() ? nullptr : lse.ptr<float>() + q0 * lse.stride(0) + h,
                          lse.empty() ? 0 : lse.stride(0),
                          masked ? key_mask.ptr<std::int32_t>() + q0 * key_mask.stride(0) : nullptr,
                          masked ? key_mask.stride(0) : 0, masked ? key_mask.size(1) : 0);
      if (masked) {
        selected_probs_times_values(s.data(), vh.data(), nq, nk, d_v, visible.data(),
                                    key_mask.ptr<std::int32_t>() + q0 * key_mask.stride(0),
                                    key_mask.stride(0), key_mask.size(1), o.data());
      } else {
        causal_probs_times_values(s.data(), vh.data(), nq, nk, d_v, visible.data(), o.data());
      }
      for (std::int64_t i = 0; i < nq; ++i) {
        bf16* dst = out.ptr<bf16>() + (q0 + i) * out.stride(0) + h * out.stride(1);
        for (std::int64_t j = 0; j < d_v; ++j) dst[j] = bf16::from_float(o[i * d_v + j]);
      }
    }
  }
}

void selection_mask(const TensorView& selected, const TensorView& mask) {
  const std::int64_t n = selected.size(0), k = selected.size(1), words = mask.size(1);
  for (std::int64_t t = 0; t < n; ++t) {
    const std::int32_t* idx = selected.row<std::int32_t>(t);
    for (std::int64_t i = 0; i < k; ++i) {
      DSATTN_CHECK(idx[i] >= -1 && idx[i] < 32 * words,
                   "selected[{}][{}] is {}: a position must be -1 or in [0, {}) for a mask of {} "
                   "words",
                   t, i, idx[i], 32 * words, words);
    }
  }
  for (std::int64_t t = 0; t < n; ++t) {
    const std::int32_t* idx = selected.row<std::int32_t>(t);
    auto* row = reinterpret_cast<std::uint32_t*>(mask.row<std::int32_t>(t));
    std::fill_n(row, words, 0u);
    for (std::int64_t i = 0; i < k; ++i) {
      if (idx[i] >= 0) row[idx[i] / 32] |= 1u << (idx[i] % 32);
    }
  }
}

void sparse_mla(const TensorView& q, const TensorView& kv_cache, const TensorView& indices,
                float scale, const TensorView& out, const TensorView& lse,
                const TensorView& topk_length) {
  const std::int64_t n = q.size(0), heads = q.size(1), d_qk = q.size(2), d_v = out.size(2);
#pragma omp parallel for schedule(dynamic, 1)
  for (std::int64_t t = 0; t < n; ++t) {
    const std::int32_t* idx = indices.row<std::int32_t>(t);
    const std::int64_t topk = topk_length.empty()
                                  ? indices.size(1)
                                  : topk_length.ptr<std::int32_t>()[t * topk_length.stride(0)];
    std::vector<std::int32_t> slots;
    slots.reserve(topk);
    for (std::int64_t i = 0; i < topk; ++i) {
      if (idx[i] >= 0) slots.push_back(idx[i]);
    }
    const std::int64_t m = static_cast<std::int64_t>(slots.size());
    std::vector<float> qt(heads * d_qk), kv(std::max<std::int64_t>(m, 1) * d_qk), s(heads * m),
        o(heads * d_v, 0.0f);
    for (std::int64_t h = 0; h < heads; ++h) {
      widen(q.ptr<bf16>() + t * q.stride(0) + h * q.stride(1), qt.data() + h * d_qk, d_qk);
    }
    for (std::int64_t j = 0; j < m; ++j) {
      if (kv_cache.dtype() == DType::bf16) {
        widen(kv_cache.row<bf16>(slots[j]), kv.data() + j * d_qk, d_qk);
      } else {
        widen_latent_fp8(kv_cache.row<std::uint8_t>(slots[j]), d_v, d_qk, kv.data() + j * d_qk);
      }
    }
    if (m > 0) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, heads, m, d_qk, scale, qt.data(), d_qk,
                  kv.data(), d_qk, 0.0f, s.data(), m);
      const std::vector<std::int64_t> visible(heads, m);
      masked_softmax_rows(s.data(), heads, m, visible.data(),
                          lse.empty() ? nullptr : lse.ptr<float>() + t * lse.stride(0), 1);
      // Values are the first d_v columns of the cached rows (c_kv).
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, heads, d_v, m, 1.0f, s.data(), m,
                  kv.data(), d_qk, 0.0f, o.data(), d_v);
    } else if (!lse.empty()) {
      std::fill_n(lse.ptr<float>() + t * lse.stride(0), heads,
                  -std::numeric_limits<float>::infinity());
    }
    for (std::int64_t h = 0; h < heads; ++h) {
      bf16* dst = out.ptr<bf16>() + t * out.stride(0) + h * out.stride(1);
      for (std::int64_t j = 0; j < d_v; ++j) dst[j] = bf16::from_float(o[h * d_v + j]);
    }
  }
}

}  // namespace dsattn::ops::cpu
