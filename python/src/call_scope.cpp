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

// Per device: an event recorded at the end of the last call outside a graph capture.
struct LastCall {
  cudaEvent_t done = nullptr;
};
std::mutex g_streams_mutex;
std::map<int, LastCall> g_last_call;

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

CallScope::CallScope(Device device, std::uintptr_t stream, Capture capture) {
  if (!device.is_cuda()) return;
#ifdef DSATTN_WITH_CUDA
  capturing_ = cuda::stream_is_capturing(reinterpret_cast<void*>(stream));
  if (capturing_ && capture == Capture::refuse) {
    fail(
        "this call cannot be captured in a CUDA graph: its temporaries come from the general "
        "allocator, whose blocks a graph's replays would share with later calls; capture a "
        "DecodeStep's run() (it keeps its own), or make this call outside the capture");
  }
  check_cuda(cudaGetDevice(&previous_device_), "cudaGetDevice");
  if (previous_device_ != device.index) check_cuda(cudaSetDevice(device.index), "cudaSetDevice");
  // Inside a capture nothing is ordered or recorded: a capture may not wait on work outside it
  // (torch.cuda.graph synchronises the device before it starts), and what it captures allocates
  // from its own pool. Otherwise the stream waits for the end of the last call on this device,
  // whatever stream that was (a wait on the same stream is free; a stream handle may be reused).
  if (!capturing_) {
    std::lock_guard<std::mutex> lock(g_streams_mutex);
    LastCall& last = g_last_call[device.index];
    if (!last.done) {
      check_cuda(cudaEventCreateWithFlags(&last.done, cudaEventDisableTiming),
                 "cudaEventCreateWithFlags");
    } else {
      check_cuda(cudaStreamWaitEvent(reinterpret_cast<cudaStream_t>(stream), last.done, 0),
                 "cudaStreamWaitEvent");
    }
  }
#endif
  stream_.emplace(reinterpret_cast<void*>(stream));
  device_ = device.index;
  raw_stream_ = stream;
}

CallScope::~CallScope() {
#ifdef DSATTN_WITH_CUDA
  if (device_ >= 0 && !capturing_) {
    std::lock_guard<std::mutex> lock(g_streams_mutex);
    cudaEventRecord(g_last_call[device_].done, reinterpret_cast<cudaStream_t>(raw_stream_));
  }
  if (previous_device_ >= 0) cudaSetDevice(previous_device_);
#endif
}

}  // namespace dsattn::python
