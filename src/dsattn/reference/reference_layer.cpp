#include "dsattn/reference/reference_layer.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "dsattn/core/checks.h"
#include "dsattn/ops/rope.h"

namespace dsattn::reference {

namespace {

// A row-major matrix of Real with optional bf16 rounding on store (the "plain" precision).
template <typename Real>
struct Mat {
  std::int64_t rows = 0, cols = 0;
  std::vector<Real> v;
  Mat(std::int64_t r, std::int64_t c) : rows(r), cols(c), v(std::size_t(r * c), Real(0)) {}
  Real& at(std::int64_t r, std::int64_t c) { return v[r * cols + c]; }
  Real at(std::int64_t r, std::int64_t c) const { return v[r * cols + c]; }
};

template <typename Real>
struct Arith {
  bool round;
  Real store(Real x) const {
    return round ? static_cast<Real>(bf16::from_float(static_cast<float>(x)).to_float()) : x;
  }
  void store_all(Mat<Real>& m) const {
    for (Real& x : m.v) x = store(x);
  }
};

template <typename Real>
Mat<Real> from_tensor(const TensorView& t) {
  check_dtype(t, "tensor", DType::bf16);
  Mat<Real> m(t.size(0), t.ndim() > 1 ? t.size(1) : 1);
  for (std::int64_t r = 0; r < m.rows; ++r) {
    for (std::int64_t c = 0; c < m.cols; ++c) {
      m.at(r, c) =
          static_cast<Real>(t.ptr<bf16>()[r * (t.ndim() > 1 ? t.stride(0) : 1) + c].to_float());
    }
  }
  return m;
}

// y = x · wᵀ for w [out, in].
template <typename Real>
Mat<Real> linear(const Mat<Real>& x, const Mat<Real>& w, const Arith<Real>& a) {
  Mat<Real> y(x.rows, w.rows);
  for (std::int64_t r = 0; r < x.rows; ++r) {
    for (std::int64_t o = 0; o < w.rows; ++o) {
      Real acc = 0;
      for (std::int64_t i = 0; i < x.cols; ++i) acc += x.at(r, i) * w.at(o, i);
      y.at(r, o) = a.store(acc);
    }
  }
  return y;
}

// RMSNorm of columns [c0, c0 + n) of each row, in place.
template <typename Real>
void rms_norm(Mat<Real>& x, std::int64_t c0, std::int64_t n, const Mat<Real>& w, double eps,
              const Arith<Real>& a) {
  for (std::int64_t r = 0; r < x.rows; ++r) {
    Real ss = 0;
    for (std::int64_t j = 0; j < n; ++j) ss += x.at(r, c0 + j) * x.at(r, c0 + j);
    const Real inv = Real(1) / std::sqrt(ss / Real(n) + Real(eps));
    for (std::int64_t j = 0; j < n; ++j) x.at(r, c0 + j) = a.store(x.at(r, c0 + j) * inv * w.v[j]);
  }
}

template <typename Real>
void layer_norm(Mat<Real>& x, const Mat<Real>& w, const Mat<Real>& b, double eps,
                const Arith<Real>& a) {
  for (std::int64_t r = 0; r < x.rows; ++r) {
    Real mean = 0, var = 0;
    for (std::int64_t j = 0; j < x.cols; ++j) mean += x.at(r, j);
    mean /= Real(x.cols);
    for (std::int64_t j = 0; j < x.cols; ++j) var += (x.at(r, j) - mean) * (x.at(r, j) - mean);
    const Real inv = Real(1) / std::sqrt(var / Real(x.cols) + Real(eps));
    for (std::int64_t j = 0; j < x.cols; ++j) {
      x.at(r, j) = a.store((x.at(r, j) - mean) * inv * w.v[j] + b.v[j]);
    }
  }
}

// Rotates columns [c0, c0 + d) of row r by its position; interleaved or halves pairing.
template <typename Real>
void rope(Mat<Real>& x, std::int64_t r, std::int64_t c0, std::int64_t position,
          const ops::RopeTable& t, bool interleaved, const Arith<Real>& a) {
  const std::int64_t pairs = static_cast<std::int64_t>(t.inv_freq.size());
  for (std::int64_t i = 0; i < pairs; ++i) {
    const double angle = static_cast<double>(position) * t.inv_freq[i];
    const Real cs = static_cast<Real>(std::cos(angle) * t.mscale);
    const Real sn = static_cast<Real>(std::sin(angle) * t.mscale);
    const std::int64_t i0 = c0 + (interleaved ? 2 * i : i);
    const std::int64_t i1 = c0 + (interleaved ? 2 * i + 1 : i + pairs);
    const Real x0 = x.at(r, i0), x1 = x.at(r, i1);
    x.at(r, i0) = a.store(x0 * cs - x1 * sn);
    x.at(r, i1) = a.store(x0 * sn + x1 * cs);
  }
}

// The FP8 latent cache's round trip of c_kv: per block of 128, scale = max(amax, 1e-4) / 448,
// e4m3(x / scale) · scale (stored back through `a`, so bf16 in the plain precision).
template <typename Real>
void fp8_round_trip(Real* x, std::int64_t n, const Arith<Real>& a) {
  for (std::int64_t b = 0; b < n / 128; ++b) {
    Real amax = 0;
    for (std::int64_t j = b * 128; j < (b + 1) * 128; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float scale = std::max(static_cast<float>(amax), 1e-4f) / fp8_e4m3::kMax;
    for (std::int64_t j = b * 128; j < (b + 1) * 128; ++j) {
      const float q = fp8_e4m3::from_float(static_cast<float>(x[j]) / scale).to_float();
      x[j] = a.store(static_cast<Real>(q) * static_cast<Real>(scale));
    }
  }
}

void check_request(const AttentionConfig& c, const Request& req) {
  check_shape(req.hidden, "request.hidden", {kAny, c.hidden_size});
  const std::int64_t ctx = req.hidden.size(0);
  if (req.extend_len <= 0 || req.extend_len > ctx) {
    fail("request.extend_len must be in [1, {}], got {}", ctx, req.extend_len);
  }
  if (req.fp8_latent && c.kv_lora_rank % 128 != 0) {
    fail("request.fp8_latent needs kv_lora_rank to be a multiple of 128, got {}", c.kv_lora_rank);
  }
  if (!req.allowed_keys.empty() &&
      static_cast<std::int64_t>(req.allowed_keys.size()) != req.extend_len) {
    fail("request.allowed_keys must have {} lists (one per query) or none, got {}", req.extend_len,
         req.allowed_keys.size());
  }
}

template <typename Real>
std::vector<double> attention_impl(const AttentionConfig& c, const LayerWeights& w,
                                   const Request& req, bool round) {
  const Arith<Real> a{round};
  check_request(c, req);
  const std::int64_t ctx = req.hidden.size(0), n_q = req.extend_len, first = ctx - n_q;
  const std::int64_t H = c.num_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim,
                     dqk = c.qk_head_dim(), dv = c.v_head_dim, rank = c.kv_lora_rank;
  const ops::RopeTable table = ops::RopeTable::from_config(c, dr);

  const Mat<Real> x = from_tensor<Real>(req.hidden);
  // Queries of the new rows.
  Mat<Real> xq(n_q, c.hidden_size);
  std::copy(x.v.begin() + first * c.hidden_size, x.v.end(), xq.v.begin());
  Mat<Real> cq = linear(xq, from_tensor<Real>(w.q_a_proj), a);
  rms_norm(cq, 0, c.q_lora_rank, from_tensor<Real>(w.q_a_layernorm), c.rms_norm_eps, a);
  Mat<Real> q = linear(cq, from_tensor<Real>(w.q_b_proj), a);  // [n_q, H * dqk]
  Mat<Real> q3(n_q * H, dqk);
  q3.v = q.v;
  for (std::int64_t t = 0; t < n_q; ++t) {
    for (std::int64_t h = 0; h < H; ++h) rope(q3, t * H + h, dn, first + t, table, true, a);
  }
  // Latent of every position, then per-head keys and values.
  Mat<Real> kv_a = linear(x, from_tensor<Real>(w.kv_a_proj_with_mqa), a);  // [ctx, rank + dr]
  rms_norm(kv_a, 0, rank, from_tensor<Real>(w.kv_a_layernorm), c.rms_norm_eps, a);
  for (std::int64_t s = 0; s < ctx; ++s) rope(kv_a, s, rank, s, table, true, a);
  Mat<Real> c_kv(ctx, rank);
  for (std::int64_t s = 0; s < ctx; ++s) {
    for (std::int64_t j = 0; j < rank; ++j) c_kv.at(s, j) = kv_a.at(s, j);
    if (req.fp8_latent) fp8_round_trip(&c_kv.at(s, 0), rank, a);
  }
  const Mat<Real> kv = linear(c_kv, from_tensor<Real>(w.kv_b_proj), a);  // [ctx, H * (dn + dv)]

  const Real scale = static_cast<Real>(c.softmax_scale());
  Mat<Real> o(n_q, H * dv);
  std::vector<Real> s_buf;
  for (std::int64_t t = 0; t < n_q; ++t) {
    std::vector<std::int32_t> keys;
    if (req.allowed_keys.empty()) {
      for (std::int64_t s = 0; s <= first + t; ++s) keys.push_back(static_cast<std::int32_t>(s));
    } else {
      for (std::int32_t s : req.allowed_keys[t]) {
        if (s < 0 || s > first + t)
          fail("allowed key {} is not causal for query position {}", s, first + t);
        keys.push_back(s);
      }
    }
    for (std::int64_t h = 0; h < H; ++h) {
      s_buf.assign(keys.size(), Real(0));
      Real max_s = -std::numeric_limits<Real>::infinity();
      for (std::size_t j = 0; j < keys.size(); ++j) {
        const std::int64_t s = keys[j];
        Real dot = 0;
        for (std::int64_t i = 0; i < dn; ++i) {
          dot += q3.at(t * H + h, i) * kv.at(s, h * (dn + dv) + i);
        }
        for (std::int64_t i = 0; i < dr; ++i)
          dot += q3.at(t * H + h, dn + i) * kv_a.at(s, rank + i);
        s_buf[j] = dot * scale;
        max_s = std::max(max_s, s_buf[j]);
      }
      Real sum = 0;
      for (Real& v : s_buf) {
        v = std::exp(v - max_s);
        sum += v;
      }
      for (std::int64_t i = 0; i < dv; ++i) {
        Real acc = 0;
        for (std::size_t j = 0; j < keys.size(); ++j) {
          acc += s_buf[j] * kv.at(keys[j], h * (dn + dv) + dn + i);
        }
        o.at(t, h * dv + i) = a.store(keys.empty() ? Real(0) : acc / sum);
      }
    }
  }
  const Mat<Real> y = linear(o, from_tensor<Real>(w.o_proj), a);
  return std::vector<double>(y.v.begin(), y.v.end());
}

}  // namespace

std::vector<double> attention_layer(const AttentionConfig& config, const LayerWeights& weights,
                                    const Request& request, Precision precision) {
  config.validate();
  weights.validate(config);
  if (precision == Precision::float64)
    return attention_impl<double>(config, weights, request, false);
  return attention_impl<float>(config, weights, request, true);
}

std::vector<double> indexer_scores(const AttentionConfig& c, const LayerWeights& w,
                                   const Request& req) {
  check_request(c, req);
  const Arith<double> a{false};
  const std::int64_t ctx = req.hidden.size(0), n_q = req.extend_len, first = ctx - n_q;
  const std::int64_t HI = c.index_n_heads, d = c.index_head_dim;
  const ops::RopeTable table = ops::RopeTable::from_config(c, c.qk_rope_head_dim);
  const Mat<double> x = from_tensor<double>(req.hidden);

  auto hadamard = [d](Mat<double>& m, std::int64_t r) {
    for (std::int64_t h = 1; h < d; h *= 2) {
      for (std::int64_t i = 0; i < d; i += 2 * h) {
        for (std::int64_t j = i; j < i + h; ++j) {
          const double u = m.at(r, j), v = m.at(r, j + h);
          m.at(r, j) = u + v;
          m.at(r, j + h) = u - v;
        }
      }
    }
    for (std::int64_t j = 0; j < d; ++j) m.at(r, j) /= std::sqrt(double(d));
  };

  Mat<double> k = linear(x, from_tensor<double>(w.indexer_wk), a);  // [ctx, d]
  layer_norm(k, from_tensor<double>(w.indexer_k_norm), from_tensor<double>(w.indexer_k_norm_bias),
             c.index_layer_norm_eps, a);
  for (std::int64_t s = 0; s < ctx; ++s) {
    rope(k, s, 0, s, table, c.indexer_rope_interleave, a);
    hadamard(k, s);
  }
  Mat<double> xq(n_q, c.hidden_size);
  std::copy(x.v.begin() + first * c.hidden_size, x.v.end(), xq.v.begin());
  Mat<double> cq = linear(xq, from_tensor<double>(w.q_a_proj), a);
  rms_norm(cq, 0, c.q_lora_rank, from_tensor<double>(w.q_a_layernorm), c.rms_norm_eps, a);
  const Mat<double> qi = linear(cq, from_tensor<double>(w.indexer_wq_b), a);  // [n_q, HI * d]
  Mat<double> q3(n_q * HI, d);
  q3.v = qi.v;
  for (std::int64_t t = 0; t < n_q; ++t) {
    for (std::int64_t h = 0; h < HI; ++h) {
      rope(q3, t * HI + h, 0, first + t, table, c.indexer_rope_interleave, a);
      hadamard(q3, t * HI + h);
    }
  }
  const Mat<double> wts = linear(xq, from_tensor<double>(w.indexer_weights_proj), a);  // [n_q, HI]
  const double wscale = 1.0 / std::sqrt(double(HI)) / std::sqrt(double(d));
  std::vector<double> scores(std::size_t(n_q * ctx), -std::numeric_limits<double>::infinity());
  for (std::int64_t t = 0; t < n_q; ++t) {
    for (std::int64_t s = 0; s <= first + t; ++s) {
      double acc = 0;
      for (std::int64_t h = 0; h < HI; ++h) {
        double dot = 0;
        for (std::int64_t j = 0; j < d; ++j) dot += q3.at(t * HI + h, j) * k.at(s, j);
        acc += wts.at(t, h) * wscale * std::max(dot, 0.0);
      }
      scores[t * ctx + s] = acc;
    }
  }
  return scores;
}

}  // namespace dsattn::reference
