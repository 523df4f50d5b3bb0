#include "dsattn/ops/topk.h"

#include "dsattn/ops/op_checks.h"

namespace dsattn::ops {

void topk(const TensorView& scores, const TensorView& lengths, const TensorView& out) {
  check_dtype(scores, "scores", DType::f32);
  check_shape(scores, "scores", {kAny, kAny});
  check_inner_contiguous(scores, "scores");
  const std::int64_t rows = scores.size(0), n = scores.size(1);
  check_dtype(lengths, "lengths", DType::i32);
  check_shape(lengths, "lengths", {rows});
  check_contiguous(lengths, "lengths");
  check_dtype(out, "out", DType::i32);
  check_shape(out, "out", {rows, kAny});
  check_inner_contiguous(out, "out");
  DSATTN_CHECK(out.size(1) > 0, "out must select at least one position (k > 0), got k = {}",
               out.size(1));
  const Device d = common_device({{"scores", &scores}, {"lengths", &lengths}, {"out", &out}});
  if (d.is_cpu()) {
    const std::int32_t* len = lengths.ptr<std::int32_t>();
    for (std::int64_t r = 0; r < rows; ++r) {
      DSATTN_CHECK(len[r] >= 0 && len[r] <= n, "lengths[{}] must be in [0, {}], got {}", r, n,
                   len[r]);
    }
  }
  if (rows == 0) return;
  DSATTN_DISPATCH(d, topk, scores, lengths, out);
}

}  // namespace dsattn::ops
