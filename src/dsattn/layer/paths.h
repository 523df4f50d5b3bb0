// The path executors. Each computes the attention output o = [o_1 … o_H] (before o_proj) for the
// rows of its requests, with the requests' new latents and indexer keys already in the cache.
#pragma once

#include <vector>

#include "dsattn/layer/batch.h"
#include "dsattn/layer/layer_context.h"
#include "dsattn/layer/projections.h"

namespace dsattn {

// The requests a path serves, as indices into the batch, with their packed row offsets.
struct PathGroup {
  std::vector<std::size_t> requests;
};

// Dense causal MHA over each request's whole context: gather the latent of every position,
// decompress it with kv_b_proj into per-head keys and values, and run varlen flash attention
// with bottom-right alignment. Exact only where dense_mha_is_exact holds.
//   o: [T, H, d_v] bf16, rows of the group's requests are written
void run_dense_mha(const LayerContext& ctx, const Batch& batch, const PathGroup& group,
                   const TokenProjections& proj, const LayerCacheView& cache, const TensorView& o);

// Sparse MLA: indexer scores and top-k per query, absorbed queries, sparse attention over the
// selected latents, un-absorbed output. Exact always. When `topk_out` is given, it receives each
// served request's selected positions ([extend_len, K] i32), indexed like batch.requests.
void run_sparse_mla(const LayerContext& ctx, const Batch& batch, const PathGroup& group,
                    const TensorView& hidden, const TokenProjections& proj,
                    const LayerCacheView& cache, const TensorView& o,
                    std::vector<Tensor>* topk_out);

}  // namespace dsattn
