#include "dsattn/layer/decode_graph.h"

#include <span>
#include <vector>

#include "dsattn/layer/decode_layout.h"
#include "dsattn/ops/cache_ops.h"
#ifdef DSATTN_WITH_CUDA
#include <cuda_runtime_api.h>

#include "dsattn/core/cuda_check.h"
#endif

namespace dsattn {

DecodeGraph::DecodeGraph(const AttentionStack& stack, const PagedKvCache& cache,
                         std::int64_t batch_size, std::int64_t tokens_per_request,
                         std::int64_t max_context)
    : stack_(stack),
      cache_(cache),
      batch_(batch_size),
      tokens_(tokens_per_request),
      max_context_(max_context),
      max_pages_(pages_for(max_context, cache.page_size())) {
#ifndef DSATTN_WITH_CUDA
  fail<Unsupported>("DecodeGraph needs the CUDA backend; this build has none");
#else
  check_decode_shape(batch_size, tokens_per_request, max_context);
  const Device dev = cache.device();
  if (!dev.is_cuda()) fail("DecodeGraph needs a cache on a CUDA device, got {}", to_string(dev));
  DSATTN_CHECK(cache.num_layers() >= stack.num_layers(),
               "cache must hold at least {} layers, got {}", stack.num_layers(),
               cache.num_layers());
  cudaStream_t stream = nullptr;
  DSATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  stream_ = stream;
  cudaEvent_t before = nullptr, after = nullptr;
  DSATTN_CUDA_CHECK(cudaEventCreateWithFlags(&before, cudaEventDisableTiming));
  DSATTN_CUDA_CHECK(cudaEventCreateWithFlags(&after, cudaEventDisableTiming));
  before_ = before;
  after_ = after;
  pool_ = std::make_unique<cuda::MemoryPool>();
  cuda::MemoryPool::Use use(*pool_);
  const std::int64_t rows = batch_ * tokens_, D = stack.layer(0).config().hidden_size;
  const DecodeLayout layout{rows, batch_, max_pages_};
  hidden_ = Tensor::empty({rows, D}, DType::bf16, dev);
  metadata_ = Tensor::empty({layout.size()}, DType::i32, dev);
  staging_ = Tensor::empty({layout.size()}, DType::i32);
  // The parts that never change: each row's request and the query offsets.
  std::int32_t* h = staging_.ptr<std::int32_t>();
  for (std::int64_t r = 0; r < rows; ++r)
    h[layout.row_request() + r] = static_cast<std::int32_t>(r / tokens_);
  for (std::int64_t b = 0; b <= batch_; ++b)
    h[layout.cu_q() + b] = static_cast<std::int32_t>(b * tokens_);
#endif
}

DecodeGraph::~DecodeGraph() {
#ifdef DSATTN_WITH_CUDA
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (stream_) {
    cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
    cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
  }
  if (before_) cudaEventDestroy(static_cast<cudaEvent_t>(before_));
  if (after_) cudaEventDestroy(static_cast<cudaEvent_t>(after_));
#endif
}

void DecodeGraph::write_metadata(std::span<const RequestInput> requests) {
  const DecodeLayout layout{batch_ * tokens_, batch_, max_pages_};
  std::int32_t* h = staging_.ptr<std::int32_t>();
  for (std::int64_t b = 0; b < batch_; ++b) {
    const RequestInput& r = requests[b];
    for (std::int64_t t = 0; t < tokens_; ++t) {
      const std::int64_t row = b * tokens_ + t, pos = r.prefix_len + t;
      h[layout.positions() + row] = static_cast<std::int32_t>(pos);
      h[layout.visible() + row] = static_cast<std::int32_t>(pos + 1);
    }
    const auto rows_of_request = [&](std::int64_t offset) {
      return std::span<std::int32_t>(h + offset + b * tokens_, static_cast<std::size_t>(tokens_));
    };
    ops::positions_to_slots(r.block_table, cache_.page_size(), rows_of_request(layout.positions()),
                            rows_of_request(layout.slots()));
    h[layout.context_lens() + b] = static_cast<std::int32_t>(r.context_len());
    const std::int64_t pages = pages_for(r.context_len(), cache_.page_size());
    for (std::int64_t p = 0; p < max_pages_; ++p) {
      h[layout.tables() + b * max_pages_ + p] = p < pages ? r.block_table[p] : 0;
    }
  }
  cuda::StreamGuard guard(stream_);
  copy(staging_, metadata_);
}

#ifdef DSATTN_WITH_CUDA
void DecodeGraph::capture_graph() {
  const DecodeLayout layout{batch_ * tokens_, batch_, max_pages_};
  const ops::DecodeTables t = layout.views(metadata_);
  const SparseMeta meta = layout.sparse_meta(t, max_context_);
  const TensorView slots = t.slots;

  cuda::MemoryPool::Use use(*pool_);
  cuda::StreamGuard guard(stream_);
  const auto stream = static_cast<cudaStream_t>(stream_);
  // A warm-up run creates the library plans and fills the pool, so the capture allocates
  // nothing new; its effect on the residual stream is undone (its cache writes are the step's
  // own, rewritten identically by the replay).
  Tensor saved = Tensor::empty({hidden_.size(0), hidden_.size(1)}, DType::bf16, hidden_.device());
  copy(hidden_, saved);
  stack_.forward_sparse_on_device(meta, slots, hidden_, cache_);
  copy(saved, hidden_);
  DSATTN_CUDA_CHECK(cudaStreamSynchronize(stream));

  cudaGraph_t graph = nullptr;
  DSATTN_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    stack_.forward_sparse_on_device(meta, slots, hidden_, cache_);
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    throw;
  }
  DSATTN_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  DSATTN_CUDA_CHECK(status);
  exec_ = exec;
}
#else
void DecodeGraph::capture_graph() {}
#endif

void DecodeGraph::check_fits(std::span<const RequestInput> requests) const {
  if (static_cast<std::int64_t>(requests.size()) != batch_) {
    fail("decode graph step needs {} requests, got {}", batch_, requests.size());
  }
  Batch batch;
  batch.mode = ForwardMode::decode;
  batch.requests.assign(requests.begin(), requests.end());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    if (requests[i].extend_len != tokens_) {
      fail("request {}: decode graph takes {} tokens per request, got {}", i, tokens_,
           requests[i].extend_len);
    }
    if (requests[i].context_len() > max_context_) {
      fail("request {}: context of {} exceeds the graph's max_context {}", i,
           requests[i].context_len(), max_context_);
    }
  }
  validate_batch(batch, stack_.layer(0).config(), cache_.layer(0));
}

void DecodeGraph::capture(std::span<const RequestInput> requests) {
  check_fits(requests);
  if (exec_) return;
#ifdef DSATTN_WITH_CUDA
  // The warm-up run reads the cache: order it after the caller's work.
  DSATTN_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(before_),
                                    static_cast<cudaStream_t>(cuda::current_stream())));
  DSATTN_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream_),
                                        static_cast<cudaEvent_t>(before_), 0));
#endif
  write_metadata(requests);
  capture_graph();
}

void DecodeGraph::step(std::span<const RequestInput> requests) {
  check_fits(requests);
  record_writes(requests, cache_.layer(0));
#ifdef DSATTN_WITH_CUDA
  const auto caller = static_cast<cudaStream_t>(cuda::current_stream());
  const auto stream = static_cast<cudaStream_t>(stream_);
  DSATTN_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(before_), caller));
  DSATTN_CUDA_CHECK(cudaStreamWaitEvent(stream, static_cast<cudaEvent_t>(before_), 0));
  write_metadata(requests);
  if (!exec_) capture_graph();
  DSATTN_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), stream));
  DSATTN_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(after_), stream));
  DSATTN_CUDA_CHECK(cudaStreamWaitEvent(caller, static_cast<cudaEvent_t>(after_), 0));
#else
  write_metadata(requests);
#endif
}

void DecodeGraph::synchronize() const {
#ifdef DSATTN_WITH_CUDA
  DSATTN_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)));
#endif
}

}  // namespace dsattn
