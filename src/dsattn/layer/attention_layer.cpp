#include "dsattn/layer/attention_layer.h"

#include <chrono>

#include "dsattn/core/checks.h"
#include "dsattn/layer/paths.h"
#include "dsattn/layer/projections.h"
#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/gemm.h"

namespace dsattn {

StageTimes& StageTimes::operator+=(const StageTimes& o) {
  projections += o.projections;
  dense_mha += o.dense_mha;
  sparse_mla += o.sparse_mla;
  o_proj += o.o_proj;
  return *this;
}

namespace {

class StageClock {
 public:
  double lap() {
    const auto now = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    return s;
  }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

void check_cache(const LayerCacheView& cache, const AttentionConfig& c) {
  check_dtype(cache.latent, "cache.latent", DType::bf16);
  check_shape(cache.latent, "cache.latent", {cache.num_pages * cache.page_size, c.latent_dim()});
  check_dtype(cache.index_keys, "cache.index_keys", DType::u8);
  check_shape(cache.index_keys, "cache.index_keys",
              {cache.num_pages * cache.page_size, index_key_bytes(c.index_head_dim)});
}

}  // namespace

AttentionLayer::AttentionLayer(const AttentionConfig& config, LayerWeights weights, Policy policy)
    : ctx_(config, std::move(weights)), policy_(policy) {}

ForwardResult AttentionLayer::forward(const Batch& batch, const TensorView& hidden_in,
                                      const LayerCacheView& cache, const TensorView& hidden_out,
                                      const ForwardOptions& options) const {
  const AttentionConfig& c = ctx_.config;
  // Every check first: nothing is written unless the whole forward can run.
  check_cache(cache, c);
  validate_batch(batch, c, cache);
  const std::int64_t T = batch.total_tokens();
  check_dtype(hidden_in, "hidden_in", DType::bf16);
  check_shape(hidden_in, "hidden_in", {T, c.hidden_size});
  check_contiguous(hidden_in, "hidden_in");
  check_dtype(hidden_out, "hidden_out", DType::bf16);
  check_shape(hidden_out, "hidden_out", {T, c.hidden_size});
  check_contiguous(hidden_out, "hidden_out");
  const Device dev = ctx_.weights.device();
  for (auto [name, t] : {std::pair{"hidden_in", &hidden_in}, std::pair{"hidden_out", &hidden_out},
                         std::pair{"cache.latent", &cache.latent}}) {
    check_device(*t, name, dev);
  }
  ForwardResult result;
  result.paths = plan_batch(batch, c, policy_);

  StageClock clock;
  const std::vector<std::int64_t> offsets = batch.token_offsets();
  Tensor positions = Tensor::empty({T}, DType::i32);
  Tensor slots = Tensor::empty({T}, DType::i32);
  for (std::size_t i = 0; i < batch.requests.size(); ++i) {
    const RequestInput& r = batch.requests[i];
    std::int32_t* pos = positions.ptr<std::int32_t>() + offsets[i];
    for (std::int64_t t = 0; t < r.extend_len; ++t)
      pos[t] = static_cast<std::int32_t>(r.prefix_len + t);
    ops::positions_to_slots(r.block_table, cache.page_size, {pos, std::size_t(r.extend_len)},
                            {slots.ptr<std::int32_t>() + offsets[i], std::size_t(r.extend_len)});
  }
  const TokenProjections proj = project_tokens(ctx_, hidden_in, positions);
  ops::scatter_rows(proj.latent, slots, cache.latent);
  ops::scatter_rows(proj.index_keys, slots, cache.index_keys);
  result.times.projections = clock.lap();

  PathGroup dense, sparse;
  for (std::size_t i = 0; i < result.paths.size(); ++i) {
    (result.paths[i] == Path::dense_mha ? dense : sparse).requests.push_back(i);
  }
  Tensor o = Tensor::empty({T, c.num_heads, c.v_head_dim}, DType::bf16, dev);
  run_dense_mha(ctx_, batch, dense, proj, cache, o);
  result.times.dense_mha = clock.lap();
  if (options.record_topk) result.topk_positions.resize(batch.requests.size());
  run_sparse_mla(ctx_, batch, sparse, hidden_in, proj, cache, o,
                 options.record_topk ? &result.topk_positions : nullptr);
  result.times.sparse_mla = clock.lap();

  ops::gemm(o.view().reshape({T, c.num_heads * c.v_head_dim}), ctx_.weights.o_proj, hidden_out,
            ops::BLayout::nt);
  result.times.o_proj = clock.lap();
  return result;
}

}  // namespace dsattn
