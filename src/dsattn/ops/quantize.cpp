#include "dsattn/ops/quantize.h"

#include <cstdint>
#include <vector>

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

void quantize_index_key_rows(const TensorView& keys, const TensorView& rows) {
  check_dtype(keys, "keys", DType::bf16);
  check_shape(keys, "keys", {kAny, kAny});
  const std::int64_t n = keys.size(0), d = keys.size(1);
  DSATTN_CHECK(d % kQuantBlock == 0, "keys must have a row length that is a multiple of {}, got {}",
               kQuantBlock, d);
  const std::int64_t row_bytes = d + 4 * (d / kQuantBlock);
  check_dtype(rows, "rows", DType::u8);
  check_shape(rows, "rows", {n, row_bytes});
  check_inner_contiguous(rows, "rows");
  DSATTN_CHECK(reinterpret_cast<std::uintptr_t>(rows.data()) % 4 == 0 && rows.stride(0) % 4 == 0,
               "rows must be 4-byte aligned with a row stride that is a multiple of 4 (they hold "
               "f32 scales), got stride {}",
               rows.stride(0));
  // The scales, d bytes into each row: a strided f32 matrix.
  const TensorView scales(static_cast<std::uint8_t*>(rows.data()) + d, DType::f32, rows.device(),
                          std::vector<std::int64_t>{n, d / kQuantBlock},
                          std::vector<std::int64_t>{rows.stride(0) / 4, 1});
  quantize_fp8_block128(keys, rows.slice(1, 0, d), scales);
}

}  // namespace dsattn::ops
