// The lightning indexer's scores against a float64 sum over heads of ReLU(q · k), with keys read
// from 132-byte cache rows through a shuffled slot list and bottom-right causal masking.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/ops/indexer.h"
#include "op_test_util.h"

namespace dsattn::test {
namespace {

// A random e4m3 code that is a number (0x7f and 0xff are NaN).
std::uint8_t random_code(std::mt19937& rng) {
  for (;;) {
    const auto b = static_cast<std::uint8_t>(rng());
    if ((b & 0x7f) != 0x7f) return b;
  }
}

struct IndexerCase {
  const char* name;
  std::int64_t n_queries, n_keys, heads, dim, num_slots;
};

void PrintTo(const IndexerCase& c, std::ostream* os) { *os << c.name; }

class IndexerScoresTest : public ::testing::TestWithParam<IndexerCase> {};

TEST_P(IndexerScoresTest, MatchesFloat64WeightedReluSum) {
  const IndexerCase c = GetParam();
  const std::int64_t blocks = c.dim / 128, row_bytes = index_key_bytes(c.dim);
  std::mt19937 rng(static_cast<unsigned>(c.n_keys * 131 + c.heads));
  std::uniform_real_distribution<float> scale_dist(0.002f, 0.02f);

  // Key cache: each row is dim e4m3 codes, then one f32 scale per 128 of them.
  Tensor key_cache = Tensor::empty({c.num_slots, row_bytes}, DType::u8);
  for (std::int64_t s = 0; s < c.num_slots; ++s) {
    std::uint8_t* row = key_cache.ptr<std::uint8_t>() + s * row_bytes;
    for (std::int64_t j = 0; j < c.dim; ++j) row[j] = random_code(rng);
    for (std::int64_t b = 0; b < blocks; ++b) {
      const float sc = scale_dist(rng);
      std::memcpy(row + c.dim + 4 * b, &sc, 4);
    }
  }
  // Keys live in scattered slots: a shuffled, duplicate-free subset of the cache.
  std::vector<std::int32_t> all_slots(c.num_slots);
  std::iota(all_slots.begin(), all_slots.end(), 0);
  std::shuffle(all_slots.begin(), all_slots.end(), rng);
  Tensor key_slots = Tensor::empty({c.n_keys}, DType::i32);
  std::copy_n(all_slots.begin(), c.n_keys, key_slots.ptr<std::int32_t>());

  Tensor q = Tensor::empty({c.n_queries, c.heads, c.dim}, DType::fp8_e4m3);
  for (std::int64_t i = 0; i < q.numel(); ++i) q.ptr<std::uint8_t>()[i] = random_code(rng);
  Tensor q_scale = Tensor::empty({c.n_queries, c.heads, blocks}, DType::f32);
  for (std::int64_t i = 0; i < q_scale.numel(); ++i) q_scale.ptr<float>()[i] = scale_dist(rng);
  // Weights of both signs, as rows of a wider tensor; scores likewise.
  Tensor w_backing = random_tensor({c.n_queries, c.heads + 3}, DType::f32, 70, c.heads);
  const TensorView weights = w_backing.view().slice(1, 1, 1 + c.heads);
  Tensor scores_backing = random_tensor({c.n_queries, c.n_keys + 5}, DType::f32, 71, c.n_keys);
  const TensorView scores = scores_backing.view().slice(1, 2, 2 + c.n_keys);

  auto dequant_key = [&](std::int64_t s, std::int64_t j) {
    const std::uint8_t* row =
        key_cache.ptr<std::uint8_t>() + key_slots.ptr<std::int32_t>()[s] * row_bytes;
    float sc;
    std::memcpy(&sc, row + c.dim + 4 * (j / 128), 4);
    return decode_e4m3(row[j]) * sc;
  };
  auto dequant_query = [&](std::int64_t t, std::int64_t h, std::int64_t j) {
    return decode_e4m3(q.ptr<std::uint8_t>()[(t * c.heads + h) * c.dim + j]) *
           q_scale.ptr<float>()[(t * c.heads + h) * blocks + j / 128];
  };
  const std::vector<double> w = read_doubles(weights);
  std::vector<double> ref(c.n_queries * c.n_keys), plain(ref.size()), mass(ref.size());
  for (std::int64_t t = 0; t < c.n_queries; ++t) {
    const std::int64_t limit = c.n_keys - c.n_queries + t;
    for (std::int64_t s = 0; s < c.n_keys; ++s) {
      const std::size_t o = t * c.n_keys + s;
      if (s > limit) {
        ref[o] = plain[o] = -std::numeric_limits<double>::infinity();
        continue;
      }
      double acc = 0, abs_acc = 0;
      float acc_f = 0;
      for (std::int64_t h = 0; h < c.heads; ++h) {
        double dot = 0, abs_dot = 0;
        float dot_f = 0;
        for (std::int64_t j = 0; j < c.dim; ++j) {
          const double qj = dequant_query(t, h, j), kj = dequant_key(s, j);
          dot += qj * kj;
          abs_dot += std::fabs(qj * kj);
          dot_f += static_cast<float>(qj) * static_cast<float>(kj);
        }
        acc += w[t * c.heads + h] * std::max(dot, 0.0);
        abs_acc += std::fabs(w[t * c.heads + h]) * abs_dot;
        acc_f += static_cast<float>(w[t * c.heads + h]) * std::max(dot_f, 0.0f);
      }
      ref[o] = acc;
      plain[o] = acc_f;
      mass[o] = abs_acc;
    }
  }

  poison(scores);
  const std::vector<std::uint8_t> before = snapshot(scores_backing);
  ops::indexer_scores(q, q_scale, weights, key_cache, key_slots, scores);
  const std::vector<double> out = read_doubles(scores);

  // The scores are f32 sums of dim products per head and then of H weighted terms. Recursive f32
  // summation of n terms errs by at most (n - 1)·u·Σ|terms| (u = 2^-24), the dequantisations and
  // products add a few roundings per term, and ReLU never enlarges an error. So any f32
  // evaluation order stays within (dim + H + 8)·u·Σ_h |w_h|·Σ_j |q_j k_j| of the exact value.
  const double gamma = static_cast<double>(c.dim + c.heads + 8) * 0x1p-24;
  for (std::size_t o = 0; o < ref.size(); ++o) {
    const std::int64_t t = static_cast<std::int64_t>(o) / c.n_keys, s = o % c.n_keys;
    if (std::isinf(ref[o])) {
      ASSERT_EQ(out[o], ref[o]) << "scores[" << t << ", " << s << "] must be masked to -inf";
      continue;
    }
    ASSERT_TRUE(std::isfinite(out[o])) << "scores[" << t << ", " << s << "] = " << out[o];
    const double bound = gamma * mass[o];
    ASSERT_LE(std::fabs(plain[o] - ref[o]), bound) << "the bound itself is wrong";
    ASSERT_LE(std::fabs(out[o] - ref[o]), bound)
        << "scores[" << t << ", " << s << "] = " << out[o] << ", reference " << ref[o];
  }
  EXPECT_TRUE(only_view_written(scores_backing, before, scores));
  // The scores are not all zero or all masked: the test would be vacuous otherwise.
  EXPECT_GT(max_abs(std::vector<double>(ref.begin(), ref.begin() + c.n_keys - c.n_queries + 1)), 0);
}

const IndexerCase kIndexerCases[] = {
    // name, queries, keys, H_I, d_I, cache slots
    {"Decode_H64", 1, 100, 64, 128, 160},
    {"PrefillWithPrefix_H64", 6, 41, 64, 128, 64},
    {"NoPrefix_H8", 16, 16, 8, 128, 20},
    {"TwoScaleBlocks_H4", 5, 23, 4, 256, 30},
};
INSTANTIATE_TEST_SUITE_P(Shapes, IndexerScoresTest, ::testing::ValuesIn(kIndexerCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(IndexerScoresTest, RejectsBadArguments) {
  const std::int64_t n_q = 2, n_k = 4, heads = 3, d = 128, slots = 6;
  Tensor q = Tensor::empty({n_q, heads, d}, DType::fp8_e4m3);
  std::memset(q.ptr<std::uint8_t>(), 0x38, q.nbytes());  // 1.0
  Tensor q_scale = random_tensor({n_q, heads, 1}, DType::f32, 80, 1);
  Tensor weights = random_tensor({n_q, heads}, DType::f32, 80, 2);
  Tensor key_cache = Tensor::empty({slots, index_key_bytes(d)}, DType::u8);
  std::memset(key_cache.ptr<std::uint8_t>(), 0x30, key_cache.nbytes());
  Tensor key_slots = Tensor::empty({n_k}, DType::i32);
  for (int i = 0; i < n_k; ++i) key_slots.ptr<std::int32_t>()[i] = 5 - i;
  Tensor scores = random_tensor({n_q, n_k}, DType::f32, 80, 3);

  Tensor q_bf16 = random_tensor({n_q, heads, d}, DType::bf16, 80, 4);
  Tensor q_odd = Tensor::empty({n_q, heads, 96}, DType::fp8_e4m3);
  Tensor q_scale_wrong = random_tensor({n_q, heads, 2}, DType::f32, 80, 5);
  Tensor weights_wrong = random_tensor({n_q, heads + 1}, DType::f32, 80, 6);
  Tensor cache_no_scale = Tensor::empty({slots, d}, DType::u8);
  Tensor cache_f32 = Tensor::empty({slots, index_key_bytes(d)}, DType::f32);
  Tensor bad_slots = Tensor::empty({n_k}, DType::i32);
  for (int i = 0; i < n_k; ++i) bad_slots.ptr<std::int32_t>()[i] = i == 2 ? slots : i;
  Tensor one_slot = Tensor::empty({1}, DType::i32);
  one_slot.ptr<std::int32_t>()[0] = 0;
  Tensor slots_2d = Tensor::empty({n_k, 1}, DType::i32);
  for (int i = 0; i < n_k; ++i) slots_2d.ptr<std::int32_t>()[i] = i;
  Tensor scores_wrong = random_tensor({n_q, n_k + 1}, DType::f32, 80, 7);
  Tensor scores_bf16 = random_tensor({n_q, n_k}, DType::bf16, 80, 8);
  const auto call = [&](const TensorView& qv, const TensorView& qs, const TensorView& wv,
                        const TensorView& kc, const TensorView& ks,
                        const TensorView& out) { ops::indexer_scores(qv, qs, wv, kc, ks, out); };

  EXPECT_TRUE(rejects([&] { call(q_bf16, q_scale, weights, key_cache, key_slots, scores); },
                      "q must have dtype fp8_e4m3 or u8", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { call(q_odd, q_scale, weights, key_cache, key_slots, scores); },
                      "multiple of 128", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { call(q, q_scale_wrong, weights, key_cache, key_slots, scores); },
                      "q_scale must have shape", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { call(q, q_scale, weights_wrong, key_cache, key_slots, scores); },
                      "weights must have shape", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { call(q, q_scale, weights, cache_no_scale, key_slots, scores); },
                      "key_cache must have shape [*, 132]", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { call(q, q_scale, weights, cache_f32, key_slots, scores); },
                      "key_cache must have dtype u8", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { call(q, q_scale, weights, key_cache, bad_slots, scores); },
                      "key_slots[2] = 6", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { call(q, q_scale, weights, key_cache, slots_2d, scores); },
                      "key_slots must have shape", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { call(q, q_scale, weights, key_cache, one_slot, scores); },
                      "key_slots must cover", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { call(q, q_scale, weights, key_cache, key_slots, scores_wrong); },
                      "scores must have shape", {watch(scores_wrong)}));
  EXPECT_TRUE(rejects([&] { call(q, q_scale, weights, key_cache, key_slots, scores_bf16); },
                      "scores must have dtype f32", {watch(scores_bf16)}));
  EXPECT_TRUE(rejects([&] { call(q, q_scale, weights, on_cuda(key_cache), key_slots, scores); },
                      "key_cache is on cuda:0", {watch(scores)}));
  EXPECT_TRUE(rejects([&] { call(q, q_scale, weights, key_cache, key_slots, on_cuda(scores)); },
                      "scores is on cuda:0", {watch(scores)}));
}

}  // namespace
}  // namespace dsattn::test
