// A decode (or speculative-verify) step of a whole attention stack, captured once in a CUDA graph
// and replayed. The graph has a fixed batch size, tokens per request and maximum context; each
// step only refreshes one small metadata buffer (positions, cache slots, context lengths, block
// tables), so one graph serves requests with short (<= index_topk) and long contexts alike: for
// short ones the indexer's scores and the top-k are skipped inside the kernels, which read the
// context lengths from the device.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "dsattn/core/cuda_runtime.h"
#include "dsattn/layer/attention_stack.h"
#include "dsattn/layer/batch.h"

namespace dsattn {

class DecodeGraph {
 public:
  // Plans every buffer up front. The stack and `cache` live on one CUDA device; batch_size
  // requests of tokens_per_request new tokens each, contexts (after the step) up to max_context.
  // The graph is captured at the first step, after one warm-up run whose effects it undoes.
  DecodeGraph(const AttentionStack& stack, const PagedKvCache& cache, std::int64_t batch_size,
              std::int64_t tokens_per_request, std::int64_t max_context);
  ~DecodeGraph();
  DecodeGraph(const DecodeGraph&) = delete;
  DecodeGraph& operator=(const DecodeGraph&) = delete;

  // The residual stream of the step: [batch_size * tokens_per_request, hidden_size] bf16 on the
  // device. Write the new tokens' hidden states here before step(); read the outputs after.
  TensorView hidden() const { return hidden_.view(); }

  // Runs the step for `requests` (exactly batch_size, each with extend_len = tokens_per_request,
  // contexts within max_context, block tables covering them) on the graph's own stream, ordered
  // after the work already on the caller's current stream and before the work put there later;
  // synchronize() waits for it. Throws InvalidArgument, before any launch, on a batch that does
  // not fit the graph.
  void step(std::span<const RequestInput> requests);
  // Captures the graph now, for a batch shaped like `requests` (a step's batch), without running
  // the step: the warm-up and capture then stay out of the first step's time. Optional.
  void capture(std::span<const RequestInput> requests);
  void synchronize() const;

  std::int64_t batch_size() const { return batch_; }
  std::int64_t tokens_per_request() const { return tokens_; }
  std::int64_t max_context() const { return max_context_; }
  bool captured() const { return exec_ != nullptr; }
  // Device memory the graph holds for its buffers and temporaries.
  std::size_t reserved_bytes() const { return pool_->reserved_bytes(); }

 private:
  void check_fits(std::span<const RequestInput> requests) const;
  void write_metadata(std::span<const RequestInput> requests);
  void capture_graph();

  const AttentionStack& stack_;
  const PagedKvCache& cache_;
  std::int64_t batch_, tokens_, max_context_, max_pages_;
  std::unique_ptr<cuda::MemoryPool> pool_;
  Tensor hidden_;
  Tensor metadata_;         // every per-step i32 array, uploaded in one copy per step
  Tensor staging_;          // its host side
  void* stream_ = nullptr;  // cudaStream_t of the capture and the replays
  void* exec_ = nullptr;    // cudaGraphExec_t
  void* before_ = nullptr;  // cudaEvent_t: the caller's work before a step
  void* after_ = nullptr;   // cudaEvent_t: the step's end
};

}  // namespace dsattn
