// One attention layer with its own paged cache (one layer of latents and indexer keys): page
// allocation per request, and forwards over batches of requests packed by request.
#include <fmt/format.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "bindings.h"
#include "call_scope.h"
#include "dsattn/core/checks.h"
#include "dsattn/layer/attention_layer.h"
#include "dsattn/layer/decode_step.h"
#include "dsattn/layer/planner.h"
#include "tensor_args.h"

namespace dsattn::python {

namespace {

CacheOptions cache_options(const std::string& kv_cache, IndexKeyLayout index_key_layout,
                           std::int64_t num_pages, std::int64_t page_size, Device device) {
  CacheOptions o;
  o.index_key_layout = index_key_layout;
  o.num_pages = num_pages;
  o.page_size = page_size;
  o.num_layers = 1;
  o.latent_format = parse_latent_format(kv_cache);
  o.device = device;
  return o;
}

// block_tables as host vectors: a list of lists of int, or an int32 [batch, max_pages] tensor on
// any device (rows may hold more pages than a request needs).
std::vector<BlockTable> read_block_tables(nb::handle obj, std::size_t batch) {
  std::vector<BlockTable> tables;
  if (nb::ndarray_check(obj)) {
    const TensorArg t = tensor_arg(obj, "block_tables", {DType::i32}, 2, "[batch, max_pages]");
    check_shape(t.view, "block_tables", {static_cast<std::int64_t>(batch), kAny});
    check_contiguous(t.view, "block_tables");
    std::vector<std::int32_t> host(static_cast<std::size_t>(t.view.numel()));
    if (!host.empty()) {
      copy(t.view, TensorView(host.data(), DType::i32, Device::cpu(), t.view.shape()));
    }
    const std::size_t width = static_cast<std::size_t>(t.view.size(1));
    for (std::size_t b = 0; b < batch; ++b) {
      tables.emplace_back(host.begin() + b * width, host.begin() + (b + 1) * width);
    }
    return tables;
  }
  if (!nb::try_cast(obj, tables)) {
    throw nb::type_error(
        fmt::format("block_tables: expected a list of lists of int or an int32 [batch, "
                    "max_pages] tensor, got {}",
                    python_type_name(obj))
            .c_str());
  }
  if (tables.size() != batch) {
    throw nb::value_error(fmt::format("block_tables: expected one table per request ({}), got {}",
                                      batch, tables.size())
                              .c_str());
  }
  return tables;
}

// Each path's name, in order: what Python receives for a batch's paths.
std::vector<std::string> path_names(const std::vector<Path>& paths) {
  std::vector<std::string> names;
  for (Path p : paths) names.emplace_back(path_name(p));
  return names;
}

// `text` as a policy; auto plans with `profile` when one is given.
Policy policy_with_profile(const std::string& text,
                           const std::shared_ptr<const CostProfile>& profile) {
  Policy p = Policy::parse(text);
  if (p.kind == Policy::Kind::automatic) p.profile = profile;
  return p;
}

std::shared_ptr<const CostProfile> load_profile(const std::optional<std::string>& path) {
  if (!path) return nullptr;
  return std::make_shared<const CostProfile>(CostProfile::load(*path));
}

// The caller's cache tensors for one layer: latent [num_pages, page_size, width] (bf16 rows of
// kv_lora_rank + rope values, or u8 FP8 rows of latent_fp8_bytes) and index keys [num_pages,
// page_size, index_key_bytes] u8, on `device`, pages contiguous (slot = page · page_size +
// offset is row `slot` of the flattened tensor). The imports keep the caller's memory alive.
struct CallerCache {
  TensorArg latent, index_keys;
  LayerCacheView view;
};

CallerCache caller_cache(const AttentionConfig& config, nb::handle latent, nb::handle index_keys,
                         IndexKeyLayout index_key_layout, Device device) {
  CallerCache c;
  c.latent = tensor_arg(latent, "latent_cache", {DType::bf16, DType::u8}, 3,
                        "[num_pages, page_size, width]", /*writable=*/true);
  c.index_keys = tensor_arg(index_keys, "index_key_cache", {DType::u8}, 3,
                            "[num_pages, page_size, index_key_bytes]", /*writable=*/true);
  check_same_device({{"latent_cache", &c.latent}, {"index_key_cache", &c.index_keys}}, device,
                    "the layer's device");
  const TensorView& l = c.latent.view;
  const TensorView& k = c.index_keys.view;
  const bool fp8 = l.dtype() == DType::u8;
  const std::int64_t pages = l.size(0), page_size = l.size(1);
  const std::int64_t width = fp8 ? latent_fp8_bytes(config.kv_lora_rank, config.qk_rope_head_dim)
                                 : config.kv_lora_rank + config.qk_rope_head_dim;
  if (page_size % kPageSizeStep != 0 || page_size < kPageSizeStep || page_size > kMaxPageSize) {
    fail("latent_cache: page_size (dimension 1) must be a multiple of {} up to {}, got {}",
         kPageSizeStep, kMaxPageSize, page_size);
  }
  check_shape(l, "latent_cache", {pages, page_size, width});
  check_shape(k, "index_key_cache", {pages, page_size, index_key_bytes(config.index_head_dim)});
  for (const auto& [name, v] : {std::pair{"latent_cache", &l}, std::pair{"index_key_cache", &k}}) {
    if (!v->is_contiguous()) {
      fail("{}: pages must be contiguous rows (slot = page * page_size + offset), got strides {}",
           name, shape_string(v->strides()));
    }
  }
  c.view.latent = l.reshape({pages * page_size, width});
  c.view.latent_format = fp8 ? LatentFormat::fp8 : LatentFormat::bf16;
  c.view.index_keys = k.reshape({pages * page_size, k.size(2)});
  c.view.index_key_layout = index_key_layout;
  c.view.page_size = page_size;
  c.view.num_pages = pages;
  return c;
}

class Layer {
 public:
  Layer(const AttentionConfig& config, const LayerWeights& weights, const std::string& kv_cache,
        const std::string& policy, std::int64_t num_pages, std::optional<std::string> device,
        std::int64_t page_size, std::optional<std::string> profile, nb::handle latent_cache,
        nb::handle index_key_cache, const std::string& index_key_layout)
      : device_(device ? parse_device(*device) : weights.device()),
        profile_(load_profile(profile)),
        layer_(config, weights.device() == device_ ? weights : weights.to(device_),
               policy_with_profile(policy, profile_)) {
    if (!weights.has_indexer()) {
      fail(
          "weights have no indexer (a layer that takes an earlier layer's top-k, IndexShare): "
          "AttentionLayer runs one layer on its own, which needs its own indexer weights");
    }
    if (latent_cache.is_none() != index_key_cache.is_none()) {
      fail("latent_cache and index_key_cache come together: got only {}",
           latent_cache.is_none() ? "index_key_cache" : "latent_cache");
    }
    if (latent_cache.is_none()) {
      own_.emplace(config, cache_options(kv_cache, parse_index_key_layout(index_key_layout),
                                         num_pages, page_size, device_));
    } else {
      caller_.emplace(caller_cache(config, latent_cache, index_key_cache,
                                   parse_index_key_layout(index_key_layout), device_));
    }
  }

  const AttentionConfig& config() const { return layer_.config(); }
  const LayerWeights& weights() const { return layer_.weights(); }
  std::string device() const { return to_string(device_); }
  std::string policy() const { return layer_.policy().to_string(); }
  void set_policy(const std::string& text) {
    layer_.set_policy(policy_with_profile(text, profile_));
  }
  // The costs auto plans with, as JSON (None under other policies or without a profile).
  std::optional<std::string> cost_profile() const {
    const CostProfile* p = layer_.cost_profile();
    return p ? std::optional<std::string>(p->to_json()) : std::nullopt;
  }
  std::string kv_cache() const {
    return std::string(
        latent_format_name(own_ ? own_->latent_format() : caller_->view.latent_format));
  }
  std::string index_key_layout() const {
    return std::string(
        index_key_layout_name(own_ ? own_->index_key_layout() : caller_->view.index_key_layout));
  }
  std::int64_t page_size() const { return own_ ? own_->page_size() : caller_->view.page_size; }
  std::int64_t num_pages() const { return own_ ? own_->num_pages() : caller_->view.num_pages; }
  bool owns_cache() const { return own_.has_value(); }
  std::int64_t free_pages() const { return own_cache("free_pages").free_pages(); }

  BlockTable allocate(std::int64_t num_tokens, std::optional<BlockTable> table) {
    PagedKvCache& cache = own_cache("allocate");
    if (num_tokens < 0) {
      throw nb::value_error(
          fmt::format("num_tokens: expected a count >= 0, got {}", num_tokens).c_str());
    }
    BlockTable grown = table.value_or(BlockTable{});
    cache.reserve(grown, num_tokens);
    return grown;
  }

  void free(BlockTable table) { own_cache("free").release(table); }

  std::vector<std::string> forward(bool decode, nb::handle hidden, nb::handle out,
                                   const std::vector<std::int64_t>& prefix_lens,
                                   const std::vector<std::int64_t>& extend_lens,
                                   nb::handle block_tables, nb::handle stream,
                                   const std::optional<std::vector<std::int64_t>>& sequence_ids,
                                   nb::handle lse) {
    check_lengths(prefix_lens, extend_lens, sequence_ids);
    std::int64_t tokens = 0;
    for (std::int64_t n : extend_lens) tokens += n;
    const Outputs io = outputs(hidden, out, lse, tokens);
    const std::uintptr_t s = resolve_stream(stream, hidden, device_);
    CallScope scope(device_, s);
    const std::vector<BlockTable> tables = read_block_tables(block_tables, prefix_lens.size());
    const Batch batch = make_batch(decode, prefix_lens, extend_lens, tables, sequence_ids);
    ForwardOptions options;
    options.time_stages = false;
    if (io.lse) options.lse = io.lse->view;
    std::vector<std::string> paths;
    {
      nb::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      const ForwardResult r = layer_.forward(batch, io.in.view, cache_view(), io.out.view, options);
      paths = path_names(r.paths);
    }
    return paths;
  }

  // The batch planned once (AttentionLayer::plan): checks, paths and tables, uploaded on `stream`.
  ForwardPlan plan(bool decode, const std::vector<std::int64_t>& prefix_lens,
                   const std::vector<std::int64_t>& extend_lens, nb::handle block_tables,
                   nb::handle stream, const std::optional<std::vector<std::int64_t>>& sequence_ids,
                   bool on_device) {
    check_lengths(prefix_lens, extend_lens, sequence_ids);
    CallScope scope(device_, resolve_stream(stream, block_tables, device_));
    if (on_device) {
      // Read on the device only (AttentionLayer::plan with block_tables): no host readback.
      if (sequence_ids) {
        fail("sequence_ids: a plan over device block tables takes none (the caller's cache)");
      }
      const TensorArg tables =
          tensor_arg(block_tables, "block_tables", {DType::i32}, 2, "[batch, max_pages]");
      check_same_device({{"block_tables", &tables}}, device_, "the layer's device");
      const std::vector<BlockTable> none(prefix_lens.size());
      const Batch batch = make_batch(decode, prefix_lens, extend_lens, none, std::nullopt);
      nb::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      return layer_.plan(batch, tables.view, cache_view());
    }
    const std::vector<BlockTable> tables = read_block_tables(block_tables, prefix_lens.size());
    const Batch batch = make_batch(decode, prefix_lens, extend_lens, tables, sequence_ids);
    nb::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    return layer_.plan(batch, cache_view());
  }

  // A plan's forward (AttentionLayer::run): no planning, no upload, no synchronisation.
  std::vector<std::string> run(const ForwardPlan& plan, nb::handle hidden, nb::handle out,
                               nb::handle stream, nb::handle lse) {
    if (plan.empty()) fail("plan: this plan is empty (make one with AttentionLayer.plan)");
    const Outputs io = outputs(hidden, out, lse, plan.total_tokens());
    CallScope scope(device_, resolve_stream(stream, hidden, device_));
    RunOptions options;
    if (io.lse) options.lse = io.lse->view;
    std::vector<std::string> paths;
    {
      nb::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      const ForwardResult r = layer_.run(plan, io.in.view, cache_view(), io.out.view, options);
      paths = path_names(r.paths);
    }
    return paths;
  }

 private:
  friend class Step;
  LayerCacheView cache_view() const { return own_ ? own_->layer(0) : caller_->view; }

  static void check_lengths(const std::vector<std::int64_t>& prefix_lens,
                            const std::vector<std::int64_t>& extend_lens,
                            const std::optional<std::vector<std::int64_t>>& sequence_ids) {
    if (prefix_lens.size() != extend_lens.size()) {
      throw nb::value_error(fmt::format("the batch has {} prefix lengths but {} token counts",
                                        prefix_lens.size(), extend_lens.size())
                                .c_str());
    }
    if (sequence_ids && sequence_ids->size() != prefix_lens.size()) {
      throw nb::value_error(fmt::format("sequence_ids: expected one id per request ({}), got {}",
                                        prefix_lens.size(), sequence_ids->size())
                                .c_str());
    }
  }

  static Batch make_batch(bool decode, const std::vector<std::int64_t>& prefix_lens,
                          const std::vector<std::int64_t>& extend_lens,
                          const std::vector<BlockTable>& tables,
                          const std::optional<std::vector<std::int64_t>>& sequence_ids) {
    Batch batch;
    batch.mode = decode ? ForwardMode::decode : ForwardMode::prefill;
    for (std::size_t i = 0; i < prefix_lens.size(); ++i) {
      batch.requests.push_back(
          {prefix_lens[i], extend_lens[i], tables[i], sequence_ids ? (*sequence_ids)[i] : -1});
    }
    return batch;
  }

  // A forward's tensors: hidden and out [tokens, hidden_size] bf16, contiguous, and lse when
  // given (its shape and layout are the layer's to check), all on the layer's device.
  struct Outputs {
    TensorArg in, out;
    std::optional<TensorArg> lse;
  };
  Outputs outputs(nb::handle hidden, nb::handle out, nb::handle lse, std::int64_t tokens) const {
    const AttentionConfig& c = layer_.config();
    Outputs io{tensor_arg(hidden, "hidden", {DType::bf16}, 2, "[tokens, hidden_size]"),
               tensor_arg(out, "out", {DType::bf16}, 2, "[tokens, hidden_size]",
                          /*writable=*/true),
               std::nullopt};
    check_same_device({{"hidden", &io.in}, {"out", &io.out}}, device_, "the layer's device");
    for (const auto& [name, t] : {std::pair{"hidden", &io.in}, std::pair{"out", &io.out}}) {
      check_shape(t->view, name, {tokens, c.hidden_size});
      check_contiguous(t->view, name);
    }
    if (!lse.is_none()) {
      io.lse = tensor_arg(lse, "lse", {DType::f32}, 2, "[tokens, num_heads]", /*writable=*/true);
      check_same_device({{"hidden", &io.in}, {"lse", &*io.lse}}, device_, "the layer's device");
    }
    return io;
  }

  // The layer's own cache, for the calls that manage its pages (`what`); a layer on the caller's
  // cache leaves its pages to the caller.
  PagedKvCache& own_cache(const char* what) {
    if (!own_) {
      fail(
          "{}: this layer reads and writes the caller's cache tensors, whose pages the caller "
          "allocates and frees",
          what);
    }
    return *own_;
  }
  const PagedKvCache& own_cache(const char* what) const {
    return const_cast<Layer*>(this)->own_cache(what);
  }

  Device device_;
  std::shared_ptr<const CostProfile> profile_;  // given at construction, or null
  AttentionLayer layer_;
  std::optional<PagedKvCache> own_;    // the layer's own cache, or
  std::optional<CallerCache> caller_;  // the caller's tensors
  std::mutex mutex_;                   // one forward at a time writes this layer's cache
};

// A decode or verify step of a Layer with its metadata in the caller's device tensors, for capture
// in the caller's CUDA graph (layer/decode_step.h). Keeps its layer alive (keep_alive in the
// binding).
class Step {
 public:
  Step(Layer& layer, std::int64_t batch_size, std::int64_t tokens_per_request,
       std::int64_t max_context)
      : layer_(layer), step_(make(layer, batch_size, tokens_per_request, max_context)) {}

  std::int64_t batch_size() const { return step_->batch_size(); }
  std::int64_t tokens_per_request() const { return step_->tokens_per_request(); }
  std::int64_t max_context() const { return step_->max_context(); }
  std::int64_t max_pages() const { return step_->max_pages(); }
  bool warm() const { return step_->warm(); }

  void run(nb::handle hidden, nb::handle prefix_lens, nb::handle block_tables, nb::handle out,
           nb::handle stream) {
    const TensorArg in = tensor_arg(hidden, "hidden", {DType::bf16}, 2, "[rows, hidden_size]");
    const TensorArg dst =
        tensor_arg(out, "out", {DType::bf16}, 2, "[rows, hidden_size]", /*writable=*/true);
    const TensorArg lens = tensor_arg(prefix_lens, "prefix_lens", {DType::i32}, 1, "[batch_size]");
    const TensorArg tables =
        tensor_arg(block_tables, "block_tables", {DType::i32}, 2, "[batch_size, >= max_pages]");
    check_same_device(
        {{"hidden", &in}, {"out", &dst}, {"prefix_lens", &lens}, {"block_tables", &tables}},
        layer_.device_, "the layer's device");
    const std::uintptr_t s = resolve_stream(stream, hidden, layer_.device_);
    CallScope scope(layer_.device_, s, CallScope::Capture::allow);
    nb::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(layer_.mutex_);
    step_->run(lens.view, tables.view, in.view, dst.view);
  }

  // Waits for `stream` (an int; the Python wrapper passes the framework's current stream).
  std::vector<std::string> take_faults(nb::handle stream) {
    CallScope scope(layer_.device_, resolve_stream(stream, nb::none(), layer_.device_));
    nb::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(layer_.mutex_);
    return step_->take_faults();
  }

 private:
  // The step's buffers are made on the layer's device, on the default stream.
  static std::unique_ptr<DecodeStep> make(Layer& layer, std::int64_t batch_size,
                                          std::int64_t tokens_per_request,
                                          std::int64_t max_context) {
    CallScope scope(layer.device_, 0);
    return std::make_unique<DecodeStep>(layer.layer_, layer.cache_view(), batch_size,
                                        tokens_per_request, max_context);
  }

  Layer& layer_;
  std::unique_ptr<DecodeStep> step_;
};

}  // namespace

// A batch of `mode` from per-request prefix and extend lengths (no block tables), for the planner
// and the cost model.
Batch batch_of_lengths(const AttentionConfig& config, const std::vector<std::int64_t>& prefix_lens,
                       const std::vector<std::int64_t>& extend_lens, const std::string& mode) {
  if (prefix_lens.size() != extend_lens.size()) {
    fail("prefix_lens and extend_lens must have the same length, got {} and {}", prefix_lens.size(),
         extend_lens.size());
  }
  if (mode != "prefill" && mode != "decode") {
    fail("mode must be \"prefill\" or \"decode\", got \"{}\"", mode);
  }
  config.validate();
  Batch batch;
  batch.mode = mode == "decode" ? ForwardMode::decode : ForwardMode::prefill;
  for (std::size_t i = 0; i < prefix_lens.size(); ++i) {
    if (prefix_lens[i] < 0 || extend_lens[i] < 1) {
      fail("request {}: prefix_len must be >= 0 and extend_len >= 1, got {} and {}", i,
           prefix_lens[i], extend_lens[i]);
    }
    batch.requests.push_back({prefix_lens[i], extend_lens[i], {}});
  }
  return batch;
}

// The planner on its own: the path each request of a batch takes under `policy`.
std::vector<std::string> plan(const AttentionConfig& config,
                              const std::vector<std::int64_t>& prefix_lens,
                              const std::vector<std::int64_t>& extend_lens,
                              const std::string& policy, const std::string& mode,
                              const std::optional<std::string>& profile_path,
                              const std::string& device) {
  const Batch batch = batch_of_lengths(config, prefix_lens, extend_lens, mode);
  // auto's costs: the given profile, else the device's built-in one (none: per-request's rule).
  const Policy parsed = policy_with_profile(policy, load_profile(profile_path));
  const std::shared_ptr<const CostProfile> costs =
      planning_profile(parsed, parse_device(device), config);
  return path_names(plan_batch(batch, config, parsed, costs.get()));
}

// The cost model on its own: each request's predicted seconds per exact path (None where a path
// is not exact), under the given profile or the device's built-in one.
std::vector<nb::dict> predict_costs(const AttentionConfig& config,
                                    const std::vector<std::int64_t>& prefix_lens,
                                    const std::vector<std::int64_t>& extend_lens,
                                    const std::optional<std::string>& profile_path,
                                    const std::string& device) {
  const Batch batch = batch_of_lengths(config, prefix_lens, extend_lens, "prefill");
  std::shared_ptr<const CostProfile> costs = load_profile(profile_path);
  if (!costs) costs = planning_profile(Policy::parse("auto"), parse_device(device), config);
  if (!costs) {
    fail(
        "no built-in cost profile for device {} and layer shape {}: pass profile= (dsattn "
        "calibrate writes one)",
        device, profile_shape(config));
  }
  const auto seconds = [](std::optional<double> s) {
    return s ? nb::object(nb::float_(*s)) : nb::none();
  };
  std::vector<nb::dict> out;
  for (const RequestInput& r : batch.requests) {
    const PathCosts c = predict_paths(r, config, *costs);
    nb::dict d;
    d["dense_mha"] = seconds(c.dense_mha);
    d["sparse_mla"] = nb::float_(c.sparse_mla);
    d["row_split"] = seconds(c.row_split);
    d["masked_mha"] = seconds(c.masked_mha);
    out.push_back(std::move(d));
  }
  return out;
}

void bind_layer(nb::module_& m) {
  m.def("plan", &plan, nb::arg("config"), nb::arg("prefix_lens"), nb::arg("extend_lens"),
        nb::arg("policy") = "auto", nb::arg("mode") = "prefill", nb::arg("profile") = nb::none(),
        nb::arg("device") = "cpu",
        "The path (\"dense_mha\", \"sparse_mla\", \"row_split\" or \"masked_mha\") each request "
        "of a batch takes under `policy`: what AttentionLayer would run, without running it. "
        "prefix_lens "
        "and extend_lens: one int per request (extend >= 1); mode: \"prefill\" or \"decode\". "
        "auto plans with the cost profile at `profile` (dsattn calibrate's JSON), else "
        "`device`'s built-in one. Returns a list of str, one per request.");
  m.def(
      "predict_costs", &predict_costs, nb::arg("config"), nb::arg("prefix_lens"),
      nb::arg("extend_lens"), nb::arg("profile") = nb::none(), nb::arg("device") = "cpu",
      "The cost model auto plans with: for each prefill request (prefix_lens, extend_lens: one "
      "int each), a dict of predicted seconds per exact path, {\"dense_mha\": float or None "
      "(None: not exact), \"sparse_mla\": float, \"row_split\": float or None (None unless "
      "the context passes index_topk inside the extend), \"masked_mha\": float or None (None "
      "where dense MHA is exact or the profile has no masked costs)}, without the fixed cost "
      "each path group pays once per forward. Costs from the profile at `profile`, else `device`'s "
      "built-in one (an error where there is none).");
  nb::class_<Layer>(m, "AttentionLayer",
                    "The engine behind dsattn.AttentionLayer: forward() takes every tensor, "
                    "including out.")
      .def(nb::init<const AttentionConfig&, const LayerWeights&, const std::string&,
                    const std::string&, std::int64_t, std::optional<std::string>, std::int64_t,
                    std::optional<std::string>, nb::handle, nb::handle, const std::string&>(),
           nb::arg("config"), nb::arg("weights"), nb::arg("kv_cache") = "bf16",
           nb::arg("policy") = "auto", nb::arg("num_pages") = 1024, nb::arg("device") = nb::none(),
           nb::arg("page_size") = kPageSize, nb::arg("profile") = nb::none(),
           nb::arg("latent_cache").none() = nb::none(),
           nb::arg("index_key_cache").none() = nb::none(), nb::arg("index_key_layout") = "rows")
      .def_prop_ro("config", &Layer::config)
      .def_prop_ro("weights", &Layer::weights)
      .def_prop_ro("device", &Layer::device)
      .def_prop_rw("policy", &Layer::policy, &Layer::set_policy)
      .def_prop_ro("cost_profile", &Layer::cost_profile)
      .def_prop_ro("kv_cache", &Layer::kv_cache)
      .def_prop_ro("index_key_layout", &Layer::index_key_layout)
      .def_prop_ro("page_size", &Layer::page_size)
      .def_prop_ro("num_pages", &Layer::num_pages)
      .def_prop_ro("free_pages", &Layer::free_pages)
      .def_prop_ro("owns_cache", &Layer::owns_cache)
      .def("allocate", &Layer::allocate, nb::arg("num_tokens"), nb::arg("block_table") = nb::none())
      .def("free", &Layer::free, nb::arg("block_table"))
      .def(
          "decode_step",
          [](Layer& layer, std::int64_t batch_size, std::int64_t tokens_per_request,
             std::int64_t max_context) {
            return new Step(layer, batch_size, tokens_per_request, max_context);
          },
          nb::arg("batch_size"), nb::arg("tokens_per_request"), nb::arg("max_context"),
          nb::keep_alive<0, 1>(), nb::rv_policy::take_ownership)
      .def("forward", &Layer::forward, nb::arg("decode"), nb::arg("hidden"), nb::arg("out"),
           nb::arg("prefix_lens"), nb::arg("extend_lens"), nb::arg("block_tables"),
           nb::arg("stream") = nb::none(), nb::arg("sequence_ids") = nb::none(),
           nb::arg("lse") = nb::none())
      .def("plan", &Layer::plan, nb::arg("decode"), nb::arg("prefix_lens"), nb::arg("extend_lens"),
           nb::arg("block_tables"), nb::arg("stream") = nb::none(),
           nb::arg("sequence_ids") = nb::none(), nb::arg("on_device") = false)
      .def("run", &Layer::run, nb::arg("plan"), nb::arg("hidden"), nb::arg("out"),
           nb::arg("stream") = nb::none(), nb::arg("lse") = nb::none());
  nb::class_<ForwardPlan>(
      m, "ForwardPlan",
      "A batch planned once by AttentionLayer.plan: its checks done, each request's path chosen "
      "and every table the forward reads built on the layer's device. AttentionLayer.run runs it "
      "with no planning, no upload and no synchronisation, as often as wanted.")
      .def_prop_ro(
          "paths", [](const ForwardPlan& p) { return path_names(p.paths()); },
          "The path of each request, in the batch's order (list of str).")
      .def_prop_ro("num_requests", &ForwardPlan::num_requests, "The requests of the batch.")
      .def_prop_ro("total_tokens", &ForwardPlan::total_tokens,
                   "The rows of the hidden states a run takes (the sum of the token counts).")
      .def(
          "faults",
          [](const ForwardPlan& p, nb::handle stream) {
            CallScope scope(p.device(), resolve_stream(stream, nb::none(), p.device()));
            nb::gil_scoped_release release;
            return p.faults();
          },
          nb::arg("stream") = nb::none(),
          "A plan over device block tables (plan(..., on_device=True)): what their entries held "
          "that was not a page of the cache, one sentence each (an empty list: nothing; such an "
          "entry was read as page 0 and its tokens were not written). Waits for `stream`.")
      .def("__repr__", [](const ForwardPlan& p) {
        return fmt::format("ForwardPlan(requests={}, tokens={})", p.num_requests(),
                           p.total_tokens());
      });
  nb::class_<Step>(m, "DecodeStep",
                   "The engine behind dsattn.DecodeStep: run() takes every tensor, including out.")
      .def_prop_ro("batch_size", &Step::batch_size)
      .def_prop_ro("tokens_per_request", &Step::tokens_per_request)
      .def_prop_ro("max_context", &Step::max_context)
      .def_prop_ro("max_pages", &Step::max_pages)
      .def_prop_ro("warm", &Step::warm)
      .def("run", &Step::run, nb::arg("hidden"), nb::arg("prefix_lens"), nb::arg("block_tables"),
           nb::arg("out"), nb::arg("stream") = nb::none())
      .def("take_faults", &Step::take_faults, nb::arg("stream") = nb::none());
}

}  // namespace dsattn::python
