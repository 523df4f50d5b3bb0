// Masked MHA by definition, for the tests of mha_varlen_causal's key mask: each query row's
// softmax over the keys it sees causally (bottom-right alignment) and selects in its bit words,
// computed in T (double for the reference, float for the plain same-precision yardstick).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "dsattn/core/tensor.h"
#include "ops/op_test_util.h"

namespace dsattn::test {

struct MaskedAttentionInputs {
  std::vector<double> q, k, v;  // [total_q, H, d_qk], [total_k, H, d_qk], [total_k, H, d_v]
  std::vector<std::int32_t> cu_q, cu_k;
  std::vector<std::uint32_t> mask;  // [total_q, words]
  std::int64_t heads = 0, d_qk = 0, d_v = 0, words = 0;
  double scale = 1;
};

// Random bit words [rows, words], about `density` of the bits set; rows r with r % empty_every
// == 0 select nothing (empty_every 0: none).
inline Tensor random_key_mask(std::int64_t rows, std::int64_t words, double density, unsigned seed,
                              std::int64_t empty_every = 0) {
  Tensor mask = Tensor::empty({rows, words}, DType::i32);
  std::mt19937 rng(seed);
  std::bernoulli_distribution bit(density);
  for (std::int64_t r = 0; r < rows; ++r) {
    const bool empty = empty_every > 0 && r % empty_every == 0;
    for (std::int64_t w = 0; w < words; ++w) {
      std::uint32_t word = 0;
      for (int b = 0; b < 32; ++b) word |= (!empty && bit(rng)) ? 1u << b : 0u;
      std::memcpy(mask.ptr<std::int32_t>() + r * words + w, &word, 4);
    }
  }
  return mask;
}

// The inputs of mha_varlen_causal with a key mask, read out as doubles.
inline MaskedAttentionInputs masked_attention_inputs(const TensorView& q, const TensorView& k,
                                                     const TensorView& v,
                                                     const std::vector<std::int32_t>& cu_q,
                                                     const std::vector<std::int32_t>& cu_k,
                                                     const Tensor& mask, double scale) {
  MaskedAttentionInputs in;
  in.q = read_doubles(q);
  in.k = read_doubles(k);
  in.v = read_doubles(v);
  in.cu_q = cu_q;
  in.cu_k = cu_k;
  in.heads = q.size(1);
  in.d_qk = q.size(2);
  in.d_v = v.size(2);
  in.words = mask.size(1);
  in.mask.resize(static_cast<std::size_t>(mask.numel()));
  std::memcpy(in.mask.data(), mask.ptr<std::int32_t>(), in.mask.size() * 4);
  in.scale = scale;
  return in;
}

// Whether row `row` selects key j of its request.
inline bool row_selects(const MaskedAttentionInputs& in, std::int64_t row, std::int64_t j) {
  return j / 32 < in.words &&
         ((in.mask[static_cast<std::size_t>(row * in.words + j / 32)] >> (j % 32)) & 1u) != 0;
}

// out: [total_q, H, d_v]; lse: [total_q, H] (-inf, and zeros in out, for a row that sees no key).
// With round_output, outputs are rounded to bf16 as a same-precision kernel stores them.
template <class T>
void masked_attention(const MaskedAttentionInputs& in, std::vector<double>& out,
                      std::vector<double>& lse, bool round_output) {
  const std::int64_t H = in.heads, dq = in.d_qk, dv = in.d_v;
  const std::int64_t total_q = in.cu_q.back();
  out.assign(static_cast<std::size_t>(total_q * H * dv), 0.0);
  lse.assign(static_cast<std::size_t>(total_q * H), -INFINITY);
  const auto round_bf16 = [](double x) {
    const float f = static_cast<float>(x);
    std::uint32_t bits;
    std::memcpy(&bits, &f, 4);
    bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
    float r;
    std::memcpy(&r, &bits, 4);
    return static_cast<double>(r);
  };
  for (std::size_t b = 0; b + 1 < in.cu_q.size(); ++b) {
    const std::int64_t q0 = in.cu_q[b], nq = in.cu_q[b + 1] - q0;
    const std::int64_t k0 = in.cu_k[b], nk = in.cu_k[b + 1] - k0;
    for (std::int64_t i = 0; i < nq; ++i) {
      const std::int64_t row = q0 + i;
      std::vector<std::int64_t> keys;
      for (std::int64_t j = 0; j <= nk - nq + i; ++j) {
        if (row_selects(in, row, j)) keys.push_back(j);
      }
      if (keys.empty()) continue;
      for (std::int64_t h = 0; h < H; ++h) {
        std::vector<T> logits;
        for (std::int64_t j : keys) {
          T dot = 0;
          for (std::int64_t d = 0; d < dq; ++d) {
            dot += static_cast<T>(in.q[static_cast<std::size_t>((row * H + h) * dq + d)]) *
                   static_cast<T>(in.k[static_cast<std::size_t>(((k0 + j) * H + h) * dq + d)]);
          }
          logits.push_back(dot * static_cast<T>(in.scale));
        }
        const T mx = *std::max_element(logits.begin(), logits.end());
        T sum = 0;
        for (T& x : logits) sum += (x = std::exp(x - mx));
        lse[static_cast<std::size_t>(row * H + h)] = static_cast<double>(mx + std::log(sum));
        for (std::int64_t c = 0; c < dv; ++c) {
          T acc = 0;
          for (std::size_t x = 0; x < keys.size(); ++x) {
            acc +=
                logits[x] / sum *
                static_cast<T>(in.v[static_cast<std::size_t>(((k0 + keys[x]) * H + h) * dv + c)]);
          }
          const double o = static_cast<double>(acc);
          out[static_cast<std::size_t>((row * H + h) * dv + c)] = round_output ? round_bf16(o) : o;
        }
      }
    }
  }
}

}  // namespace dsattn::test
