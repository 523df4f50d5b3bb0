#include "dsattn/ops/indexer.h"

#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/op_checks.h"
#include "dsattn/ops/quantize.h"

namespace dsattn::ops {

void indexer_scores(const TensorView& q, const TensorView& q_scale, const TensorView& weights,
                    const TensorView& key_cache, const TensorView& block_tables,
                    std::int64_t page_size, const TensorView& cu_q, const TensorView& context_lens,
                    std::int64_t skip_rows_up_to, const TensorView& scores,
                    IndexKeyLayout key_layout) {
  if (q.dtype() != DType::fp8_e4m3 && q.dtype() != DType::u8) {
    fail("q must have dtype fp8_e4m3 or u8, got {}", dtype_name(q.dtype()));
  }
  check_shape(q, "q", {kAny, kAny, kAny});
  check_inner_contiguous(q, "q");
  const std::int64_t n_q = q.size(0), heads = q.size(1), d = q.size(2);
  DSATTN_CHECK(d % kQuantBlock == 0, "q must have a head dim that is a multiple of {}, got {}",
               kQuantBlock, d);
  check_dtype(q_scale, "q_scale", DType::f32);
  check_shape(q_scale, "q_scale", {n_q, heads, d / kQuantBlock});
  check_inner_contiguous(q_scale, "q_scale");
  check_dtype(weights, "weights", DType::f32);
  check_shape(weights, "weights", {n_q, heads});
  check_inner_contiguous(weights, "weights");
  check_dtype(key_cache, "key_cache", DType::u8);
  check_shape(key_cache, "key_cache", {kAny, index_key_bytes(d)});
  check_inner_contiguous(key_cache, "key_cache");
  DSATTN_CHECK(page_size > 0, "page_size must be positive, got {}", page_size);
  check_index_key_cache(key_cache, "key_cache", page_size, key_layout);
  check_dtype(scores, "scores", DType::f32);
  check_shape(scores, "scores", {n_q, kAny});
  check_inner_contiguous(scores, "scores");
  DSATTN_CHECK(cu_q.ndim() == 1 && cu_q.size(0) >= 1, "cu_q must have shape [batch + 1], got {}",
               shape_string(cu_q.shape()));
  const std::int64_t batch = cu_q.size(0) - 1;
  check_paged_context(cu_q, context_lens, block_tables, page_size, n_q, scores.size(1),
                      key_cache.size(0));
  DSATTN_CHECK(skip_rows_up_to >= 0, "skip_rows_up_to must be >= 0, got {}", skip_rows_up_to);
  const Device dev = common_device({{"q", &q},
                                    {"q_scale", &q_scale},
                                    {"weights", &weights},
                                    {"key_cache", &key_cache},
                                    {"block_tables", &block_tables},
                                    {"cu_q", &cu_q},
                                    {"context_lens", &context_lens},
                                    {"scores", &scores}});
  if (n_q == 0 || batch == 0) return;
  DSATTN_DISPATCH(dev, indexer_scores, q, q_scale, weights, key_cache, block_tables, page_size,
                  cu_q, context_lens, skip_rows_up_to, scores, key_layout);
}

}  // namespace dsattn::ops
