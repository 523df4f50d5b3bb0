// Small host-built index arrays (positions, slots, offsets) handed to the ops on the layer's
// device.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "dsattn/core/tensor.h"

namespace dsattn {

// A [values.size()] i32 tensor on `device` holding `values`.
Tensor upload_i32(std::span<const std::int32_t> values, Device device);
// A [rows, cols] i32 tensor on `device` from row-major `values`.
Tensor upload_i32(std::span<const std::int32_t> values, std::int64_t rows, std::int64_t cols,
                  Device device);

}  // namespace dsattn
