// One DeepSeek-V3.2 attention layer: projections -> planner -> path executors -> o_proj.
#pragma once

#include <vector>

#include "dsattn/cache/paged_kv_cache.h"
#include "dsattn/layer/batch.h"
#include "dsattn/layer/forward_plan.h"
#include "dsattn/layer/layer_context.h"
#include "dsattn/layer/planner.h"

namespace dsattn {

struct SparseMeta;        // layer/paths.h
struct TokenProjections;  // layer/projections.h
struct ForwardTables;     // layer/forward_tables.h

// Wall-clock seconds per stage of one forward.
struct StageTimes {
  double planning = 0;     // forward(): the checks, the paths, the tables (0 in run())
  double projections = 0;  // q, latent and indexer-key projections, cache writes
  double dense_mha = 0;    // the dense MHA path (gather, kv_b_proj, attention)
  double sparse_mla = 0;   // the sparse MLA path (indexer, top-k, absorb, attention, un-absorb)
  double masked_mha = 0;   // the masked MHA path (indexer, top-k, mask, kv_b_proj, attention)
  double o_proj = 0;

  double total() const {
    return planning + projections + dense_mha + sparse_mla + masked_mha + o_proj;
  }
  StageTimes& operator+=(const StageTimes& o);
};

struct ForwardResult {
  std::vector<Path> paths;  // one per request, in the batch's order
  StageTimes times;
  // With ForwardOptions::record_topk: per request, the selected key positions of its rows
  // ([extend_len, index_topk] i32, -1 = unused; a row_split request's dense rows list every key
  // they see, as top-k would); undefined for requests on the dense path. Masked-MHA requests
  // list the keys their mask allows.
  std::vector<Tensor> topk_positions;
};

struct ForwardOptions {
  bool record_topk = false;
  // The most bytes the indexer's f32 scores may take at once: a long prefill scores its rows in
  // windows of at most this many rows x context columns (docs/design.md, "Bounded scores").
  std::int64_t max_score_bytes = std::int64_t(1) << 30;
  // Stage times are wall clock; on a GPU, timing them waits for each stage's kernels.
  bool time_stages = true;
  // Optional [T, num_heads] f32 on the layer's device, heads contiguous: each new token's and
  // head's log-sum-exp ln Σ_j exp(scale · q·k_j) over the keys its path attends to (all its
  // context on the dense path, its selected keys on the sparse one; the two agree where both
  // are exact), as mha_varlen_causal and sparse_mla give it. Engines merge partial attentions
  // with it.
  TensorView lse;
};

// IndexShare: the top-k that a layer with its own indexer hands to the following layers that
// have none (GLM-5.2's "shared" layers). Pass the same object to each layer of a forward, in
// order; a layer with an indexer overwrites it, a layer without one reads it.
struct SharedTopk {
  // The requests on the sparse path, in order, counting a row_split request as two (its dense
  // rows, then its sparse rows: RowSplitBatch).
  std::vector<std::size_t> requests;
  std::int64_t page_size = 0;  // of the cache the slots address
  Tensor slots;                // [rows of those requests, index_topk] i32 cache slots, -1 = unused
  Tensor positions;  // the same as key positions, kept when ForwardOptions::record_topk is on
  // The requests on the masked-MHA path, in order, and their rows' selected key positions.
  std::vector<std::size_t> masked_requests;
  Tensor masked_positions;  // [rows of those requests, index_topk] i32, -1 = unused
};

// Throws InvalidArgument unless `cache` holds rows of the layer's formats and widths for
// num_pages x page_size slots.
void check_layer_cache(const LayerCacheView& cache, const AttentionConfig& config);

class AttentionLayer {
 public:
  AttentionLayer(const AttentionConfig& config, LayerWeights weights, Policy policy = {});

  const AttentionConfig& config() const { return ctx_.config; }
  const LayerWeights& weights() const { return ctx_.weights; }
  const Policy& policy() const { return policy_; }
  void set_policy(const Policy& policy);
  // The costs `auto` plans with: the policy's profile, else the built-in one for the device and
  // this layer's shape; null for other policies, and where there is none (auto then follows the
  // per-request rule; `dsattn run` says which profile it plans with).
  const CostProfile* cost_profile() const { return profile_.get(); }

  // hidden_in, hidden_out: [batch.total_tokens(), hidden_size] bf16, packed by request (they
  // may be the same tensor). Writes each request's new latents and indexer keys to `cache` at
  // positions [prefix_len, prefix_len + extend_len). Every check (batch, tensors, policy) runs
  // before anything is written, so a refused call leaves the cache and hidden_out untouched.
  // A layer without indexer weights (IndexShare) takes its sparse rows' top-k from `shared`,
  // which an earlier layer of the same forward filled; InvalidArgument if there is none.
  // forward() is plan() then run().
  ForwardResult forward(const Batch& batch, const TensorView& hidden_in,
                        const LayerCacheView& cache, const TensorView& hidden_out,
                        const ForwardOptions& options = {}, SharedTopk* shared = nullptr) const;

  // Plans `batch` on `cache` (layer/forward_plan.h): every check of forward() on the batch, each
  // request's path under the layer's policy, every per-batch table built on the layer's device,
  // and the writes recorded in the cache's allocator (as a forward records them: the plan claims
  // the pages its new tokens go to). `max_score_bytes` as ForwardOptions'.
  ForwardPlan plan(const Batch& batch, const LayerCacheView& cache,
                   std::int64_t max_score_bytes = std::int64_t(1) << 30) const;

  // The same over block tables that live on the device, as an engine keeps them: `block_tables`
  // [requests, >= pages] i32 on the layer's device (the batch's requests carry only their
  // lengths, checked here, and no sequence id). The tables are read on the device only, when
  // planning (the plan keeps a copy, complete when plan() returns): no host readback. Their
  // entries cannot be checked on the host: one outside the cache is read as page 0 and the new
  // tokens on it are not written, so that no access leaves the cache, and ForwardPlan::faults()
  // reports it. For the caller's cache only (a view without a page allocator): the caller owns
  // which pages its requests write (a page listed twice, or two requests writing one slot, cannot
  // be refused here); prefix pages may be shared.
  ForwardPlan plan(const Batch& batch, const TensorView& block_tables, const LayerCacheView& cache,
                   std::int64_t max_score_bytes = std::int64_t(1) << 30) const;

  // Runs a plan of this layer or of another layer of the same shape (plan_signature) on a cache
  // view of the same device, page size, page count and formats as the one it was planned on,
  // whose block tables it then reads (the layers of one PagedKvCache): the forward of the planned
  // batch, with no host-side planning, no upload and no synchronisation (unless `options` asks
  // for times or the top-k); temporaries come from the device's caching allocator. Checks the
  // tensors' shapes, dtypes and devices and the plan's geometry (InvalidArgument naming the
  // difference) before anything is written. May be run again, on the same or another layer.
  ForwardResult run(const ForwardPlan& plan, const TensorView& hidden_in,
                    const LayerCacheView& cache, const TensorView& hidden_out,
                    const RunOptions& options = {}, SharedTopk* shared = nullptr) const;

  // The sparse path for every row, with all metadata already on the device (positions, cache
  // slots of the new tokens, and `meta`): no host work and no synchronisation, so that a decode
  // step can be captured in a CUDA graph. Used by DecodeGraph; the caller guarantees validity.
  void forward_sparse_on_device(const SparseMeta& meta, const TensorView& new_slots,
                                const TensorView& hidden_in, const LayerCacheView& cache,
                                const TensorView& hidden_out, SharedTopk* shared = nullptr) const;

  // False for a layer that takes an earlier layer's top-k (IndexShare: no indexer weights).
  bool has_indexer() const { return ctx_.weights.has_indexer(); }

 private:
  // The tables of `batch` (every batch check first; records nothing).
  // With `device_tables` the batch's block tables are that device tensor, read on the device.
  std::shared_ptr<ForwardTables> build_tables(const Batch& batch, const LayerCacheView& cache,
                                              std::int64_t max_score_bytes,
                                              const TensorView* device_tables = nullptr) const;
  // Every check of a run of `t`, before anything is written.
  void check_run(const ForwardTables& t, const TensorView& hidden_in, const LayerCacheView& cache,
                 const TensorView& hidden_out, const TensorView& lse,
                 const SharedTopk* shared) const;
  // The forward of `t`, unchecked.
  ForwardResult execute(const ForwardTables& t, const TensorView& hidden_in,
                        const LayerCacheView& cache, const TensorView& hidden_out,
                        const RunOptions& options, SharedTopk* shared) const;
  // Writes the new tokens' latents (quantised for an FP8 cache) and indexer keys.
  void write_cache(const TokenProjections& proj, const TensorView& new_slots,
                   const LayerCacheView& cache) const;
  LayerContext ctx_;
  Policy policy_;
  std::shared_ptr<const CostProfile> profile_;
};

}  // namespace dsattn
