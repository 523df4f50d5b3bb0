#include "workload.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "dsattn/core/checked_size.h"
#include "dsattn/core/cuda_runtime.h"
#include "dsattn/core/random.h"
#include "dsattn/layer/decode_graph.h"

namespace dsattn::tools {

void WorkloadSpec::validate() const {
  // Bounds that keep every size computed from them (tokens, pages, positions) far inside int64
  // and positions inside int32, so that no product or sum below wraps.
  constexpr std::int64_t kMaxRequests = std::int64_t(1) << 20, kMaxLayers = 1024;
  constexpr std::int64_t kMaxPosition = std::numeric_limits<std::int32_t>::max();
  const auto in_range = [](std::int64_t v, std::int64_t lo, std::int64_t hi, const char* flag) {
    DSATTN_CHECK(v >= lo && v <= hi, "{} must be in [{}, {}], got {}", flag, lo, hi, v);
  };
  in_range(requests, 1, kMaxRequests, "--requests");
  in_range(prompt_len, 1, kMaxPosition, "--prompt-len");
  in_range(prefix_len, 0, kMaxPosition, "--prefix-len");
  in_range(decode_steps, 0, kMaxPosition, "--decode-steps");
  in_range(layers, 1, kMaxLayers, "--layers");
  in_range(max_batch_tokens, 1, kMaxPosition, "--max-batch-tokens");
  // Each below 2^31, so the sum cannot wrap.
  DSATTN_CHECK(prefix_len + prompt_len + decode_steps <= kMaxPosition,
               "--prefix-len + --prompt-len + --decode-steps must be at most {} (positions are "
               "int32), got {}",
               kMaxPosition, prefix_len + prompt_len + decode_steps);
  // The cache holds every request's whole context.
  const std::int64_t per_request = pages_for(prefix_len + prompt_len + decode_steps);
  const std::int64_t pages = checked_mul(requests, per_request, "cache pages");
  DSATTN_CHECK(pages <= kMaxPosition,
               "--requests x the pages of one request's context ({} x {} pages of {} tokens) must "
               "be at most {} cache pages, got {}",
               requests, per_request, kPageSize, kMaxPosition, pages);
}

std::string WorkloadSpec::to_string() const {
  return fmt::format("{} requests x {}-token prompts (+{} cached), {} decode steps, {} layer{}",
                     requests, prompt_len, prefix_len, decode_steps, layers,
                     layers == 1 ? "" : "s");
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The seeded input embedding of token `position` of request `request`.
void embed(std::uint64_t seed, std::int64_t request, std::int64_t position, bf16* row,
           std::int64_t d) {
  const std::uint64_t stream = (static_cast<std::uint64_t>(request) << 32) ^ 0x5eedull;
  for (std::int64_t j = 0; j < d; ++j) {
    row[j] = bf16::from_float(uniform_pm1(seed, stream, position * d + j) * 1.7320508f);
  }
}

struct Piece {
  std::int64_t request, prefix, extend;
};

// Splits [begin, end) of every request into forwards of at most `budget` tokens, in request
// order; a request longer than the budget is prefilled in chunks.
std::vector<std::vector<Piece>> schedule(std::int64_t requests, std::int64_t begin,
                                         std::int64_t end, std::int64_t budget) {
  std::vector<std::vector<Piece>> batches(1);
  std::int64_t used = 0;
  for (std::int64_t r = 0; r < requests; ++r) {
    for (std::int64_t at = begin; at < end;) {
      if (used == budget) {
        batches.emplace_back();
        used = 0;
      }
      const std::int64_t n = std::min(end - at, budget - used);
      batches.back().push_back({r, at, n});
      used += n;
      at += n;
    }
  }
  return batches;
}

}  // namespace

double max_relative_difference(const PassResult& a, const PassResult& b) {
  double worst = 0;
  for (std::size_t r = 0; r < a.outputs.size() && r < b.outputs.size(); ++r) {
    const bf16* x = a.outputs[r].ptr<bf16>();
    const bf16* y = b.outputs[r].ptr<bf16>();
    double diff = 0, scale = 0;
    for (std::int64_t i = 0; i < a.outputs[r].numel(); ++i) {
      const float u = x[i].to_float(), v = y[i].to_float();
      // A NaN or Inf on either side is no agreement (std::max would skip a NaN).
      if (!std::isfinite(u) || !std::isfinite(v)) return std::numeric_limits<double>::infinity();
      diff = std::max(diff, double(std::fabs(u - v)));
      scale = std::max(scale, double(std::fabs(v)));
    }
    worst = std::max(worst, scale > 0 ? diff / scale : diff);
  }
  return worst;
}

void check_outputs_finite(const PassResult& pass) {
  for (std::size_t r = 0; r < pass.outputs.size(); ++r) {
    const bf16* x = pass.outputs[r].ptr<bf16>();
    for (std::int64_t i = 0; i < pass.outputs[r].numel(); ++i) {
      if (!std::isfinite(x[i].to_float())) {
        fail<Error>(
            "the {} pass's output for request {} is {} at element {}: the weights or the inputs "
            "hold a NaN or an Inf",
            pass.policy, r, x[i].to_float(), i);
      }
    }
  }
}

PassResult run_pass(const AttentionConfig& config, AttentionStack& stack, const WorkloadSpec& spec,
                    const Policy& policy, Device device, const Progress& progress) {
  spec.validate();
  const std::int64_t D = config.hidden_size;
  const std::int64_t context = spec.prefix_len + spec.prompt_len + spec.decode_steps;
  CacheOptions options;
  options.num_layers = spec.layers;
  options.num_pages = spec.requests * pages_for(context);
  options.device = device;
  options.latent_format = spec.kv_cache;
  PagedKvCache cache(config, options);
  std::vector<BlockTable> tables(spec.requests);
  for (BlockTable& t : tables) cache.reserve(t, context);

  stack.set_policy(policy);

  PassResult result;
  result.policy = policy.to_string();
  result.prefill_paths.assign(spec.requests, Path::sparse_mla);
  for (std::int64_t r = 0; r < spec.requests; ++r) {
    result.outputs.push_back(Tensor::empty({spec.prompt_len + spec.decode_steps, D}, DType::bf16));
  }

  // Runs one forward over `pieces`; when `keep`, copies each piece's output rows to the request's
  // output at row (piece.prefix - row_base). Adds the forward's own time (inputs synthesised and
  // outputs copied back are outside it) to `*seconds`.
  auto forward = [&](const std::vector<Piece>& pieces, ForwardMode mode, bool keep,
                     std::int64_t row_base, double* seconds) {
    Batch batch;
    batch.mode = mode;
    std::int64_t tokens = 0;
    for (const Piece& p : pieces) {
      batch.requests.push_back({p.prefix, p.extend, tables[p.request]});
      tokens += p.extend;
    }
    Tensor hidden = Tensor::empty({tokens, D}, DType::bf16);
    std::int64_t row = 0;
    for (const Piece& p : pieces) {
      for (std::int64_t t = 0; t < p.extend; ++t, ++row) {
        embed(spec.seed, p.request, p.prefix + t, hidden.ptr<bf16>() + row * D, D);
      }
    }
    const Tensor on_device = device.is_cpu() ? hidden : hidden.to(device);
    const auto t0 = std::chrono::steady_clock::now();
    ForwardResult fr = stack.forward(batch, on_device, cache);
    if (device.is_cuda()) cuda::synchronize();
    *seconds += seconds_since(t0);
    const Tensor out = device.is_cpu() ? on_device : on_device.to(Device::cpu());
    row = 0;
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      const Piece& p = pieces[i];
      if (keep) {
        std::memcpy(result.outputs[p.request].ptr<bf16>() + (p.prefix - row_base) * D,
                    out.ptr<bf16>() + row * D, p.extend * D * sizeof(bf16));
      }
      row += p.extend;
    }
    return fr;
  };

  auto last_report = std::chrono::steady_clock::now();
  auto report = [&](const std::string& what, std::size_t done, std::size_t total) {
    if (seconds_since(last_report) < 3.0) return;
    last_report = std::chrono::steady_clock::now();
    progress(fmt::format("{}: {} {}/{}", result.policy, what, done, total));
  };

  if (spec.prefix_len > 0) {  // the cached prefix: prefilled first, not part of the figures
    const auto batches = schedule(spec.requests, 0, spec.prefix_len, spec.max_batch_tokens);
    for (std::size_t b = 0; b < batches.size(); ++b) {
      double ignored = 0;
      forward(batches[b], ForwardMode::prefill, false, 0, &ignored);
      report("cached prefix batch", b + 1, batches.size());
    }
  }

  const auto batches = schedule(spec.requests, spec.prefix_len, spec.prefix_len + spec.prompt_len,
                                spec.max_batch_tokens);
  if (device.is_cuda()) {
    // Warm-up, untimed: library plans, kernel attributes and the allocator's first blocks. It
    // writes the first batch's cache entries, which the timed forward rewrites identically.
    double ignored = 0;
    forward(batches.front(), ForwardMode::prefill, false, 0, &ignored);
  }
  for (std::size_t b = 0; b < batches.size(); ++b) {
    const ForwardResult fr =
        forward(batches[b], ForwardMode::prefill, true, spec.prefix_len, &result.prefill_seconds);
    for (std::size_t i = 0; i < batches[b].size(); ++i) {
      result.prefill_paths[batches[b][i].request] = fr.paths[i];
    }
    result.prefill_stages += fr.times;
    report("prefill batch", b + 1, batches.size());
  }
  result.prefill_tokens = spec.requests * spec.prompt_len;

  // Decode: on a GPU, the sparse path's steps replay one CUDA graph (planned and captured before
  // the timed steps begin); otherwise (and under a forced dense or masked policy, whose decode is
  // not the sparse path) each step is a regular forward.
  const bool graph_decode = device.is_cuda() && spec.decode_steps > 0 &&
                            policy.kind != Policy::Kind::mha && policy.kind != Policy::Kind::masked;
  std::unique_ptr<DecodeGraph> graph;
  if (graph_decode) {
    graph = std::make_unique<DecodeGraph>(stack, cache, spec.requests, 1, context);
    std::vector<RequestInput> first;
    for (std::int64_t r = 0; r < spec.requests; ++r) {
      first.push_back({spec.prefix_len + spec.prompt_len, 1, tables[r]});
    }
    graph->capture(first);  // untimed, like the prefill's warm-up
    result.decode_graph = true;
  }
  Tensor step_hidden = Tensor::empty({spec.requests, D}, DType::bf16);
  for (std::int64_t step = 0; step < spec.decode_steps; ++step) {
    const std::int64_t position = spec.prefix_len + spec.prompt_len + step;
    if (!graph) {
      std::vector<Piece> pieces;
      for (std::int64_t r = 0; r < spec.requests; ++r) pieces.push_back({r, position, 1});
      const ForwardResult fr =
          forward(pieces, ForwardMode::decode, true, spec.prefix_len, &result.decode_seconds);
      result.decode_paths = fr.paths;
    } else {
      std::vector<RequestInput> requests;
      for (std::int64_t r = 0; r < spec.requests; ++r) {
        embed(spec.seed, r, position, step_hidden.ptr<bf16>() + r * D, D);
        requests.push_back({position, 1, tables[r]});
      }
      copy(step_hidden, graph->hidden());
      const auto t0 = std::chrono::steady_clock::now();
      graph->step(requests);
      graph->synchronize();
      result.decode_seconds += seconds_since(t0);
      copy(graph->hidden(), step_hidden);
      for (std::int64_t r = 0; r < spec.requests; ++r) {
        std::memcpy(result.outputs[r].ptr<bf16>() + (position - spec.prefix_len) * D,
                    step_hidden.ptr<bf16>() + r * D, D * sizeof(bf16));
      }
      result.decode_paths.assign(spec.requests, Path::sparse_mla);
    }
    report("decode step", step + 1, spec.decode_steps);
  }
  result.cache_bytes = cache.bytes_per_token() * cache.num_pages() * cache.page_size();
  if (graph) result.decode_graph_bytes = static_cast<std::int64_t>(graph->reserved_bytes());
  if (device.is_cuda()) {
    result.peak_device_bytes =
        static_cast<std::int64_t>(cuda::device_memory_stats(device).peak_in_use);
  }
  result.decode_tokens = spec.requests * spec.decode_steps;
  return result;
}

}  // namespace dsattn::tools
