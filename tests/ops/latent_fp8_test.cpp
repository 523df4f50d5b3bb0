// The FP8 latent-cache format (656 bytes per token for DeepSeek-V3.2): quantisation against its
// defining formulas byte by byte, dequantisation against the decoded bit fields, the round trip's
// error bound, rows that are strided windows of a wider cache, and malformed arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/ops/latent_fp8.h"
#include "op_test_util.h"

namespace dsattn::test {
namespace {

// The spacing of e4m3 values around |v| (subnormals are spaced 2^-9 apart).
double e4m3_ulp(double v) {
  v = std::fabs(v);
  if (v < 0x1p-6) return 0x1p-9;
  return std::ldexp(1.0, static_cast<int>(std::floor(std::log2(v))) - 3);
}

float scale_at(const std::uint8_t* row, std::int64_t r, std::int64_t block) {
  float s;
  std::memcpy(&s, row + r + 4 * block, 4);
  return s;
}

struct LatentCase {
  const char* name;
  std::int64_t rows, kv_lora_rank, rope;
  std::int64_t row_pad;  // bytes between FP8 rows (a multiple of 4), 0: contiguous rows
  bool strided_latent;   // the bf16 latent is a column window of a wider tensor
};

void PrintTo(const LatentCase& c, std::ostream* os) { *os << c.name; }

// A latent row window of a random [rows, width + pad] bf16 tensor. c_kv blocks take a different
// magnitude each, including an all-zero block and one whose amax is under the 1e-4 floor.
struct Latent {
  Tensor backing;
  TensorView view;
};

Latent random_latent(const LatentCase& c, std::uint64_t seed) {
  const std::int64_t width = c.kv_lora_rank + c.rope, pad = c.strided_latent ? 6 : 0;
  Latent l;
  l.backing = random_tensor({c.rows, width + pad}, DType::bf16, seed, width);
  l.view = l.backing.view().slice(1, pad / 2, pad / 2 + width);
  const float magnitudes[] = {1.0f, 300.0f, 0.0f, 3e-5f, 1e-3f, 7.5f, 2e4f};
  for (std::int64_t t = 0; t < c.rows; ++t) {
    bf16* x = l.view.row<bf16>(t);
    for (std::int64_t j = 0; j < c.kv_lora_rank; ++j) {
      const float m = magnitudes[(t * 3 + j / 128) % 7];
      x[j] = bf16::from_float(x[j].to_float() * m);
    }
  }
  return l;
}

// FP8 rows of `bytes` bytes as columns [4, 4 + bytes) of a poisoned byte tensor whose rows are
// `bytes + pad` long (or the whole tensor when pad is 0).
struct Rows {
  Tensor backing;
  TensorView view;
};

Rows fp8_rows(std::int64_t n, std::int64_t bytes, std::int64_t pad) {
  Rows r;
  r.backing = Tensor::empty({n, bytes + pad}, DType::u8);
  poison(r.backing);
  r.view = pad == 0 ? r.backing.view() : r.backing.view().slice(1, 4, 4 + bytes);
  return r;
}

class LatentFp8Test : public ::testing::TestWithParam<LatentCase> {};

TEST_P(LatentFp8Test, QuantizeWritesTheFormatExactly) {
  const LatentCase c = GetParam();
  const std::int64_t r = c.kv_lora_rank, blocks = r / 128;
  const std::int64_t bytes = latent_fp8_bytes(r, c.rope);
  const Latent latent = random_latent(c, 150);
  const Rows rows = fp8_rows(c.rows, bytes, c.row_pad);
  const std::vector<std::uint8_t> before = snapshot(rows.backing);
  const std::vector<std::uint8_t> latent_before = snapshot(latent.backing);

  ops::quantize_latent_fp8(latent.view, r, rows.view);
  EXPECT_TRUE(only_view_written(rows.backing, before, rows.view));
  EXPECT_EQ(snapshot(latent.backing), latent_before) << "latent is read only";

  for (std::int64_t t = 0; t < c.rows; ++t) {
    const bf16* x = latent.view.row<bf16>(t);
    const std::uint8_t* row = rows.view.row<std::uint8_t>(t);
    for (std::int64_t b = 0; b < blocks; ++b) {
      float amax = 0;
      for (std::int64_t j = b * 128; j < (b + 1) * 128; ++j) {
        amax = std::max(amax, std::fabs(x[j].to_float()));
      }
      // DeepSeek-V3.2's act_quant: s = max(amax, 1e-4) / 448, in f32.
      const float want_scale = std::max(amax, 1e-4f) / 448.0f;
      ASSERT_EQ(scale_at(row, r, b), want_scale) << "row " << t << ", scale " << b;
      for (std::int64_t j = b * 128; j < (b + 1) * 128; ++j) {
        const float scaled = x[j].to_float() / want_scale;
        ASSERT_EQ(row[j], fp8_e4m3::from_float(scaled).bits) << "row " << t << ", c_kv " << j;
        // Round to nearest: the code is within half an e4m3 step of x / scale.
        ASSERT_LE(std::fabs(decode_e4m3(row[j]) - scaled), 0.5 * e4m3_ulp(scaled) * (1 + 1e-6))
            << "row " << t << ", c_kv " << j << " = " << x[j].to_float();
      }
    }
    // The rope part: the bf16 values themselves.
    ASSERT_EQ(std::memcmp(row + r + 4 * blocks, x + r, 2 * c.rope), 0) << "row " << t << " rope";
  }
}

TEST_P(LatentFp8Test, DequantizeDecodesEveryField) {
  const LatentCase c = GetParam();
  const std::int64_t r = c.kv_lora_rank, blocks = r / 128, width = r + c.rope;
  const std::int64_t bytes = latent_fp8_bytes(r, c.rope);
  // Random rows: any non-NaN code, scales over a wide range, random rope bits (not NaN).
  std::mt19937 rng(static_cast<unsigned>(r + c.rope + c.row_pad));
  std::uniform_real_distribution<float> log_scale(-20.0f, 4.0f);
  const Rows rows = fp8_rows(c.rows, bytes, c.row_pad);
  Tensor rope = random_tensor({c.rows, c.rope}, DType::bf16, 151, c.rope, 3.0);
  for (std::int64_t t = 0; t < c.rows; ++t) {
    std::uint8_t* row = rows.view.row<std::uint8_t>(t);
    for (std::int64_t j = 0; j < r; ++j) {
      do {
        row[j] = static_cast<std::uint8_t>(rng());
      } while ((row[j] & 0x7f) == 0x7f);
    }
    for (std::int64_t b = 0; b < blocks; ++b) {
      const float s = std::exp2(log_scale(rng));
      std::memcpy(row + r + 4 * b, &s, 4);
    }
    std::memcpy(row + r + 4 * blocks, rope.ptr<bf16>() + t * c.rope, 2 * c.rope);
  }
  const std::int64_t pad = c.strided_latent ? 5 : 0;
  Tensor out_backing = Tensor::empty({c.rows, width + pad}, DType::bf16);
  poison(out_backing);
  const TensorView out = out_backing.view().slice(1, pad, pad + width);
  const std::vector<std::uint8_t> before = snapshot(out_backing);
  const std::vector<std::uint8_t> rows_before = snapshot(rows.backing);

  ops::dequantize_latent_fp8(rows.view, r, out);
  EXPECT_TRUE(only_view_written(out_backing, before, out));
  EXPECT_EQ(snapshot(rows.backing), rows_before) << "rows is read only";

  for (std::int64_t t = 0; t < c.rows; ++t) {
    const std::uint8_t* row = rows.view.row<std::uint8_t>(t);
    const bf16* got = out.row<bf16>(t);
    for (std::int64_t j = 0; j < r; ++j) {
      // The f32 product of the decoded code and its block's scale, rounded once to bf16.
      const float want = static_cast<float>(decode_e4m3(row[j])) * scale_at(row, r, j / 128);
      ASSERT_EQ(got[j].bits, bf16::from_float(want).bits)
          << "row " << t << ", c_kv " << j << ": code " << int{row[j]} << " -> " << want;
    }
    ASSERT_EQ(std::memcmp(got + r, row + r + 4 * blocks, 2 * c.rope), 0) << "row " << t << " rope";
  }
}

TEST_P(LatentFp8Test, RoundTripStaysWithinHalfAnE4m3StepPlusBf16Rounding) {
  const LatentCase c = GetParam();
  const std::int64_t r = c.kv_lora_rank, width = r + c.rope;
  const Latent latent = random_latent(c, 152);
  const Rows rows = fp8_rows(c.rows, latent_fp8_bytes(r, c.rope), c.row_pad);
  Tensor back = Tensor::empty({c.rows, width}, DType::bf16);
  poison(back);
  ops::quantize_latent_fp8(latent.view, r, rows.view);
  ops::dequantize_latent_fp8(rows.view, r, back);

  const std::vector<double> x = read_doubles(latent.view), y = read_doubles(back);
  double worst_relative = 0;
  for (std::int64_t t = 0; t < c.rows; ++t) {
    for (std::int64_t b = 0; b < r / 128; ++b) {
      double amax = 0;
      for (std::int64_t j = b * 128; j < (b + 1) * 128; ++j) {
        amax = std::max(amax, std::fabs(x[t * width + j]));
      }
      const double scale = std::max(static_cast<float>(amax), 1e-4f) / 448.0f;
      for (std::int64_t j = b * 128; j < (b + 1) * 128; ++j) {
        const double xi = x[t * width + j], yi = y[t * width + j];
        // Half an e4m3 step of x / scale, then bf16's relative rounding of the result.
        const double bound =
            0.5 * e4m3_ulp(xi / scale) * scale * (1 + 1e-5) + 0x1p-8 * std::fabs(yi);
        ASSERT_LE(std::fabs(yi - xi), bound)
            << "row " << t << ", c_kv " << j << ": " << xi << " came back as " << yi;
        if (amax > 0) worst_relative = std::max(worst_relative, std::fabs(yi - xi) / amax);
      }
    }
    for (std::int64_t j = r; j < width; ++j) {
      ASSERT_EQ(y[t * width + j], x[t * width + j]) << "row " << t << ", rope " << (j - r);
    }
  }
  // Three mantissa bits: no value errs by more than amax / 16 (plus the bf16 rounding).
  EXPECT_LE(worst_relative, 1.0 / 16 + 1.0 / 256);
  EXPECT_GT(worst_relative, 0.0) << "nothing was rounded: the input is too tame";
}

const LatentCase kLatentCases[] = {
    // name, rows, kv_lora_rank, rope, row padding bytes, strided latent
    {"Model656", 9, 512, 64, 0, false},
    {"Model656_StridedBoth", 7, 512, 64, 12, true},
    {"OneBlock128Plus8", 8, 128, 8, 0, true},
    {"TwoBlocks256Plus2_PaddedRows", 5, 256, 2, 4, false},
};
INSTANTIATE_TEST_SUITE_P(Shapes, LatentFp8Test, ::testing::ValuesIn(kLatentCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(LatentFp8Test, Model656ByteLayout) {
  EXPECT_EQ(latent_fp8_bytes(512, 64), 656);
  EXPECT_EQ(latent_fp8_bytes(128, 8), 128 + 4 + 16);
}

TEST(LatentFp8Test, RejectsBadArguments) {
  const std::int64_t n = 4, r = 512, width = 576, bytes = 656;
  Tensor latent = random_tensor({n, width}, DType::bf16, 153, 1);
  Tensor rows = Tensor::empty({n, bytes}, DType::u8);
  poison(rows);
  Tensor rows_narrow = Tensor::empty({n, bytes - 1}, DType::u8);
  Tensor rows_count = Tensor::empty({n + 1, bytes}, DType::u8);
  Tensor rows_bf16 = Tensor::empty({n, bytes}, DType::bf16);
  // Rows 658 bytes apart: the f32 scales and bf16 rope would be misaligned.
  Tensor rows_658 = Tensor::empty({n, 658}, DType::u8);
  poison(rows_658);
  const TensorView rows_misaligned = rows_658.view().slice(1, 0, bytes);
  Tensor rows_wide = Tensor::empty({n, 2 * bytes}, DType::u8);
  poison(rows_wide);
  const TensorView rows_every_other = strided_view(rows_wide, {n, bytes}, {2 * bytes, 2});
  Tensor latent_f32 = random_tensor({n, width}, DType::f32, 153, 2);
  Tensor latent_rows = random_tensor({n + 1, width}, DType::bf16, 153, 3);
  Tensor latent_wide = random_tensor({n, 2 * width}, DType::bf16, 153, 4);
  const TensorView latent_every_other = strided_view(latent_wide, {n, width}, {2 * width, 2});
  const auto quant = [](const TensorView& l, std::int64_t rank, const TensorView& o) {
    ops::quantize_latent_fp8(l, rank, o);
  };
  const auto dequant = [](const TensorView& i, std::int64_t rank, const TensorView& l) {
    ops::dequantize_latent_fp8(i, rank, l);
  };

  for (std::int64_t bad_rank : {std::int64_t{100}, std::int64_t{0}, std::int64_t{-128},
                                std::int64_t{576}, std::int64_t{640}}) {
    SCOPED_TRACE(fmt::format("kv_lora_rank {}", bad_rank));
    EXPECT_TRUE(rejects([&] { quant(latent, bad_rank, rows); },
                        fmt::format("kv_lora_rank must be a positive multiple of 128 below the "
                                    "latent width 576, got {}",
                                    bad_rank),
                        {watch(rows)}));
    EXPECT_TRUE(
        rejects([&] { dequant(rows, bad_rank, latent); }, "kv_lora_rank must be", {watch(latent)}));
  }
  // A latent of c_kv alone has no rope part: the format needs one.
  Tensor latent_no_rope = random_tensor({n, 512}, DType::bf16, 153, 5);
  Tensor rows_no_rope = Tensor::empty({n, latent_fp8_bytes(512, 0)}, DType::u8);
  poison(rows_no_rope);
  EXPECT_TRUE(rejects([&] { quant(latent_no_rope, 512, rows_no_rope); },
                      "below the latent width 512, got 512", {watch(rows_no_rope)}));
  EXPECT_TRUE(rejects([&] { dequant(rows_no_rope, 512, latent_no_rope); },
                      "below the latent width 512, got 512", {watch(latent_no_rope)}));
  // 384 is a valid rank, but the rows then need 384 + 12 + 384 bytes.
  EXPECT_TRUE(
      rejects([&] { quant(latent, 384, rows); }, "rows must have shape [4, 780]", {watch(rows)}));
  EXPECT_TRUE(rejects([&] { quant(latent, r, rows_narrow); }, "rows must have shape [4, 656]",
                      {watch(rows_narrow)}));
  EXPECT_TRUE(rejects([&] { quant(latent, r, rows_count); }, "rows must have shape [4, 656]",
                      {watch(rows_count)}));
  EXPECT_TRUE(
      rejects([&] { quant(latent, r, rows_bf16); }, "rows must have dtype u8", {watch(rows_bf16)}));
  EXPECT_TRUE(rejects([&] { quant(latent, r, rows_misaligned); }, "multiple of 4 bytes, got 658",
                      {watch(rows_658)}));
  EXPECT_TRUE(rejects([&] { quant(latent, r, rows_every_other); }, "rows must have a unit stride",
                      {watch(rows_wide)}));
  EXPECT_TRUE(
      rejects([&] { quant(latent_f32, r, rows); }, "latent must have dtype bf16", {watch(rows)}));
  EXPECT_TRUE(rejects([&] { quant(latent_rows, r, rows); }, "rows must have shape [5, 656]",
                      {watch(rows)}));
  EXPECT_TRUE(rejects([&] { quant(latent_every_other, r, rows); }, "latent must have a unit stride",
                      {watch(rows)}));
  EXPECT_TRUE(
      rejects([&] { quant(latent, r, on_cuda(rows)); }, "rows is on cuda:0", {watch(rows)}));

  EXPECT_TRUE(rejects([&] { dequant(rows_narrow, r, latent); }, "rows must have shape [4, 656]",
                      {watch(latent)}));
  EXPECT_TRUE(
      rejects([&] { dequant(rows_bf16, r, latent); }, "rows must have dtype u8", {watch(latent)}));
  EXPECT_TRUE(rejects([&] { dequant(rows_misaligned, r, latent); }, "multiple of 4 bytes",
                      {watch(latent)}));
  EXPECT_TRUE(rejects([&] { dequant(rows, r, latent_f32); }, "latent must have dtype bf16",
                      {watch(latent_f32)}));
  EXPECT_TRUE(rejects([&] { dequant(rows, r, latent_every_other); },
                      "latent must have a unit stride", {watch(latent_wide)}));
  EXPECT_TRUE(
      rejects([&] { dequant(rows, r, on_cuda(latent)); }, "latent is on cuda:0", {watch(latent)}));
}

}  // namespace
}  // namespace dsattn::test
