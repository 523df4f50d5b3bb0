#include "dsattn/core/cuda_runtime.h"

#ifdef DSATTN_WITH_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <unordered_map>
#endif

namespace dsattn::cuda {

namespace {
thread_local void* g_current_stream = nullptr;
}  // namespace

void* current_stream() { return g_current_stream; }
void set_current_stream(void* stream) { g_current_stream = stream; }

#ifdef DSATTN_WITH_CUDA

namespace {
void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) fail<CudaError>("{} failed: {}", what, cudaGetErrorString(status));
}
}  // namespace

bool built_with_cuda() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: clear the sticky error and report none
    return 0;
  }
  return n;
}

std::string device_name(int index) {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
  return prop.name;
}

void synchronize() {
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(current_stream())),
        "cudaStreamSynchronize");
}

void synchronize_device(int index) noexcept {
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) return;
  if (previous != index) cudaSetDevice(index);
  cudaDeviceSynchronize();
  if (previous != index) cudaSetDevice(previous);
}

bool stream_is_capturing(void* stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status), "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

namespace {

// Sizes are rounded so that blocks are interchangeable: 512 B steps below 1 MiB, 2 MiB above.
std::size_t rounded_size(std::size_t bytes) {
  const std::size_t step = bytes < (1u << 20) ? 512 : (2u << 20);
  return (std::max<std::size_t>(bytes, 1) + step - 1) / step * step;
}

thread_local MemoryPool* g_active_pool = nullptr;

}  // namespace

// A pool's blocks: every block it ever took (freed with the pool) and those free for reuse.
struct MemoryPool::State {
  std::multimap<std::size_t, void*> free;
  std::unordered_map<void*, std::pair<std::size_t, int>> owned;  // block -> (size, device)
};

struct PoolAccess {
  static MemoryPool::State& state(MemoryPool& p) { return *p.state_; }
};

namespace {

class CachingAllocator {
 public:
  void* allocate(std::size_t bytes, int device) {
    const std::size_t size = rounded_size(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    if (g_active_pool) return allocate_in_pool(PoolAccess::state(*g_active_pool), size, device);
    return allocate_locked(size, device);
  }

  void* allocate_in_pool(MemoryPool::State& pool, std::size_t size, int device) {
    for (auto it = pool.free.lower_bound(size); it != pool.free.end() && it->first <= 2 * size;
         ++it) {
      if (pool.owned.at(it->second).second != device) continue;
      void* p = it->second;
      pool.free.erase(it);
      return p;
    }
    void* p = allocate_locked(size, device);
    const std::size_t real = devices_[device].live.at(p);
    pool.owned[p] = {real, device};
    return p;
  }

  // Returns a pool's blocks to the general cache.
  void release_pool(MemoryPool::State& pool) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [p, info] : pool.owned) free_locked(p, info.second);
    pool.owned.clear();
    pool.free.clear();
  }

  void* allocate_locked(std::size_t size, int device) {
    PerDevice& d = devices_[device];
    // Best fit among cached blocks, accepting up to twice the size (so large blocks are not
    // spent on small requests).
    auto it = d.free.lower_bound(size);
    if (it != d.free.end() && it->first <= 2 * size) {
      void* p = it->second;
      d.stats.cached -= it->first;
      d.live[p] = it->first;
      d.stats.in_use += it->first;
      d.free.erase(it);
      d.stats.peak_in_use = std::max(d.stats.peak_in_use, d.stats.in_use);
      return p;
    }
    check(cudaSetDevice(device), "cudaSetDevice");
    void* p = nullptr;
    cudaError_t status = cudaMalloc(&p, size);
    if (status == cudaErrorMemoryAllocation) {  // give the cache back and try once more
      cudaGetLastError();
      release_locked(d, device);
      status = cudaMalloc(&p, size);
    }
    if (status != cudaSuccess) {
      cudaGetLastError();
      fail<CudaError>("cudaMalloc of {} bytes on cuda:{} failed: {} ({} bytes in use)", size,
                      device, cudaGetErrorString(status), d.stats.in_use);
    }
    d.live[p] = size;
    d.stats.in_use += size;
    d.stats.peak_in_use = std::max(d.stats.peak_in_use, d.stats.in_use);
    return p;
  }

  void free(void* p, int device) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    // A block of a pool goes back to that pool (whichever pool is active now).
    for (MemoryPool* pool : pools_) {
      MemoryPool::State& st = PoolAccess::state(*pool);
      auto it = st.owned.find(p);
      if (it != st.owned.end()) {
        st.free.emplace(it->second.first, p);
        return;
      }
    }
    free_locked(p, device);
  }

  void free_locked(void* p, int device) noexcept {
    PerDevice& d = devices_[device];
    auto it = d.live.find(p);
    if (it == d.live.end()) return;
    d.free.emplace(it->second, p);
    d.stats.in_use -= it->second;
    d.stats.cached += it->second;
    d.live.erase(it);
  }

  DeviceMemoryStats stats(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    return devices_[device].stats;
  }

  void reset_peak(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceMemoryStats& st = devices_[device].stats;
    st.peak_in_use = st.in_use;
  }

  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [device, d] : devices_) release_locked(d, device);
  }

  void add_pool(MemoryPool* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    pools_.push_back(p);
  }
  void remove_pool(MemoryPool* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    pools_.erase(std::find(pools_.begin(), pools_.end(), p));
  }

 private:
  struct PerDevice {
    std::multimap<std::size_t, void*> free;
    std::unordered_map<void*, std::size_t> live;
    DeviceMemoryStats stats;
  };

  void release_locked(PerDevice& d, int device) {
    cudaSetDevice(device);
    cudaDeviceSynchronize();  // blocks may still be read by queued work
    for (auto& [size, p] : d.free) cudaFree(p);
    d.free.clear();
    d.stats.cached = 0;
  }

  std::mutex mutex_;
  std::map<int, PerDevice> devices_;
  std::vector<MemoryPool*> pools_;
};

CachingAllocator& allocator() {
  static auto* a = new CachingAllocator();  // never destroyed: tensors may outlive statics
  return *a;
}

}  // namespace

void* device_malloc(std::size_t bytes, Device device) {
  return allocator().allocate(bytes, device.index);
}

void device_free(void* p, Device device) noexcept { allocator().free(p, device.index); }

DeviceMemoryStats device_memory_stats(Device device) { return allocator().stats(device.index); }

void reset_peak_device_memory(Device device) { allocator().reset_peak(device.index); }

void release_cached_memory() { allocator().release(); }

MemoryPool::MemoryPool() : state_(new State) { allocator().add_pool(this); }

MemoryPool::~MemoryPool() {
  allocator().remove_pool(this);
  allocator().release_pool(*state_);
  delete state_;
}

MemoryPool::Use::Use(MemoryPool& pool) : previous_(g_active_pool) { g_active_pool = &pool; }
MemoryPool::Use::~Use() { g_active_pool = previous_; }

std::size_t MemoryPool::reserved_bytes() const {
  std::size_t n = 0;
  for (const auto& [p, info] : state_->owned) n += info.first;
  return n;
}

void memcpy(void* dst, Device dst_device, const void* src, Device src_device, std::size_t bytes) {
  const cudaMemcpyKind kind = dst_device.is_cpu()   ? cudaMemcpyDeviceToHost
                              : src_device.is_cpu() ? cudaMemcpyHostToDevice
                                                    : cudaMemcpyDeviceToDevice;
  // Ordered with the ops on the current stream; synchronous towards the host for host targets.
  const auto stream = static_cast<cudaStream_t>(current_stream());
  check(cudaMemcpyAsync(dst, src, bytes, kind, stream), "cudaMemcpyAsync");
  if (dst_device.is_cpu() || src_device.is_cpu()) {
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }
}

#else

bool built_with_cuda() { return false; }
void synchronize() {}
bool stream_is_capturing(void*) { return false; }
void synchronize_device(int) noexcept {}
int device_count() { return 0; }
std::string device_name(int) { fail<Unsupported>("this build of dsattn has no CUDA support"); }
void* device_malloc(std::size_t, Device device) {
  fail<Unsupported>("cannot allocate on {}: this build of dsattn has no CUDA support",
                    to_string(device));
}
void device_free(void*, Device) noexcept {}
DeviceMemoryStats device_memory_stats(Device) { return {}; }
void reset_peak_device_memory(Device) {}
void release_cached_memory() {}

struct MemoryPool::State {};
MemoryPool::MemoryPool() : state_(new State) {}
MemoryPool::~MemoryPool() { delete state_; }
MemoryPool::Use::Use(MemoryPool&) : previous_(nullptr) {}
MemoryPool::Use::~Use() {}
std::size_t MemoryPool::reserved_bytes() const { return 0; }
void memcpy(void*, Device dst_device, const void*, Device src_device, std::size_t) {
  fail<Unsupported>("cannot copy {} -> {}: this build of dsattn has no CUDA support",
                    to_string(src_device), to_string(dst_device));
}

#endif

}  // namespace dsattn::cuda
