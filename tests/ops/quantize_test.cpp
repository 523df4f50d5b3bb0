// The indexer's activation transform: Hadamard rotation against an explicit Sylvester matrix,
// and FP8 e4m3 block-128 quantisation against its defining formulas (also into the 132-byte
// rows of the indexer-key cache).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "dsattn/ops/quantize.h"
#include "op_test_util.h"

namespace dsattn::test {
namespace {

// The spacing of e4m3 values around |v| (subnormals are spaced 2^-9 apart).
double e4m3_ulp(double v) {
  v = std::fabs(v);
  if (v < 0x1p-6) return 0x1p-9;
  return std::ldexp(1.0, static_cast<int>(std::floor(std::log2(v))) - 3);
}

TEST(Fp8Test, LibraryDecodingMatchesBitFields) {
  // The quantisation checks below lean on this decoding; make sure it is the e4m3fn one.
  for (int b = 0; b < 256; ++b) {
    const double want = decode_e4m3(static_cast<std::uint8_t>(b));
    const double got = fp8_e4m3::from_bits(static_cast<std::uint8_t>(b)).to_float();
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "code " << b;
    } else {
      EXPECT_EQ(got, want) << "code " << b;
    }
  }
  EXPECT_EQ(decode_e4m3(0x7e), 448.0);
}

struct HadamardCase {
  std::int64_t rows, n;
  bool strided;
};

void PrintTo(const HadamardCase& c, std::ostream* os) {
  *os << c.rows << "x" << c.n << (c.strided ? " strided" : "");
}

class HadamardTest : public ::testing::TestWithParam<HadamardCase> {};

TEST_P(HadamardTest, MatchesSylvesterMatrixProduct) {
  const HadamardCase c = GetParam();
  const std::int64_t pad = c.strided ? 6 : 0;
  Tensor backing = random_tensor({c.rows, c.n + pad}, DType::bf16, 21, c.n, 2.0);
  const TensorView x = backing.view().slice(1, pad / 2, pad / 2 + c.n);
  const std::vector<double> in = read_doubles(x);

  // Sylvester's H_n has entry (-1)^popcount(i & j): H_2n = [[H_n, H_n], [H_n, -H_n]].
  std::vector<double> ref(in.size()), plain(in.size());
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.n));
  for (std::int64_t r = 0; r < c.rows; ++r) {
    for (std::int64_t i = 0; i < c.n; ++i) {
      double acc = 0;
      float acc_f = 0;
      for (std::int64_t j = 0; j < c.n; ++j) {
        const int sign = std::popcount(static_cast<std::uint64_t>(i & j)) % 2 ? -1 : 1;
        acc += sign * in[r * c.n + j];
        acc_f += static_cast<float>(sign) * static_cast<float>(in[r * c.n + j]);
      }
      ref[r * c.n + i] = acc * scale;
      plain[r * c.n + i] = round_bf16(acc_f * static_cast<float>(scale));
    }
  }

  const std::vector<std::uint8_t> before = snapshot(backing);
  ops::hadamard_rotate(x);
  EXPECT_TRUE(
      within_tolerance(read_doubles(x), ref, plain, 1e-5, std::vector<std::int64_t>{c.rows, c.n}));
  EXPECT_TRUE(only_view_written(backing, before, x));
}

// 128 is the indexer's head dim; 1 is the identity; the rest check the recursion's depth.
INSTANTIATE_TEST_SUITE_P(Sizes, HadamardTest,
                         ::testing::Values(HadamardCase{3, 1, false}, HadamardCase{5, 16, true},
                                           HadamardCase{9, 128, false}, HadamardCase{4, 128, true},
                                           HadamardCase{6, 256, false}, HadamardCase{3, 256, true}),
                         [](const auto& info) {
                           return fmt::format("R{}_N{}{}", info.param.rows, info.param.n,
                                              info.param.strided ? "_Strided" : "");
                         });

TEST(HadamardTest, RejectsBadArguments) {
  Tensor x96 = random_tensor({2, 96}, DType::bf16, 22, 1);
  Tensor x_f32 = random_tensor({2, 128}, DType::f32, 22, 2);
  Tensor wide = random_tensor({2, 256}, DType::bf16, 22, 3);
  const TensorView every_other = strided_view(wide, {2, 128}, {256, 2});
  EXPECT_TRUE(rejects([&] { ops::hadamard_rotate(x96); }, "power-of-two", {watch(x96)}));
  EXPECT_TRUE(rejects([&] { ops::hadamard_rotate(x_f32); }, "x must have dtype bf16"));
  EXPECT_TRUE(rejects([&] { ops::hadamard_rotate(every_other); }, "x must have a unit stride",
                      {watch(wide)}));
}

// x with a different magnitude in each 128-block, including an all-zero block and one whose
// amax lies under the 1e-4 floor, so that every branch of the scale rule runs.
Tensor blocky_input(std::int64_t rows, std::int64_t n, std::uint64_t seed) {
  Tensor x = random_tensor({rows, n}, DType::bf16, seed, 1);
  const float magnitudes[] = {1.0f, 300.0f, 0.0f, 3e-5f, 1e-3f, 7.5f, 2e4f};
  bf16* p = x.ptr<bf16>();
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t b = 0; b < n / ops::kQuantBlock; ++b) {
      const float m = magnitudes[(r * 3 + b) % 7];
      for (std::int64_t j = b * ops::kQuantBlock; j < (b + 1) * ops::kQuantBlock; ++j) {
        p[r * n + j] = bf16::from_float(p[r * n + j].to_float() * m);
      }
    }
  }
  return x;
}

// Checks q and scale (any strides) against the contract, for x contiguous [rows, n].
void expect_quantized(const Tensor& x, const TensorView& q, const TensorView& scale) {
  const std::int64_t rows = x.size(0), n = x.size(1), blocks = n / ops::kQuantBlock;
  const std::vector<double> xv = read_doubles(x), s = read_doubles(scale);
  std::vector<std::uint8_t> qv;
  for (std::int64_t off : element_offsets(q)) qv.push_back(q.ptr<std::uint8_t>()[off]);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t b = 0; b < blocks; ++b) {
      float amax = 0;
      for (std::int64_t j = b * ops::kQuantBlock; j < (b + 1) * ops::kQuantBlock; ++j) {
        amax = std::max(amax, static_cast<float>(std::fabs(xv[r * n + j])));
      }
      // DeepSeek-V3.2's act_quant: s = max(amax, 1e-4) / 448, in f32.
      const float want_scale = std::max(amax, 1e-4f) / 448.0f;
      ASSERT_EQ(s[r * blocks + b], want_scale) << "scale[" << r << ", " << b << "]";
      for (std::int64_t j = b * ops::kQuantBlock; j < (b + 1) * ops::kQuantBlock; ++j) {
        const std::uint8_t got = qv[r * n + j];
        const float scaled = static_cast<float>(xv[r * n + j]) / want_scale;
        ASSERT_EQ(got, fp8_e4m3::from_float(scaled).bits) << "q[" << r << ", " << j << "]";
        // Round to nearest: the dequantised value is within half an e4m3 step of x.
        const double back = decode_e4m3(got) * want_scale;
        const double bound = 0.5 * e4m3_ulp(scaled) * want_scale * (1 + 1e-6);
        ASSERT_LE(std::fabs(back - xv[r * n + j]), bound)
            << "q[" << r << ", " << j << "] dequantises to " << back << ", x = " << xv[r * n + j];
      }
    }
  }
}

TEST(QuantizeFp8Test, ContiguousMatchesScaleAndRoundingRules) {
  for (std::int64_t n : {128, 256, 512}) {
    const std::int64_t rows = 7;
    Tensor x = blocky_input(rows, n, 30 + n);
    Tensor q = Tensor::empty({rows, n}, DType::fp8_e4m3);
    Tensor scale = Tensor::empty({rows, n / ops::kQuantBlock}, DType::f32);
    poison(q);
    poison(scale);
    ops::quantize_fp8_block128(x, q, scale);
    SCOPED_TRACE(fmt::format("n = {}", n));
    expect_quantized(x, q, scale);
  }
}

TEST(QuantizeFp8Test, WritesStraightIntoIndexerKeyCacheRows) {
  // The indexer-key cache: 132-byte rows of 128 e4m3 values followed by their f32 scale.
  // Rows [3, 8) of a 12-row cache are written; the others must keep their bytes.
  const std::int64_t cache_rows = 12, row_bytes = 132, first = 3, rows = 5, n = 128;
  Tensor cache = Tensor::empty({cache_rows, row_bytes}, DType::u8);
  for (std::int64_t i = 0; i < cache.numel(); ++i) {
    cache.ptr<std::uint8_t>()[i] = static_cast<std::uint8_t>(i * 37 + 11);
  }
  std::uint8_t* base = cache.ptr<std::uint8_t>() + first * row_bytes;
  const TensorView q(base, DType::u8, Device::cpu(), std::vector<std::int64_t>{rows, n},
                     std::vector<std::int64_t>{row_bytes, 1});
  const TensorView scale(base + n, DType::f32, Device::cpu(), std::vector<std::int64_t>{rows, 1},
                         std::vector<std::int64_t>{row_bytes / 4, 1});
  poison(q);
  poison(scale);
  const std::vector<std::uint8_t> before = snapshot(cache);

  Tensor x = blocky_input(rows, n, 40);
  ops::quantize_fp8_block128(x, q, scale);
  expect_quantized(x, q, scale);

  // Same bytes as a contiguous call.
  Tensor q_flat = Tensor::empty({rows, n}, DType::u8);
  Tensor s_flat = Tensor::empty({rows, 1}, DType::f32);
  ops::quantize_fp8_block128(x, q_flat, s_flat);
  for (std::int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(std::memcmp(base + r * row_bytes, q_flat.ptr<std::uint8_t>() + r * n, n), 0)
        << "row " << r;
    EXPECT_EQ(std::memcmp(base + r * row_bytes + n, s_flat.ptr<float>() + r, 4), 0) << "row " << r;
  }
  const std::uint8_t* now = cache.ptr<std::uint8_t>();
  for (std::int64_t i = 0; i < cache.numel(); ++i) {
    const std::int64_t row = i / row_bytes;
    if (row < first || row >= first + rows) {
      ASSERT_EQ(now[i], before[i]) << "byte " << i << " of cache row " << row << " changed";
    }
  }
}

TEST(QuantizeFp8Test, RejectsBadArguments) {
  Tensor x = random_tensor({3, 256}, DType::bf16, 50, 1);
  Tensor q = Tensor::empty({3, 256}, DType::fp8_e4m3);
  Tensor scale = Tensor::empty({3, 2}, DType::f32);
  poison(q);
  poison(scale);
  Tensor x_odd = random_tensor({3, 200}, DType::bf16, 50, 2);
  Tensor x_f32 = random_tensor({3, 256}, DType::f32, 50, 3);
  Tensor q_bf16 = Tensor::empty({3, 256}, DType::bf16);
  Tensor q_rows = Tensor::empty({4, 256}, DType::fp8_e4m3);
  Tensor scale_wrong = Tensor::empty({3, 1}, DType::f32);
  Tensor scale_bf16 = Tensor::empty({3, 2}, DType::bf16);
  Tensor q_wide = Tensor::empty({3, 512}, DType::u8);
  const TensorView q_every_other = strided_view(q_wide, {3, 256}, {512, 2});
  const auto quant = [](const TensorView& xv, const TensorView& qv, const TensorView& sv) {
    ops::quantize_fp8_block128(xv, qv, sv);
  };

  EXPECT_TRUE(
      rejects([&] { quant(x_odd, q, scale); }, "multiple of 128", {watch(q), watch(scale)}));
  EXPECT_TRUE(
      rejects([&] { quant(x_f32, q, scale); }, "x must have dtype bf16", {watch(q), watch(scale)}));
  EXPECT_TRUE(rejects([&] { quant(x, q_bf16, scale); }, "q must have dtype", {watch(scale)}));
  EXPECT_TRUE(rejects([&] { quant(x, q_rows, scale); }, "q must have shape", {watch(scale)}));
  EXPECT_TRUE(rejects([&] { quant(x, q_every_other, scale); }, "q must have a unit stride",
                      {watch(q_wide), watch(scale)}));
  EXPECT_TRUE(rejects([&] { quant(x, q, scale_wrong); }, "scale must have shape", {watch(q)}));
  EXPECT_TRUE(rejects([&] { quant(x, q, scale_bf16); }, "scale must have dtype f32", {watch(q)}));
  EXPECT_TRUE(
      rejects([&] { quant(x, on_cuda(q), scale); }, "q is on cuda:0", {watch(q), watch(scale)}));
  EXPECT_TRUE(rejects([&] { quant(x, q, on_cuda(scale)); }, "scale is on cuda:0",
                      {watch(q), watch(scale)}));
}

}  // namespace
}  // namespace dsattn::test
