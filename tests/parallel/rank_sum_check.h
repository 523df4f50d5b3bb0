// Runs a scenario (requests with cached prefixes prefilled in chunks, then one checked forward)
// through the unsharded layer and through every rank-local layer of a head split, each with a
// cache of its own, and measures the sum of the ranks' outputs against the float64 reference.
// Shared by the CPU tests (tests/parallel) and the GPU tests (every rank on one GPU).
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "dsattn/layer/attention_layer.h"
#include "dsattn/parallel/tensor_parallel_layer.h"
#include "dsattn/reference/compare.h"
#include "dsattn/reference/layer_check.h"
#include "dsattn/reference/reference_layer.h"
#include "layer/layer_test_util.h"
#include "parallel/thread_communicator.h"

namespace dsattn::tp_test {

struct Scenario {
  const char* name;
  std::vector<reference::CheckRequest> requests;  // prefix_len tokens cached first, then extend_len
  ForwardMode mode = ForwardMode::prefill;
  std::int64_t prefix_chunk = 1 << 30;  // prefixes are prefilled in chunks of at most this many
};

// The small test configuration with enough heads to split four ways (two per rank); an FP8
// latent cache needs kv_lora_rank in blocks of 128.
inline AttentionConfig split_config(LatentFormat format, std::int64_t index_topk = 32) {
  AttentionConfig c = testing::small_config(index_topk);
  c.num_heads = 8;
  if (format == LatentFormat::fp8) c.kv_lora_rank = 128;
  return c;
}

// Every token's input, per request: [prefix + extend, D] bf16 on the host, seeded.
inline std::vector<Tensor> scenario_inputs(const AttentionConfig& config, const Scenario& s,
                                           std::uint64_t seed) {
  std::vector<Tensor> hidden;
  for (std::size_t i = 0; i < s.requests.size(); ++i) {
    const reference::CheckRequest& r = s.requests[i];
    hidden.push_back(
        testing::random_hidden(r.prefix_len + r.extend_len, config.hidden_size, seed + 97 * i));
  }
  return hidden;
}

// What one layer (the unsharded one, or one rank's) did with a scenario.
struct LayerRun {
  std::vector<Path> paths;
  std::vector<Tensor> topk;  // per request: host [extend, K] i32, undefined on the dense path
  Tensor output;             // host [rows, D] bf16: the checked forward's output
  std::vector<std::uint8_t> cached;  // the cached latent and indexer-key bytes of every position
};

// A replica of a scenario's cache on `device`, with one block table per request.
struct ScenarioCache {
  PagedKvCache cache;
  std::vector<BlockTable> tables;

  ScenarioCache(const AttentionConfig& config, const Scenario& s, LatentFormat format,
                Device device)
      : cache(config, options(s, format, device)), tables(s.requests.size()) {
    for (std::size_t i = 0; i < s.requests.size(); ++i) {
      cache.reserve(tables[i], s.requests[i].prefix_len + s.requests[i].extend_len);
    }
  }

  static CacheOptions options(const Scenario& s, LatentFormat format, Device device) {
    CacheOptions o;
    o.num_pages = 0;
    for (const reference::CheckRequest& r : s.requests)
      o.num_pages += pages_for(r.prefix_len + r.extend_len);
    o.latent_format = format;
    o.device = device;
    return o;
  }

  // The cached bytes of every request's positions, read on the host.
  std::vector<std::uint8_t> bytes(const Scenario& s) const {
    const LayerCacheView view = cache.layer(0);
    const Tensor latent = copy_to_host(view.latent), keys = copy_to_host(view.index_keys);
    LayerCacheView host = view;
    host.latent = latent.view();
    host.index_keys = keys.view();
    std::vector<std::uint8_t> out;
    for (std::size_t i = 0; i < s.requests.size(); ++i) {
      const auto rows = testing::cached_rows(host, tables[i],
                                             s.requests[i].prefix_len + s.requests[i].extend_len);
      out.insert(out.end(), rows.begin(), rows.end());
    }
    return out;
  }

  static Tensor copy_to_host(const TensorView& v) {
    Tensor t = Tensor::empty(v.shape(), v.dtype());
    copy(v, t);
    return t;
  }
};

// The prefixes are prefilled in chunks (their outputs dropped), then every request's new tokens
// run in one forward whose output starts poisoned.
inline Batch checked_batch(const Scenario& s, const ScenarioCache& c) {
  Batch b;
  b.mode = s.mode;
  for (std::size_t i = 0; i < s.requests.size(); ++i) {
    b.requests.push_back({s.requests[i].prefix_len, s.requests[i].extend_len, c.tables[i]});
  }
  return b;
}

inline Tensor checked_input(const Scenario& s, const std::vector<Tensor>& hidden, std::int64_t D) {
  std::int64_t rows = 0;
  for (const reference::CheckRequest& r : s.requests) rows += r.extend_len;
  Tensor in = Tensor::empty({rows, D}, DType::bf16);
  std::int64_t row = 0;
  for (std::size_t i = 0; i < s.requests.size(); ++i) {
    const std::int64_t p = s.requests[i].prefix_len, n = s.requests[i].extend_len;
    std::memcpy(in.ptr<bf16>() + row * D, hidden[i].ptr<bf16>() + p * D, n * D * sizeof(bf16));
    row += n;
  }
  return in;
}

inline Tensor poisoned_output(std::int64_t rows, std::int64_t D, Device device) {
  Tensor out = Tensor::empty({rows, D}, DType::bf16);
  for (std::int64_t j = 0; j < out.numel(); ++j) out.ptr<bf16>()[j] = bf16::from_bits(0x7fc0);
  return device.is_cpu() ? out : out.to(device);
}

// Prefills every request's prefix through `forward` (a callable taking (batch, in, out)).
template <typename Forward>
void prefill_prefixes(const Scenario& s, const ScenarioCache& c, const std::vector<Tensor>& hidden,
                      std::int64_t D, Device device, Forward&& forward) {
  for (std::size_t i = 0; i < s.requests.size(); ++i) {
    for (std::int64_t at = 0; at < s.requests[i].prefix_len;) {
      const std::int64_t n = std::min(s.prefix_chunk, s.requests[i].prefix_len - at);
      Batch b;
      b.requests.push_back({at, n, c.tables[i]});
      Tensor in = Tensor::empty({n, D}, DType::bf16);
      copy(hidden[i].view().slice(0, at, at + n), in);
      const Tensor in_dev = device.is_cpu() ? in : in.to(device);
      Tensor out = Tensor::empty({n, D}, DType::bf16, device);
      forward(b, in_dev, out);
      at += n;
    }
  }
}

// A layer's forward through a scenario on `device`: `forward` is called as an AttentionLayer's
// forward (batch, hidden_in, cache, hidden_out, options) and returns its ForwardResult. With
// `in_place` the checked forward's input and output are one tensor.
template <typename Forward>
LayerRun run_scenario(const AttentionConfig& config, Forward&& forward, const Scenario& s,
                      LatentFormat format, const std::vector<Tensor>& hidden, Device device,
                      bool in_place = false) {
  const std::int64_t D = config.hidden_size;
  ScenarioCache c(config, s, format, device);
  prefill_prefixes(s, c, hidden, D, device,
                   [&](const Batch& b, const Tensor& in, const Tensor& out) {
                     forward(b, in.view(), c.cache.layer(0), out.view(), ForwardOptions{});
                   });
  const Tensor in = checked_input(s, hidden, D);
  const Tensor in_dev = device.is_cpu() ? in : in.to(device);
  const Tensor out = poisoned_output(in.size(0), D, device);
  if (in_place) copy(in_dev, out);
  ForwardOptions fo;
  fo.record_topk = true;
  const ForwardResult fr = forward(checked_batch(s, c), in_place ? out.view() : in_dev.view(),
                                   c.cache.layer(0), out.view(), fo);
  LayerRun run;
  run.paths = fr.paths;
  for (const Tensor& t : fr.topk_positions) run.topk.push_back(t);
  run.topk.resize(s.requests.size());
  run.output = out.to(Device::cpu());
  run.cached = c.bytes(s);
  return run;
}

// One AttentionLayer (unsharded or rank-local) through the scenario on `device`.
inline LayerRun run_layer(const AttentionLayer& layer, const Scenario& s, LatentFormat format,
                          const std::vector<Tensor>& hidden, Device device) {
  return run_scenario(
      layer.config(),
      [&](const Batch& b, const TensorView& in, const LayerCacheView& cache, const TensorView& out,
          const ForwardOptions& o) { return layer.forward(b, in, cache, out, o); },
      s, format, hidden, device);
}

// Every topk list of `a` equals `b`'s (both undefined on the dense path); empty when they do.
inline std::string topk_difference(const LayerRun& a, const LayerRun& b) {
  for (std::size_t i = 0; i < b.topk.size(); ++i) {
    if (a.topk[i].defined() != b.topk[i].defined()) {
      return fmt::format("request {}: top-k recorded on one side only", i);
    }
    if (b.topk[i].defined() &&
        std::memcmp(a.topk[i].view().data(), b.topk[i].view().data(), b.topk[i].nbytes()) != 0) {
      return fmt::format("request {}: other keys selected", i);
    }
  }
  return {};
}

// Two host tensors hold the same bytes.
inline bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.view().data(), b.view().data(), a.nbytes()) == 0;
}

// The float64 reference and the plain bf16 implementation of the unsharded layer for the checked
// forward, sparse rows restricted to the keys `selection` chose.
struct Reference {
  std::vector<double> float64, plain;
};

inline Reference reference_outputs(const AttentionConfig& config, const LayerWeights& weights,
                                   const Scenario& s, LatentFormat format,
                                   const std::vector<Tensor>& hidden, const LayerRun& selection) {
  Reference ref;
  for (std::size_t i = 0; i < s.requests.size(); ++i) {
    reference::Request req;
    req.hidden = hidden[i];
    req.extend_len = s.requests[i].extend_len;
    req.fp8_latent = format == LatentFormat::fp8;
    if (selection.paths[i] == Path::sparse_mla) {
      const Tensor& sel = selection.topk[i];
      for (std::int64_t t = 0; t < req.extend_len; ++t) {
        std::vector<std::int32_t> keys;
        for (std::int64_t j = 0; j < sel.size(1); ++j) {
          const std::int32_t k = sel.ptr<std::int32_t>()[t * sel.size(1) + j];
          if (k >= 0) keys.push_back(k);
        }
        std::sort(keys.begin(), keys.end());
        req.allowed_keys.push_back(std::move(keys));
      }
    }
    const auto r64 =
        reference::attention_layer(config, weights, req, reference::Precision::float64);
    const auto rpl =
        reference::attention_layer(config, weights, req, reference::Precision::plain_bf16);
    ref.float64.insert(ref.float64.end(), r64.begin(), r64.end());
    ref.plain.insert(ref.plain.end(), rpl.begin(), rpl.end());
  }
  return ref;
}

// The verdict of the tolerance scheme for `output` against `ref`, as a message (empty: passes).
inline std::string tolerance_failure(const char* what, const Tensor& output, const Reference& ref) {
  const reference::Comparison out = reference::compare(reference::to_doubles(output), ref.float64);
  const reference::Comparison plain = reference::compare(ref.plain, ref.float64);
  if (reference::within_tolerance(out, plain)) return {};
  return fmt::format(
      "{} fails the tolerance scheme: {} vs plain bf16 {} (bound 2x plain + {} of "
      "max|ref|)",
      what, out.to_string(), plain.to_string(), reference::kRelativeAtol);
}

inline std::string paths_string(const std::vector<Path>& paths) {
  std::string s;
  for (Path p : paths) s += fmt::format("{}{}", s.empty() ? "" : ",", path_name(p));
  return s;
}

}  // namespace dsattn::tp_test
