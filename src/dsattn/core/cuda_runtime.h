// The slice of the CUDA runtime that core needs: device discovery, memory and copies. In a build
// without CUDA these exist too and report that no GPU can be used, so callers need no #ifdefs.
#pragma once

#include <cstddef>
#include <string>

#include "dsattn/core/tensor.h"

namespace dsattn::cuda {

// True when this build was compiled with the CUDA backend.
bool built_with_cuda();
// Number of usable CUDA devices (0 without a CUDA build or without a driver).
int device_count();
// Name of device `index`, e.g. "NVIDIA H100 80GB HBM3".
std::string device_name(int index);

// The stream every CUDA op of this thread launches on (a cudaStream_t; null is the legacy default
// stream). Engines set it to their own stream so that dsattn's work orders with theirs.
void* current_stream();
void set_current_stream(void* stream);

// Sets the current stream for a scope.
class StreamGuard {
 public:
  explicit StreamGuard(void* stream) : previous_(current_stream()) { set_current_stream(stream); }
  ~StreamGuard() { set_current_stream(previous_); }
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  void* previous_;
};

// Waits for all work on the current stream.
void synchronize();
// Waits for all work on device `index` (nothing without CUDA). Never throws: for destructors.
void synchronize_device(int index) noexcept;
// True while `stream` (a cudaStream_t) is being captured into a CUDA graph (by dsattn or the
// caller): no synchronisation and no cudaMalloc may happen then.
bool stream_is_capturing(void* stream);

// Device memory for tensors, through a caching allocator: freed blocks are kept for reuse by
// later allocations of a similar size on the same device, in stream order (every op runs on the
// current stream), so that a forward's temporaries cost no cudaMalloc/cudaFree once warm.
void* device_malloc(std::size_t bytes, Device device);
void device_free(void* p, Device device) noexcept;
// Bytes held by the caching allocator on `device`: in use, and cached for reuse.
struct DeviceMemoryStats {
  std::size_t in_use = 0, cached = 0, peak_in_use = 0;
};
DeviceMemoryStats device_memory_stats(Device device);
// Starts a new peak: peak_in_use becomes what is in use now.
void reset_peak_device_memory(Device device);
// Returns every cached (unused) block to the driver.
void release_cached_memory();

// While a MemoryPool is active on a thread, that thread's device allocations come from the pool
// and return to it when freed: memory a captured CUDA graph uses stays reserved for the graph
// (whose replays would otherwise write into blocks handed out again), and is released when the
// pool is destroyed. Pools nest; the innermost active one serves.
class MemoryPool {
 public:
  MemoryPool();
  ~MemoryPool();
  MemoryPool(const MemoryPool&) = delete;
  MemoryPool& operator=(const MemoryPool&) = delete;

  // Makes this pool serve the calling thread's allocations until the guard ends.
  class Use {
   public:
    explicit Use(MemoryPool& pool);
    ~Use();
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;

   private:
    [[maybe_unused]] MemoryPool* previous_;  // restored by the destructor (CUDA builds)
  };

  std::size_t reserved_bytes() const;

  struct State;  // the pool's blocks (cuda_runtime.cpp)

 private:
  friend struct PoolAccess;
  State* state_;
};
void memcpy(void* dst, Device dst_device, const void* src, Device src_device, std::size_t bytes);

}  // namespace dsattn::cuda
