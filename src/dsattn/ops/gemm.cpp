#include "dsattn/ops/gemm.h"

#include "dsattn/ops/op_checks.h"

namespace dsattn::ops {

void gemm(const TensorView& a, const TensorView& b, const TensorView& c, BLayout layout,
          float alpha) {
  check_dtype(a, "a", DType::bf16);
  const bool batched = a.ndim() == 3;
  if (batched) {
    check_shape(a, "a", {kAny, kAny, kAny});
  } else {
    check_shape(a, "a", {kAny, kAny});
  }
  check_inner_contiguous(a, "a");
  if (b.dtype() != DType::bf16 && b.dtype() != DType::f32) {
    fail("b must have dtype bf16 or f32, got {}", dtype_name(b.dtype()));
  }
  const std::int64_t batch = batched ? a.size(0) : 1;
  const std::int64_t m = a.size(-2), k = a.size(-1);
  const bool b_batched = b.ndim() == 3;
  if (b_batched && !batched) fail("b is batched ({}) but a is not", shape_string(b.shape()));
  const std::int64_t b_rows = layout == BLayout::nt ? kAny : k;
  const std::int64_t b_cols = layout == BLayout::nt ? k : kAny;
  if (b_batched) {
    check_shape(b, "b", {batch, b_rows, b_cols});
  } else {
    check_shape(b, "b", {b_rows, b_cols});
  }
  check_inner_contiguous(b, "b");
  const std::int64_t n = layout == BLayout::nt ? b.size(-2) : b.size(-1);
  if (c.dtype() != DType::bf16 && c.dtype() != DType::f32) {
    fail("c must have dtype bf16 or f32, got {}", dtype_name(c.dtype()));
  }
  if (batched) {
    check_shape(c, "c", {batch, m, n});
  } else {
    check_shape(c, "c", {m, n});
  }
  check_inner_contiguous(c, "c");
  const Device d = common_device({{"a", &a}, {"b", &b}, {"c", &c}});
  if (d.is_cuda() && b.dtype() != DType::bf16) {
    fail<Unsupported>("b must have dtype bf16 on CUDA, got {}", dtype_name(b.dtype()));
  }
  if (m == 0 || n == 0 || batch == 0) return;
  DSATTN_DISPATCH(d, gemm, a, b, c, layout, alpha);
}

}  // namespace dsattn::ops
