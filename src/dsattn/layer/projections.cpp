#include "dsattn/layer/projections.h"

#include <cmath>

#include "dsattn/layer/indexer_path.h"
#include "dsattn/ops/gemm.h"
#include "dsattn/ops/norm.h"

namespace dsattn {

LayerContext::LayerContext(const AttentionConfig& c, LayerWeights w)
    : config(c),
      weights(std::move(w)),
      rope(ops::RopeTable::from_config(c, c.qk_rope_head_dim)),
      softmax_scale(static_cast<float>(c.softmax_scale())),
      index_weight_scale(static_cast<float>(1.0 / std::sqrt(double(c.index_n_heads)) /
                                            std::sqrt(double(c.index_head_dim)))) {
  config.validate();
  weights.validate(config);
}

TokenProjections project_tokens(const LayerContext& ctx, const TensorView& hidden,
                                const TensorView& positions) {
  const AttentionConfig& c = ctx.config;
  const LayerWeights& w = ctx.weights;
  const std::int64_t T = hidden.size(0), H = c.num_heads;
  const Device dev = hidden.device();
  TokenProjections p;

  p.q_latent = Tensor::empty({T, c.q_lora_rank}, DType::bf16, dev);
  ops::gemm(hidden, w.q_a_proj, p.q_latent, ops::BLayout::nt);
  ops::rms_norm(p.q_latent, w.q_a_layernorm, static_cast<float>(c.rms_norm_eps), p.q_latent);

  p.q = Tensor::empty({T, H, c.qk_head_dim()}, DType::bf16, dev);
  ops::gemm(p.q_latent, w.q_b_proj, p.q.view().reshape({T, H * c.qk_head_dim()}), ops::BLayout::nt);
  ops::apply_rope(p.q.view().slice(2, c.qk_nope_head_dim, c.qk_head_dim()), positions, ctx.rope,
                  ops::RopeLayout::interleaved);

  p.latent = Tensor::empty({T, c.latent_dim()}, DType::bf16, dev);
  ops::gemm(hidden, w.kv_a_proj_with_mqa, p.latent, ops::BLayout::nt);
  const TensorView c_kv = p.latent.view().slice(1, 0, c.kv_lora_rank);
  ops::rms_norm(c_kv, w.kv_a_layernorm, static_cast<float>(c.rms_norm_eps), c_kv);
  const TensorView k_pe = p.latent.view().slice(1, c.kv_lora_rank, c.latent_dim());
  // One rope key per token, shared by every head: rope it as a single head.
  const std::int64_t k_pe_shape[] = {T, 1, c.qk_rope_head_dim};
  const std::int64_t k_pe_strides[] = {k_pe.stride(0), c.qk_rope_head_dim, 1};
  ops::apply_rope(TensorView(k_pe.data(), DType::bf16, dev, k_pe_shape, k_pe_strides), positions,
                  ctx.rope, ops::RopeLayout::interleaved);

  if (w.has_indexer()) p.index_keys = compute_index_keys(ctx, hidden, positions);
  return p;
}

}  // namespace dsattn
