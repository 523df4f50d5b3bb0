#include "dsattn/layer/calibration.h"

#include <algorithm>
#include <numeric>

#include "dsattn/cache/cache_format.h"
#include "dsattn/cache/paged_kv_cache.h"
#include "dsattn/core/cuda_runtime.h"
#include "dsattn/core/date.h"
#include "dsattn/core/error.h"
#include "dsattn/core/random.h"
#include "dsattn/layer/attention_layer.h"
#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/latent_fp8.h"
#include "dsattn/ops/quantize.h"

namespace dsattn {

namespace {

// Writes positions [0, prefix) of every request straight to the cache: seeded random latents
// (quantised for an FP8 cache) and indexer keys. What the rows hold does not change what the
// timed forwards cost, and the forwards that would write them cost more than the timed ones
// (on a CPU, most of a calibration).
void write_random_prefix(const LayerCacheView& cache, const std::vector<BlockTable>& tables,
                         std::int64_t prefix, const AttentionConfig& config, Device device) {
  const std::int64_t rows = static_cast<std::int64_t>(tables.size()) * prefix;
  const std::int64_t latent_width = config.kv_lora_rank + config.qk_rope_head_dim;
  const std::int64_t d_index = config.index_head_dim;
  Tensor slots = Tensor::empty({rows}, DType::i32);
  std::vector<std::int32_t> positions(static_cast<std::size_t>(prefix));
  std::iota(positions.begin(), positions.end(), 0);
  for (std::size_t r = 0; r < tables.size(); ++r) {
    ops::positions_to_slots(tables[r], cache.page_size, positions,
                            {slots.ptr<std::int32_t>() + static_cast<std::int64_t>(r) * prefix,
                             static_cast<std::size_t>(prefix)});
  }
  Tensor latent = Tensor::empty({rows, latent_width}, DType::bf16);
  fill_uniform(latent, 98, 0, 1.0f);
  Tensor keys = Tensor::empty({rows, d_index}, DType::bf16);
  fill_uniform(keys, 98, 1, 1.0f);
  const auto on_device = [&](const Tensor& t) { return device.is_cpu() ? t : t.to(device); };
  const Tensor slots_dev = on_device(slots), latent_dev = on_device(latent);
  if (cache.latent_format == LatentFormat::bf16) {
    ops::scatter_rows(latent_dev, slots_dev, cache.latent);
  } else {
    Tensor q = Tensor::empty({rows, cache.latent.size(1)}, DType::u8, device);
    ops::quantize_latent_fp8(latent_dev, config.kv_lora_rank, q);
    ops::scatter_rows(q, slots_dev, cache.latent);
  }
  Tensor key_rows = Tensor::empty({rows, index_key_bytes(d_index)}, DType::u8, device);
  ops::quantize_index_key_rows(on_device(keys), key_rows);
  ops::write_index_keys(key_rows, slots_dev, cache.index_keys, cache.page_size,
                        cache.index_key_layout);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

std::vector<CalibrationShape> calibration_shapes(const AttentionConfig& config, Device device) {
  // In fractions of index_topk K (for K = 2048: fresh prompts of 128 ... 2048 tokens, chunks of
  // 64 ... 1024 over prefixes up to K, and contexts to 8K for the sparse path), so that any
  // config gets shapes on both sides of K.
  const std::int64_t k = config.index_topk;
  const auto shape = [](std::int64_t requests, std::int64_t prefix, std::int64_t extend) {
    return CalibrationShape{requests, std::max<std::int64_t>(prefix, 0),
                            std::max<std::int64_t>(extend, 1)};
  };
  if (device.is_cuda()) {
    return {shape(128, 0, k / 16),
            shape(32, 0, k / 4),
            shape(16, 0, k / 2),
            shape(8, 0, k),
            shape(64, k - k / 32, k / 32),
            shape(16, k / 2, k / 2),
            shape(32, k - k / 8, k / 8),
            shape(4, 0, 2 * k),
            shape(2, 0, 4 * k),
            shape(8, 3 * k, k / 4),
            shape(64, 2 * k, k / 32),
            shape(8, 0, k + k / 2)};
  }
  // Past K: two short chunks and one long one (masked MHA's attention weighs in there).
  return {shape(4, 0, k / 64),          shape(2, 0, k / 16),     shape(1, 0, k / 8),
          shape(1, k - k / 64, k / 64), shape(1, k / 2, k / 16), shape(1, k + k / 4, k / 64),
          shape(1, 2 * k, k / 64),      shape(1, k, k / 4)};
}

CostProfile calibrate(const AttentionConfig& config, Device device, LatentFormat cache_format,
                      const std::vector<CalibrationShape>& shapes, int repeats,
                      const std::function<void(const std::string&)>& progress) {
  DSATTN_CHECK(repeats >= 1, "repeats must be >= 1, got {}", repeats);
  DSATTN_CHECK(!shapes.empty(), "calibration needs at least one shape");
  for (const CalibrationShape& s : shapes) {
    DSATTN_CHECK(s.requests >= 1 && s.prefix >= 0 && s.extend >= 1,
                 "a calibration shape needs requests >= 1, prefix >= 0 and extend >= 1, got "
                 "{} x ({} + {})",
                 s.requests, s.prefix, s.extend);
  }
  LayerWeights weights = LayerWeights::synthetic(config, 1234);
  AttentionLayer layer(config, device.is_cpu() ? std::move(weights) : weights.to(device),
                       Policy::parse("mla"));
  std::vector<TimedGroup> dense, sparse, masked;
  std::vector<TimedShared> shared;
  for (const CalibrationShape& s : shapes) {
    const std::int64_t context = s.prefix + s.extend;
    CacheOptions options;
    options.num_pages = s.requests * pages_for(context);
    options.latent_format = cache_format;
    options.device = device;
    PagedKvCache cache(config, options);
    std::vector<BlockTable> tables(static_cast<std::size_t>(s.requests));
    for (BlockTable& t : tables) cache.reserve(t, context);

    if (s.prefix > 0) write_random_prefix(cache.layer(0), tables, s.prefix, config, device);
    // The timed forwards: every request's new tokens after its prefix, all on the same seeded
    // input.
    Batch batch;
    for (const BlockTable& t : tables) batch.requests.push_back({s.prefix, s.extend, t});
    Tensor hidden = Tensor::empty({s.requests * s.extend, config.hidden_size}, DType::bf16);
    fill_uniform(hidden, 99, static_cast<std::uint64_t>(s.prefix), 1.0f);
    const Tensor in = device.is_cpu() ? hidden : hidden.to(device);
    const Tensor out =
        Tensor::empty({s.requests * s.extend, config.hidden_size}, DType::bf16, device);
    const auto run = [&](const char* policy) {
      layer.set_policy(Policy::parse(policy));
      return layer.forward(batch, in, cache.layer(0), out).times;
    };
    PathWork work;
    for (std::int64_t r = 0; r < s.requests; ++r) {
      work += path_work({s.prefix, s.extend, {}}, config);
    }
    // The path's own stage time under `policy`.
    const auto time_path = [&](const char* policy, double StageTimes::*stage) {
      // A warm-up forward on a GPU: library plans, kernel attributes, the allocator's blocks.
      if (device.is_cuda()) run(policy);
      std::vector<double> seconds, shared_seconds;
      for (int i = 0; i < repeats; ++i) {
        const StageTimes t = run(policy);
        seconds.push_back(t.*stage);
        shared_seconds.push_back(t.planning + t.projections + t.o_proj);
      }
      shared.push_back({static_cast<double>(s.requests * s.extend), median(shared_seconds)});
      return median(seconds);
    };
    const bool exact = context <= config.index_topk;
    double dense_s = 0, masked_s = 0;
    if (exact) {
      dense_s = time_path("mha", &StageTimes::dense_mha);
      dense.push_back({work, dense_s});
    } else {
      // Masked MHA matters only where dense MHA is not exact.
      masked_s = time_path("masked", &StageTimes::masked_mha);
      masked.push_back({work, masked_s});
    }
    const double sparse_s = time_path("mla", &StageTimes::sparse_mla);
    sparse.push_back({work, sparse_s});
    if (progress) {
      progress(fmt::format("{} x ({} cached + {} new): {}, sparse {:.3f} ms", s.requests, s.prefix,
                           s.extend,
                           exact ? fmt::format("dense {:.3f} ms", dense_s * 1e3)
                                 : fmt::format("masked {:.3f} ms", masked_s * 1e3),
                           sparse_s * 1e3));
    }
  }
  CostProfile profile;
  profile.device = device.is_cpu() ? "cpu" : cuda::device_name(device.index);
  profile.shape = profile_shape(config);
  profile.source =
      fmt::format("dsattn calibrate, {}, {} cache", utc_date(), latent_format_name(cache_format));
  fit_dense_costs(dense, profile);
  fit_sparse_costs(sparse, profile);
  // Past index_topk on fewer than two shapes (a custom set): no masked costs, and auto leaves the
  // path out.
  if (masked.size() >= 2) fit_masked_costs(masked, profile);
  fit_shared_costs(shared, profile);
  return profile;
}

}  // namespace dsattn
