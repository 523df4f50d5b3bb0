// A NaN or an Inf in one token's hidden state reaches only the rows that see that token, on every
// path of the layer (dense MHA, sparse MLA, the row split) and with either cache format: every
// earlier row's output is bit for bit what it is without it, and the rows that select every key
// (context within index_topk) are not all finite.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "dsattn/cache/paged_kv_cache.h"
#include "dsattn/layer/attention_layer.h"
#include "layer_test_util.h"

namespace dsattn {
namespace {

Tensor prefill(const AttentionConfig& config, const LayerWeights& weights, const Policy& policy,
               LatentFormat format, const Tensor& hidden, std::vector<Path>* paths) {
  CacheOptions opts;
  opts.num_pages = 4;
  opts.latent_format = format;
  PagedKvCache cache(config, opts);
  BlockTable table;
  const std::int64_t n = hidden.view().size(0);
  cache.reserve(table, n);
  AttentionLayer layer(config, weights, policy);
  Batch batch;
  batch.requests.push_back({0, n, table});
  Tensor out = Tensor::empty({n, config.hidden_size}, DType::bf16);
  *paths = layer.forward(batch, hidden, cache.layer(0), out).paths;
  return out;
}

TEST(NonFiniteToken, ReachesOnlyTheRowsThatSeeIt) {
  // Contexts up to 60 against index_topk 24: dense MHA, sparse MLA and the row split all run.
  const AttentionConfig config = testing::small_config(24);
  const LayerWeights weights = LayerWeights::synthetic(config, 41);
  const std::int64_t n = 60, bad = 17, D = config.hidden_size;
  const Tensor clean = testing::random_hidden(n, D, 42);
  const Policy split = testing::row_split_policy();
  const std::pair<const char*, Policy> policies[] = {{"mla", Policy::parse("mla")},
                                                     {"row split", split}};
  for (LatentFormat format : {LatentFormat::bf16, LatentFormat::fp8}) {
    AttentionConfig cfg = config;
    if (format == LatentFormat::fp8) cfg.kv_lora_rank = 128;  // FP8 blocks of 128
    const LayerWeights w = format == LatentFormat::fp8 ? LayerWeights::synthetic(cfg, 41) : weights;
    for (const auto& [name, policy] : policies) {
      for (const float value :
           {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        SCOPED_TRACE(::testing::Message()
                     << name << ", " << latent_format_name(format) << ", " << value);
        Tensor dirty = Tensor::empty({n, D}, DType::bf16);
        std::memcpy(dirty.ptr<bf16>(), clean.ptr<bf16>(), clean.nbytes());
        dirty.ptr<bf16>()[bad * D + 5] = bf16::from_float(value);
        std::vector<Path> clean_paths, dirty_paths;
        const Tensor a = prefill(cfg, w, policy, format, clean, &clean_paths);
        const Tensor b = prefill(cfg, w, policy, format, dirty, &dirty_paths);
        EXPECT_EQ(clean_paths, dirty_paths);
        EXPECT_EQ(dirty_paths.front(),
                  std::string_view(name) == "mla" ? Path::sparse_mla : Path::row_split);
        ASSERT_EQ(std::memcmp(a.ptr<bf16>(), b.ptr<bf16>(), bad * D * sizeof(bf16)), 0)
            << "a row before token " << bad << " changed";
        // Rows whose context is within index_topk select every key, the bad one included;
        // later rows see it only if the top-k selects it (a NaN score ranks lowest).
        for (std::int64_t row = bad; row < cfg.index_topk; ++row) {
          bool all_finite = true;
          for (std::int64_t e = 0; e < D; ++e) {
            all_finite = all_finite && std::isfinite(b.ptr<bf16>()[row * D + e].to_float());
          }
          EXPECT_FALSE(all_finite) << "row " << row << " sees token " << bad;
        }
      }
    }
  }
}

// Dense MHA on its own (every context within index_topk), both cache formats.
TEST(NonFiniteToken, DenseMhaReachesOnlyTheRowsThatSeeIt) {
  AttentionConfig config = testing::small_config(64);
  config.kv_lora_rank = 128;
  const LayerWeights weights = LayerWeights::synthetic(config, 43);
  const std::int64_t n = 50, bad = 9, D = config.hidden_size;
  const Tensor clean = testing::random_hidden(n, D, 44);
  for (LatentFormat format : {LatentFormat::bf16, LatentFormat::fp8}) {
    Tensor dirty = Tensor::empty({n, D}, DType::bf16);
    std::memcpy(dirty.ptr<bf16>(), clean.ptr<bf16>(), clean.nbytes());
    dirty.ptr<bf16>()[bad * D] = bf16::from_float(std::numeric_limits<float>::quiet_NaN());
    std::vector<Path> paths;
    const Tensor a = prefill(config, weights, Policy::parse("mha"), format, clean, &paths);
    const Tensor b = prefill(config, weights, Policy::parse("mha"), format, dirty, &paths);
    EXPECT_EQ(paths.front(), Path::dense_mha);
    EXPECT_EQ(std::memcmp(a.ptr<bf16>(), b.ptr<bf16>(), bad * D * sizeof(bf16)), 0)
        << latent_format_name(format) << ": a row before token " << bad << " changed";
    for (std::int64_t row = bad; row < n; ++row) {
      bool all_finite = true;
      for (std::int64_t e = 0; e < D; ++e) {
        all_finite = all_finite && std::isfinite(b.ptr<bf16>()[row * D + e].to_float());
      }
      EXPECT_FALSE(all_finite) << latent_format_name(format) << ": row " << row << " sees token "
                               << bad;
    }
  }
}

}  // namespace
}  // namespace dsattn
