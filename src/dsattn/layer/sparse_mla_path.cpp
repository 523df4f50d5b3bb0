#include "dsattn/layer/attention_layer.h"
#include "dsattn/layer/host_meta.h"
#include "dsattn/layer/indexer_path.h"
#include "dsattn/layer/paths.h"
#include "dsattn/ops/attention.h"
#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/elementwise.h"
#include "dsattn/ops/gemm.h"
#include "dsattn/ops/indexer.h"
#include "dsattn/ops/topk.h"

namespace dsattn {

namespace {

// Windows of at most `rows_per_window` rows over requests whose rows are cu[g] .. cu[g + 1] and
// whose contexts are lens[g] (the rows being each request's newest positions).
std::vector<ScoreWindow> score_windows(const std::vector<std::int32_t>& cu,
                                       const std::vector<std::int32_t>& lens,
                                       std::int64_t rows_per_window, Device device,
                                       std::vector<Tensor>& storage) {
  std::vector<ScoreWindow> windows;
  const std::int64_t n = cu.back();
  std::size_t g = 0;
  for (std::int64_t r0 = 0; r0 < n; r0 += rows_per_window) {
    const std::int64_t r1 = std::min(n, r0 + rows_per_window);
    while (cu[g + 1] <= r0) ++g;  // the first request with a row in the window
    ScoreWindow w;
    w.row_begin = r0;
    w.row_end = r1;
    w.request_begin = static_cast<std::int64_t>(g);
    std::vector<std::int32_t> wcu{0}, wlens;
    for (std::size_t h = g; h + 1 < cu.size() && cu[h] < r1; ++h) {
      const std::int64_t first = std::max<std::int64_t>(r0, cu[h]);
      const std::int64_t last = std::min<std::int64_t>(r1, cu[h + 1]);  // exclusive
      const std::int64_t cut = lens[h] - (cu[h + 1] - last);  // context up to the last row
      wcu.push_back(
          static_cast<std::int32_t>(wcu.back() + std::max<std::int64_t>(0, last - first)));
      wlens.push_back(static_cast<std::int32_t>(cut));
      w.max_k = std::max(w.max_k, cut);
      w.request_end = std::int64_t(h) + 1;
    }
    storage.push_back(upload_i32(wcu, device));
    w.cu_q = storage.back().view();
    storage.push_back(upload_i32(wlens, device));
    w.context_lens = storage.back().view();
    windows.push_back(w);
  }
  return windows;
}

// The group's rows of a [T, ...] tensor, packed; undefined when the group holds every row (the
// tensor itself is then used as it is).
Tensor packed_rows(const SparseMeta& meta, const TensorView& t) {
  return meta.rows.empty() ? Tensor() : gather_group_rows(t, meta.rows);
}

}  // namespace

Tensor select_topk(const LayerContext& ctx, const SparseMeta& meta, const TensorView& hidden,
                   const TokenProjections& proj, const LayerCacheView& cache, bool slots) {
  const std::int64_t K = ctx.config.index_topk, n = meta.n;
  const Device dev = hidden.device();
  const bool all_rows = meta.rows.empty();
  const Tensor x_packed = packed_rows(meta, hidden);
  const Tensor q_latent_packed = packed_rows(meta, proj.q_latent);

  const TensorView x = all_rows ? hidden : x_packed.view();
  const TensorView q_latent = all_rows ? proj.q_latent.view() : q_latent_packed.view();
  const IndexQueries iq = compute_index_queries(ctx, x, q_latent, meta.positions);
  Tensor selected = Tensor::empty({n, K}, DType::i32, dev);
  // Top-k of `rows` rows (from `first`) into their rows of `selected`: positions or cache slots.
  const auto select = [&](const TensorView& scores, std::int64_t first, std::int64_t rows) {
    const TensorView visible = meta.visible.slice(0, first, first + rows);
    const TensorView out = selected.view().slice(0, first, first + rows);
    if (slots) {
      ops::topk_slots(scores, visible, meta.row_request.slice(0, first, first + rows),
                      meta.block_tables, cache.page_size, out);
    } else {
      ops::topk(scores, visible, out);
    }
  };
  if (meta.windows.empty()) {
    Tensor scores = Tensor::empty({n, meta.max_k}, DType::f32, dev);
    ops::indexer_scores(iq.q, iq.q_scale, iq.weights, cache.index_keys, meta.block_tables,
                        cache.page_size, meta.cu_q, meta.context_lens, K, scores,
                        cache.index_key_layout);
    select(scores, 0, n);
  } else {
    // One scores buffer, reused by every window (each within the budget).
    std::int64_t rows = 0, cols = 1;
    for (const ScoreWindow& w : meta.windows) {
      rows = std::max(rows, w.row_end - w.row_begin);
      cols = std::max(cols, w.max_k);
    }
    Tensor scores = Tensor::empty({rows, cols}, DType::f32, dev);
    for (const ScoreWindow& w : meta.windows) {
      const auto window_rows = [&](const Tensor& t) {
        return t.view().slice(0, w.row_begin, w.row_end);
      };
      const TensorView s = scores.view()
                               .slice(0, 0, w.row_end - w.row_begin)
                               .slice(1, 0, std::max<std::int64_t>(1, w.max_k));
      ops::indexer_scores(window_rows(iq.q), window_rows(iq.q_scale), window_rows(iq.weights),
                          cache.index_keys,
                          meta.block_tables.slice(0, w.request_begin, w.request_end),
                          cache.page_size, w.cu_q, w.context_lens, K, s, cache.index_key_layout);
      select(s, w.row_begin, w.row_end - w.row_begin);
    }
  }
  return selected;
}

SparseMeta SparseMeta::build(const Batch& batch, const PathGroup& group, bool all_rows,
                             Device device, std::int64_t page_size, std::int64_t max_score_bytes,
                             const Tensor& device_tables,
                             const std::vector<std::size_t>& table_row) {
  const bool host_tables = !device_tables.defined();
  std::vector<std::int32_t> positions, visible, row_request, lens;
  std::int64_t max_pages = 1, max_k = 1;
  for (std::size_t i : group.requests) {
    max_pages = std::max(max_pages, pages_for(batch.requests[i].context_len(), page_size));
    max_k = std::max(max_k, batch.requests[i].context_len());
  }
  std::vector<std::int32_t> tables(host_tables ? group.requests.size() * max_pages : 0, 0);
  std::vector<std::int32_t> device_rows;  // of device_tables, per request of the group
  for (std::size_t g = 0; g < group.requests.size(); ++g) {
    const RequestInput& req = batch.requests[group.requests[g]];
    for (std::int64_t t = 0; t < req.extend_len; ++t) {
      positions.push_back(static_cast<std::int32_t>(req.prefix_len + t));
      visible.push_back(static_cast<std::int32_t>(req.prefix_len + t + 1));
      row_request.push_back(static_cast<std::int32_t>(g));
    }
    lens.push_back(static_cast<std::int32_t>(req.context_len()));
    if (!host_tables) {
      device_rows.push_back(static_cast<std::int32_t>(table_row[group.requests[g]]));
      continue;
    }
    const std::int64_t pages = pages_for(req.context_len(), page_size);
    std::copy(req.block_table.begin(), req.block_table.begin() + pages,
              tables.begin() + g * max_pages);
  }
  SparseMeta m;
  auto keep = [&m](Tensor t) {
    m.storage.push_back(std::move(t));
    return m.storage.back().view();
  };
  if (!all_rows) m.rows = keep(upload_i32(group.rows, device));
  m.positions = keep(upload_i32(positions, device));
  m.visible = keep(upload_i32(visible, device));
  m.row_request = keep(upload_i32(row_request, device));
  m.cu_q = keep(upload_i32(group.cu_q, device));
  m.context_lens = keep(upload_i32(lens, device));
  if (host_tables) {
    m.block_tables = keep(
        upload_i32(tables, static_cast<std::int64_t>(group.requests.size()), max_pages, device));
  } else {  // the group's rows of the plan's device tables
    m.block_tables = keep(gather_group_rows(device_tables.view(), upload_i32(device_rows, device)));
  }
  m.n = static_cast<std::int64_t>(positions.size());
  m.max_k = max_k;
  const std::int64_t rows_per_window =
      std::max<std::int64_t>(1, max_score_bytes / (max_k * std::int64_t(sizeof(float))));
  if (m.n > rows_per_window) {
    m.windows = score_windows(group.cu_q, lens, rows_per_window, device, m.storage);
  }
  return m;
}

void run_sparse_mla(const LayerContext& ctx, const SparseMeta& meta, const TensorView& hidden,
                    const TokenProjections& proj, const LayerCacheView& cache, const TensorView& o,
                    Tensor* selected_out, SharedTopk* shared, const TensorView& lse) {
  if (meta.n == 0) return;
  const AttentionConfig& c = ctx.config;
  const std::int64_t H = c.num_heads, d_nope = c.qk_nope_head_dim, d_qk = c.qk_head_dim();
  const std::int64_t d_v = c.v_head_dim, r = c.kv_lora_rank, d_rope = c.qk_rope_head_dim;
  const std::int64_t K = c.index_topk, n = meta.n;
  const Device dev = o.device();
  const bool all_rows = meta.rows.empty();

  Tensor selected;
  if (ctx.weights.has_indexer()) {
    // The cache slots straight from the selection, unless the caller wants the positions too.
    selected = select_topk(ctx, meta, hidden, proj, cache, selected_out == nullptr);
    if (selected_out) {
      *selected_out = Tensor::empty({n, K}, DType::i32, dev);
      copy(selected, *selected_out);
      ops::map_positions_to_slots(selected, meta.row_request, meta.block_tables, cache.page_size);
    }
    if (shared) {
      shared->slots = selected;  // read only from here on: the next layers may alias it
      shared->positions = selected_out ? *selected_out : Tensor();
    }
  } else {
    // IndexShare: the slots an earlier layer selected for the same rows.
    if (!shared || !shared->slots.defined() || shared->slots.size(0) != n) {
      fail(
          "this layer has no indexer and no earlier layer's top-k for its {} sparse rows was "
          "given (IndexShare)",
          n);
    }
    selected = shared->slots;
    if (selected_out) {
      if (!shared->positions.defined()) {
        fail("record_topk: the layer whose top-k this layer shares did not record its positions");
      }
      *selected_out = Tensor::empty({n, K}, DType::i32, dev);
      copy(shared->positions, *selected_out);
    }
  }

  // Absorb: q~_h = [W_UK,hᵀ q_nope_h, q_pe_h], 576 wide, against the cached [c_kv, k_pe]; one
  // batched product over the heads.
  const Tensor q_packed = packed_rows(meta, proj.q);
  const TensorView q = all_rows ? proj.q.view() : q_packed.view();
  Tensor q_absorbed = Tensor::empty({n, H, r + d_rope}, DType::bf16, dev);
  const TensorView w_kvb = ctx.weights.kv_b_proj.view().reshape({H, d_nope + d_v, r});
  ops::gemm(q.slice(2, 0, d_nope).transpose(0, 1), w_kvb.slice(1, 0, d_nope),
            q_absorbed.view().slice(2, 0, r).transpose(0, 1), ops::BLayout::nn);
  ops::strided_copy(q.slice(2, d_nope, d_qk), q_absorbed.view().slice(2, r, r + d_rope));

  Tensor o_latent = Tensor::empty({n, H, r}, DType::bf16, dev);
  Tensor rows_lse = lse.empty() || all_rows ? Tensor() : Tensor::empty({n, H}, DType::f32, dev);
  const TensorView lse_out = lse.empty() ? TensorView() : all_rows ? lse : rows_lse.view();
  ops::sparse_mla(q_absorbed, cache.latent, selected, ctx.softmax_scale, o_latent, lse_out);
  if (rows_lse.defined()) ops::scatter_rows(rows_lse, meta.rows, lse);

  // Un-absorb: o_h = W_UV,h · o~_h, written to the batch's rows.
  const TensorView w_uv = w_kvb.slice(1, d_nope, d_nope + d_v);
  if (all_rows) {
    ops::gemm(o_latent.view().transpose(0, 1), w_uv, o.transpose(0, 1), ops::BLayout::nt);
    return;
  }
  Tensor o_packed = Tensor::empty({n, H, d_v}, DType::bf16, dev);
  ops::gemm(o_latent.view().transpose(0, 1), w_uv, o_packed.view().transpose(0, 1),
            ops::BLayout::nt);
  ops::scatter_rows(o_packed.view().reshape({n, H * d_v}), meta.rows,
                    o.reshape({o.size(0), H * d_v}));
}

}  // namespace dsattn
