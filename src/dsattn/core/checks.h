// Argument checks shared by every op: each names the argument, the expectation and the value.
#pragma once

#include <initializer_list>
#include <string_view>

#include "dsattn/core/tensor.h"

namespace dsattn {

// Use kAny in an expected shape for a dimension that may take any size.
inline constexpr std::int64_t kAny = -1;

void check_shape(const TensorView& t, std::string_view name,
                 std::initializer_list<std::int64_t> expected);
void check_dtype(const TensorView& t, std::string_view name, DType expected);
void check_device(const TensorView& t, std::string_view name, Device expected);
// The last dimension is dense (stride 1); rows may be strided.
void check_inner_contiguous(const TensorView& t, std::string_view name);
void check_contiguous(const TensorView& t, std::string_view name);

}  // namespace dsattn
