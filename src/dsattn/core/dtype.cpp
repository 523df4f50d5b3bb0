#include "dsattn/core/dtype.h"

#include <cmath>

namespace dsattn {

float fp8_e4m3::to_float() const {
  const int sign = bits >> 7;
  const int exponent = (bits >> 3) & 0xf;
  const int mantissa = bits & 0x7;
  float magnitude;
  if (exponent == 0xf && mantissa == 0x7) {
    magnitude = NAN;
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -9);  // subnormal: m/8 * 2^-6
  } else {
    magnitude = std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
  }
  return sign ? -magnitude : magnitude;
}

fp8_e4m3 fp8_e4m3::from_float(float f) {
  if (std::isnan(f)) return fp8_e4m3{0x7f};
  const std::uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  const float a = std::fabs(f);
  if (a >= kMax) return fp8_e4m3{static_cast<std::uint8_t>(sign | 0x7e)};
  if (a == 0.0f) return fp8_e4m3{sign};
  // Scale so that one unit in the last place of the target is 1.0, then round the integer
  // with nearbyint (ties to even under the default rounding mode).
  int e;
  std::frexp(a, &e);                 // a = m * 2^e, m in [0.5, 1)
  int unbiased = e - 1;              // a = 1.x * 2^unbiased
  if (unbiased < -6) unbiased = -6;  // subnormal range shares the exponent of the smallest normal
  const float scaled = std::ldexp(a, 3 - unbiased);  // in [0, 16)
  const float rounded = std::nearbyint(scaled);
  const int code_value = static_cast<int>(rounded);  // mantissa with implicit bit, up to 16
  int exponent_field;
  int mantissa_field;
  if (unbiased == -6 && code_value < 8) {
    exponent_field = 0;
    mantissa_field = code_value;
  } else if (code_value == 16) {  // rounding carried into the next binade
    exponent_field = unbiased + 8;
    mantissa_field = 0;
  } else {
    exponent_field = unbiased + 7;
    mantissa_field = code_value - 8;
  }
  if (exponent_field > 15 || (exponent_field == 15 && mantissa_field > 6)) {
    return fp8_e4m3{static_cast<std::uint8_t>(sign | 0x7e)};
  }
  return fp8_e4m3{static_cast<std::uint8_t>(sign | (exponent_field << 3) | mantissa_field)};
}

}  // namespace dsattn
