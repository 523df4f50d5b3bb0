// The benchmarks of `dsattn bench`: each measures one stage (or the whole layer) on a device and
// returns JSON rows with time, rate and percent of the ceilings measured in the same run.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "dsattn/cache/paged_kv_cache.h"
#include "dsattn/core/tensor.h"
#include "dsattn/layer/cost_model.h"
#include "dsattn/model/config.h"

namespace dsattn::tools {

struct Ceilings {
  double gemm_tflops = 0;  // a large bf16 GEMM through the gemm op
  double copy_tbps = 0;    // a large device-to-device copy, bytes read + written
};

Ceilings measure_ceilings(Device device);

// A one-layer cache on `device` for `requests` sequences of `tokens` positions each, their block
// tables reserved.
struct ReservedCache {
  PagedKvCache cache;
  std::vector<BlockTable> tables;
};
ReservedCache reserve_requests(const AttentionConfig& config, Device device, std::int64_t requests,
                               std::int64_t tokens);

// Sequence lengths of the per-stage sweep; each batch holds about `tokens` tokens.
struct Sweep {
  std::vector<std::int64_t> seqs = {256, 512, 1024, 2048, 4096, 8192};
  std::int64_t tokens = 16384;
};

// Dense causal MHA at a model's heads, per-head sizes and softmax scale (default DeepSeek-V3.2's:
// 128 heads, q/k 192, v 128).
nlohmann::json bench_mha_prefill(Device device, const Sweep& sweep, const Ceilings& c,
                                 const AttentionConfig& config = AttentionConfig::deepseek_v32(),
                                 const char* label = "dense MHA prefill");
nlohmann::json bench_projections(Device device, const Sweep& sweep, const Ceilings& c);
nlohmann::json bench_sparse_mla_prefill(Device device, const Sweep& sweep, const Ceilings& c);
nlohmann::json bench_indexer(Device device, const Sweep& sweep, const Ceilings& c);
// A decode step's indexer: b requests of one query row against 8K and 64K cached keys each;
// figures in bytes of keys read per second against the copy ceiling (bytes moved per second).
nlohmann::json bench_indexer_decode(Device device, const Ceilings& c);
// Top-k rows x cols: many rows (prefill) and few long rows (decode).
struct TopkShape {
  std::int64_t rows, cols;
};
nlohmann::json bench_topk(Device device, const std::vector<TopkShape>& shapes, const Ceilings& c);
nlohmann::json bench_decode(Device device, const Ceilings& c);
// The whole layer at DeepSeek-V3.2 size: `requests` prompts of each length, prefilled under
// mla, threshold and per-request, then one decode step.
nlohmann::json bench_layer(Device device, std::int64_t requests,
                           const std::vector<std::int64_t>& prompt_lens,
                           const AttentionConfig& config = AttentionConfig::deepseek_v32());
// One forward of `requests` requests, each `extend` new tokens over a cached prefix of `prefix`
// (the prefix written first, untimed), under mla, per-request and auto.
nlohmann::json bench_layer_prefix(Device device, std::int64_t requests, std::int64_t prefix,
                                  std::int64_t extend);
// A mixed batch in one forward: short fresh prompts, chunks over long cached prefixes and long
// fresh prompts (`groups`: requests x (prefix + extend) each, prefixes written first, untimed),
// under each single policy that is exact for all of them (mla, masked) and per-request, threshold
// and auto (planning with `profile`, else the device's built-in one); reports auto against the
// best of the forced ones.
struct MixedGroup {
  std::int64_t requests, prefix, extend;
};
nlohmann::json bench_layer_mixed(Device device, const std::vector<MixedGroup>& groups,
                                 std::shared_ptr<const CostProfile> profile = nullptr);
// One long prompt per context length, prefilled in chunks of `chunk` tokens over its cached
// prefix (per-request policy: every chunk past index_topk takes the sparse path); reports the
// time and the peak device memory the prefill allocates beyond the cache and weights.
nlohmann::json bench_layer_chunked(Device device, const std::vector<std::int64_t>& contexts,
                                   std::int64_t chunk);

}  // namespace dsattn::tools
