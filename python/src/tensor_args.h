// Tensors from Python as dsattn views, zero-copy: anything with __dlpack__ (NumPy, PyTorch, CuPy)
// on the CPU or a CUDA device. NumPy has no bfloat16 or float8, so a bf16 argument also takes
// uint16 arrays holding the bit patterns, and an fp8 e4m3 one uint8.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <initializer_list>
#include <string>

#include "dsattn/core/tensor.h"

namespace dsattn::python {

namespace nb = nanobind;

// An imported argument: the DLPack import (kept alive for the call) and a view of its memory.
struct TensorArg {
  nb::ndarray<nb::ro> array;
  TensorView view;

  Device device() const { return view.device(); }
};

// Imports `obj` as the argument `name`, which must have one of `dtypes` and `ndim` dimensions
// (`dims` names them in messages, e.g. "[tokens, hidden_size]"). Throws TypeError for an object
// that is not a tensor or has another dtype, ValueError for another rank or a device other than
// the CPU or CUDA. `writable` refuses read-only arrays (outputs).
TensorArg tensor_arg(nb::handle obj, const char* name, std::initializer_list<DType> dtypes,
                     int ndim, const char* dims, bool writable = false);

// An optional argument: empty (its view empty) when `obj` is None, else tensor_arg's import,
// which must live on `device` (`owner` says why, as in check_same_device).
TensorArg optional_tensor_arg(nb::handle obj, const char* name, std::initializer_list<DType> dtypes,
                              int ndim, const char* dims, bool writable, Device device,
                              const char* owner);

// The two steps of tensor_arg on their own, for arrays of any rank: the import (TypeError when
// `obj` is no tensor) and the dtype of the arguments `dtypes` it stands for (TypeError otherwise).
nb::ndarray<nb::ro> import_array(nb::handle obj, const char* name, bool writable);
DType argument_dtype(const nb::ndarray<nb::ro>& array, const char* name,
                     std::initializer_list<DType> dtypes);

// The dtype name of a DLPack dtype, as the frameworks spell it ("bfloat16", "uint8", ...).
std::string dlpack_dtype_name(nb::dlpack::dtype dtype);

// Throws ValueError unless every argument lives on `device`; `owner` says why that device
// ("the layer's device", "q's device").
void check_same_device(std::initializer_list<std::pair<const char*, const TensorArg*>> args,
                       Device device, const char* owner);

// The name of obj's type, for messages ("list", "ndarray", "Tensor").
std::string python_type_name(nb::handle obj);

// Parses "cpu", "cuda" or "cuda:N".
Device parse_device(const std::string& text);

}  // namespace dsattn::python
