// Where a call's CUDA work runs: on the caller's device and stream, so that it is ordered with the
// caller's own work (PyTorch's or CuPy's current stream, or the one passed explicitly).
#pragma once

#include <nanobind/nanobind.h>

#include <cstdint>
#include <optional>

#include "dsattn/core/cuda_runtime.h"
#include "dsattn/core/tensor.h"

namespace dsattn::python {

namespace nb = nanobind;

// The cudaStream_t to run on for tensors on `device`: `stream` when given (an int), else the
// current stream of the framework `tensor` belongs to (PyTorch, CuPy), else the default stream
// (0). Always 0 for the CPU. Needs the GIL.
std::uintptr_t resolve_stream(nb::handle stream, nb::handle tensor, Device device);

// For a CUDA device: makes it the current device and `stream` dsattn's current stream for the
// scope. The library's caching allocator reuses freed blocks in the order of one stream, so every
// call first makes its stream wait for an event recorded at the end of the previous call on that
// device (no device synchronisation). A call on a stream being captured into a CUDA graph is
// refused unless it is one that may be captured (Capture::allow: it allocates only from a pool of
// its own); then nothing is waited for or recorded. Nothing for the CPU.
class CallScope {
 public:
  enum class Capture { refuse, allow };
  CallScope(Device device, std::uintptr_t stream, Capture capture = Capture::refuse);
  ~CallScope();
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

 private:
  std::optional<cuda::StreamGuard> stream_;
  int previous_device_ = -1;
  int device_ = -1;  // CUDA only
  std::uintptr_t raw_stream_ = 0;
  bool capturing_ = false;
};

}  // namespace dsattn::python
