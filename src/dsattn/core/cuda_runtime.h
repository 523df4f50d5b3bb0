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

void* device_malloc(std::size_t bytes, Device device);
void device_free(void* p, Device device) noexcept;
void memcpy(void* dst, Device dst_device, const void* src, Device src_device, std::size_t bytes);

}  // namespace dsattn::cuda
