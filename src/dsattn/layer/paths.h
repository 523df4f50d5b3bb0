// The path executors. Each computes the attention output o = [o_1 … o_H] (before o_proj) for the
// rows of its requests, with the requests' new latents and indexer keys already in the cache.
#pragma once

#include <vector>

#include "dsattn/cache/paged_kv_cache.h"
#include "dsattn/layer/batch.h"
#include "dsattn/layer/layer_context.h"
#include "dsattn/layer/projections.h"

namespace dsattn {
struct SharedTopk;  // layer/attention_layer.h
}

namespace dsattn {

// The requests a path serves (indices into the batch) and, built from them on the host, the
// packed layout every path needs.
struct PathGroup {
  std::vector<std::size_t> requests;

  std::vector<std::int32_t> rows;       // their new tokens' rows in the batch, in order
  std::vector<std::int32_t> cu_q{0};    // [requests + 1] offsets of their rows
  std::vector<std::int32_t> cu_k{0};    // [requests + 1] offsets of their contexts
  std::vector<std::int32_t> key_slots;  // cache slots of every context position, request by request
  std::int64_t max_q = 0, max_k = 0;
  // rows, key_slots, cu_q and cu_k on the layer's device (upload()), as dense MHA reads them.
  Tensor device_rows, device_key_slots, device_cu_q, device_cu_k;

  // `key_slots` from the requests' host block tables, unless `host_tables` is false (a plan over
  // device block tables: map_key_slots() makes device_key_slots instead).
  void build(const Batch& batch, std::int64_t page_size, bool host_tables = true);
  void upload(Device device);
  // device_key_slots from device block tables: `tables` [requests of the planned batch,
  // max_pages] i32 (every entry a page of the cache), `table_row[w]` the row of work request w.
  void map_key_slots(const Batch& batch, const Tensor& tables,
                     const std::vector<std::size_t>& table_row, std::int64_t page_size);
  bool empty() const { return requests.empty(); }
};

// Dense causal MHA over each request's whole context: gather the latent of every position,
// decompress it with kv_b_proj into per-head keys and values, and run varlen flash attention
// with bottom-right alignment. Exact only where dense_mha_is_exact holds, or under a key mask
// (masked MHA). The group's tables must be uploaded.
//   o: [T, H, d_v] bf16; rows of the group's requests are written (and of lse, [T, H] f32,
//   when given: the rows' log-sum-exp)
//   key_mask (optional): [group rows, W] i32, mha_varlen_causal's key mask of each row
void run_dense_mha(const LayerContext& ctx, const PathGroup& group, const TokenProjections& proj,
                   const LayerCacheView& cache, const TensorView& o, const TensorView& lse = {},
                   const TensorView& key_mask = {});

// What the sparse path reads, on the layer's device: fixed shapes and no host work once built,
// so that a decode step can be captured in a CUDA graph and replayed with new contents.
// A window of consecutive rows [row_begin, row_end) of a sparse group whose indexer scores are
// computed together: each request's rows clipped to the window, its context cut after the last
// of them (rows see the same keys as before; columns past a row's own keys are not read).
struct ScoreWindow {
  std::int64_t row_begin = 0, row_end = 0, request_begin = 0, request_end = 0, max_k = 0;
  TensorView cu_q;          // [requests + 1] i32, from 0
  TensorView context_lens;  // [requests] i32
};

struct SparseMeta {
  TensorView rows;          // [n] i32 batch rows of the path's queries; empty: every row, in order
  TensorView positions;     // [n] i32
  TensorView visible;       // [n] i32 keys each row sees (its position + 1)
  TensorView row_request;   // [n] i32 the row's request, indexing the tables below
  TensorView cu_q;          // [G + 1] i32
  TensorView context_lens;  // [G] i32
  TensorView block_tables;  // [G, max_pages] i32
  std::int64_t n = 0, max_k = 0;
  // Empty: all n rows are scored at once (n x max_k f32). Else windows covering the rows in
  // order, each within the score budget it was built for.
  std::vector<ScoreWindow> windows;
  std::vector<Tensor> storage;  // what the views point into, when built here

  // Rows are scored in windows when n x max_k f32 scores exceed max_score_bytes. The block tables
  // come from the requests' host tables, or with `device_tables` ([requests of the planned batch,
  // max_pages] i32 on `device`) from its rows table_row[w] for work request w.
  static SparseMeta build(const Batch& batch, const PathGroup& group, bool all_rows, Device device,
                          std::int64_t page_size,
                          std::int64_t max_score_bytes = std::int64_t(1) << 30,
                          const Tensor& device_tables = {},
                          const std::vector<std::size_t>& table_row = {});
};

// Sparse MLA: indexer scores and top-k per query, absorbed queries, sparse attention over the
// selected latents, un-absorbed output. Exact always. Device work only. When `selected_out` is
// given it receives the selected positions ([n, K] i32 on the device, ascending, -1 = unused)
// before they are turned into slots. A layer with an indexer stores its selection in `shared`
// when given (the positions too when `selected_out` is asked for); a layer without one reads
// the selection from `shared` instead of running the indexer and top-k. `lse` ([T, H] f32, or
// empty) receives the rows' log-sum-exp over their selected keys.
void run_sparse_mla(const LayerContext& ctx, const SparseMeta& meta, const TensorView& hidden,
                    const TokenProjections& proj, const LayerCacheView& cache, const TensorView& o,
                    Tensor* selected_out, SharedTopk* shared = nullptr, const TensorView& lse = {});

// Masked MHA: the rows' top-k (as sparse MLA selects it; from `shared` on a layer without an
// indexer, which an earlier layer with one stored there), as a key mask over each request's
// context, then dense MHA over the whole decompressed context under the mask. Exact always.
// `meta` is built from `group`. `selected_out` (when given) receives the selected positions
// ([n, K] i32, -1 = unused); `lse` as run_dense_mha's.
void run_masked_mha(const LayerContext& ctx, const PathGroup& group, const SparseMeta& meta,
                    const TensorView& hidden, const TokenProjections& proj,
                    const LayerCacheView& cache, const TensorView& o, Tensor* selected_out,
                    SharedTopk* shared = nullptr, const TensorView& lse = {});

// The indexer and top-k: queries for every row at once, scores against each request's paged
// keys (in windows when the scores would exceed their budget), and the top-k positions of each
// row ([n, K] i32), or their cache slots with `slots`. Rows that see at most K keys select all
// of them without scores.
Tensor select_topk(const LayerContext& ctx, const SparseMeta& meta, const TensorView& hidden,
                   const TokenProjections& proj, const LayerCacheView& cache, bool slots);

// The group's rows of a [T, ...] tensor, packed: [rows, ...].
Tensor gather_group_rows(const TensorView& src, const TensorView& rows);
// The latent of the cached slots, as bf16 [n, kv_lora_rank + d_rope] (dequantised if FP8).
Tensor read_latent(const LayerContext& ctx, const LayerCacheView& cache, const Tensor& slots);

}  // namespace dsattn
