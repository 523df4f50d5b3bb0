#include <cstring>
#include <numeric>

#include "dsattn/layer/paths.h"
#include "dsattn/ops/attention.h"
#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/gemm.h"

namespace dsattn {

void run_dense_mha(const LayerContext& ctx, const Batch& batch, const PathGroup& group,
                   const TokenProjections& proj, const LayerCacheView& cache, const TensorView& o) {
  if (group.requests.empty()) return;
  const AttentionConfig& c = ctx.config;
  const std::int64_t H = c.num_heads, d_nope = c.qk_nope_head_dim, d_qk = c.qk_head_dim();
  const std::int64_t d_v = c.v_head_dim, r = c.kv_lora_rank;
  const std::vector<std::int64_t> offsets = batch.token_offsets();

  // Packed layout of the group: its queries, and every position of its contexts.
  std::vector<std::int32_t> cu_q{0}, cu_k{0}, key_slots;
  for (std::size_t i : group.requests) {
    const RequestInput& req = batch.requests[i];
    cu_q.push_back(cu_q.back() + static_cast<std::int32_t>(req.extend_len));
    cu_k.push_back(cu_k.back() + static_cast<std::int32_t>(req.context_len()));
    std::vector<std::int32_t> positions(req.context_len()), slots(req.context_len());
    std::iota(positions.begin(), positions.end(), 0);
    ops::positions_to_slots(req.block_table, cache.page_size, positions, slots);
    key_slots.insert(key_slots.end(), slots.begin(), slots.end());
  }
  const std::int64_t total_q = cu_q.back(), total_k = cu_k.back();

  // Gather the latent of every context position (prefix and new tokens alike) and decompress it.
  Tensor latent = Tensor::empty({total_k, c.latent_dim()}, DType::bf16);
  const TensorView slots(key_slots.data(), DType::i32, Device::cpu(), {total_k});
  ops::gather_rows(cache.latent, slots, latent);
  Tensor kv = Tensor::empty({total_k, H, d_nope + d_v}, DType::bf16);
  ops::gemm(latent.view().slice(1, 0, r), ctx.weights.kv_b_proj,
            kv.view().reshape({total_k, H * (d_nope + d_v)}), ops::BLayout::nt);

  // k_h = [k_nope_h, k_pe]: the one rope key is shared by every head.
  Tensor k = Tensor::empty({total_k, H, d_qk}, DType::bf16);
  for (std::int64_t t = 0; t < total_k; ++t) {
    const bf16* kv_row = kv.ptr<bf16>() + t * H * (d_nope + d_v);
    const bf16* pe = latent.ptr<bf16>() + t * c.latent_dim() + r;
    bf16* k_row = k.ptr<bf16>() + t * H * d_qk;
    for (std::int64_t h = 0; h < H; ++h) {
      std::memcpy(k_row + h * d_qk, kv_row + h * (d_nope + d_v), d_nope * sizeof(bf16));
      std::memcpy(k_row + h * d_qk + d_nope, pe, c.qk_rope_head_dim * sizeof(bf16));
    }
  }
  const TensorView v = kv.view().slice(2, d_nope, d_nope + d_v);

  Tensor q = Tensor::empty({total_q, H, d_qk}, DType::bf16);
  Tensor out = Tensor::empty({total_q, H, d_v}, DType::bf16);
  const std::size_t q_row_bytes = H * d_qk * sizeof(bf16), o_row_bytes = H * d_v * sizeof(bf16);
  for (std::size_t g = 0; g < group.requests.size(); ++g) {
    const RequestInput& req = batch.requests[group.requests[g]];
    std::memcpy(q.ptr<bf16>() + std::int64_t(cu_q[g]) * H * d_qk,
                proj.q.ptr<bf16>() + offsets[group.requests[g]] * H * d_qk,
                req.extend_len * q_row_bytes);
  }
  const TensorView cu_q_view(cu_q.data(), DType::i32, Device::cpu(), {std::int64_t(cu_q.size())});
  const TensorView cu_k_view(cu_k.data(), DType::i32, Device::cpu(), {std::int64_t(cu_k.size())});
  ops::mha_varlen_causal(q, k, v, cu_q_view, cu_k_view, ctx.softmax_scale, out);
  for (std::size_t g = 0; g < group.requests.size(); ++g) {
    const RequestInput& req = batch.requests[group.requests[g]];
    std::memcpy(o.ptr<bf16>() + offsets[group.requests[g]] * o.stride(0),
                out.ptr<bf16>() + std::int64_t(cu_q[g]) * H * d_v, req.extend_len * o_row_bytes);
  }
}

}  // namespace dsattn
