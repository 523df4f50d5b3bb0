#include <cstring>

#include "dsattn/layer/indexer_path.h"
#include "dsattn/layer/paths.h"
#include "dsattn/ops/attention.h"
#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/gemm.h"

namespace dsattn {

namespace {

// Copies the rows of the group's requests out of a packed [T, ...] tensor into a dense one.
Tensor pack_rows(const TensorView& src, const std::vector<std::int64_t>& offsets,
                 const Batch& batch, const PathGroup& group) {
  std::int64_t rows = 0;
  for (std::size_t i : group.requests) rows += batch.requests[i].extend_len;
  std::vector<std::int64_t> shape(src.shape().begin(), src.shape().end());
  shape[0] = rows;
  Tensor out = Tensor::empty(shape, src.dtype());
  const std::size_t row_bytes =
      std::size_t(src.numel() / std::max<std::int64_t>(src.size(0), 1)) * dtype_size(src.dtype());
  std::int64_t at = 0;
  for (std::size_t i : group.requests) {
    const std::int64_t n = batch.requests[i].extend_len;
    std::memcpy(static_cast<char*>(out.view().data()) + at * row_bytes,
                static_cast<const char*>(src.data()) + offsets[i] * row_bytes, n * row_bytes);
    at += n;
  }
  return out;
}

}  // namespace

void run_sparse_mla(const LayerContext& ctx, const Batch& batch, const PathGroup& group,
                    const TensorView& hidden, const TokenProjections& proj,
                    const LayerCacheView& cache, const TensorView& o,
                    std::vector<Tensor>* topk_out) {
  if (group.requests.empty()) return;
  const AttentionConfig& c = ctx.config;
  const std::int64_t H = c.num_heads, d_nope = c.qk_nope_head_dim, d_qk = c.qk_head_dim();
  const std::int64_t d_v = c.v_head_dim, r = c.kv_lora_rank, d_rope = c.qk_rope_head_dim;
  const std::int64_t K = c.index_topk;
  const std::vector<std::int64_t> offsets = batch.token_offsets();

  Tensor x = pack_rows(hidden, offsets, batch, group);
  Tensor q_latent = pack_rows(proj.q_latent, offsets, batch, group);
  Tensor q = pack_rows(proj.q, offsets, batch, group);
  const std::int64_t n = x.size(0);
  Tensor positions = Tensor::empty({n}, DType::i32);
  {
    std::int64_t at = 0;
    for (std::size_t i : group.requests) {
      const RequestInput& req = batch.requests[i];
      for (std::int64_t t = 0; t < req.extend_len; ++t) {
        positions.ptr<std::int32_t>()[at++] = static_cast<std::int32_t>(req.prefix_len + t);
      }
    }
  }

  // Indexer: queries for all rows at once, then scores and top-k per request; selected
  // positions become cache slots for the attention kernel.
  const IndexQueries iq = compute_index_queries(ctx, x, q_latent, positions);
  Tensor indices = Tensor::empty({n, K}, DType::i32);
  {
    std::int64_t at = 0;
    for (std::size_t i : group.requests) {
      const RequestInput& req = batch.requests[i];
      Tensor selected =
          select_topk(ctx, iq, at, req.extend_len, req.context_len(), req.block_table, cache);
      for (std::int64_t t = 0; t < req.extend_len; ++t) {
        const std::int32_t* src = selected.ptr<std::int32_t>() + t * K;
        std::int32_t* dst = indices.ptr<std::int32_t>() + (at + t) * K;
        for (std::int64_t j = 0; j < K; ++j) {
          dst[j] = src[j] < 0 ? -1
                              : req.block_table[src[j] / cache.page_size] * cache.page_size +
                                    src[j] % cache.page_size;
        }
      }
      if (topk_out) (*topk_out)[i] = std::move(selected);
      at += req.extend_len;
    }
  }

  // Absorb: q~_h = [W_UK,hᵀ q_nope_h, q_pe_h], 576 wide, against the cached [c_kv, k_pe].
  const std::int64_t d_latent = r + d_rope;
  Tensor q_absorbed = Tensor::empty({n, H, d_latent}, DType::bf16);
  const TensorView w_kvb = ctx.weights.kv_b_proj.view().reshape({H, d_nope + d_v, r});
  for (std::int64_t h = 0; h < H; ++h) {
    const TensorView w_h = w_kvb.select(0, h);  // [d_nope + d_v, r]: W_UK,h then W_UV,h
    ops::gemm(q.view().select(1, h).slice(1, 0, d_nope), w_h.slice(0, 0, d_nope),
              q_absorbed.view().select(1, h).slice(1, 0, r), ops::BLayout::nn);
  }
  for (std::int64_t t = 0; t < n; ++t) {
    for (std::int64_t h = 0; h < H; ++h) {
      std::memcpy(q_absorbed.ptr<bf16>() + (t * H + h) * d_latent + r,
                  q.ptr<bf16>() + (t * H + h) * d_qk + d_nope, d_rope * sizeof(bf16));
    }
  }

  Tensor o_latent = Tensor::empty({n, H, r}, DType::bf16);
  ops::sparse_mla(q_absorbed, cache.latent, indices, ctx.softmax_scale, o_latent);

  // Un-absorb: o_h = W_UV,h · o~_h, written straight into the caller's rows.
  Tensor o_packed = Tensor::empty({n, H, d_v}, DType::bf16);
  for (std::int64_t h = 0; h < H; ++h) {
    const TensorView w_uv = w_kvb.select(0, h).slice(0, d_nope, d_nope + d_v);
    ops::gemm(o_latent.view().select(1, h), w_uv, o_packed.view().select(1, h), ops::BLayout::nt);
  }
  std::int64_t at = 0;
  for (std::size_t i : group.requests) {
    const std::int64_t rows = batch.requests[i].extend_len;
    std::memcpy(o.ptr<bf16>() + offsets[i] * o.stride(0), o_packed.ptr<bf16>() + at * H * d_v,
                rows * H * d_v * sizeof(bf16));
    at += rows;
  }
}

}  // namespace dsattn
