#include "dsattn/core/error.h"
#include "dsattn/layer/attention_layer.h"
#include "dsattn/layer/paths.h"
#include "dsattn/ops/attention.h"

namespace dsattn {

void run_masked_mha(const LayerContext& ctx, const PathGroup& group, const SparseMeta& meta,
                    const TensorView& hidden, const TokenProjections& proj,
                    const LayerCacheView& cache, const TensorView& o, Tensor* selected_out,
                    SharedTopk* shared, const TensorView& lse) {
  if (group.empty()) return;
  const std::int64_t n = meta.n, K = ctx.config.index_topk;
  const Device dev = o.device();
  Tensor positions;
  if (ctx.weights.has_indexer()) {
    positions = select_topk(ctx, meta, hidden, proj, cache, /*slots=*/false);
    if (shared) shared->masked_positions = positions;  // read only from here on
  } else {
    // IndexShare: the positions an earlier layer selected for the same rows.
    if (!shared || !shared->masked_positions.defined() || shared->masked_positions.size(0) != n) {
      fail(
          "this layer has no indexer and no earlier layer's top-k for its {} masked-MHA rows was "
          "given (IndexShare)",
          n);
    }
    positions = shared->masked_positions;
  }
  if (selected_out) {
    *selected_out = Tensor::empty({n, K}, DType::i32, dev);
    copy(positions, *selected_out);
  }
  // One bit per context position of the longest request, in whole 128-key tiles of words.
  const std::int64_t words = (group.max_k + 127) / 128 * 4;
  Tensor mask = Tensor::empty({n, words}, DType::i32, dev);
  ops::selection_mask(positions, mask);
  run_dense_mha(ctx, group, proj, cache, o, lse, mask);
}

}  // namespace dsattn
