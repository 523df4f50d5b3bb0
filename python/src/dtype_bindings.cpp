// Conversions between float32 and the storage types NumPy lacks (bf16 as uint16 bits, fp8 e4m3 as
// uint8 bits), with the library's rounding: to nearest, ties to even, as the GPU converts.
#include <fmt/format.h>

#include <cstdint>
#include <vector>

#include "bindings.h"
#include "dsattn/core/dtype.h"
#include "tensor_args.h"

namespace dsattn::python {

namespace {

// Applies `convert` to every element of the C-contiguous CPU array `obj` (the argument `name`,
// of dtype `in`) and returns a new NumPy array of the same shape.
template <typename To, typename From, typename Convert>
nb::ndarray<nb::numpy, To> map_elements(nb::handle obj, const char* name, DType in,
                                        Convert convert) {
  const nb::ndarray<nb::ro> a = import_array(obj, name, false);
  argument_dtype(a, name, {in});
  if (a.device_type() != nb::device::cpu::value) {
    throw nb::value_error(
        fmt::format("{}: expected a CPU array, got DLPack device type {}", name, a.device_type())
            .c_str());
  }
  std::int64_t expected_stride = 1;
  for (int i = static_cast<int>(a.ndim()) - 1; i >= 0; --i) {
    if (a.shape(i) > 1 && a.stride(i) != expected_stride) {
      throw nb::value_error(
          fmt::format("{}: expected a C-contiguous array (np.ascontiguousarray)", name).c_str());
    }
    expected_stride *= static_cast<std::int64_t>(a.shape(i));
  }
  const std::size_t n = a.size();
  const auto* src = static_cast<const From*>(a.data());
  auto* dst = new To[n > 0 ? n : 1];
  for (std::size_t i = 0; i < n; ++i) dst[i] = convert(src[i]);
  nb::capsule owner(dst, [](void* p) noexcept { delete[] static_cast<To*>(p); });
  std::vector<std::size_t> shape(a.ndim());
  for (std::size_t i = 0; i < a.ndim(); ++i) shape[i] = a.shape(i);
  return nb::ndarray<nb::numpy, To>(dst, a.ndim(), shape.data(), owner);
}

}  // namespace

void bind_dtypes(nb::module_& m) {
  m.def(
      "bf16_to_float32",
      [](nb::handle bits) {
        return map_elements<float, std::uint16_t>(bits, "bits", DType::bf16, [](std::uint16_t b) {
          return bf16::from_bits(b).to_float();
        });
      },
      nb::arg("bits"),
      "Widens bfloat16 values to float32 (exactly).\n\n"
      "bits: any shape, uint16 holding bfloat16 bit patterns (or a CPU torch.bfloat16 tensor),\n"
      "C-contiguous, on the CPU. Returns a float32 NumPy array of the same shape.");
  m.def(
      "float32_to_bf16",
      [](nb::handle values) {
        return map_elements<std::uint16_t, float>(values, "values", DType::f32,
                                                  [](float v) { return bf16::from_float(v).bits; });
      },
      nb::arg("values"),
      "Rounds float32 values to bfloat16, to nearest with ties to even (NaN stays NaN).\n\n"
      "values: any shape, float32, C-contiguous, on the CPU. Returns a uint16 NumPy array of the\n"
      "same shape holding the bfloat16 bit patterns.");
  m.def(
      "fp8_e4m3_to_float32",
      [](nb::handle bits) {
        return map_elements<float, std::uint8_t>(bits, "bits", DType::fp8_e4m3, [](std::uint8_t b) {
          return fp8_e4m3::from_bits(b).to_float();
        });
      },
      nb::arg("bits"),
      "Widens float8 e4m3 (the 'fn' flavour: bias 7, no infinities, 0x7f/0xff NaN) to float32.\n\n"
      "bits: any shape, uint8 holding e4m3 bit patterns, C-contiguous, on the CPU. Returns a\n"
      "float32 NumPy array of the same shape.");
  m.def(
      "float32_to_fp8_e4m3",
      [](nb::handle values) {
        return map_elements<std::uint8_t, float>(
            values, "values", DType::f32, [](float v) { return fp8_e4m3::from_float(v).bits; });
      },
      nb::arg("values"),
      "Rounds float32 values to float8 e4m3, to nearest with ties to even, saturating to +-448\n"
      "(NaN maps to 0x7f).\n\n"
      "values: any shape, float32, C-contiguous, on the CPU. Returns a uint8 NumPy array of the\n"
      "same shape holding the e4m3 bit patterns.");
}

}  // namespace dsattn::python
