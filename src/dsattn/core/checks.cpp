#include "dsattn/core/checks.h"

#include <vector>

namespace dsattn {

void check_shape(const TensorView& t, std::string_view name,
                 std::initializer_list<std::int64_t> expected) {
  bool ok = t.ndim() == static_cast<int>(expected.size());
  int i = 0;
  for (std::int64_t e : expected) {
    if (ok && e != kAny && t.size(i) != e) ok = false;
    ++i;
  }
  if (ok) return;
  std::string want = "[";
  i = 0;
  for (std::int64_t e : expected) {
    if (i++) want += ", ";
    want += e == kAny ? std::string("*") : std::to_string(e);
  }
  want += "]";
  if (t.empty() && t.ndim() == 0) fail("{} must have shape {}, got no tensor", name, want);
  fail("{} must have shape {}, got {}", name, want, shape_string(t.shape()));
}

void check_dtype(const TensorView& t, std::string_view name, DType expected) {
  if (t.dtype() != expected) {
    fail("{} must have dtype {}, got {}", name, dtype_name(expected), dtype_name(t.dtype()));
  }
}

void check_device(const TensorView& t, std::string_view name, Device expected) {
  if (!(t.device() == expected)) {
    fail("{} must be on {}, got {}", name, to_string(expected), to_string(t.device()));
  }
}

void check_inner_contiguous(const TensorView& t, std::string_view name) {
  if (t.ndim() > 0 && t.size(-1) > 1 && t.stride(-1) != 1) {
    fail("{} must have a unit stride in its last dimension, got strides {}", name,
         shape_string(t.strides()));
  }
}

void check_contiguous(const TensorView& t, std::string_view name) {
  if (!t.is_contiguous()) {
    fail("{} must be contiguous, got shape {} with strides {}", name, shape_string(t.shape()),
         shape_string(t.strides()));
  }
}

}  // namespace dsattn
