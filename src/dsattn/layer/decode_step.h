// A decode (or speculative-verify) step of one attention layer that reads its per-step metadata
// from the caller's device tensors: no host work, no synchronisation and, once warm, no
// allocation outside the step's own pool. An engine captures run() in its own CUDA graph (for
// example with torch.cuda.graph) and replays it after writing the next step's lengths and block
// tables into the same tensors. Every row takes the sparse path; for contexts <= index_topk the
// indexer's scores and the top-k are skipped inside the kernels, which read the lengths from the
// device, so one capture serves short and long contexts alike (the result equals the layer's
// forward under the `mla` policy).
//
// A graph that captured run() uses the step's buffers: keep the step alive as long as the graph,
// and issue its eager runs and the graph's replays on one stream (they share those buffers). The
// step does not go through the page allocator: the caller owns which slots its requests write.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dsattn/core/cuda_runtime.h"
#include "dsattn/layer/attention_layer.h"

namespace dsattn {

class DecodeStep {
 public:
  // Fixed shapes: batch_size requests of tokens_per_request new tokens each, contexts (after the
  // step) up to max_context, on `cache` (a view of the layer's device).
  DecodeStep(const AttentionLayer& layer, const LayerCacheView& cache, std::int64_t batch_size,
             std::int64_t tokens_per_request, std::int64_t max_context);
  // Waits for the device first: its temporaries return to the general allocator.
  ~DecodeStep();
  DecodeStep(const DecodeStep&) = delete;
  DecodeStep& operator=(const DecodeStep&) = delete;

  std::int64_t batch_size() const { return batch_; }
  std::int64_t tokens_per_request() const { return tokens_; }
  std::int64_t max_context() const { return max_context_; }
  // Block-table entries a request's row must hold at least.
  std::int64_t max_pages() const { return max_pages_; }
  // Whether a run has completed its allocations: only then may run() be captured.
  bool warm() const { return warm_; }
  // Device memory the step keeps for its temporaries.
  std::size_t reserved_bytes() const { return pool_ ? pool_->reserved_bytes() : 0; }

  //   prefix_lens: [batch_size] i32, tokens cached per request before the step; -1 marks an
  //     inactive row (padding: nothing written, nothing of its table read, output meaningless)
  //   block_tables: [batch_size, >= max_pages()] i32 page indices, rows inner-contiguous
  //   hidden_in, hidden_out: [batch_size * tokens_per_request, hidden_size] bf16, contiguous
  // all on the layer's device. Writes the new tokens' latents and index keys to the cache at
  // positions [prefix_lens[b], prefix_lens[b] + tokens_per_request), on the current stream.
  // Shapes, dtypes and devices are checked here; the tensors' contents are not read on the host:
  // a length or page outside the cache is recorded as a fault (faults()) and made harmless (see
  // ops::kDecodeFaultContext) instead. Throws InvalidArgument when called inside a CUDA graph
  // capture before the step is warm.
  void run(const TensorView& prefix_lens, const TensorView& block_tables,
           const TensorView& hidden_in, const TensorView& hidden_out);

  // What the runs since the last call found wrong in their lengths and tables, one sentence each
  // (empty: nothing); clears the record. Waits for the current stream.
  std::vector<std::string> take_faults();

 private:
  const AttentionLayer& layer_;
  LayerCacheView cache_;
  std::int64_t batch_, tokens_, max_context_, max_pages_;
  std::unique_ptr<cuda::MemoryPool> pool_;  // CUDA only
  Tensor tables_;                           // every derived i32 array, one buffer
  Tensor faults_;                           // [1] i32
  bool warm_ = false;
};

}  // namespace dsattn
