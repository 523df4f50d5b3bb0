#include "dsattn/layer/decode_step.h"

#include <optional>

#include "dsattn/core/checked_size.h"
#include "dsattn/core/checks.h"
#include "dsattn/layer/decode_layout.h"
#include "dsattn/ops/cache_ops.h"

namespace dsattn {

namespace {

void clear(const Tensor& faults) {
  std::int32_t zero = 0;
  copy(TensorView(&zero, DType::i32, Device::cpu(), {1}), faults);
}

}  // namespace

DecodeStep::DecodeStep(const AttentionLayer& layer, const LayerCacheView& cache,
                       std::int64_t batch_size, std::int64_t tokens_per_request,
                       std::int64_t max_context)
    : layer_(layer),
      cache_(cache),
      batch_(batch_size),
      tokens_(tokens_per_request),
      max_context_(max_context),
      max_pages_(0) {
  check_decode_shape(batch_size, tokens_per_request, max_context);
  if (!layer.has_indexer()) {
    fail(
        "a decode step runs one layer on its own, which needs its own indexer weights; this "
        "layer takes an earlier layer's top-k (IndexShare)");
  }
  DSATTN_CHECK(max_context <= layer.config().max_position_embeddings,
               "max_context must be <= max_position_embeddings ({}), got {}",
               layer.config().max_position_embeddings, max_context);
  check_layer_cache(cache, layer.config());
  const Device dev = layer.weights().device();
  check_device(cache.latent, "cache.latent", dev);
  check_device(cache.index_keys, "cache.index_keys", dev);
  max_pages_ = pages_for(max_context, cache.page_size);
  const std::int64_t rows = checked_mul(batch_, tokens_, "batch_size x tokens_per_request");
  const DecodeLayout layout{rows, batch_, max_pages_};
  if (dev.is_cuda()) pool_ = std::make_unique<cuda::MemoryPool>();
  std::optional<cuda::MemoryPool::Use> use;
  if (pool_) use.emplace(*pool_);
  tables_ = Tensor::empty({layout.size()}, DType::i32, dev);
  faults_ = Tensor::empty({1}, DType::i32, dev);
  clear(faults_);
}

DecodeStep::~DecodeStep() {
  if (pool_) cuda::synchronize_device(layer_.weights().device().index);
}

void DecodeStep::run(const TensorView& prefix_lens, const TensorView& block_tables,
                     const TensorView& hidden_in, const TensorView& hidden_out) {
  const AttentionConfig& c = layer_.config();
  const std::int64_t rows = batch_ * tokens_;
  const Device dev = layer_.weights().device();
  check_dtype(prefix_lens, "prefix_lens", DType::i32);
  check_shape(prefix_lens, "prefix_lens", {batch_});
  // block_tables' dtype and shape: build_decode_tables checks them, before anything is written.
  for (const auto& [name, t] :
       {std::pair{"hidden_in", &hidden_in}, std::pair{"hidden_out", &hidden_out}}) {
    check_dtype(*t, name, DType::bf16);
    check_shape(*t, name, {rows, c.hidden_size});
    check_contiguous(*t, name);
  }
  for (const auto& [name, t] :
       {std::pair{"prefix_lens", &prefix_lens}, std::pair{"block_tables", &block_tables},
        std::pair{"hidden_in", &hidden_in}, std::pair{"hidden_out", &hidden_out}}) {
    check_device(*t, name, dev);
  }
  if (!warm_ && dev.is_cuda() && cuda::stream_is_capturing(cuda::current_stream())) {
    fail(
        "decode step: the first run is being captured into a CUDA graph; run the step once "
        "outside the capture first (a warm-up, as torch.cuda.graph's documentation asks), so "
        "that its buffers exist before the capture");
  }

  const DecodeLayout layout{rows, batch_, max_pages_};
  ops::DecodeTables t = layout.views(tables_);
  t.faults = faults_.view();

  std::optional<cuda::MemoryPool::Use> use;
  if (pool_) use.emplace(*pool_);
  ops::build_decode_tables(prefix_lens, block_tables, tokens_, cache_.page_size, cache_.num_pages,
                           max_context_, t);
  const SparseMeta meta = layout.sparse_meta(t, max_context_);
  layer_.forward_sparse_on_device(meta, t.slots, hidden_in, cache_, hidden_out);
  warm_ = true;
}

std::vector<std::string> DecodeStep::take_faults() {
  std::int32_t bits = 0;
  copy(faults_, TensorView(&bits, DType::i32, Device::cpu(), {1}));
  clear(faults_);
  std::vector<std::string> found;
  if (bits & ops::kDecodeFaultContext) {
    found.push_back(fmt::format(
        "a prefix length was below -1 or left no room for {} token(s) within max_context {} "
        "(clamped for the reads, its tokens not written; that request's output is not "
        "meaningful)",
        tokens_, max_context_));
  }
  if (bits & ops::kDecodeFaultPage) found.push_back(ops::page_fault_sentence(cache_.num_pages));
  return found;
}

}  // namespace dsattn
