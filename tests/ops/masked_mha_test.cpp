// Masked MHA (mha_varlen_causal with a key mask) against softmax attention over each row's
// selected keys in float64, and selection_mask, which builds the mask from a top-k selection.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "dsattn/ops/attention.h"
#include "op_test_util.h"
#include "ops/masked_attention_reference.h"

namespace dsattn::test {
namespace {

// Requests with and without a prefix; a mask of 3 words (96 keys) against a request of 120 keys
// (its keys past 96 are hidden); rows 0 and 40 select nothing (zeros, lse -inf).
TEST(MaskedMha, MatchesFloat64AttentionOverTheSelectedKeys) {
  const std::int64_t H = 3, dq = 40, dv = 24, words = 3;
  const std::vector<std::int32_t> cq{0, 5, 6, 39, 47}, ck{0, 40, 110, 143, 263};
  const std::int64_t total_q = cq.back(), total_k = ck.back();
  Tensor q = random_tensor({total_q, H, dq}, DType::bf16, 300, 1, 2.0);
  Tensor k = random_tensor({total_k, H, dq}, DType::bf16, 300, 2, 2.0);
  Tensor v_backing = random_tensor({total_k, H, 8 + dv}, DType::bf16, 300, 3);
  const TensorView v = v_backing.view().slice(2, 8, 8 + dv);
  const Tensor mask = random_key_mask(total_q, words, 0.4, 301, /*empty_every=*/40);
  const float scale = 0.2f;
  Tensor out = Tensor::empty({total_q, H, dv}, DType::bf16);
  Tensor lse = Tensor::empty({total_q, H}, DType::f32);
  poison(out);
  poison(lse);
  ops::mha_varlen_causal(q, k, v, i32_tensor(cq), i32_tensor(ck), 33, scale, out, lse, mask);

  const MaskedAttentionInputs in = masked_attention_inputs(q, k, v, cq, ck, mask, scale);
  std::vector<double> ref, ref_lse, plain, plain_lse;
  masked_attention<double>(in, ref, ref_lse, false);
  masked_attention<float>(in, plain, plain_lse, true);
  const std::vector<std::int64_t> shape{total_q, H, dv}, lse_shape{total_q, H};
  EXPECT_TRUE(within_tolerance(read_doubles(out), ref, plain, 1e-5, shape));
  EXPECT_TRUE(within_tolerance(read_doubles(lse), ref_lse, plain_lse, 1e-5, lse_shape));
  for (std::int64_t row : {0, 40}) {
    for (std::int64_t e = 0; e < H * dv; ++e) {
      EXPECT_EQ(out.ptr<bf16>()[row * H * dv + e].to_float(), 0) << "row " << row;
    }
    for (std::int64_t h = 0; h < H; ++h) {
      EXPECT_EQ(lse.ptr<float>()[row * H + h], -std::numeric_limits<float>::infinity());
    }
  }
  // The mask changes the result: without it every causal key counts.
  Tensor unmasked = Tensor::empty({total_q, H, dv}, DType::bf16);
  ops::mha_varlen_causal(q, k, v, i32_tensor(cq), i32_tensor(ck), 33, scale, unmasked);
  EXPECT_NE(std::memcmp(unmasked.ptr<bf16>(), out.ptr<bf16>(), out.nbytes()), 0);
}

// A non-finite value of a key a row does not select never reaches that row (0 · NaN is NaN):
// rows that do not select it give the same bits as with a finite value there.
TEST(MaskedMha, AHiddenNonFiniteValueNeverReachesARow) {
  const std::int64_t H = 2, dq = 16, dv = 8, n = 70, bad = 20;
  const std::vector<std::int32_t> cu{0, static_cast<std::int32_t>(n)};
  Tensor q = random_tensor({n, H, dq}, DType::bf16, 310, 1);
  Tensor k = random_tensor({n, H, dq}, DType::bf16, 310, 2);
  Tensor v = random_tensor({n, H, dv}, DType::bf16, 310, 3);
  const Tensor mask = random_key_mask(n, 3, 0.5, 311);
  // The last key, seen causally by the last row only, is hidden from it too and holds a NaN in
  // both runs: both then sum row by row (not one GEMM), so that unaffected rows compare bit for
  // bit, and the clean run shows that a NaN no row selects reaches none.
  const std::int64_t last = n - 1;
  mask.ptr<std::int32_t>()[last * 3 + last / 32] &= ~static_cast<std::int32_t>(1u << (last % 32));
  for (std::int64_t h = 0; h < H; ++h) {
    v.ptr<bf16>()[(last * H + h) * dv] = bf16::from_float(std::numeric_limits<float>::quiet_NaN());
  }
  Tensor clean = Tensor::empty({n, H, dv}, DType::bf16),
         dirty = Tensor::empty({n, H, dv}, DType::bf16);
  ops::mha_varlen_causal(q, k, v, i32_tensor(cu), i32_tensor(cu), n, 0.25f, clean, {}, mask);
  for (std::int64_t e = 0; e < n * H * dv; ++e) {
    ASSERT_TRUE(std::isfinite(clean.ptr<bf16>()[e].to_float())) << "element " << e;
  }
  for (std::int64_t h = 0; h < H; ++h) {
    v.ptr<bf16>()[(bad * H + h) * dv + 5] =
        bf16::from_float(std::numeric_limits<float>::infinity());
  }
  ops::mha_varlen_causal(q, k, v, i32_tensor(cu), i32_tensor(cu), n, 0.25f, dirty, {}, mask);
  int selecting = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint32_t word = static_cast<std::uint32_t>(mask.ptr<std::int32_t>()[i * 3]);
    const bool sees = i >= bad && ((word >> bad) & 1u) != 0;
    selecting += sees;
    if (!sees) {
      EXPECT_EQ(std::memcmp(dirty.ptr<bf16>() + i * H * dv, clean.ptr<bf16>() + i * H * dv,
                            H * dv * sizeof(bf16)),
                0)
          << "row " << i << " does not select key " << bad << " but changed";
    } else {
      EXPECT_FALSE(std::isfinite(dirty.ptr<bf16>()[i * H * dv + 5].to_float())) << "row " << i;
    }
  }
  EXPECT_GT(selecting, 0);
  EXPECT_LT(selecting, n - bad);
}

TEST(MaskedMha, RejectsABadMask) {
  const std::int64_t H = 2, dq = 16, dv = 8;
  Tensor q = random_tensor({5, H, dq}, DType::bf16, 320, 1);
  Tensor k = random_tensor({6, H, dq}, DType::bf16, 320, 2);
  Tensor v = random_tensor({6, H, dv}, DType::bf16, 320, 3);
  Tensor out = random_tensor({5, H, dv}, DType::bf16, 320, 4);
  Tensor cu_q = i32_tensor({0, 2, 5}), cu_k = i32_tensor({0, 3, 6});
  const auto call = [&](const TensorView& mask) {
    ops::mha_varlen_causal(q, k, v, cu_q, cu_k, 3, 0.25f, out, {}, mask);
  };
  Tensor f32_mask = random_tensor({5, 1}, DType::f32, 320, 5);
  EXPECT_TRUE(rejects([&] { call(f32_mask); }, "key_mask must have dtype i32", {watch(out)}));
  Tensor short_mask = Tensor::empty({4, 1}, DType::i32);
  EXPECT_TRUE(rejects([&] { call(short_mask); }, "key_mask must have shape [5, *]", {watch(out)}));
  Tensor wide = Tensor::empty({5, 4}, DType::i32);
  EXPECT_TRUE(rejects(
      [&] {
        call(strided_view(wide, {5, 2}, {4, 2}));
      },
      "key_mask must have a unit stride", {watch(out)}));
  Tensor mask = Tensor::empty({5, 1}, DType::i32);
  EXPECT_TRUE(rejects([&] { call(on_cuda(mask)); }, "key_mask is on cuda:0", {watch(out)}));
}

// ---------------------------------------------------------------------------------------------
// selection_mask

TEST(SelectionMask, SetsTheBitOfEverySelectedPosition) {
  // Row 0: positions in any order with -1 between; row 1: nothing; row 2: the last bit.
  Tensor selected = Tensor::empty({3, 4}, DType::i32);
  const std::int32_t values[] = {33, -1, 0, 31, -1, -1, -1, -1, 95, 95, -1, 64};
  std::memcpy(selected.ptr<std::int32_t>(), values, sizeof(values));
  Tensor mask = Tensor::empty({3, 3}, DType::i32);
  poison(mask);
  ops::selection_mask(selected, mask);
  const auto word = [&](int r, int w) {
    return static_cast<std::uint32_t>(mask.ptr<std::int32_t>()[r * 3 + w]);
  };
  EXPECT_EQ(word(0, 0), (1u << 0) | (1u << 31));
  EXPECT_EQ(word(0, 1), 1u << 1);
  EXPECT_EQ(word(0, 2), 0u);
  for (int w = 0; w < 3; ++w) EXPECT_EQ(word(1, w), 0u);
  EXPECT_EQ(word(2, 2), (1u << 31) | 1u);
}

TEST(SelectionMask, RefusesPositionsOutsideTheMask) {
  const Tensor flat = i32_tensor({3, 64, 1});
  const TensorView selected = flat.view().reshape({1, 3});
  Tensor mask = Tensor::empty({1, 2}, DType::i32);
  poison(mask);
  EXPECT_TRUE(rejects([&] { ops::selection_mask(selected, mask); },
                      "selected[0][1] is 64: a position must be -1 or in [0, 64) for a mask of 2 "
                      "words",
                      {watch(mask)}));
  Tensor rows = Tensor::empty({2, 2}, DType::i32);
  EXPECT_TRUE(rejects([&] { ops::selection_mask(selected, rows); }, "mask must have shape [1, *]"));
  Tensor f32 = Tensor::empty({1, 3}, DType::f32);
  EXPECT_TRUE(rejects([&] { ops::selection_mask(f32, mask); }, "selected must have dtype i32"));
}

}  // namespace
}  // namespace dsattn::test
