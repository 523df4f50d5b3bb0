#include "dsattn/ops/elementwise.h"

#include "dsattn/ops/op_checks.h"

namespace dsattn::ops {

void add(const TensorView& a, const TensorView& b, const TensorView& out) {
  check_dtype(a, "a", DType::bf16);
  check_shape(a, "a", {kAny, kAny});
  check_inner_contiguous(a, "a");
  check_rows_bf16(b, "b", a.size(1));
  check_shape(b, "b", {a.size(0), a.size(1)});
  check_rows_bf16(out, "out", a.size(1));
  check_shape(out, "out", {a.size(0), a.size(1)});
  const Device d = common_device({{"a", &a}, {"b", &b}, {"out", &out}});
  DSATTN_DISPATCH(d, add, a, b, out);
}

void silu_mul(const TensorView& x, const TensorView& out) {
  check_dtype(x, "x", DType::bf16);
  check_shape(x, "x", {kAny, kAny});
  check_inner_contiguous(x, "x");
  if (x.size(1) % 2 != 0)
    fail("x must have an even number of columns (gate, up), got {}", x.size(1));
  check_rows_bf16(out, "out", x.size(1) / 2);
  check_shape(out, "out", {x.size(0), x.size(1) / 2});
  const Device d = common_device({{"x", &x}, {"out", &out}});
  if (x.size(0) == 0) return;
  DSATTN_DISPATCH(d, silu_mul, x, out);
}

void strided_copy(const TensorView& src, const TensorView& dst) {
  if (src.dtype() != dst.dtype()) {
    fail("dst must have the dtype of src, {}, got {}", dtype_name(src.dtype()),
         dtype_name(dst.dtype()));
  }
  if (src.ndim() != dst.ndim() ||
      !std::equal(src.shape().begin(), src.shape().end(), dst.shape().begin())) {
    fail("dst must have the shape of src, {}, got {}", shape_string(src.shape()),
         shape_string(dst.shape()));
  }
  const Device d = common_device({{"src", &src}, {"dst", &dst}});
  if (src.numel() == 0) return;
  DSATTN_DISPATCH(d, strided_copy, src, dst);
}

}  // namespace dsattn::ops
