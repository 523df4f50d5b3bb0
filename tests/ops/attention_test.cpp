// The two attention cores against float64 softmax attention: dense varlen causal (MHA form, with
// a cached prefix) and sparse attention over index lists (MLA form), from a bf16 or an FP8
// latent cache.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/ops/attention.h"
#include "dsattn/ops/latent_fp8.h"
#include "op_test_util.h"

namespace dsattn::test {
namespace {

// softmax(logits) · values for one query row, in double and in plain f32 (rounded to bf16).
// values(j, c) is value column c of key j. When lse_ref / lse_plain are given they receive the
// row's log-sum-exp in double and in f32.
template <typename Values>
void softmax_row(const std::vector<double>& logits, const std::vector<float>& logits_f,
                 std::int64_t d_v, Values values, double* ref, double* plain,
                 double* lse_ref = nullptr, double* lse_plain = nullptr) {
  const std::size_t m = logits.size();
  if (m == 0) {
    std::fill_n(ref, d_v, 0.0);
    std::fill_n(plain, d_v, 0.0);
    if (lse_ref != nullptr) *lse_ref = *lse_plain = -INFINITY;
    return;
  }
  const double mx = *std::max_element(logits.begin(), logits.end());
  const float mx_f = *std::max_element(logits_f.begin(), logits_f.end());
  std::vector<double> p(m);
  std::vector<float> p_f(m);
  double sum = 0;
  float sum_f = 0;
  for (std::size_t j = 0; j < m; ++j) {
    p[j] = std::exp(logits[j] - mx);
    p_f[j] = std::exp(logits_f[j] - mx_f);
    sum += p[j];
    sum_f += p_f[j];
  }
  for (std::int64_t c = 0; c < d_v; ++c) {
    double acc = 0;
    float acc_f = 0;
    for (std::size_t j = 0; j < m; ++j) {
      acc += p[j] * values(j, c);
      acc_f += p_f[j] / sum_f * static_cast<float>(values(j, c));
    }
    ref[c] = acc / sum;
    plain[c] = round_bf16(acc_f);
  }
  if (lse_ref != nullptr) {
    *lse_ref = mx + std::log(sum);
    *lse_plain = mx_f + std::log(sum_f);
  }
}

// ---------------------------------------------------------------------------------------------
// mha_varlen_causal

struct MhaCase {
  const char* name;
  std::int64_t heads, d_qk, d_v;
  std::vector<std::pair<std::int64_t, std::int64_t>> requests;  // (query rows, key rows)
  bool strided;  // v (and out) are column windows of wider tensors, as the layer passes them
  std::int64_t max_q_slack = 0;  // max_q passed as the largest request's n_q plus this
};

void PrintTo(const MhaCase& c, std::ostream* os) { *os << c.name; }

class MhaVarlenCausalTest : public ::testing::TestWithParam<MhaCase> {};

TEST_P(MhaVarlenCausalTest, MatchesFloat64CausalAttention) {
  const MhaCase c = GetParam();
  const std::int64_t batch = static_cast<std::int64_t>(c.requests.size());
  Tensor cu_q = Tensor::empty({batch + 1}, DType::i32);
  Tensor cu_k = Tensor::empty({batch + 1}, DType::i32);
  cu_q.ptr<std::int32_t>()[0] = cu_k.ptr<std::int32_t>()[0] = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    cu_q.ptr<std::int32_t>()[b + 1] =
        cu_q.ptr<std::int32_t>()[b] + static_cast<std::int32_t>(c.requests[b].first);
    cu_k.ptr<std::int32_t>()[b + 1] =
        cu_k.ptr<std::int32_t>()[b] + static_cast<std::int32_t>(c.requests[b].second);
  }
  const std::int64_t total_q = cu_q.ptr<std::int32_t>()[batch];
  const std::int64_t total_k = cu_k.ptr<std::int32_t>()[batch];
  const std::int64_t H = c.heads, dq = c.d_qk, dv = c.d_v;
  std::int64_t max_q = 0;
  for (const auto& [nq, nk] : c.requests) max_q = std::max(max_q, nq);
  max_q += c.max_q_slack;

  Tensor q = random_tensor({total_q, H, dq}, DType::bf16, 100, dq, 2.0);
  Tensor k = random_tensor({total_k, H, dq}, DType::bf16, 101, dq, 2.0);
  // The layer's kv_b_proj output per head is [k_nope (128), v (128)]: v is the second half.
  const std::int64_t v_pad = c.strided ? 128 : 0;
  Tensor v_backing = random_tensor({total_k, H, v_pad + dv}, DType::bf16, 102, dv);
  const TensorView v = v_backing.view().slice(2, v_pad, v_pad + dv);
  const std::int64_t o_pad = c.strided ? 3 : 0;
  Tensor out_backing = random_tensor({total_q, H, dv + o_pad}, DType::bf16, 103, dv);
  const TensorView out = out_backing.view().slice(2, o_pad, o_pad + dv);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dq));

  const std::vector<double> qv = read_doubles(q), kv = read_doubles(k), vv = read_doubles(v);
  std::vector<double> ref(total_q * H * dv), plain(ref.size());
  std::vector<double> lse_ref(total_q * H), lse_plain(lse_ref.size());
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t q0 = cu_q.ptr<std::int32_t>()[b], k0 = cu_k.ptr<std::int32_t>()[b];
    const std::int64_t nq = c.requests[b].first, nk = c.requests[b].second;
    for (std::int64_t i = 0; i < nq; ++i) {
      for (std::int64_t h = 0; h < H; ++h) {
        // Bottom-right alignment: query i is token nk - nq + i of the request.
        std::vector<double> logits;
        std::vector<float> logits_f;
        for (std::int64_t j = 0; j <= nk - nq + i; ++j) {
          double dot = 0;
          float dot_f = 0;
          for (std::int64_t d = 0; d < dq; ++d) {
            const double a = qv[((q0 + i) * H + h) * dq + d], x = kv[((k0 + j) * H + h) * dq + d];
            dot += a * x;
            dot_f += static_cast<float>(a) * static_cast<float>(x);
          }
          logits.push_back(dot * scale);
          logits_f.push_back(dot_f * scale);
        }
        const auto values = [&](std::size_t j, std::int64_t col) {
          return vv[((k0 + static_cast<std::int64_t>(j)) * H + h) * dv + col];
        };
        const std::int64_t o = ((q0 + i) * H + h) * dv;
        const std::int64_t row = (q0 + i) * H + h;
        softmax_row(logits, logits_f, dv, values, &ref[o], &plain[o], &lse_ref[row],
                    &lse_plain[row]);
      }
    }
  }

  poison(out);
  const std::vector<std::uint8_t> before = snapshot(out_backing);
  ops::mha_varlen_causal(q, k, v, cu_q, cu_k, max_q, scale, out);
  const std::vector<std::int64_t> shape{total_q, H, dv};
  EXPECT_TRUE(within_tolerance(read_doubles(out), ref, plain, 1e-5, shape));
  EXPECT_TRUE(only_view_written(out_backing, before, out));

  // With the log-sum-exp asked for (rows of a wider tensor): the same output, and each row's
  // and head's ln Σ exp(scale · q·k) over its visible keys.
  Tensor lse_backing = random_tensor({total_q, H + 2}, DType::f32, 104, 1);
  const TensorView lse = lse_backing.view().slice(1, 1, 1 + H);
  const std::vector<std::uint8_t> lse_before = snapshot(lse_backing);
  const std::vector<std::uint8_t> out_first = snapshot(out_backing);
  ops::mha_varlen_causal(q, k, v, cu_q, cu_k, max_q, scale, out, lse);
  EXPECT_EQ(snapshot(out_backing), out_first);
  const std::vector<std::int64_t> lse_shape{total_q, H};
  EXPECT_TRUE(within_tolerance(read_doubles(lse), lse_ref, lse_plain, 1e-5, lse_shape));
  EXPECT_TRUE(only_view_written(lse_backing, lse_before, lse));
}

const MhaCase kMhaCases[] = {
    // A decode row over a prefix, a fresh prefill, a chunk over a long prefix, and a request
    // whose keys are all prefix with no new query.
    {"Model192x128_MixedPrefix", 4, 192, 128, {{1, 37}, {5, 5}, {64, 100}, {0, 3}}, true},
    {"Model192x128_NoPrefix", 2, 192, 128, {{64, 64}, {17, 17}}, false},
    {"Decode192x128", 3, 192, 128, {{1, 200}, {1, 1}, {1, 50}}, true},
    // max_q only has to bound every request's query count.
    {"Odd13x7_LooseMaxQ", 3, 13, 7, {{3, 9}, {1, 1}, {4, 4}, {6, 11}}, true, 9},
};
INSTANTIATE_TEST_SUITE_P(Shapes, MhaVarlenCausalTest, ::testing::ValuesIn(kMhaCases),
                         [](const auto& info) { return std::string(info.param.name); });

// A NaN in a key or value reaches exactly the rows that see that key: the others equal, bit for
// bit, what they give with the NaN replaced by a number (the same operations either way).
TEST(MhaVarlenCausalTest, NanInAKeyOrValueNeverReachesRowsThatCannotSeeIt) {
  const std::int64_t H = 2, dq = 24, dv = 16, n = 150, bad = 70;  // rows 64.. form a second block
  Tensor q = random_tensor({n, H, dq}, DType::bf16, 111, 1);
  Tensor cu = i32_tensor({0, static_cast<std::int32_t>(n)});
  for (const bool in_value : {false, true}) {
    SCOPED_TRACE(in_value ? "NaN in a value" : "NaN in a key");
    Tensor k = random_tensor({n, H, dq}, DType::bf16, 111, 2);
    Tensor v = random_tensor({n, H, dv}, DType::bf16, 111, 3);
    Tensor& poisoned_input = in_value ? v : k;
    const std::int64_t width = poisoned_input.size(2);
    Tensor clean = Tensor::empty({n, H, dv}, DType::bf16);
    Tensor dirty = Tensor::empty({n, H, dv}, DType::bf16);
    ops::mha_varlen_causal(q, k, v, cu, cu, n, 0.2f, clean);
    for (std::int64_t h = 0; h < H; ++h) {
      poisoned_input.ptr<bf16>()[(bad * H + h) * width + 3] =
          bf16::from_float(std::numeric_limits<float>::quiet_NaN());
    }
    ops::mha_varlen_causal(q, k, v, cu, cu, n, 0.2f, dirty);
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t e = 0; e < H * dv; ++e) {
        const float x = dirty.ptr<bf16>()[i * H * dv + e].to_float();
        if (i < bad) {
          ASSERT_EQ(std::memcmp(&dirty.ptr<bf16>()[i * H * dv + e],
                                &clean.ptr<bf16>()[i * H * dv + e], sizeof(bf16)),
                    0)
              << "row " << i << " element " << e << " cannot see key " << bad << " but changed";
        } else if (!in_value || e % dv == 3) {  // a NaN key spoils the softmax of its head
          ASSERT_TRUE(std::isnan(x)) << "row " << i << " element " << e << " sees key " << bad;
        }
      }
    }
  }
}

TEST(MhaVarlenCausalTest, RejectsBadArguments) {
  const std::int64_t H = 2, dq = 16, dv = 8;
  // Two requests: (2 queries, 3 keys) and (3 queries, 3 keys).
  Tensor q = random_tensor({5, H, dq}, DType::bf16, 110, 1);
  Tensor k = random_tensor({6, H, dq}, DType::bf16, 110, 2);
  Tensor v = random_tensor({6, H, dv}, DType::bf16, 110, 3);
  Tensor out = random_tensor({5, H, dv}, DType::bf16, 110, 4);
  Tensor cu_q = i32_tensor({0, 2, 5}), cu_k = i32_tensor({0, 3, 6});
  Tensor q_f32 = random_tensor({5, H, dq}, DType::f32, 110, 5);
  Tensor k_heads = random_tensor({6, H + 1, dq}, DType::bf16, 110, 6);
  Tensor v_rows = random_tensor({7, H, dv}, DType::bf16, 110, 7);
  Tensor out_dv = random_tensor({5, H, dv + 1}, DType::bf16, 110, 8);
  Tensor v_wide = random_tensor({6, H, 2 * dv}, DType::bf16, 110, 9);
  const TensorView v_every_other = strided_view(v_wide, {6, H, dv}, {2 * H * dv, 2 * dv, 2});
  const auto mha = [&](const TensorView& qv, const TensorView& kv, const TensorView& vv,
                       const TensorView& cq, const TensorView& ck, const TensorView& o) {
    ops::mha_varlen_causal(qv, kv, vv, cq, ck, 3, 0.25f, o);
  };

  EXPECT_TRUE(
      rejects([&] { mha(q_f32, k, v, cu_q, cu_k, out); }, "q must have dtype bf16", {watch(out)}));
  EXPECT_TRUE(rejects([&] { mha(q, k_heads, v, cu_q, cu_k, out); }, "k must have shape [*, 2, 16]",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { mha(q, k, v_rows, cu_q, cu_k, out); }, "v must have shape [6, 2, *]",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { mha(q, k, v, cu_q, cu_k, out_dv); }, "out must have shape [5, 2, 8]",
                      {watch(out_dv)}));
  EXPECT_TRUE(rejects([&] { mha(q, k, v_every_other, cu_q, cu_k, out); },
                      "v must have a unit stride", {watch(out)}));
  Tensor cu_q_total = i32_tensor({0, 2, 4});
  EXPECT_TRUE(
      rejects([&] { mha(q, k, v, cu_q_total, cu_k, out); }, "cu_q[2] must equal", {watch(out)}));
  Tensor cu_q_start = i32_tensor({1, 2, 5});
  EXPECT_TRUE(
      rejects([&] { mha(q, k, v, cu_q_start, cu_k, out); }, "cu_q[0] must be 0", {watch(out)}));
  Tensor cu_k_down = i32_tensor({0, 4, 3, 6});
  Tensor cu_q_three = i32_tensor({0, 2, 2, 5});
  EXPECT_TRUE(rejects([&] { mha(q, k, v, cu_q_three, cu_k_down, out); },
                      "cu_k must be non-decreasing", {watch(out)}));
  Tensor cu_k_batch = i32_tensor({0, 6});
  EXPECT_TRUE(rejects([&] { mha(q, k, v, cu_q, cu_k_batch, out); }, "cu_k must have shape [3]",
                      {watch(out)}));
  // Request 1 would have 3 queries but 2 keys: the keys must include the queries.
  Tensor cu_k_short = i32_tensor({0, 4, 6});
  EXPECT_TRUE(rejects([&] { mha(q, k, v, cu_q, cu_k_short, out); },
                      "request 1 has 3 query rows (cu_q) but 2 keys", {watch(out)}));
  Tensor cu_f32 = random_tensor({3}, DType::f32, 110, 10);
  EXPECT_TRUE(
      rejects([&] { mha(q, k, v, cu_f32, cu_k, out); }, "cu_q must have dtype i32", {watch(out)}));
  EXPECT_TRUE(
      rejects([&] { mha(q, k, v, cu_q, on_cuda(cu_k), out); }, "cu_k is on cuda:0", {watch(out)}));
  EXPECT_TRUE(
      rejects([&] { mha(q, on_cuda(k), v, cu_q, cu_k, out); }, "k is on cuda:0", {watch(out)}));
  // max_q must bound every request's query count (request 1 has 3).
  EXPECT_TRUE(rejects([&] { ops::mha_varlen_causal(q, k, v, cu_q, cu_k, 2, 0.25f, out); },
                      "max_q is 2 but request 1 has 3 query rows", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::mha_varlen_causal(q, k, v, cu_q, cu_k, -1, 0.25f, out); },
                      "max_q must be >= 0", {watch(out)}));
  // The optional log-sum-exp: f32, [total_q, heads], heads contiguous, on the op's device.
  Tensor lse_bf16 = random_tensor({5, 2}, DType::bf16, 110, 11);
  EXPECT_TRUE(rejects([&] { ops::mha_varlen_causal(q, k, v, cu_q, cu_k, 3, 0.25f, out, lse_bf16); },
                      "lse must have dtype f32", {watch(out), watch(lse_bf16)}));
  Tensor lse_rows = random_tensor({4, 2}, DType::f32, 110, 12);
  EXPECT_TRUE(rejects([&] { ops::mha_varlen_causal(q, k, v, cu_q, cu_k, 3, 0.25f, out, lse_rows); },
                      "lse must have shape [5, 2]", {watch(out), watch(lse_rows)}));
  Tensor lse_wide = random_tensor({5, 4}, DType::f32, 110, 13);
  const TensorView lse_strided = strided_view(lse_wide, {5, 2}, {4, 2});
  EXPECT_TRUE(
      rejects([&] { ops::mha_varlen_causal(q, k, v, cu_q, cu_k, 3, 0.25f, out, lse_strided); },
              "lse must have a unit stride", {watch(out), watch(lse_wide)}));
  Tensor lse = random_tensor({5, 2}, DType::f32, 110, 14);
  EXPECT_TRUE(
      rejects([&] { ops::mha_varlen_causal(q, k, v, cu_q, cu_k, 3, 0.25f, out, on_cuda(lse)); },
              "lse is on cuda:0", {watch(out)}));
}

TEST(MhaVarlenCausalTest, RefusesDeviceOffsetsWithoutReadingThem) {
  // cu_k claimed on a GPU next to host cu_q: its entries are device memory the host must not
  // read. Here they sit on a page that faults on any access.
  const std::int64_t H = 2, dq = 16, dv = 8;
  Tensor q = random_tensor({3, H, dq}, DType::bf16, 111, 1);
  Tensor k = random_tensor({5, H, dq}, DType::bf16, 111, 2);
  Tensor v = random_tensor({5, H, dv}, DType::bf16, 111, 3);
  Tensor out = random_tensor({3, H, dv}, DType::bf16, 111, 4);
  Tensor cu_q = i32_tensor({0, 1, 3});
  GuardedPages device_memory(1);
  const std::int32_t offsets[] = {0, 2, 5};
  std::memcpy(device_memory.page(0), offsets, sizeof(offsets));
  device_memory.protect(0);
  const TensorView cu_k(device_memory.page(0), DType::i32, Device::cuda(), {3});
  const auto call = [&] { ops::mha_varlen_causal(q, k, v, cu_q, cu_k, 2, 0.25f, out); };
  if (!runs_without_fault([&] { (void)rejects(call, "cu_k"); })) return;
  EXPECT_TRUE(rejects(call, "cu_k is on cuda:0", {watch(out)}));
}

// ---------------------------------------------------------------------------------------------
// sparse_mla

struct SparseCase {
  const char* name;
  std::int64_t n, heads, d_qk, d_v, num_slots, topk;
};

void PrintTo(const SparseCase& c, std::ostream* os) { *os << c.name; }

// Each row: distinct random slots with about a quarter of the entries -1. Row 1 has no valid
// index at all and row 2 exactly one.
Tensor random_indices(std::int64_t n, std::int64_t topk, std::int64_t num_slots,
                      std::mt19937& rng) {
  Tensor indices = Tensor::empty({n, topk}, DType::i32);
  std::vector<std::int32_t> all(num_slots);
  std::iota(all.begin(), all.end(), 0);
  std::bernoulli_distribution hole(0.25);
  for (std::int64_t t = 0; t < n; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    std::int32_t* row = indices.ptr<std::int32_t>() + t * topk;
    for (std::int64_t i = 0; i < topk; ++i) row[i] = hole(rng) ? -1 : all[i];
    if (t == 1) std::fill_n(row, topk, -1);
    if (t == 2) {
      std::fill_n(row, topk, -1);
      row[topk / 2] = all[0];
    }
  }
  return indices;
}

// Softmax attention of every query row (qv: [n, H, dq]) over the cached rows its indices name
// (kv: [num_slots, dq], values the first dv columns), in double and in plain f32.
void sparse_reference(const std::vector<double>& qv, const std::vector<double>& kv,
                      const Tensor& indices, std::int64_t H, std::int64_t dq, std::int64_t dv,
                      float scale, std::vector<double>& ref, std::vector<double>& plain,
                      std::vector<double>& lse_ref, std::vector<double>& lse_plain) {
  const std::int64_t n = indices.size(0), topk = indices.size(1);
  ref.assign(static_cast<std::size_t>(n * H * dv), 0.0);
  plain.assign(ref.size(), 0.0);
  lse_ref.assign(static_cast<std::size_t>(n * H), 0.0);
  lse_plain.assign(lse_ref.size(), 0.0);
  for (std::int64_t t = 0; t < n; ++t) {
    std::vector<std::int32_t> slots;
    for (std::int64_t i = 0; i < topk; ++i) {
      const std::int32_t s = indices.ptr<std::int32_t>()[t * topk + i];
      if (s >= 0) slots.push_back(s);
    }
    for (std::int64_t h = 0; h < H; ++h) {
      std::vector<double> logits;
      std::vector<float> logits_f;
      for (std::int32_t s : slots) {
        double dot = 0;
        float dot_f = 0;
        for (std::int64_t d = 0; d < dq; ++d) {
          const double a = qv[(t * H + h) * dq + d], x = kv[s * dq + d];
          dot += a * x;
          dot_f += static_cast<float>(a) * static_cast<float>(x);
        }
        logits.push_back(dot * scale);
        logits_f.push_back(dot_f * scale);
      }
      // Values are the first d_v columns of each cached row (c_kv).
      const auto values = [&](std::size_t j, std::int64_t col) { return kv[slots[j] * dq + col]; };
      softmax_row(logits, logits_f, dv, values, &ref[(t * H + h) * dv], &plain[(t * H + h) * dv],
                  &lse_ref[t * H + h], &lse_plain[t * H + h]);
    }
  }
}

// The output against the reference, and the two special rows of random_indices: no valid index
// gives zeros, one valid index gives exactly that cached row's values.
void expect_sparse_output(const std::vector<double>& got, const std::vector<double>& ref,
                          const std::vector<double>& plain, const std::vector<double>& kv,
                          const Tensor& indices, std::int64_t H, std::int64_t dq, std::int64_t dv) {
  const std::int64_t n = indices.size(0), topk = indices.size(1);
  EXPECT_TRUE(within_tolerance(got, ref, plain, 1e-5, std::vector<std::int64_t>{n, H, dv}));
  const std::int32_t only = indices.ptr<std::int32_t>()[2 * topk + topk / 2];
  for (std::int64_t h = 0; h < H; ++h) {
    for (std::int64_t d = 0; d < dv; ++d) {
      ASSERT_EQ(got[(1 * H + h) * dv + d], 0.0) << "row 1 has no index, head " << h;
      ASSERT_EQ(got[(2 * H + h) * dv + d], kv[only * dq + d]) << "row 2 has one index, head " << h;
    }
  }
}

class SparseMlaTest : public ::testing::TestWithParam<SparseCase> {};

TEST_P(SparseMlaTest, MatchesFloat64SoftmaxOverIndices) {
  const SparseCase c = GetParam();
  const std::int64_t H = c.heads, dq = c.d_qk, dv = c.d_v;
  std::mt19937 rng(static_cast<unsigned>(c.num_slots + c.topk));
  // q, the cache and out are windows of wider tensors (token and head strides free).
  Tensor q_backing = random_tensor({c.n, H, dq + 4}, DType::bf16, 120, dq, 1.0);
  const TensorView q = q_backing.view().slice(2, 4, 4 + dq);
  Tensor kv_backing = random_tensor({c.num_slots, dq + 8}, DType::bf16, 121, dq, 2.0);
  const TensorView kv_cache = kv_backing.view().slice(1, 0, dq);
  Tensor out_backing = random_tensor({c.n, H, dv + 2}, DType::bf16, 122, dv);
  const TensorView out = out_backing.view().slice(2, 1, 1 + dv);
  const Tensor indices = random_indices(c.n, c.topk, c.num_slots, rng);

  const std::vector<double> qv = read_doubles(q), kv = read_doubles(kv_cache);
  const float scale = 0.1352f;  // DeepSeek-V3.2's softmax scale with YaRN
  std::vector<double> ref, plain, lse_ref, lse_plain;
  sparse_reference(qv, kv, indices, H, dq, dv, scale, ref, plain, lse_ref, lse_plain);

  poison(out);
  const std::vector<std::uint8_t> before = snapshot(out_backing);
  ops::sparse_mla(q, kv_cache, indices, scale, out);
  expect_sparse_output(read_doubles(out), ref, plain, kv, indices, H, dq, dv);
  EXPECT_TRUE(only_view_written(out_backing, before, out));

  // Again with the log-sum-exp, into a window of a wider tensor: the same output, and each row's
  // and head's ln Σ exp(scale · q·k) (-inf for row 1, which has no valid index).
  Tensor lse_backing = random_tensor({c.n, H + 3}, DType::f32, 123, 1);
  const TensorView lse = lse_backing.view().slice(1, 2, 2 + H);
  const std::vector<std::uint8_t> lse_before = snapshot(lse_backing);
  const std::vector<double> first = read_doubles(out);
  poison(out);
  ops::sparse_mla(q, kv_cache, indices, scale, out, lse);
  EXPECT_EQ(read_doubles(out), first);
  const std::vector<std::int64_t> lse_shape{c.n, H};
  EXPECT_TRUE(within_tolerance(read_doubles(lse), lse_ref, lse_plain, 1e-5, lse_shape));
  EXPECT_TRUE(std::isinf(read_doubles(lse)[1 * H]) && read_doubles(lse)[1 * H] < 0);
  EXPECT_TRUE(only_view_written(lse_backing, lse_before, lse));

  // topk_length: row t reads its first lengths[t] entries, as the same lists cut there with -1.
  std::vector<std::int32_t> lengths(static_cast<std::size_t>(c.n));
  Tensor cut = indices.to(Device::cpu());
  for (std::int64_t t = 0; t < c.n; ++t) {
    lengths[t] = static_cast<std::int32_t>((t * 5 + 3) % (c.topk + 1));
    for (std::int64_t i = lengths[t]; i < c.topk; ++i) cut.ptr<std::int32_t>()[t * c.topk + i] = -1;
  }
  Tensor cut_out = Tensor::empty({c.n, H, dv}, DType::bf16), len_out = cut_out.to(Device::cpu());
  ops::sparse_mla(q, kv_cache, cut, scale, cut_out);
  ops::sparse_mla(q, kv_cache, indices, scale, len_out, {}, i32_tensor(lengths));
  EXPECT_EQ(read_doubles(len_out), read_doubles(cut_out));
}

const SparseCase kSparseCases[] = {
    // name, rows, heads, d_qk, d_v, cache slots, top-k
    {"Model576x512_H16", 6, 16, 576, 512, 300, 64},
    {"Model576x512_H4_LongList", 4, 4, 576, 512, 700, 512},
    {"Odd9x5", 5, 3, 9, 5, 20, 7},
    {"ValuesAreWholeRow9x9", 4, 2, 9, 9, 12, 5},
};
INSTANTIATE_TEST_SUITE_P(Shapes, SparseMlaTest, ::testing::ValuesIn(kSparseCases),
                         [](const auto& info) { return std::string(info.param.name); });

// sparse_mla over an FP8 latent cache (latent_fp8.h): rows of kv_lora_rank = d_v e4m3 codes, one
// f32 scale per 128 of them, then d_qk - d_v bf16 rope values.
struct SparseFp8Case {
  const char* name;
  std::int64_t n, heads, d_v, rope, num_slots, topk;
  std::int64_t row_pad;  // bytes between cache rows beyond the 656-style row
};

void PrintTo(const SparseFp8Case& c, std::ostream* os) { *os << c.name; }

class SparseMlaFp8Test : public ::testing::TestWithParam<SparseFp8Case> {};

TEST_P(SparseMlaFp8Test, MatchesFloat64OverDequantisedRows) {
  const SparseFp8Case c = GetParam();
  const std::int64_t H = c.heads, dv = c.d_v, dq = c.d_v + c.rope;
  const std::int64_t row_bytes = latent_fp8_bytes(dv, c.rope), blocks = dv / 128;
  std::mt19937 rng(static_cast<unsigned>(c.num_slots * 3 + c.topk));
  // Codes over the whole e4m3 range (NaN excluded), scales around a typical latent's amax / 448,
  // rope values from a random bf16 tensor.
  Tensor kv_backing = Tensor::empty({c.num_slots, row_bytes + c.row_pad}, DType::u8);
  poison(kv_backing);  // the padding between rows holds NaN codes
  const TensorView kv_cache = kv_backing.view().slice(1, 0, row_bytes);
  Tensor rope = random_tensor({c.num_slots, c.rope}, DType::bf16, 123, c.rope, 1.0);
  std::uniform_real_distribution<float> scale_dist(0.5f / 448, 4.0f / 448);
  std::vector<double> kv(static_cast<std::size_t>(c.num_slots * dq));
  for (std::int64_t s = 0; s < c.num_slots; ++s) {
    std::uint8_t* row = kv_cache.row<std::uint8_t>(s);
    for (std::int64_t b = 0; b < blocks; ++b) {
      const float sc = scale_dist(rng);
      std::memcpy(row + dv + 4 * b, &sc, 4);
      for (std::int64_t j = b * 128; j < (b + 1) * 128; ++j) {
        std::uint8_t code;
        do {
          code = static_cast<std::uint8_t>(rng());
        } while ((code & 0x7f) == 0x7f);
        row[j] = code;
        // As dequantize_latent_fp8: the f32 product, rounded to bf16.
        kv[s * dq + j] = round_bf16(static_cast<float>(decode_e4m3(code)) * sc);
      }
    }
    std::memcpy(row + dv + 4 * blocks, rope.ptr<bf16>() + s * c.rope, 2 * c.rope);
    for (std::int64_t j = 0; j < c.rope; ++j) {
      kv[s * dq + dv + j] = rope.ptr<bf16>()[s * c.rope + j].to_float();
    }
  }
  Tensor q_backing = random_tensor({c.n, H, dq + 2}, DType::bf16, 124, dq, 1.0);
  const TensorView q = q_backing.view().slice(2, 2, 2 + dq);
  Tensor out_backing = random_tensor({c.n, H, dv + 3}, DType::bf16, 125, dv);
  const TensorView out = out_backing.view().slice(2, 3, 3 + dv);
  const Tensor indices = random_indices(c.n, c.topk, c.num_slots, rng);

  const float scale = 0.1352f;
  std::vector<double> ref, plain, lse_ref, lse_plain;
  sparse_reference(read_doubles(q), kv, indices, H, dq, dv, scale, ref, plain, lse_ref, lse_plain);
  poison(out);
  const std::vector<std::uint8_t> before = snapshot(out_backing);
  const std::vector<std::uint8_t> cache_before = snapshot(kv_backing);
  ops::sparse_mla(q, kv_cache, indices, scale, out);
  const std::vector<double> got = read_doubles(out);
  expect_sparse_output(got, ref, plain, kv, indices, H, dq, dv);
  EXPECT_TRUE(only_view_written(out_backing, before, out));
  EXPECT_EQ(snapshot(kv_backing), cache_before) << "the cache is read only";

  // The same attention from a bf16 cache holding dequantize_latent_fp8's rows gives the same
  // bits: the FP8 path reads exactly those values.
  Tensor dequantised = Tensor::empty({c.num_slots, dq}, DType::bf16);
  ops::dequantize_latent_fp8(kv_cache, dv, dequantised);
  ASSERT_EQ(read_doubles(dequantised), kv) << "dequantize_latent_fp8 disagrees with the format";
  Tensor out_bf16 = Tensor::empty({c.n, H, dv}, DType::bf16);
  poison(out_bf16);
  ops::sparse_mla(q, dequantised, indices, scale, out_bf16);
  EXPECT_EQ(read_doubles(out_bf16), got);
}

const SparseFp8Case kSparseFp8Cases[] = {
    // name, rows, heads, d_v (kv_lora_rank), rope, cache slots, top-k, row padding
    {"Model656_H16", 6, 16, 512, 64, 300, 64, 0},
    {"Model656_H4_PaddedRows", 4, 4, 512, 64, 200, 96, 16},
    {"Small128Plus8_H3", 5, 3, 128, 8, 40, 9, 4},
    {"TwoBlocks256Plus64_H2", 4, 2, 256, 64, 60, 17, 0},
};
INSTANTIATE_TEST_SUITE_P(Shapes, SparseMlaFp8Test, ::testing::ValuesIn(kSparseFp8Cases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(SparseMlaTest, RejectsBadArguments) {
  const std::int64_t n = 3, H = 2, dq = 16, dv = 8, slots = 10, topk = 4;
  Tensor q = random_tensor({n, H, dq}, DType::bf16, 130, 1);
  Tensor kv = random_tensor({slots, dq}, DType::bf16, 130, 2);
  Tensor out = random_tensor({n, H, dv}, DType::bf16, 130, 3);
  Tensor idx = Tensor::empty({n, topk}, DType::i32);
  for (std::int64_t i = 0; i < n * topk; ++i) idx.ptr<std::int32_t>()[i] = i % 5 == 4 ? -1 : i % 9;
  Tensor idx_low = Tensor::empty({n, topk}, DType::i32);
  Tensor idx_high = Tensor::empty({n, topk}, DType::i32);
  for (std::int64_t i = 0; i < n * topk; ++i) {
    idx_low.ptr<std::int32_t>()[i] = i == 5 ? -2 : 0;
    idx_high.ptr<std::int32_t>()[i] = i == 7 ? slots : 1;
  }
  Tensor idx_rows = Tensor::empty({n + 1, topk}, DType::i32);
  Tensor idx_f32 = random_tensor({n, topk}, DType::f32, 130, 4);
  Tensor q_f32 = random_tensor({n, H, dq}, DType::f32, 130, 5);
  Tensor kv_width = random_tensor({slots, dq + 1}, DType::bf16, 130, 6);
  Tensor out_wide = random_tensor({n, H, dq + 1}, DType::bf16, 130, 7);
  Tensor out_heads = random_tensor({n, H + 1, dv}, DType::bf16, 130, 8);
  Tensor kv_wide = random_tensor({slots, 2 * dq}, DType::bf16, 130, 9);
  const TensorView kv_every_other = strided_view(kv_wide, {slots, dq}, {2 * dq, 2});
  const auto mla = [](const TensorView& qv, const TensorView& kvv, const TensorView& iv,
                      const TensorView& o) { ops::sparse_mla(qv, kvv, iv, 0.1f, o); };

  EXPECT_TRUE(rejects([&] { mla(q, kv, idx_low, out); }, "indices[1, 1] = -2", {watch(out)}));
  EXPECT_TRUE(rejects([&] { mla(q, kv, idx_high, out); }, "indices[1, 3] = 10", {watch(out)}));
  EXPECT_TRUE(
      rejects([&] { mla(q, kv, idx_rows, out); }, "indices must have shape [3, *]", {watch(out)}));
  EXPECT_TRUE(
      rejects([&] { mla(q, kv, idx_f32, out); }, "indices must have dtype i32", {watch(out)}));
  EXPECT_TRUE(rejects([&] { mla(q_f32, kv, idx, out); }, "q must have dtype bf16", {watch(out)}));
  EXPECT_TRUE(rejects([&] { mla(q, kv_width, idx, out); }, "kv_cache must have shape [*, 16]",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { mla(q, kv_every_other, idx, out); }, "kv_cache must have a unit stride",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { mla(q, kv, idx, out_wide); }, "out must have a value dim of at most 16",
                      {watch(out_wide)}));
  EXPECT_TRUE(rejects([&] { mla(q, kv, idx, out_heads); }, "out must have shape [3, 2, *]",
                      {watch(out_heads)}));
  EXPECT_TRUE(
      rejects([&] { mla(q, on_cuda(kv), idx, out); }, "kv_cache is on cuda:0", {watch(out)}));
  EXPECT_TRUE(
      rejects([&] { mla(q, kv, on_cuda(idx), out); }, "indices is on cuda:0", {watch(out)}));
  Tensor lse_rows = random_tensor({n + 1, H}, DType::f32, 130, 10);
  Tensor lse_bf16 = random_tensor({n, H}, DType::bf16, 130, 11);
  EXPECT_TRUE(rejects([&] { ops::sparse_mla(q, kv, idx, 0.1f, out, lse_rows); },
                      "lse must have shape [3, 2]", {watch(out), watch(lse_rows)}));
  EXPECT_TRUE(rejects([&] { ops::sparse_mla(q, kv, idx, 0.1f, out, lse_bf16); },
                      "lse must have dtype f32", {watch(out), watch(lse_bf16)}));
  const Tensor len_long = i32_tensor({1, 5, 0}), len_negative = i32_tensor({1, -1, 0});
  const Tensor len_rows = i32_tensor({1, 2}), len_f32 = Tensor::empty({n}, DType::f32);
  EXPECT_TRUE(rejects([&] { ops::sparse_mla(q, kv, idx, 0.1f, out, {}, len_long); },
                      "topk_length[1] = 5 is outside [0, 4]", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::sparse_mla(q, kv, idx, 0.1f, out, {}, len_negative); },
                      "topk_length[1] = -1 is outside [0, 4]", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::sparse_mla(q, kv, idx, 0.1f, out, {}, len_rows); },
                      "topk_length must have shape [3]", {watch(out)}));
  EXPECT_TRUE(rejects([&] { ops::sparse_mla(q, kv, idx, 0.1f, out, {}, len_f32); },
                      "topk_length must have dtype i32", {watch(out)}));
}

TEST(SparseMlaFp8Test, RejectsBadArguments) {
  // d_v = 128, rope 8: FP8 rows of 128 + 4 + 16 = 148 bytes.
  const std::int64_t n = 3, H = 2, dv = 128, dq = 136, slots = 10, topk = 4;
  ASSERT_EQ(latent_fp8_bytes(dv, dq - dv), 148);
  Tensor q = random_tensor({n, H, dq}, DType::bf16, 131, 1);
  Tensor kv = Tensor::empty({slots, 148}, DType::u8);
  for (std::int64_t i = 0; i < kv.numel(); ++i) kv.ptr<std::uint8_t>()[i] = (i * 37 + 5) % 0x7f;
  Tensor out = random_tensor({n, H, dv}, DType::bf16, 131, 2);
  Tensor idx = Tensor::empty({n, topk}, DType::i32);
  for (std::int64_t i = 0; i < n * topk; ++i) idx.ptr<std::int32_t>()[i] = i % 5 == 4 ? -1 : i % 9;
  Tensor idx_high = Tensor::empty({n, topk}, DType::i32);
  for (std::int64_t i = 0; i < n * topk; ++i) idx_high.ptr<std::int32_t>()[i] = i == 6 ? slots : 2;
  Tensor kv_bf16_width = random_tensor({slots, 148}, DType::bf16, 131, 3);
  Tensor kv_width = Tensor::empty({slots, 149}, DType::u8);
  Tensor kv_f32 = random_tensor({slots, dq}, DType::f32, 131, 4);
  Tensor kv_wide = Tensor::empty({slots, 2 * 148}, DType::u8);
  const TensorView kv_every_other = strided_view(kv_wide, {slots, 148}, {2 * 148, 2});
  // A value dim that is not a multiple of 128 has no FP8 layout: d_qk 72 = 64 + 8.
  Tensor q_small = random_tensor({n, H, 72}, DType::bf16, 131, 5);
  Tensor out_small = random_tensor({n, H, 64}, DType::bf16, 131, 6);
  Tensor kv_small = Tensor::empty({slots, latent_fp8_bytes(64, 8)}, DType::u8);
  const auto mla = [](const TensorView& qv, const TensorView& kvv, const TensorView& iv,
                      const TensorView& o) { ops::sparse_mla(qv, kvv, iv, 0.1f, o); };

  EXPECT_TRUE(rejects([&] { mla(q, kv_width, idx, out); }, "kv_cache must have shape [*, 148]",
                      {watch(out)}));
  // A bf16 cache of the FP8 width is read as bf16 and must be d_qk wide.
  EXPECT_TRUE(rejects([&] { mla(q, kv_bf16_width, idx, out); }, "kv_cache must have shape [*, 136]",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { mla(q, kv_f32, idx, out); }, "kv_cache must have dtype bf16 or u8",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { mla(q, kv_every_other, idx, out); }, "kv_cache must have a unit stride",
                      {watch(out)}));
  EXPECT_TRUE(rejects([&] { mla(q_small, kv_small, idx, out_small); },
                      "out must have a value dim that is a multiple of 128", {watch(out_small)}));
  EXPECT_TRUE(rejects([&] { mla(q, kv, idx_high, out); }, "indices[1, 2] = 10", {watch(out)}));
  EXPECT_TRUE(
      rejects([&] { mla(q, on_cuda(kv), idx, out); }, "kv_cache is on cuda:0", {watch(out)}));
}

}  // namespace
}  // namespace dsattn::test
