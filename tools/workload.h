// The synthetic serving workload of `dsattn run`: requests with an optional cached prefix, a
// prompt prefilled in token-budgeted (chunked) batches, then decode steps, through a stack of
// layers. Token inputs are seeded embeddings, identical on every pass, so that the outputs of
// passes under different policies can be compared row for row.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dsattn/layer/attention_stack.h"

namespace dsattn::tools {

struct WorkloadSpec {
  std::int64_t requests = 100;
  std::int64_t prompt_len = 1024;
  std::int64_t prefix_len = 0;
  std::int64_t decode_steps = 32;
  std::int64_t layers = 1;
  std::int64_t max_batch_tokens = 16384;  // prefill tokens per forward (chunked prefill beyond)
  std::uint64_t seed = 0;
  LatentFormat kv_cache = LatentFormat::bf16;

  void validate() const;
  std::string to_string()
      const;  // "100 requests x 1024-token prompts (+0 cached), 32 decode steps, 1 layer"
};

struct PassResult {
  std::string policy;
  std::vector<Path> prefill_paths;  // path of each request's prompt (its last prefill chunk)
  std::int64_t prefill_tokens = 0;
  double prefill_seconds = 0;  // in the layer's forwards (synthesising inputs is not counted)
  StageTimes prefill_stages;
  std::int64_t decode_tokens = 0;
  double decode_seconds = 0;
  std::vector<Path> decode_paths;
  bool decode_graph = false;            // decode steps replayed from one CUDA graph
  std::int64_t cache_bytes = 0;         // the paged caches of every layer
  std::int64_t decode_graph_bytes = 0;  // buffers and temporaries the graph holds
  std::int64_t peak_device_bytes = 0;   // allocator peak on the device during the pass
  // Final hidden states per request: prompt rows then one row per decode step, [rows, D] bf16.
  std::vector<Tensor> outputs;
};

// Largest, over requests, of max|a - b| / max|b| over the request's rows.
// max |a - b| / max |b| over each request's outputs, the largest over requests; +inf when either
// holds a NaN or an Inf.
double max_relative_difference(const PassResult& a, const PassResult& b);
// Throws Error naming the pass, the request and the element of the first NaN or Inf output.
void check_outputs_finite(const PassResult& pass);

// Called with a short status line while a pass runs.
using Progress = std::function<void(const std::string&)>;

PassResult run_pass(const AttentionConfig& config, AttentionStack& stack, const WorkloadSpec& spec,
                    const Policy& policy, Device device, const Progress& progress);

}  // namespace dsattn::tools
