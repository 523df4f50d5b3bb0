// Exhaustive checks of the bf16 and fp8 e4m3 conversions against bit patterns and against
// reference roundings written independently of the library's code.
#include "dsattn/core/dtype.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace dsattn {
namespace {

std::uint32_t bits_of(float f) { return std::bit_cast<std::uint32_t>(f); }
float float_of(std::uint32_t u) { return std::bit_cast<float>(u); }

bool bf16_is_nan(std::uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x007f) != 0; }

// ---------------------------------------------------------------------------------------------
// bf16

TEST(Bf16, SizeAndNames) {
  EXPECT_EQ(dtype_size(DType::bf16), 2u);
  EXPECT_EQ(dtype_size(DType::f32), 4u);
  EXPECT_EQ(dtype_size(DType::i32), 4u);
  EXPECT_EQ(dtype_size(DType::fp8_e4m3), 1u);
  EXPECT_EQ(dtype_size(DType::u8), 1u);
  EXPECT_EQ(dtype_name(DType::bf16), "bf16");
  EXPECT_EQ(dtype_name(DType::f32), "f32");
  EXPECT_EQ(dtype_name(DType::fp8_e4m3), "fp8_e4m3");
  EXPECT_EQ(dtype_name(DType::i32), "i32");
  EXPECT_EQ(dtype_name(DType::u8), "u8");
  EXPECT_EQ(sizeof(bf16), 2u);
  EXPECT_EQ(sizeof(fp8_e4m3), 1u);
}

TEST(Bf16, EveryPatternDecodesToTheUpperHalfOfAnF32) {
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const float f = bf16::from_bits(static_cast<std::uint16_t>(b)).to_float();
    ASSERT_EQ(bits_of(f), b << 16) << "bf16 pattern 0x" << std::hex << b;
  }
}

TEST(Bf16, EveryNonNanValueRoundTripsExactly) {
  int checked = 0;
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto pattern = static_cast<std::uint16_t>(b);
    if (bf16_is_nan(pattern)) continue;
    const float f = float_of(b << 16);
    ASSERT_EQ(bf16::from_float(f).bits, pattern) << "value " << f;
    ++checked;
  }
  EXPECT_EQ(checked, 65536 - 2 * 127);  // 127 NaN mantissas per sign
}

// Midpoints between consecutive finite values of one sign (and between the largest finite value
// and infinity) are exactly representable in f32: the low 16 bits are 0x8000.
TEST(Bf16, EveryMidpointRoundsToTheEvenNeighbour) {
  for (std::uint32_t sign : {0x0000u, 0x8000u}) {
    for (std::uint32_t m = 0; m < 0x7f80; ++m) {
      const std::uint32_t lo = sign | m;  // lo + 1 is the next value away from zero
      const float midpoint = float_of((lo << 16) | 0x8000u);
      const std::uint32_t even = (lo & 1u) ? lo + 1 : lo;
      ASSERT_EQ(bf16::from_float(midpoint).bits, even) << "midpoint " << midpoint;
    }
  }
}

TEST(Bf16, OneUlpOffAMidpointRoundsToTheNearerNeighbour) {
  for (std::uint32_t sign : {0x0000u, 0x8000u}) {
    for (std::uint32_t m = 0; m < 0x7f80; ++m) {
      const std::uint32_t lo = sign | m;
      const std::uint32_t midpoint_bits = (lo << 16) | 0x8000u;
      // In sign-magnitude bit order, -1 moves toward zero and +1 away from it.
      ASSERT_EQ(bf16::from_float(float_of(midpoint_bits - 1)).bits, lo);
      ASSERT_EQ(bf16::from_float(float_of(midpoint_bits + 1)).bits, lo + 1);
    }
  }
}

// Rounds by comparing distances in double to the two bf16 neighbours, ties to the even one.
std::uint16_t reference_bf16(float f) {
  const std::uint32_t u = bits_of(f);
  const auto lo = static_cast<std::uint16_t>(u >> 16);  // truncation toward zero
  if ((u & 0xffffu) == 0) return lo;
  const auto hi = static_cast<std::uint16_t>(lo + 1);
  const double x = std::fabs(static_cast<double>(f));
  const double a = std::fabs(static_cast<double>(float_of(std::uint32_t(lo) << 16)));
  // The neighbour above the largest finite value is infinity: treat it as 2^128 as IEEE does.
  const double b = (hi & 0x7fff) == 0x7f80
                       ? std::ldexp(1.0, 128)
                       : std::fabs(static_cast<double>(float_of(std::uint32_t(hi) << 16)));
  if (x - a < b - x) return lo;
  if (x - a > b - x) return hi;
  return (lo & 1) ? hi : lo;
}

TEST(Bf16, RandomFloatsMatchAReferenceRounding) {
  std::mt19937 rng(20240601);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  int checked = 0;
  for (int i = 0; i < 1'000'000; ++i) {
    const float f = float_of(any_bits(rng));
    if (std::isnan(f) || std::isinf(f)) continue;
    ASSERT_EQ(bf16::from_float(f).bits, reference_bf16(f)) << "value " << f;
    ++checked;
  }
  EXPECT_GT(checked, 990'000);
}

TEST(Bf16, NanStaysNanWithItsSign) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::uint32_t> payload(1, 0x7fffff);
  std::vector<std::uint32_t> nans = {0x7f800001u, 0x7fc00000u, 0x7fffffffu, 0x7f80ffffu,
                                     0x7f800100u};
  for (int i = 0; i < 10000; ++i) nans.push_back(0x7f800000u | payload(rng));
  for (std::uint32_t n : nans) {
    for (std::uint32_t sign : {0u, 0x80000000u}) {
      const bf16 b = bf16::from_float(float_of(n | sign));
      ASSERT_TRUE(bf16_is_nan(b.bits)) << std::hex << "f32 0x" << (n | sign) << " -> 0x" << b.bits;
      ASSERT_EQ(b.bits & 0x8000u, sign >> 16);
      ASSERT_TRUE(std::isnan(b.to_float()));
    }
  }
}

TEST(Bf16, InfinitiesAndZerosKeepTheirSign) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(bf16::from_float(inf).bits, 0x7f80);
  EXPECT_EQ(bf16::from_float(-inf).bits, 0xff80);
  EXPECT_EQ(bf16::from_float(0.0f).bits, 0x0000);
  EXPECT_EQ(bf16::from_float(-0.0f).bits, 0x8000);
  EXPECT_TRUE(std::signbit(bf16::from_bits(0x8000).to_float()));
}

TEST(Bf16, OverflowRoundsToInfinityFromTheMidpointAboveTheLargestFiniteValue) {
  const float largest = float_of(0x7f7f0000u);  // 3.3895e38
  EXPECT_EQ(bf16::from_float(largest).bits, 0x7f7f);
  EXPECT_EQ(bf16::from_float(float_of(0x7f7f7fffu)).bits, 0x7f7f);
  EXPECT_EQ(bf16::from_float(float_of(0x7f7f8000u)).bits, 0x7f80);  // tie: 0x7f80 is even
  EXPECT_EQ(bf16::from_float(std::numeric_limits<float>::max()).bits, 0x7f80);
  EXPECT_EQ(bf16::from_float(-std::numeric_limits<float>::max()).bits, 0xff80);
  EXPECT_EQ(bf16::from_float(-float_of(0x7f7f7fffu)).bits, 0xff7f);
}

TEST(Bf16, SubnormalsRoundLikeNormals) {
  // The smallest f32 subnormal is far below half of bf16's smallest subnormal (2^-133).
  EXPECT_EQ(bf16::from_float(float_of(0x00000001u)).bits, 0x0000);
  EXPECT_EQ(bf16::from_float(float_of(0x80000001u)).bits, 0x8000);
  EXPECT_EQ(bf16::from_float(float_of(0x00008000u)).bits, 0x0000);  // tie to even zero
  EXPECT_EQ(bf16::from_float(float_of(0x00008001u)).bits, 0x0001);
  EXPECT_EQ(bf16::from_float(float_of(0x00018000u)).bits, 0x0002);  // tie to even
  // Carry from the largest subnormal into the smallest normal.
  EXPECT_EQ(bf16::from_float(float_of(0x007fc000u)).bits, 0x0080);
}

TEST(Bf16, FreeToFloatOverloadsAgree) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-100.0f, 100.0f);
  for (int i = 0; i < 1000; ++i) {
    const float f = dist(rng);
    const bf16 b = bf16::from_float(f);
    EXPECT_EQ(bits_of(to_float(b)), bits_of(b.to_float()));
    EXPECT_EQ(to_float(f), f);
    // One bf16 rounding is within half an ulp: 2^-9 relative.
    EXPECT_LE(std::fabs(b.to_float() - f), std::fabs(f) * 0x1p-8f);
  }
}

// ---------------------------------------------------------------------------------------------
// fp8 e4m3 ("fn": bias 7, no infinities, S.1111.111 is NaN)

// The value of an e4m3fn code, computed from its fields.
double reference_fp8(std::uint8_t code) {
  const int sign = (code >> 7) & 1;
  const int e = (code >> 3) & 0xf;
  const int m = code & 0x7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double magnitude = e == 0 ? std::ldexp(m / 8.0, 1 - 7) : std::ldexp(1.0 + m / 8.0, e - 7);
  return sign ? -magnitude : magnitude;
}

bool fp8_is_nan(std::uint8_t code) { return (code & 0x7f) == 0x7f; }

TEST(Fp8E4m3, EveryCodeDecodesToItsFieldValue) {
  for (int c = 0; c < 256; ++c) {
    const auto code = static_cast<std::uint8_t>(c);
    const float f = fp8_e4m3::from_bits(code).to_float();
    const double want = reference_fp8(code);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(f)) << "code 0x" << std::hex << c;
    } else {
      EXPECT_EQ(static_cast<double>(f), want) << "code 0x" << std::hex << c;
      EXPECT_EQ(std::signbit(f), c >= 0x80) << "code 0x" << std::hex << c;
    }
  }
}

TEST(Fp8E4m3, LandmarkValues) {
  EXPECT_EQ(fp8_e4m3::from_bits(0x7e).to_float(), 448.0f);
  EXPECT_EQ(fp8_e4m3::from_bits(0xfe).to_float(), -448.0f);
  EXPECT_EQ(fp8_e4m3::kMax, 448.0f);
  EXPECT_EQ(fp8_e4m3::from_bits(0x01).to_float(), 0x1p-9f);  // smallest subnormal
  EXPECT_EQ(fp8_e4m3::from_bits(0x07).to_float(), 7 * 0x1p-9f);
  EXPECT_EQ(fp8_e4m3::from_bits(0x08).to_float(), 0x1p-6f);  // smallest normal
  EXPECT_EQ(fp8_e4m3::from_bits(0x38).to_float(), 1.0f);
  EXPECT_EQ(fp8_e4m3::from_bits(0x78).to_float(), 256.0f);  // exponent 15 is finite in "fn"
  EXPECT_TRUE(std::isnan(fp8_e4m3::from_bits(0x7f).to_float()));
  EXPECT_TRUE(std::isnan(fp8_e4m3::from_bits(0xff).to_float()));
}

TEST(Fp8E4m3, PositiveCodesAreStrictlyIncreasing) {
  for (int c = 0; c < 0x7e; ++c) {
    EXPECT_LT(fp8_e4m3::from_bits(c).to_float(), fp8_e4m3::from_bits(c + 1).to_float())
        << "code 0x" << std::hex << c;
  }
}

TEST(Fp8E4m3, EveryFiniteCodeRoundTrips) {
  int checked = 0;
  for (int c = 0; c < 256; ++c) {
    const auto code = static_cast<std::uint8_t>(c);
    if (fp8_is_nan(code)) continue;
    const float f = static_cast<float>(reference_fp8(code));
    EXPECT_EQ(fp8_e4m3::from_float(f).bits, code) << "code 0x" << std::hex << c << " value " << f;
    ++checked;
  }
  EXPECT_EQ(checked, 254);  // both zeros and all subnormals included
}

// Midpoints of adjacent codes need 5 significant bits, so they are exact in f32.
TEST(Fp8E4m3, EveryMidpointRoundsToTheEvenCode) {
  for (std::uint8_t sign : {0x00, 0x80}) {
    for (int c = 0; c < 0x7e; ++c) {
      const auto lo = static_cast<std::uint8_t>(sign | c);
      const auto hi = static_cast<std::uint8_t>(lo + 1);
      const double mid_d = (reference_fp8(lo) + reference_fp8(hi)) / 2;
      const auto mid = static_cast<float>(mid_d);
      ASSERT_EQ(static_cast<double>(mid), mid_d);
      const std::uint8_t even = (lo & 1) ? hi : lo;
      EXPECT_EQ(fp8_e4m3::from_float(mid).bits, even) << "midpoint " << mid;
      // One f32 ulp toward zero / away from zero leaves the tie.
      const float toward_zero = std::nextafter(mid, 0.0f);
      const float away = std::nextafter(mid, sign ? -1000.0f : 1000.0f);
      EXPECT_EQ(fp8_e4m3::from_float(toward_zero).bits, lo) << "just inside " << mid;
      EXPECT_EQ(fp8_e4m3::from_float(away).bits, hi) << "just outside " << mid;
    }
  }
}

// Nearest finite code by search over the sorted positive values, ties to the even code,
// saturating at 448.
std::uint8_t reference_fp8_round(float f) {
  static const std::vector<double> values = [] {
    std::vector<double> v;
    for (int c = 0; c <= 0x7e; ++c) v.push_back(reference_fp8(static_cast<std::uint8_t>(c)));
    return v;
  }();
  const std::uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  const double x = std::fabs(static_cast<double>(f));
  if (x >= 448.0) return sign | 0x7e;
  const auto it = std::upper_bound(values.begin(), values.end(), x);  // first value > x
  const int hi = static_cast<int>(it - values.begin());
  const int lo = hi - 1;
  const double dlo = x - values[lo];
  const double dhi = values[hi] - x;
  int code = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
  return static_cast<std::uint8_t>(sign | code);
}

TEST(Fp8E4m3, RandomFloatsMatchAReferenceRounding) {
  std::mt19937 rng(4242);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-13, 9);  // from below subnormals to above 448
  std::bernoulli_distribution negative(0.5);
  for (int i = 0; i < 300'000; ++i) {
    float f = std::ldexp(mantissa(rng), exponent(rng));
    if (negative(rng)) f = -f;
    ASSERT_EQ(fp8_e4m3::from_float(f).bits, reference_fp8_round(f)) << "value " << f;
  }
}

TEST(Fp8E4m3, ValuesAbove448SaturateToMax) {
  const float inf = std::numeric_limits<float>::infinity();
  for (float f : {std::nextafter(448.0f, 1000.0f), 449.0f, 463.9f, 464.0f, 480.0f, 1e4f, 1e30f,
                  std::numeric_limits<float>::max(), inf}) {
    EXPECT_EQ(fp8_e4m3::from_float(f).bits, 0x7e) << "value " << f;
    EXPECT_EQ(fp8_e4m3::from_float(-f).bits, 0xfe) << "value " << -f;
  }
  // Just below 448 rounds normally: 432 is the midpoint of 416 (odd code) and 448 (even code).
  EXPECT_EQ(fp8_e4m3::from_float(432.0f).bits, 0x7e);
  EXPECT_EQ(fp8_e4m3::from_float(std::nextafter(432.0f, 0.0f)).bits, 0x7d);
}

TEST(Fp8E4m3, NanMapsToTheCanonicalNan) {
  const float qnan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(fp8_e4m3::from_float(qnan).bits, 0x7f);
  EXPECT_EQ(fp8_e4m3::from_float(-qnan).bits, 0x7f);
  EXPECT_EQ(fp8_e4m3::from_float(float_of(0x7f800001u)).bits, 0x7f);  // signalling payload
  EXPECT_EQ(fp8_e4m3::from_float(float_of(0xffffffffu)).bits, 0x7f);
}

TEST(Fp8E4m3, TinyValuesFlushToSignedZero) {
  const float half_smallest = 0x1p-10f;  // midpoint of 0 and 2^-9: ties to the even code 0
  for (float f : {half_smallest, std::nextafter(half_smallest, 0.0f), 0x1p-11f, 1e-20f,
                  float_of(0x00000001u), std::numeric_limits<float>::min()}) {
    EXPECT_EQ(fp8_e4m3::from_float(f).bits, 0x00) << "value " << f;
    EXPECT_EQ(fp8_e4m3::from_float(-f).bits, 0x80) << "value " << -f;
  }
  EXPECT_EQ(fp8_e4m3::from_float(0.0f).bits, 0x00);
  EXPECT_EQ(fp8_e4m3::from_float(-0.0f).bits, 0x80);
  EXPECT_EQ(fp8_e4m3::from_float(std::nextafter(half_smallest, 1.0f)).bits, 0x01);
  EXPECT_EQ(fp8_e4m3::from_float(-std::nextafter(half_smallest, 1.0f)).bits, 0x81);
}

TEST(Fp8E4m3, SubnormalRoundingCarriesIntoTheNormalRange) {
  // Between the largest subnormal 7·2^-9 and the smallest normal 8·2^-9 = 2^-6.
  EXPECT_EQ(fp8_e4m3::from_float(7.5f * 0x1p-9f).bits, 0x08);  // tie: 0x08 is even
  EXPECT_EQ(fp8_e4m3::from_float(std::nextafter(7.5f * 0x1p-9f, 0.0f)).bits, 0x07);
  // Carry at a binade boundary of the normal range: 1.9375 is the midpoint of 1.875 and 2.
  EXPECT_EQ(fp8_e4m3::from_float(1.9375f).bits, 0x40);
}

}  // namespace
}  // namespace dsattn
