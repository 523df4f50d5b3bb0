#include "dsattn/layer/attention_layer.h"

#include <chrono>

#include "dsattn/core/checks.h"
#include "dsattn/core/cuda_runtime.h"
#include "dsattn/layer/forward_tables.h"
#include "dsattn/layer/host_meta.h"
#include "dsattn/layer/paths.h"
#include "dsattn/layer/projections.h"
#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/gemm.h"
#include "dsattn/ops/latent_fp8.h"

namespace dsattn {

StageTimes& StageTimes::operator+=(const StageTimes& o) {
  planning += o.planning;
  projections += o.projections;
  dense_mha += o.dense_mha;
  sparse_mla += o.sparse_mla;
  masked_mha += o.masked_mha;
  o_proj += o.o_proj;
  return *this;
}

namespace {

// Wall-clock seconds between stage boundaries; on a GPU it waits for the stage's kernels when
// asked to time them (and not otherwise, so that an untimed forward stays asynchronous).
class StageClock {
 public:
  StageClock(Device device, bool sync) : sync_(sync && device.is_cuda()) {}
  double lap() {
    if (sync_) cuda::synchronize();
    const auto now = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    return s;
  }

 private:
  bool sync_;
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

// A layer without an indexer reads the top-k an earlier layer of the forward stored in `shared`:
// it must be there, for the same requests on each selecting path.
void check_shared_topk(const SharedTopk* shared, const std::vector<std::size_t>& sparse,
                       const std::vector<std::size_t>& masked, std::int64_t page_size) {
  if (sparse.empty() && masked.empty()) return;
  const bool stored = shared && (shared->slots.defined() || shared->masked_positions.defined());
  const char* problem =
      !stored ? "no earlier layer of this forward computed one (run it after a layer with its own "
                "indexer, passing the same SharedTopk)"
      : shared->requests != sparse || shared->masked_requests != masked
          ? "the earlier layer put other requests on the sparse and masked paths (give every "
            "layer the same batch and policy)"
      : !sparse.empty() && shared->page_size != page_size
          ? "the earlier layer's cache has another page size"
          : nullptr;
  if (problem) {
    fail("this layer has no indexer: it takes the top-k of an earlier layer (IndexShare), but {}",
         problem);
  }
}

}  // namespace

void check_layer_cache(const LayerCacheView& cache, const AttentionConfig& c) {
  const std::int64_t slots = cache.num_pages * cache.page_size;
  if (cache.latent_format == LatentFormat::bf16) {
    check_dtype(cache.latent, "cache.latent", DType::bf16);
    check_shape(cache.latent, "cache.latent", {slots, c.latent_dim()});
  } else {
    check_dtype(cache.latent, "cache.latent", DType::u8);
    check_shape(cache.latent, "cache.latent",
                {slots, latent_fp8_bytes(c.kv_lora_rank, c.qk_rope_head_dim)});
  }
  check_dtype(cache.index_keys, "cache.index_keys", DType::u8);
  check_shape(cache.index_keys, "cache.index_keys",
              {cache.num_pages * cache.page_size, index_key_bytes(c.index_head_dim)});
  ops::check_index_key_cache(cache.index_keys, "cache.index_keys", cache.page_size,
                             cache.index_key_layout);
}

AttentionLayer::AttentionLayer(const AttentionConfig& config, LayerWeights weights, Policy policy)
    : ctx_(config, std::move(weights)) {
  set_policy(policy);
}

void AttentionLayer::set_policy(const Policy& policy) {
  policy_ = policy;
  profile_ = planning_profile(policy, ctx_.weights.device(), ctx_.config);
}

void AttentionLayer::write_cache(const TokenProjections& proj, const TensorView& new_slots,
                                 const LayerCacheView& cache) const {
  if (cache.latent_format == LatentFormat::bf16) {
    ops::scatter_rows(proj.latent, new_slots, cache.latent);
  } else {
    Tensor rows =
        Tensor::empty({proj.latent.size(0), cache.latent.size(1)}, DType::u8, proj.latent.device());
    ops::quantize_latent_fp8(proj.latent, ctx_.config.kv_lora_rank, rows);
    ops::scatter_rows(rows, new_slots, cache.latent);
  }
  // A layer sharing another's top-k has no indexer keys: its cache rows stay unwritten.
  if (proj.index_keys.defined()) {
    ops::write_index_keys(proj.index_keys, new_slots, cache.index_keys, cache.page_size,
                          cache.index_key_layout);
  }
}

void AttentionLayer::forward_sparse_on_device(const SparseMeta& meta, const TensorView& new_slots,
                                              const TensorView& hidden_in,
                                              const LayerCacheView& cache,
                                              const TensorView& hidden_out,
                                              SharedTopk* shared) const {
  const AttentionConfig& c = ctx_.config;
  const std::int64_t T = hidden_in.size(0);
  const TokenProjections proj = project_tokens(ctx_, hidden_in, meta.positions);
  write_cache(proj, new_slots, cache);
  Tensor o = Tensor::empty({T, c.num_heads, c.v_head_dim}, DType::bf16, hidden_in.device());
  run_sparse_mla(ctx_, meta, hidden_in, proj, cache, o, nullptr, shared);
  ops::gemm(o.view().reshape({T, c.num_heads * c.v_head_dim}), ctx_.weights.o_proj, hidden_out,
            ops::BLayout::nt);
}

ForwardResult AttentionLayer::forward(const Batch& batch, const TensorView& hidden_in,
                                      const LayerCacheView& cache, const TensorView& hidden_out,
                                      const ForwardOptions& options, SharedTopk* shared) const {
  // Every check first: nothing is written (or recorded) unless the whole forward can run.
  StageClock clock(ctx_.weights.device(), options.time_stages);
  check_layer_cache(cache, ctx_.config);
  validate_batch(batch, ctx_.config, cache);
  const std::shared_ptr<const ForwardTables> t =
      build_tables(batch, cache, options.max_score_bytes);
  check_run(*t, hidden_in, cache, hidden_out, options.lse, shared);
  record_writes(batch.requests, cache);
  const double planning = clock.lap();
  RunOptions run_options;
  run_options.lse = options.lse;
  run_options.time_stages = options.time_stages;
  run_options.record_topk = options.record_topk;
  ForwardResult result = execute(*t, hidden_in, cache, hidden_out, run_options, shared);
  result.times.planning = planning;
  return result;
}

ForwardPlan AttentionLayer::plan(const Batch& batch, const LayerCacheView& cache,
                                 std::int64_t max_score_bytes) const {
  check_layer_cache(cache, ctx_.config);
  validate_batch(batch, ctx_.config, cache);
  std::shared_ptr<const ForwardTables> t = build_tables(batch, cache, max_score_bytes);
  record_writes(batch.requests, cache);
  return ForwardPlan(std::move(t));
}

ForwardResult AttentionLayer::run(const ForwardPlan& plan, const TensorView& hidden_in,
                                  const LayerCacheView& cache, const TensorView& hidden_out,
                                  const RunOptions& options, SharedTopk* shared) const {
  if (plan.empty()) fail("plan: this plan is empty (make one with AttentionLayer::plan)");
  check_layer_cache(cache, ctx_.config);
  check_run(plan.tables(), hidden_in, cache, hidden_out, options.lse, shared);
  return execute(plan.tables(), hidden_in, cache, hidden_out, options, shared);
}

ForwardPlan AttentionLayer::plan(const Batch& batch, const TensorView& block_tables,
                                 const LayerCacheView& cache, std::int64_t max_score_bytes) const {
  const AttentionConfig& c = ctx_.config;
  check_layer_cache(cache, c);
  if (cache.allocator) {
    fail(
        "block_tables: a plan over device block tables is for the caller's cache, whose pages the "
        "caller manages; this cache has a page allocator, which checks pages on the host (pass the "
        "block tables in the batch)");
  }
  DSATTN_CHECK(!batch.requests.empty(), "batch: expected at least one request, got none");
  check_dtype(block_tables, "block_tables", DType::i32);
  check_shape(block_tables, "block_tables",
              {static_cast<std::int64_t>(batch.requests.size()), kAny});
  check_inner_contiguous(block_tables, "block_tables");
  check_device(block_tables, "block_tables", ctx_.weights.device());
  const std::int64_t width = block_tables.size(1);
  for (std::size_t i = 0; i < batch.requests.size(); ++i) {
    const RequestInput& r = batch.requests[i];
    if (!r.block_table.empty()) {
      fail("request {}: its block table comes from block_tables; the batch's must be empty", i);
    }
    if (r.sequence_id != -1) {
      fail(
          "request {}: sequence_id {} is for a cache with a page allocator; over device block "
          "tables the caller's cache takes none (-1)",
          i, r.sequence_id);
    }
    DSATTN_CHECK(r.prefix_len >= 0 && r.extend_len >= 1,
                 "request {}: prefix_len must be >= 0 and extend_len >= 1, got {} and {}", i,
                 r.prefix_len, r.extend_len);
    DSATTN_CHECK(r.context_len() <= c.max_position_embeddings,
                 "request {}: context {} exceeds max_position_embeddings {}", i, r.context_len(),
                 c.max_position_embeddings);
    if (pages_for(r.context_len(), cache.page_size) > width) {
      fail("request {}: block_tables rows hold {} pages, its context of {} tokens needs {}", i,
           width, r.context_len(), pages_for(r.context_len(), cache.page_size));
    }
  }
  return ForwardPlan(build_tables(batch, cache, max_score_bytes, &block_tables));
}

std::shared_ptr<ForwardTables> AttentionLayer::build_tables(const Batch& batch,
                                                            const LayerCacheView& cache,
                                                            std::int64_t max_score_bytes,
                                                            const TensorView* device_tables) const {
  const AttentionConfig& c = ctx_.config;
  const Device dev = ctx_.weights.device();
  for (auto [name, t] : {std::pair{"cache.latent", &cache.latent},
                         std::pair{"cache.index_keys", &cache.index_keys}}) {
    check_device(*t, name, dev);
  }
  DSATTN_CHECK(max_score_bytes >= 1, "max_score_bytes must be >= 1, got {}", max_score_bytes);
  auto t = std::make_shared<ForwardTables>();
  t->device = dev;
  t->layer_shape = plan_signature(c);
  t->page_size = cache.page_size;
  t->num_pages = cache.num_pages;
  t->latent_format = cache.latent_format;
  t->index_key_layout = cache.index_key_layout;
  t->allocator = cache.allocator;
  t->releases = cache.allocator ? cache.allocator->release_count() : 0;
  t->paths = plan_batch(batch, c, policy_, profile_.get());
  t->total_tokens = batch.total_tokens();
  for (const RequestInput& r : batch.requests) {
    t->prefix_lens.push_back(r.prefix_len);
    t->extend_lens.push_back(r.extend_len);
  }
  // The requests the paths run: a row_split request becomes two, its dense rows and then its
  // sparse rows (adjacent, as their hidden rows are), over the same block table.
  const RowSplitBatch work = split_rows(batch, t->paths, c);
  t->origin = work.origin;
  for (std::size_t i = 0; i < work.batch.requests.size(); ++i) {
    const Path p = work.paths[i];
    (p == Path::dense_mha    ? t->dense
     : p == Path::masked_mha ? t->masked
                             : t->sparse)
        .requests.push_back(i);
  }

  const std::int64_t T = t->total_tokens;
  const std::vector<std::int64_t> offsets = batch.token_offsets();
  std::vector<std::int32_t> positions(T), slots(T);
  for (std::size_t i = 0; i < batch.requests.size(); ++i) {
    const RequestInput& r = batch.requests[i];
    std::int32_t* pos = positions.data() + offsets[i];
    for (std::int64_t j = 0; j < r.extend_len; ++j) {
      pos[j] = static_cast<std::int32_t>(r.prefix_len + j);
    }
    if (device_tables) continue;
    ops::positions_to_slots(r.block_table, cache.page_size, {pos, std::size_t(r.extend_len)},
                            {slots.data() + offsets[i], std::size_t(r.extend_len)});
  }
  t->positions = upload_i32(positions, dev);
  if (device_tables) {
    // The caller's tables, their entries checked on the device (build_prefill_tables), and the
    // new tokens' slots from them.
    std::int64_t max_pages = 1;
    std::vector<std::int32_t> prefix, cu_tokens{0};
    for (const RequestInput& r : batch.requests) {
      max_pages = std::max(max_pages, pages_for(r.context_len(), cache.page_size));
      prefix.push_back(static_cast<std::int32_t>(r.prefix_len));
      cu_tokens.push_back(static_cast<std::int32_t>(cu_tokens.back() + r.extend_len));
    }
    t->device_tables = Tensor::empty({static_cast<std::int64_t>(batch.requests.size()), max_pages},
                                     DType::i32, dev);
    t->new_slots = Tensor::empty({T}, DType::i32, dev);
    const std::int32_t zero = 0;
    t->faults = upload_i32(std::span<const std::int32_t>(&zero, 1), dev);
    ops::build_prefill_tables(upload_i32(prefix, dev), upload_i32(cu_tokens, dev), *device_tables,
                              cache.page_size, cache.num_pages, t->device_tables, t->new_slots,
                              t->faults);
  } else {
    t->new_slots = upload_i32(slots, dev);
  }

  const bool host_tables = device_tables == nullptr;
  const std::size_t n_work = work.batch.requests.size();
  const auto key_slots = [&](PathGroup& group) {
    group.upload(dev);
    if (!host_tables) group.map_key_slots(work.batch, t->device_tables, t->origin, cache.page_size);
  };
  const auto meta = [&](const PathGroup& group) {
    return SparseMeta::build(work.batch, group, group.requests.size() == n_work, dev,
                             cache.page_size, max_score_bytes, t->device_tables, t->origin);
  };
  t->dense.build(work.batch, cache.page_size, host_tables);
  if (!t->dense.empty()) key_slots(t->dense);
  t->masked.build(work.batch, cache.page_size, host_tables);
  if (!t->masked.empty()) {
    key_slots(t->masked);
    t->masked_meta = meta(t->masked);
  }
  t->sparse.build(work.batch, cache.page_size, host_tables);
  if (!t->sparse.empty()) t->sparse_meta = meta(t->sparse);
  // The device-built tables read temporaries that return to the allocator here, and a run may
  // come on another stream: the plan is complete when plan() returns, as a host-table plan is
  // after its copies (a wait for the stream, not a readback).
  if (device_tables && dev.is_cuda()) cuda::synchronize();
  return t;
}

void AttentionLayer::check_run(const ForwardTables& t, const TensorView& hidden_in,
                               const LayerCacheView& cache, const TensorView& hidden_out,
                               const TensorView& lse, const SharedTopk* shared) const {
  const AttentionConfig& c = ctx_.config;
  const Device dev = ctx_.weights.device();
  if (t.device != dev) {
    fail("plan: it was made for {}, this layer runs on {}", to_string(t.device), to_string(dev));
  }
  if (t.layer_shape != plan_signature(c)) {
    fail("plan: it was made for a layer of shape {}, this layer is {}", t.layer_shape,
         plan_signature(c));
  }
  if (cache.page_size != t.page_size || cache.num_pages != t.num_pages ||
      cache.latent_format != t.latent_format || cache.index_key_layout != t.index_key_layout) {
    fail(
        "plan: it was made for a cache of {} pages of {} tokens ({} latents, {} index keys), "
        "this cache has {} pages of {} tokens ({} latents, {} index keys)",
        t.num_pages, t.page_size, latent_format_name(t.latent_format),
        index_key_layout_name(t.index_key_layout), cache.num_pages, cache.page_size,
        latent_format_name(cache.latent_format), index_key_layout_name(cache.index_key_layout));
  }
  // Its pages were checked and claimed in one allocator: only that cache's layers may run it, and
  // only while none of its pages has been released (they may be another request's since).
  if (cache.allocator != t.allocator) {
    fail(
        "plan: it was made on {}, this cache is {} (a plan runs on the layers of the cache whose "
        "pages it checked and claimed)",
        t.allocator ? "another cache" : "a cache without a page allocator (the caller's)",
        cache.allocator ? "one with its own page allocator" : "the caller's");
  }
  if (t.allocator && t.allocator->release_count() != t.releases) {
    fail(
        "plan: pages of its cache were released since it was made, so the pages it names may hold "
        "other requests' tokens now; plan the batch again");
  }
  const std::int64_t T = t.total_tokens;
  check_dtype(hidden_in, "hidden_in", DType::bf16);
  check_shape(hidden_in, "hidden_in", {T, c.hidden_size});
  check_contiguous(hidden_in, "hidden_in");
  check_dtype(hidden_out, "hidden_out", DType::bf16);
  check_shape(hidden_out, "hidden_out", {T, c.hidden_size});
  check_contiguous(hidden_out, "hidden_out");
  for (auto [name, v] : {std::pair{"hidden_in", &hidden_in}, std::pair{"hidden_out", &hidden_out},
                         std::pair{"cache.latent", &cache.latent},
                         std::pair{"cache.index_keys", &cache.index_keys}}) {
    check_device(*v, name, dev);
  }
  if (!lse.empty()) {
    check_dtype(lse, "lse", DType::f32);
    check_shape(lse, "lse", {T, c.num_heads});
    check_contiguous(lse, "lse");
    check_device(lse, "lse", dev);
  }
  if (!has_indexer())
    check_shared_topk(shared, t.sparse.requests, t.masked.requests, cache.page_size);
}

ForwardResult AttentionLayer::execute(const ForwardTables& t, const TensorView& hidden_in,
                                      const LayerCacheView& cache, const TensorView& hidden_out,
                                      const RunOptions& options, SharedTopk* shared) const {
  const AttentionConfig& c = ctx_.config;
  const Device dev = ctx_.weights.device();
  const std::int64_t T = t.total_tokens;
  ForwardResult result;
  result.paths = t.paths;
  if (has_indexer() && shared) *shared = SharedTopk{};  // this layer's top-k replaces any older

  StageClock clock(dev, options.time_stages);
  const TokenProjections proj = project_tokens(ctx_, hidden_in, t.positions);
  write_cache(proj, t.new_slots, cache);
  result.times.projections = clock.lap();

  // The selected positions of a group's rows, per request of the planned batch.
  const auto record = [&](const PathGroup& group, const Tensor& selected) {
    if (!options.record_topk) return;
    result.topk_positions.resize(t.paths.size());
    const Tensor host = selected.to(Device::cpu());
    for (std::size_t g = 0; g < group.requests.size(); ++g) {
      const std::size_t i = t.origin[group.requests[g]];
      const std::int64_t first = group.cu_q[g], count = group.cu_q[g + 1] - first;
      // A row_split request's dense rows come first: top-k would select all their keys.
      const std::int64_t head = t.extend_lens[i] - count;
      Tensor mine = Tensor::empty({head + count, c.index_topk}, DType::i32);
      std::int32_t* rows = mine.ptr<std::int32_t>();
      for (std::int64_t r = 0; r < head; ++r) {
        const std::int64_t context = t.prefix_lens[i] + r + 1;
        for (std::int64_t j = 0; j < c.index_topk; ++j) {
          rows[r * c.index_topk + j] = j < context ? static_cast<std::int32_t>(j) : -1;
        }
      }
      copy(host.view().slice(0, first, first + count), mine.view().slice(0, head, head + count));
      result.topk_positions[i] = std::move(mine);
    }
  };

  Tensor o = Tensor::empty({T, c.num_heads, c.v_head_dim}, DType::bf16, dev);
  run_dense_mha(ctx_, t.dense, proj, cache, o, options.lse);
  result.times.dense_mha = clock.lap();
  if (!t.masked.empty()) {
    Tensor selected;
    run_masked_mha(ctx_, t.masked, t.masked_meta, hidden_in, proj, cache, o,
                   options.record_topk ? &selected : nullptr, shared, options.lse);
    if (shared && has_indexer()) shared->masked_requests = t.masked.requests;
    record(t.masked, selected);
  }
  result.times.masked_mha = clock.lap();
  if (!t.sparse.empty()) {
    Tensor selected;
    run_sparse_mla(ctx_, t.sparse_meta, hidden_in, proj, cache, o,
                   options.record_topk ? &selected : nullptr, shared, options.lse);
    if (shared && has_indexer()) shared->requests = t.sparse.requests;
    record(t.sparse, selected);
  }
  if (shared && has_indexer()) shared->page_size = cache.page_size;
  result.times.sparse_mla = clock.lap();

  ops::gemm(o.view().reshape({T, c.num_heads * c.v_head_dim}), ctx_.weights.o_proj, hidden_out,
            ops::BLayout::nt);
  result.times.o_proj = clock.lap();
  return result;
}

}  // namespace dsattn
