#include "dsattn/ops/norm.h"

#include "dsattn/ops/op_checks.h"

namespace dsattn::ops {

void rms_norm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out) {
  check_dtype(x, "x", DType::bf16);
  check_shape(x, "x", {kAny, kAny});
  check_inner_contiguous(x, "x");
  check_rows_bf16(out, "out", x.size(1));
  check_shape(out, "out", {x.size(0), x.size(1)});
  check_dtype(weight, "weight", DType::bf16);
  check_shape(weight, "weight", {x.size(1)});
  check_contiguous(weight, "weight");
  DSATTN_CHECK(eps > 0.0f, "eps must be positive, got {}", eps);
  const Device d = common_device({{"x", &x}, {"weight", &weight}, {"out", &out}});
  DSATTN_DISPATCH(d, rms_norm, x, weight, eps, out);
}

void layer_norm(const TensorView& x, const TensorView& weight, const TensorView& bias, float eps,
                const TensorView& out) {
  check_dtype(x, "x", DType::bf16);
  check_shape(x, "x", {kAny, kAny});
  check_inner_contiguous(x, "x");
  check_rows_bf16(out, "out", x.size(1));
  check_shape(out, "out", {x.size(0), x.size(1)});
  for (auto [name, t] : {std::pair{"weight", &weight}, std::pair{"bias", &bias}}) {
    check_dtype(*t, name, DType::bf16);
    check_shape(*t, name, {x.size(1)});
    check_contiguous(*t, name);
  }
  DSATTN_CHECK(eps > 0.0f, "eps must be positive, got {}", eps);
  const Device d = common_device({{"x", &x}, {"weight", &weight}, {"bias", &bias}, {"out", &out}});
  DSATTN_DISPATCH(d, layer_norm, x, weight, bias, eps, out);
}

}  // namespace dsattn::ops
