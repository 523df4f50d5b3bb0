// Element types of dsattn tensors and their scalar conversions.
//
// bf16 and fp8 e4m3 are storage types: arithmetic happens in f32. Conversions from f32 round to
// nearest, ties to even, as the GPU's cvt.rn instructions do, so that the CPU backend and the
// CUDA kernels store bit-identical values for identical f32 inputs.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace dsattn {

enum class DType : std::uint8_t { f32, bf16, fp8_e4m3, i32, u8 };

constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
    case DType::i32:
      return 4;
    case DType::bf16:
      return 2;
    case DType::fp8_e4m3:
    case DType::u8:
      return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::bf16:
      return "bf16";
    case DType::fp8_e4m3:
      return "fp8_e4m3";
    case DType::i32:
      return "i32";
    case DType::u8:
      return "u8";
  }
  return "?";
}

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// bfloat16: the upper half of an IEEE f32.
struct bf16 {
  std::uint16_t bits = 0;

  static bf16 from_bits(std::uint16_t b) { return bf16{b}; }
  // Round to nearest even; NaN stays NaN (quiet), infinities stay infinite.
  static bf16 from_float(float f) {
    std::uint32_t u = float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x40)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16{static_cast<std::uint16_t>(u >> 16)};
  }
  float to_float() const { return bits_float(static_cast<std::uint32_t>(bits) << 16); }
};

// FP8 e4m3 in the "fn" flavour used by DeepSeek-V3.2 (and CUDA's __nv_fp8_e4m3): bias 7, no
// infinities, 0x7f/0xff are NaN, largest finite value 448.
struct fp8_e4m3 {
  std::uint8_t bits = 0;
  static constexpr float kMax = 448.0f;

  static fp8_e4m3 from_bits(std::uint8_t b) { return fp8_e4m3{b}; }
  // Round to nearest even, saturating to ±448 (the satfinite mode of cvt.rn.satfinite.e4m3x2);
  // NaN maps to 0x7f.
  static fp8_e4m3 from_float(float f);
  float to_float() const;
};

inline float to_float(float v) { return v; }
inline float to_float(bf16 v) { return v.to_float(); }
inline float to_float(fp8_e4m3 v) { return v.to_float(); }

template <typename T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct dtype_of<bf16> {
  static constexpr DType value = DType::bf16;
};
template <>
struct dtype_of<fp8_e4m3> {
  static constexpr DType value = DType::fp8_e4m3;
};
template <>
struct dtype_of<std::int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct dtype_of<std::uint8_t> {
  static constexpr DType value = DType::u8;
};

}  // namespace dsattn
