#include "dsattn/ops/quantize.h"

#include "dsattn/ops/op_checks.h"

namespace dsattn::ops {

void hadamard_rotate(const TensorView& x) {
  check_dtype(x, "x", DType::bf16);
  check_shape(x, "x", {kAny, kAny});
  check_inner_contiguous(x, "x");
  const std::int64_t n = x.size(1);
  DSATTN_CHECK(n > 0 && (n & (n - 1)) == 0, "x must have a power-of-two row length, got {}", n);
  if (x.device().is_cuda()) {
    DSATTN_CHECK(n == 128, "x must have rows of 128 on CUDA (the indexer's head dim), got {}", n);
  }
  if (x.size(0) == 0) return;
  DSATTN_DISPATCH(x.device(), hadamard_rotate, x);
}

void quantize_fp8_block128(const TensorView& x, const TensorView& q, const TensorView& scale) {
  check_dtype(x, "x", DType::bf16);
  check_shape(x, "x", {kAny, kAny});
  check_inner_contiguous(x, "x");
  const std::int64_t rows = x.size(0), n = x.size(1);
  DSATTN_CHECK(n % kQuantBlock == 0, "x must have a row length that is a multiple of {}, got {}",
               kQuantBlock, n);
  if (q.dtype() != DType::fp8_e4m3 && q.dtype() != DType::u8) {
    fail("q must have dtype fp8_e4m3 or u8, got {}", dtype_name(q.dtype()));
  }
  check_shape(q, "q", {rows, n});
  check_inner_contiguous(q, "q");
  check_dtype(scale, "scale", DType::f32);
  check_shape(scale, "scale", {rows, n / kQuantBlock});
  check_inner_contiguous(scale, "scale");
  const Device d = common_device({{"x", &x}, {"q", &q}, {"scale", &scale}});
  if (rows == 0) return;
  DSATTN_DISPATCH(d, quantize_fp8_block128, x, q, scale);
}

}  // namespace dsattn::ops
