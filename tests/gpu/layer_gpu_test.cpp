// The layer on the GPU: every path and policy against the float64 reference (the same checks
// the CPU backend passes), and the full-size layer against the CPU backend.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "dsattn/core/cuda_runtime.h"
#include "dsattn/core/random.h"
#include "dsattn/layer/attention_layer.h"
#include "dsattn/reference/layer_check.h"
#include "layer/layer_test_util.h"

namespace dsattn {
namespace {

class LayerGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "needs a CUDA GPU (sm_90)";
  }
};

AttentionConfig small(std::int64_t topk, std::int64_t kv_lora = 128) {
  AttentionConfig c;
  c.hidden_size = 128;
  c.num_heads = 4;
  c.q_lora_rank = 64;
  c.kv_lora_rank = kv_lora;
  c.qk_nope_head_dim = 32;
  c.qk_rope_head_dim = 16;
  c.v_head_dim = 32;
  c.index_n_heads = 8;
  c.index_topk = topk;
  return c;
}

void expect_pass(reference::CheckCase c) {
  c.device = Device::cuda(0);
  const reference::CaseReport r = reference::check_case(c);
  EXPECT_TRUE(r.pass) << c.to_string() << "\n" << r.to_string();
  if (r.mha_mla_relative_difference >= 0) {
    EXPECT_LE(r.mha_mla_relative_difference, 1.0 / 64) << r.to_string();
  }
}

TEST_F(LayerGpu, RandomCasesMatchReference) {
  for (std::uint64_t seed = 1; seed <= 24; ++seed) expect_pass(reference::random_case(seed));
}

TEST_F(LayerGpu, PrefixChunkedVarlenBothCacheFormats) {
  for (LatentFormat f : {LatentFormat::bf16, LatentFormat::fp8}) {
    reference::CheckCase c;
    c.config = small(64);
    c.latent_format = f;
    c.requests = {{0, 1}, {0, 63}, {40, 24}, {0, 65}, {100, 30}};
    c.prefix_chunk = 33;
    c.seed = 4;
    expect_pass(c);
  }
}

TEST_F(LayerGpu, DecodeAndVerifyAcrossTopk) {
  for (LatentFormat f : {LatentFormat::bf16, LatentFormat::fp8}) {
    reference::CheckCase c;
    c.config = small(32);
    c.latent_format = f;
    c.mode = ForwardMode::decode;
    c.requests = {{10, 1}, {31, 1}, {32, 1}, {90, 1}, {30, 3}, {70, 3}};
    c.seed = 9;
    expect_pass(c);
  }
}

// DeepSeek-V3.2's 64 index heads, which the FP8 tensor-core indexer takes: decode and verify
// rows (one warpgroup a CTA) and a prefill chunk over a prefix (two), past index_topk.
TEST_F(LayerGpu, TensorCoreIndexerDecodeAndPrefill) {
  for (LatentFormat f : {LatentFormat::bf16, LatentFormat::fp8}) {
    reference::CheckCase c;
    c.config = small(32);
    c.config.index_n_heads = 64;
    c.latent_format = f;
    c.mode = ForwardMode::decode;
    c.requests = {{10, 1}, {31, 1}, {90, 1}, {300, 1}, {30, 3}, {200, 3}};
    c.seed = 11;
    expect_pass(c);
    c.mode = ForwardMode::prefill;
    c.requests = {{0, 65}, {100, 30}};
    c.prefix_chunk = 33;
    expect_pass(c);
  }
}

// A page-major index-key cache gives the row layout's output bit for bit on the GPU (64 index
// heads: the tensor-core indexer's 16-byte copies of each tile's values), decode and verify rows
// and a chunked prefill past index_topk, and passes the float64 check.
TEST_F(LayerGpu, PageMajorIndexKeysGiveTheRowLayoutsOutput) {
  for (ForwardMode mode : {ForwardMode::prefill, ForwardMode::decode}) {
    reference::CheckCase c;
    c.config = small(32);
    c.config.index_n_heads = 64;
    c.latent_format = LatentFormat::fp8;
    c.device = Device::cuda(0);
    c.mode = mode;
    c.requests = mode == ForwardMode::prefill
                     ? std::vector<reference::CheckRequest>{{0, 130}, {100, 30}, {0, 20}}
                     : std::vector<reference::CheckRequest>{{10, 1}, {300, 1}, {200, 3}};
    c.prefix_chunk = 70;
    c.seed = 22;
    testing::expect_page_major_matches_rows(c);
  }
}

// GLM-5's shapes per head (q/k 192 + 64, v 256, 32 index heads with interleaved RoPE, no YaRN),
// with its 64 heads and with a tensor-parallel rank's 32 (zero-padded heads in the sparse
// kernel), against the float64 reference.
TEST_F(LayerGpu, Glm5ShapesMatchReference) {
  for (const auto& [heads, format] : {std::pair{std::int64_t{64}, LatentFormat::fp8},
                                      std::pair{std::int64_t{32}, LatentFormat::bf16}}) {
    reference::CheckCase c;
    c.config = small(48);
    c.config.hidden_size = 256;
    c.config.num_heads = heads;
    c.config.kv_lora_rank = 512;
    c.config.qk_nope_head_dim = 192;
    c.config.qk_rope_head_dim = 64;
    c.config.v_head_dim = 256;
    c.config.index_n_heads = 32;
    c.config.rope_theta = 1e6;
    c.config.use_yarn = false;
    c.config.indexer_rope_interleave = true;
    c.latent_format = format;
    c.requests = {{0, 24}, {0, 80}, {40, 20}};
    c.prefix_chunk = 30;
    c.seed = 13;
    expect_pass(c);
  }
}

// Row split on the GPU against the float64 reference: requests whose context passes index_topk
// inside their extend run their first rows on dense MHA and the rest on sparse MLA in one
// forward (a profile where dense work is free makes auto split every such request), beside a
// request on each whole path; both cache formats, the prefix written in chunks.
TEST_F(LayerGpu, RowSplitMatchesReference) {
  const Policy split = testing::row_split_policy();
  for (LatentFormat f : {LatentFormat::bf16, LatentFormat::fp8}) {
    reference::CheckCase c;
    c.config = f == LatentFormat::bf16 ? small(48) : testing::glm5_shaped_config(4, 48);
    c.latent_format = f;
    c.device = Device::cuda(0);
    c.requests = {{0, 100}, {30, 40}, {10, 20}, {60, 5}};
    c.prefix_chunk = 25;
    c.seed = 13;
    const reference::CaseReport r = reference::check_case(c, {split, Policy::parse("mla")});
    EXPECT_TRUE(r.pass) << c.to_string() << "\n" << r.to_string();
    ASSERT_EQ(r.checks.size(), 2u);
    EXPECT_EQ(r.checks[0].paths, (std::vector<Path>{Path::row_split, Path::row_split,
                                                    Path::dense_mha, Path::sparse_mla}));
  }
}

// The full-size DeepSeek-V3.2 layer: GPU and CPU backends agree on every path, outputs and
// log-sum-exps (ForwardOptions::lse).
TEST_F(LayerGpu, FullSizeLayerMatchesCpuBackend) {
  const AttentionConfig config = AttentionConfig::deepseek_v32();
  const LayerWeights weights = LayerWeights::synthetic(config, 5);
  const std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {{0, 96}, {64, 40}, {0, 7}};
  for (const char* policy : {"mha", "mla", "masked"}) {
    std::vector<Tensor> outputs, lses;
    for (Device dev : {Device::cpu(), Device::cuda(0)}) {
      AttentionLayer layer(config, dev.is_cpu() ? weights : weights.to(dev), Policy::parse(policy));
      CacheOptions opts;
      opts.num_pages = 16;
      opts.device = dev;
      PagedKvCache cache(config, opts);
      std::vector<BlockTable> tables(shapes.size());
      Batch prefix, batch;
      std::int64_t prefix_rows = 0, rows = 0;
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        cache.reserve(tables[i], shapes[i].first + shapes[i].second);
        if (shapes[i].first > 0) {
          prefix.requests.push_back({0, shapes[i].first, tables[i]});
          prefix_rows += shapes[i].first;
        }
        batch.requests.push_back({shapes[i].first, shapes[i].second, tables[i]});
        rows += shapes[i].second;
      }
      Tensor x0 = Tensor::empty({prefix_rows, config.hidden_size}, DType::bf16);
      Tensor x1 = Tensor::empty({rows, config.hidden_size}, DType::bf16);
      fill_uniform(x0, 1, 1, 1.0f);
      fill_uniform(x1, 1, 2, 1.0f);
      const Tensor in0 = x0.to(dev), in1 = x1.to(dev);
      Tensor out0 = Tensor::empty({prefix_rows, config.hidden_size}, DType::bf16, dev);
      Tensor out1 = Tensor::empty({rows, config.hidden_size}, DType::bf16, dev);
      Tensor poisoned_lse = Tensor::empty({rows, config.num_heads}, DType::f32);
      for (std::int64_t i = 0; i < poisoned_lse.numel(); ++i) {
        poisoned_lse.ptr<float>()[i] = std::nanf("");
      }
      Tensor lse = poisoned_lse.to(dev);
      ForwardOptions options;
      options.lse = lse.view();
      layer.forward(prefix, in0, cache.layer(0), out0);
      layer.forward(batch, in1, cache.layer(0), out1, options);
      outputs.push_back(out1.to(Device::cpu()));
      lses.push_back(lse.to(Device::cpu()));
    }
    double lse_diff = 0;
    for (std::int64_t i = 0; i < lses[0].numel(); ++i) {
      const float a = lses[0].ptr<float>()[i], b = lses[1].ptr<float>()[i];
      ASSERT_TRUE(std::isfinite(a) && std::isfinite(b)) << policy << ": lse element " << i;
      lse_diff = std::max(lse_diff, double(std::fabs(a - b)));
    }
    EXPECT_LE(lse_diff, 0.05) << policy << ": GPU vs CPU log-sum-exp difference " << lse_diff;
    double diff = 0, scale = 0;
    for (std::int64_t i = 0; i < outputs[0].numel(); ++i) {
      const float a = outputs[0].ptr<bf16>()[i].to_float(),
                  b = outputs[1].ptr<bf16>()[i].to_float();
      ASSERT_TRUE(std::isfinite(b)) << "element " << i;
      diff = std::max(diff, double(std::fabs(a - b)));
      scale = std::max(scale, double(std::fabs(a)));
    }
    EXPECT_LE(diff / scale, 1.0 / 64)
        << policy << ": GPU vs CPU relative difference " << diff / scale;
  }
}

// The full-size indexer (64 heads, the FP8 tensor-core kernel) past a lowered index_topk, its
// scores whole and in windows of 40 rows: the same scores, so the same selections and outputs,
// bit for bit (each score is computed alike in either).
TEST_F(LayerGpu, FullSizeScoreWindowsAreBitIdentical) {
  AttentionConfig config = AttentionConfig::deepseek_v32();
  config.index_topk = 64;
  const Device dev = Device::cuda(0);
  AttentionLayer layer(config, LayerWeights::synthetic(config, 6).to(dev), Policy::parse("mla"));
  CacheOptions opts;
  opts.num_pages = 16;
  opts.device = dev;
  PagedKvCache cache(config, opts);
  BlockTable a, b;
  cache.reserve(a, 300);
  cache.reserve(b, 300);
  Batch prefix, batch;
  prefix.requests.push_back({0, 200, b});
  batch.requests.push_back({0, 300, a});
  batch.requests.push_back({200, 100, b});
  Tensor x0 = Tensor::empty({200, config.hidden_size}, DType::bf16);
  Tensor x1 = Tensor::empty({400, config.hidden_size}, DType::bf16);
  fill_uniform(x0, 2, 1, 1.0f);
  fill_uniform(x1, 2, 2, 1.0f);
  const Tensor in0 = x0.to(dev), in1 = x1.to(dev);
  Tensor out0 = Tensor::empty({200, config.hidden_size}, DType::bf16, dev);
  layer.forward(prefix, in0, cache.layer(0), out0);
  std::vector<ForwardResult> results;
  std::vector<Tensor> outputs;
  for (std::int64_t budget : {std::int64_t(1) << 30, std::int64_t(40 * 300 * 4)}) {
    ForwardOptions fo;
    fo.record_topk = true;
    fo.max_score_bytes = budget;
    Tensor out = Tensor::empty({400, config.hidden_size}, DType::bf16, dev);
    results.push_back(layer.forward(batch, in1, cache.layer(0), out, fo));
    outputs.push_back(out.to(Device::cpu()));
  }
  for (std::size_t r = 0; r < 2; ++r) {
    const Tensor& whole = results[0].topk_positions[r];
    const Tensor& windowed = results[1].topk_positions[r];
    ASSERT_EQ(whole.numel(), windowed.numel());
    EXPECT_EQ(std::memcmp(whole.ptr<std::int32_t>(), windowed.ptr<std::int32_t>(), whole.nbytes()),
              0)
        << "request " << r << ": other keys selected in windows";
  }
  EXPECT_EQ(std::memcmp(outputs[0].ptr<bf16>(), outputs[1].ptr<bf16>(), outputs[0].nbytes()), 0);
  double largest = 0;
  for (std::int64_t i = 0; i < outputs[0].numel(); ++i) {
    const float v = outputs[0].ptr<bf16>()[i].to_float();
    ASSERT_TRUE(std::isfinite(v)) << "element " << i;
    largest = std::max(largest, double(std::fabs(v)));
  }
  EXPECT_GT(largest, 0.0);
}

// Masked MHA at full size past a lowered index_topk (the wgmma kernel under real selections):
// the same selection as sparse MLA (one indexer and top-k), the same output within bf16
// agreement, and the same log-sum-exps.
TEST_F(LayerGpu, FullSizeMaskedMhaMatchesSparseMla) {
  AttentionConfig config = AttentionConfig::deepseek_v32();
  config.index_topk = 128;
  const Device dev = Device::cuda(0);
  AttentionLayer layer(config, LayerWeights::synthetic(config, 7).to(dev), Policy::parse("mla"));
  CacheOptions opts;
  opts.num_pages = 24;
  opts.device = dev;
  PagedKvCache cache(config, opts);
  BlockTable a, b;
  cache.reserve(a, 500);
  cache.reserve(b, 600);
  Batch prefix, batch;
  prefix.requests.push_back({0, 400, b});
  batch.requests.push_back({0, 500, a});
  batch.requests.push_back({400, 200, b});
  Tensor x0 = Tensor::empty({400, config.hidden_size}, DType::bf16);
  Tensor x1 = Tensor::empty({700, config.hidden_size}, DType::bf16);
  fill_uniform(x0, 3, 1, 1.0f);
  fill_uniform(x1, 3, 2, 1.0f);
  const Tensor in0 = x0.to(dev), in1 = x1.to(dev);
  Tensor out0 = Tensor::empty({400, config.hidden_size}, DType::bf16, dev);
  layer.forward(prefix, in0, cache.layer(0), out0);
  std::vector<ForwardResult> results;
  std::vector<Tensor> outputs, lses;
  for (const char* policy : {"mla", "masked"}) {
    layer.set_policy(Policy::parse(policy));
    ForwardOptions fo;
    fo.record_topk = true;
    Tensor lse = Tensor::empty({700, config.num_heads}, DType::f32, dev);
    fo.lse = lse.view();
    Tensor out = Tensor::empty({700, config.hidden_size}, DType::bf16, dev);
    results.push_back(layer.forward(batch, in1, cache.layer(0), out, fo));
    outputs.push_back(out.to(Device::cpu()));
    lses.push_back(lse.to(Device::cpu()));
  }
  EXPECT_EQ(results[1].paths, (std::vector<Path>{Path::masked_mha, Path::masked_mha}));
  for (std::size_t r = 0; r < 2; ++r) {
    const Tensor& sparse = results[0].topk_positions[r];
    const Tensor& masked = results[1].topk_positions[r];
    ASSERT_EQ(sparse.numel(), masked.numel());
    EXPECT_EQ(std::memcmp(sparse.ptr<std::int32_t>(), masked.ptr<std::int32_t>(), sparse.nbytes()),
              0)
        << "request " << r << ": other keys selected";
  }
  double diff = 0, scale = 0, lse_diff = 0;
  for (std::int64_t i = 0; i < outputs[0].numel(); ++i) {
    const float a0 = outputs[0].ptr<bf16>()[i].to_float(),
                a1 = outputs[1].ptr<bf16>()[i].to_float();
    ASSERT_TRUE(std::isfinite(a1)) << "element " << i;
    diff = std::max(diff, double(std::fabs(a0 - a1)));
    scale = std::max(scale, double(std::fabs(a0)));
  }
  for (std::int64_t i = 0; i < lses[0].numel(); ++i) {
    const float l0 = lses[0].ptr<float>()[i], l1 = lses[1].ptr<float>()[i];
    ASSERT_TRUE(std::isfinite(l1)) << "lse element " << i;
    lse_diff = std::max(lse_diff, double(std::fabs(l0 - l1)));
  }
  EXPECT_LE(diff / scale, 1.0 / 64) << "masked MHA vs sparse MLA relative difference";
  EXPECT_LE(lse_diff, 0.05);
}

}  // namespace
}  // namespace dsattn
