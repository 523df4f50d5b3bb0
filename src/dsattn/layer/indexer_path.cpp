#include "dsattn/layer/indexer_path.h"

#include <numeric>
#include <vector>

#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/gemm.h"
#include "dsattn/ops/indexer.h"
#include "dsattn/ops/norm.h"
#include "dsattn/ops/quantize.h"
#include "dsattn/ops/topk.h"

namespace dsattn {

namespace {

// The indexer ropes the first d_rope dims of each head with the halves pairing.
void rope_index_heads(const LayerContext& ctx, const TensorView& x, const TensorView& positions) {
  ops::apply_rope(x.slice(2, 0, ctx.config.qk_rope_head_dim), positions, ctx.rope,
                  ops::RopeLayout::halves);
}

}  // namespace

Tensor compute_index_keys(const LayerContext& ctx, const TensorView& hidden,
                          const TensorView& positions) {
  const AttentionConfig& c = ctx.config;
  const std::int64_t T = hidden.size(0), d = c.index_head_dim;
  const Device dev = hidden.device();
  Tensor k = Tensor::empty({T, d}, DType::bf16, dev);
  ops::gemm(hidden, ctx.weights.indexer_wk, k, ops::BLayout::nt);
  ops::layer_norm(k, ctx.weights.indexer_k_norm, ctx.weights.indexer_k_norm_bias,
                  static_cast<float>(c.index_layer_norm_eps), k);
  rope_index_heads(ctx, k.view().reshape({T, 1, d}), positions);
  ops::hadamard_rotate(k);
  Tensor rows = Tensor::empty({T, index_key_bytes(d)}, DType::u8, dev);
  const TensorView values = rows.view().slice(1, 0, d);
  // Each row holds the d values, then the f32 scales: view those as a strided f32 matrix.
  const std::int64_t row_bytes = index_key_bytes(d);
  const TensorView scale_rows(static_cast<std::uint8_t*>(rows.view().data()) + d, DType::f32, dev,
                              std::vector<std::int64_t>{T, d / ops::kQuantBlock},
                              std::vector<std::int64_t>{row_bytes / 4, 1});
  ops::quantize_fp8_block128(k, values, scale_rows);
  return rows;
}

IndexQueries compute_index_queries(const LayerContext& ctx, const TensorView& hidden,
                                   const TensorView& q_latent, const TensorView& positions) {
  const AttentionConfig& c = ctx.config;
  const std::int64_t T = hidden.size(0), HI = c.index_n_heads, d = c.index_head_dim;
  const Device dev = hidden.device();
  Tensor q = Tensor::empty({T, HI, d}, DType::bf16, dev);
  ops::gemm(q_latent, ctx.weights.indexer_wq_b, q.view().reshape({T, HI * d}), ops::BLayout::nt);
  rope_index_heads(ctx, q, positions);
  const TensorView rows = q.view().reshape({T * HI, d});
  ops::hadamard_rotate(rows);
  IndexQueries out;
  out.q = Tensor::empty({T, HI, d}, DType::fp8_e4m3, dev);
  out.q_scale = Tensor::empty({T, HI, d / ops::kQuantBlock}, DType::f32, dev);
  ops::quantize_fp8_block128(rows, out.q.view().reshape({T * HI, d}),
                             out.q_scale.view().reshape({T * HI, d / ops::kQuantBlock}));
  out.weights = Tensor::empty({T, HI}, DType::f32, dev);
  ops::gemm(hidden, ctx.weights.indexer_weights_proj, out.weights, ops::BLayout::nt,
            ctx.index_weight_scale);
  return out;
}

Tensor select_topk(const LayerContext& ctx, const IndexQueries& queries, std::int64_t first,
                   std::int64_t extend_len, std::int64_t context_len,
                   std::span<const std::int32_t> block_table, const LayerCacheView& cache) {
  const std::int64_t K = ctx.config.index_topk;
  const std::int64_t prefix = context_len - extend_len;
  std::vector<std::int32_t> positions(context_len);
  std::iota(positions.begin(), positions.end(), 0);
  Tensor key_slots = Tensor::empty({context_len}, DType::i32);
  ops::positions_to_slots(block_table, cache.page_size, positions,
                          {key_slots.ptr<std::int32_t>(), std::size_t(context_len)});

  Tensor scores = Tensor::empty({extend_len, context_len}, DType::f32);
  ops::indexer_scores(queries.q.view().slice(0, first, first + extend_len),
                      queries.q_scale.view().slice(0, first, first + extend_len),
                      queries.weights.view().slice(0, first, first + extend_len), cache.index_keys,
                      key_slots, scores);
  Tensor lengths = Tensor::empty({extend_len}, DType::i32);
  for (std::int64_t i = 0; i < extend_len; ++i) {
    lengths.ptr<std::int32_t>()[i] = static_cast<std::int32_t>(prefix + i + 1);
  }
  Tensor selected = Tensor::empty({extend_len, K}, DType::i32);
  ops::topk(scores, lengths, selected);
  return selected;
}

}  // namespace dsattn
