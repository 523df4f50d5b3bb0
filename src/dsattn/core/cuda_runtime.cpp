#include "dsattn/core/cuda_runtime.h"

#ifdef DSATTN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace dsattn::cuda {

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

void* device_malloc(std::size_t bytes, Device device) {
  check(cudaSetDevice(device.index), "cudaSetDevice");
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "cudaMalloc");
  return p;
}

void device_free(void* p, Device device) noexcept {
  cudaSetDevice(device.index);
  cudaFree(p);
}

void memcpy(void* dst, Device dst_device, const void* src, Device src_device, std::size_t bytes) {
  const cudaMemcpyKind kind = dst_device.is_cpu()   ? cudaMemcpyDeviceToHost
                              : src_device.is_cpu() ? cudaMemcpyHostToDevice
                                                    : cudaMemcpyDeviceToDevice;
  check(cudaMemcpy(dst, src, bytes, kind), "cudaMemcpy");
}

#else

bool built_with_cuda() { return false; }
int device_count() { return 0; }
std::string device_name(int) { fail<Unsupported>("this build of dsattn has no CUDA support"); }
void* device_malloc(std::size_t, Device device) {
  fail<Unsupported>("cannot allocate on {}: this build of dsattn has no CUDA support",
                    to_string(device));
}
void device_free(void*, Device) noexcept {}
void memcpy(void*, Device dst_device, const void*, Device src_device, std::size_t) {
  fail<Unsupported>("cannot copy {} -> {}: this build of dsattn has no CUDA support",
                    to_string(src_device), to_string(dst_device));
}

#endif

}  // namespace dsattn::cuda
