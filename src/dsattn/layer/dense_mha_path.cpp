#include "dsattn/core/error.h"
#include "dsattn/layer/paths.h"
#include "dsattn/ops/attention.h"
#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/elementwise.h"
#include "dsattn/ops/gemm.h"

namespace dsattn {

void run_dense_mha(const LayerContext& ctx, const PathGroup& group, const TokenProjections& proj,
                   const LayerCacheView& cache, const TensorView& o, const TensorView& lse,
                   const TensorView& key_mask) {
  if (group.empty()) return;
  const AttentionConfig& c = ctx.config;
  const std::int64_t H = c.num_heads, d_nope = c.qk_nope_head_dim, d_qk = c.qk_head_dim();
  const std::int64_t d_v = c.v_head_dim, r = c.kv_lora_rank;
  const Device dev = o.device();
  if (!group.device_rows.defined()) fail("run_dense_mha: the group's tables were not uploaded");
  const Tensor& rows = group.device_rows;
  const Tensor& key_slots = group.device_key_slots;
  const Tensor& cu_q = group.device_cu_q;
  const Tensor& cu_k = group.device_cu_k;
  const std::int64_t total_k = key_slots.size(0);

  // The latent of every context position (prefix and new tokens alike), decompressed.
  const Tensor latent = read_latent(ctx, cache, key_slots);
  Tensor kv = Tensor::empty({total_k, H, d_nope + d_v}, DType::bf16, dev);
  ops::gemm(latent.view().slice(1, 0, r), ctx.weights.kv_b_proj,
            kv.view().reshape({total_k, H * (d_nope + d_v)}), ops::BLayout::nt);

  // k_h = [k_nope_h, k_pe]: the one rope key is broadcast to every head (head stride 0).
  Tensor k = Tensor::empty({total_k, H, d_qk}, DType::bf16, dev);
  ops::strided_copy(kv.view().slice(2, 0, d_nope), k.view().slice(2, 0, d_nope));
  const TensorView k_pe = latent.view().slice(1, r, c.latent_dim());
  const std::int64_t pe_shape[] = {total_k, H, c.qk_rope_head_dim};
  const std::int64_t pe_strides[] = {k_pe.stride(0), 0, 1};
  ops::strided_copy(TensorView(k_pe.data(), DType::bf16, dev, pe_shape, pe_strides),
                    k.view().slice(2, d_nope, d_qk));
  const TensorView v = kv.view().slice(2, d_nope, d_nope + d_v);

  const Tensor q = gather_group_rows(proj.q, rows);
  Tensor out = Tensor::empty({rows.size(0), H, d_v}, DType::bf16, dev);
  Tensor rows_lse = lse.empty() ? Tensor() : Tensor::empty({rows.size(0), H}, DType::f32, dev);
  ops::mha_varlen_causal(q, k, v, cu_q, cu_k, group.max_q, ctx.softmax_scale, out,
                         lse.empty() ? TensorView() : rows_lse.view(), key_mask);
  ops::scatter_rows(out.view().reshape({rows.size(0), H * d_v}), rows,
                    o.reshape({o.size(0), H * d_v}));
  if (!lse.empty()) ops::scatter_rows(rows_lse, rows, lse);
}

}  // namespace dsattn
