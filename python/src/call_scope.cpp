#include "call_scope.h"

#include <fmt/format.h>

#include <map>
#include <mutex>
#include <string>

#include "dsattn/core/error.h"
#include "tensor_args.h"

#ifdef DSATTN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace dsattn::python {

namespace {

bool is_instance_of(nb::handle obj, const char* module, const char* type) {
  // Only frameworks the caller already imported can own the tensor: never import one here.
  nb::object modules = nb::module_::import_("sys").attr("modules");
  if (!nb::cast<bool>(modules.attr("__contains__")(module))) return false;
  return nb::isinstance(obj, modules[module].attr(type));
}

#ifdef DSATTN_WITH_CUDA
void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    fail<CudaError>("{} failed: {}", what, cudaGetErrorString(status));
  }
}

// The stream of the last call per device.
std::mutex g_streams_mutex;
std::map<int, std::uintptr_t> g_last_stream;
#endif

}  // namespace

std::uintptr_t resolve_stream(nb::handle stream, nb::handle tensor, Device device) {
  if (!stream.is_none() && (!PyLong_Check(stream.ptr()) || PyBool_Check(stream.ptr()))) {
    throw nb::type_error(fmt::format("stream: expected an int (a cudaStream_t) or None, got {}",
                                     python_type_name(stream))
                             .c_str());
  }
  if (device.is_cpu()) return 0;
  if (!stream.is_none()) return nb::cast<std::uintptr_t>(stream);
  if (is_instance_of(tensor, "torch", "Tensor")) {
    nb::object torch = nb::module_::import_("torch");
    return nb::cast<std::uintptr_t>(
        torch.attr("cuda").attr("current_stream")(tensor.attr("device")).attr("cuda_stream"));
  }
  if (is_instance_of(tensor, "cupy", "ndarray")) {
    nb::object cupy = nb::module_::import_("cupy");
    return nb::cast<std::uintptr_t>(cupy.attr("cuda").attr("get_current_stream")().attr("ptr"));
  }
  return 0;
}

CallScope::CallScope(Device device, std::uintptr_t stream) {
  if (!device.is_cuda()) return;
#ifdef DSATTN_WITH_CUDA
  check_cuda(cudaGetDevice(&previous_device_), "cudaGetDevice");
  if (previous_device_ != device.index) check_cuda(cudaSetDevice(device.index), "cudaSetDevice");
  {
    std::lock_guard<std::mutex> lock(g_streams_mutex);
    auto it = g_last_stream.find(device.index);
    if (it != g_last_stream.end() && it->second != stream) {
      check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    }
    g_last_stream[device.index] = stream;
  }
#endif
  stream_.emplace(reinterpret_cast<void*>(stream));
}

CallScope::~CallScope() {
#ifdef DSATTN_WITH_CUDA
  if (previous_device_ >= 0) cudaSetDevice(previous_device_);
#endif
}

}  // namespace dsattn::python
