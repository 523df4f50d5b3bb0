#include "tensor_args.h"

#include <fmt/format.h>
#include <nanobind/stl/string.h>

#include <charconv>
#include <vector>

namespace dsattn::python {

namespace {

using Code = nb::dlpack::dtype_code;

constexpr int kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3;

bool is(nb::dlpack::dtype t, Code code, int bits) {
  return t.code == static_cast<std::uint8_t>(code) && t.bits == bits && t.lanes == 1;
}

// Whether a DLPack dtype may stand for `want`: the framework's own type, or the unsigned integer
// of the same width holding its bits (NumPy has neither bfloat16 nor float8).
bool accepts(DType want, nb::dlpack::dtype t) {
  switch (want) {
    case DType::f32:
      return is(t, Code::Float, 32);
    case DType::bf16:
      return is(t, Code::Bfloat, 16) || is(t, Code::UInt, 16);
    case DType::fp8_e4m3:
      return is(t, Code::Float8_E4M3FN, 8) || is(t, Code::UInt, 8);
    case DType::i32:
      return is(t, Code::Int, 32);
    case DType::u8:
      return is(t, Code::UInt, 8);
  }
  return false;
}

std::string expected_name(DType t) {
  switch (t) {
    case DType::f32:
      return "float32";
    case DType::bf16:
      return "bfloat16 (or uint16 bits)";
    case DType::fp8_e4m3:
      return "float8_e4m3fn (or uint8 bits)";
    case DType::i32:
      return "int32";
    case DType::u8:
      return "uint8";
  }
  return "?";
}

}  // namespace

std::string python_type_name(nb::handle obj) {
  return nb::cast<std::string>(nb::str(nb::handle(Py_TYPE(obj.ptr())).attr("__name__")));
}

std::string dlpack_dtype_name(nb::dlpack::dtype t) {
  std::string base;
  switch (static_cast<Code>(t.code)) {
    case Code::Int:
      base = fmt::format("int{}", t.bits);
      break;
    case Code::UInt:
      base = fmt::format("uint{}", t.bits);
      break;
    case Code::Float:
      base = fmt::format("float{}", t.bits);
      break;
    case Code::Bfloat:
      base = fmt::format("bfloat{}", t.bits);
      break;
    case Code::Complex:
      base = fmt::format("complex{}", t.bits);
      break;
    case Code::Bool:
      base = "bool";
      break;
    case Code::Float8_E4M3FN:
      base = "float8_e4m3fn";
      break;
    case Code::Float8_E5M2:
      base = "float8_e5m2";
      break;
    default:
      base = fmt::format("dlpack type code {} of {} bits", t.code, t.bits);
  }
  return t.lanes == 1 ? base : fmt::format("{}x{}", base, t.lanes);
}

nb::ndarray<nb::ro> import_array(nb::handle obj, const char* name, bool writable) {
  nb::ndarray<nb::ro> array;
  bool imported = false;
  if (writable) {
    nb::ndarray<> w;
    imported = nb::try_cast(obj, w, false);
    if (imported) array = nb::ndarray<nb::ro>(w);
  } else {
    imported = nb::try_cast(obj, array, false);
  }
  if (imported) return array;
  if (writable && nb::ndarray_check(obj)) {
    throw nb::value_error(fmt::format("{}: expected a writable tensor, got a read-only {}", name,
                                      python_type_name(obj))
                              .c_str());
  }
  throw nb::type_error(
      fmt::format("{}: expected a tensor (NumPy, PyTorch, CuPy or any DLPack array), got {}", name,
                  python_type_name(obj))
          .c_str());
}

DType argument_dtype(const nb::ndarray<nb::ro>& array, const char* name,
                     std::initializer_list<DType> dtypes) {
  for (DType want : dtypes) {
    if (accepts(want, array.dtype())) return want;
  }
  std::string want;
  for (DType d : dtypes) want += (want.empty() ? "" : " or ") + expected_name(d);
  throw nb::type_error(
      fmt::format("{}: expected dtype {}, got {}", name, want, dlpack_dtype_name(array.dtype()))
          .c_str());
}

TensorArg tensor_arg(nb::handle obj, const char* name, std::initializer_list<DType> dtypes,
                     int ndim, const char* dims, bool writable) {
  TensorArg arg;
  arg.array = import_array(obj, name, writable);
  const nb::ndarray<nb::ro>& a = arg.array;
  const DType dtype = argument_dtype(a, name, dtypes);

  if (static_cast<int>(a.ndim()) != ndim) {
    std::vector<std::int64_t> shape(a.shape_ptr(), a.shape_ptr() + a.ndim());
    throw nb::value_error(fmt::format("{}: expected {} dimensions {}, got shape {}", name, ndim,
                                      dims, shape_string(shape))
                              .c_str());
  }

  Device device;
  switch (a.device_type()) {
    case kDLCPU:
    case kDLCUDAHost:  // pinned host memory: the CPU reads it directly
      device = Device::cpu();
      break;
    case kDLCUDA:
      device = Device::cuda(a.device_id());
      break;
    default:
      throw nb::value_error(
          fmt::format("{}: expected a CPU or CUDA tensor, got DLPack device type {}", name,
                      a.device_type())
              .c_str());
  }

  const std::span<const std::int64_t> shape(a.shape_ptr(), a.ndim());
  const std::span<const std::int64_t> strides(a.stride_ptr(), a.ndim());
  arg.view = TensorView(const_cast<void*>(a.data()), dtype, device, shape, strides);
  return arg;
}

void check_same_device(std::initializer_list<std::pair<const char*, const TensorArg*>> args,
                       Device device, const char* owner) {
  for (const auto& [name, t] : args) {
    if (!(t->device() == device)) {
      throw nb::value_error(fmt::format("{}: expected a tensor on {} ({}), got one on {}", name,
                                        to_string(device), owner, to_string(t->device()))
                                .c_str());
    }
  }
}

TensorArg optional_tensor_arg(nb::handle obj, const char* name, std::initializer_list<DType> dtypes,
                              int ndim, const char* dims, bool writable, Device device,
                              const char* owner) {
  if (obj.is_none()) return {};
  TensorArg arg = tensor_arg(obj, name, dtypes, ndim, dims, writable);
  check_same_device({{name, &arg}}, device, owner);
  return arg;
}

Device parse_device(const std::string& text) {
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") return Device::cuda(0);
  if (text.starts_with("cuda:")) {
    int index = -1;
    const char* begin = text.data() + 5;
    const char* end = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(begin, end, index);
    if (ec == std::errc() && ptr == end && begin != end && index >= 0) return Device::cuda(index);
  }
  throw nb::value_error(
      fmt::format("device: expected \"cpu\", \"cuda\" or \"cuda:N\", got \"{}\"", text).c_str());
}

}  // namespace dsattn::python
