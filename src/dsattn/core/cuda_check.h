// Error checks for CUDA runtime and library calls, for code compiled with the CUDA backend.
// Each failure becomes a dsattn::CudaError naming the call, the file and the line.
#pragma once

#include <cuda_runtime_api.h>

#include "dsattn/core/error.h"

#define DSATTN_CUDA_CHECK(expr)                                                                \
  do {                                                                                         \
    const cudaError_t dsattn_status_ = (expr);                                                 \
    if (dsattn_status_ != cudaSuccess) {                                                       \
      ::dsattn::fail<::dsattn::CudaError>("{} failed at {}:{}: {}", #expr, __FILE__, __LINE__, \
                                          cudaGetErrorString(dsattn_status_));                 \
    }                                                                                          \
  } while (0)

// After a kernel launch: reports a bad launch configuration at the launch site.
#define DSATTN_CHECK_LAUNCH() DSATTN_CUDA_CHECK(cudaGetLastError())
