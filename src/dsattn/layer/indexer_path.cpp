#include "dsattn/layer/indexer_path.h"

#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/ops/gemm.h"
#include "dsattn/ops/norm.h"
#include "dsattn/ops/quantize.h"

namespace dsattn {

namespace {

// The indexer ropes the first d_rope dims of each head: pairs by halves (DeepSeek-V3.2) or
// interleaved (indexer_rope_interleave, GLM-5-class models).
void rope_index_heads(const LayerContext& ctx, const TensorView& x, const TensorView& positions) {
  ops::apply_rope(
      x.slice(2, 0, ctx.config.qk_rope_head_dim), positions, ctx.rope,
      ctx.config.indexer_rope_interleave ? ops::RopeLayout::interleaved : ops::RopeLayout::halves);
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
  ops::quantize_index_key_rows(k, rows);
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

}  // namespace dsattn
