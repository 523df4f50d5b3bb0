// LayerWeights: seeded synthetic init (reproducible, shaped by the config, with the documented
// scales) and validate()'s refusals.
#include "dsattn/model/weights.h"

#include <gmock/gmock-matchers.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/error_message.h"
#include "model/model_test_config.h"

namespace dsattn {
namespace {

using ::dsattn::testing::thrown_message;
using ::testing::AllOf;
using ::testing::HasSubstr;

AttentionConfig small_config() { return testing::small_model_config(); }

struct Named {
  const char* name;
  const Tensor* tensor;
  Shape shape;
};

// Every weight with its checkpoint name and expected shape, written out from the header's
// comments rather than taken from the library.
std::vector<Named> expected_weights(const LayerWeights& w, const AttentionConfig& c) {
  const std::int64_t H = c.num_heads;
  return {
      {"q_a_proj", &w.q_a_proj, {c.q_lora_rank, c.hidden_size}},
      {"q_a_layernorm", &w.q_a_layernorm, {c.q_lora_rank}},
      {"q_b_proj", &w.q_b_proj, {H * (c.qk_nope_head_dim + c.qk_rope_head_dim), c.q_lora_rank}},
      {"kv_a_proj_with_mqa",
       &w.kv_a_proj_with_mqa,
       {c.kv_lora_rank + c.qk_rope_head_dim, c.hidden_size}},
      {"kv_a_layernorm", &w.kv_a_layernorm, {c.kv_lora_rank}},
      {"kv_b_proj", &w.kv_b_proj, {H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}},
      {"o_proj", &w.o_proj, {c.hidden_size, H * c.v_head_dim}},
      {"indexer.wq_b", &w.indexer_wq_b, {c.index_n_heads * c.index_head_dim, c.q_lora_rank}},
      {"indexer.wk", &w.indexer_wk, {c.index_head_dim, c.hidden_size}},
      {"indexer.k_norm.weight", &w.indexer_k_norm, {c.index_head_dim}},
      {"indexer.k_norm.bias", &w.indexer_k_norm_bias, {c.index_head_dim}},
      {"indexer.weights_proj", &w.indexer_weights_proj, {c.index_n_heads, c.hidden_size}},
  };
}

Shape shape_of(const Tensor& t) {
  const auto s = t.view().shape();
  return {s.begin(), s.end()};
}

struct Moments {
  double mean = 0, std = 0, max_abs = 0;
};

Moments moments(const Tensor& t) {
  const bf16* p = t.ptr<bf16>();
  const std::int64_t n = t.numel();
  double sum = 0;
  for (std::int64_t i = 0; i < n; ++i) sum += p[i].to_float();
  Moments m;
  m.mean = sum / n;
  double sq = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double d = p[i].to_float() - m.mean;
    sq += d * d;
    m.max_abs = std::max<double>(m.max_abs, std::fabs(p[i].to_float()));
  }
  m.std = std::sqrt(sq / n);
  return m;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.view().data(), b.view().data(), a.nbytes()) == 0;
}

TEST(Weights, SyntheticShapesFollowTheConfig) {
  const AttentionConfig c = small_config();
  const LayerWeights w = LayerWeights::synthetic(c, 1);
  for (const Named& n : expected_weights(w, c)) {
    SCOPED_TRACE(n.name);
    ASSERT_TRUE(n.tensor->defined());
    EXPECT_EQ(shape_of(*n.tensor), n.shape);
    EXPECT_EQ(n.tensor->dtype(), DType::bf16);
    EXPECT_EQ(n.tensor->device(), Device::cpu());
  }
  EXPECT_EQ(w.device(), Device::cpu());
  EXPECT_NO_THROW(w.validate(c));
}

TEST(Weights, SyntheticIsDeterministicPerSeed) {
  const AttentionConfig c = small_config();
  const LayerWeights a = LayerWeights::synthetic(c, 1234);
  const LayerWeights b = LayerWeights::synthetic(c, 1234);
  const LayerWeights other = LayerWeights::synthetic(c, 1235);
  const auto wa = expected_weights(a, c);
  const auto wb = expected_weights(b, c);
  const auto wo = expected_weights(other, c);
  for (std::size_t i = 0; i < wa.size(); ++i) {
    SCOPED_TRACE(wa[i].name);
    EXPECT_TRUE(same_bytes(*wa[i].tensor, *wb[i].tensor));
    EXPECT_NE(wa[i].tensor->view().data(), wb[i].tensor->view().data());
    // Another seed changes (almost) every element, not just a few.
    const bf16* x = wa[i].tensor->ptr<bf16>();
    const bf16* y = wo[i].tensor->ptr<bf16>();
    std::int64_t equal = 0;
    for (std::int64_t k = 0; k < wa[i].tensor->numel(); ++k) equal += x[k].bits == y[k].bits;
    EXPECT_LT(equal, wa[i].tensor->numel() / 10);
  }
}

TEST(Weights, DistinctTensorsGetDistinctStreams) {
  // q_a_layernorm and kv_a_layernorm share a distribution; they must not share values.
  const AttentionConfig c = small_config();
  const LayerWeights w = LayerWeights::synthetic(c, 9);
  std::int64_t equal = 0;
  for (std::int64_t k = 0; k < c.kv_lora_rank; ++k) {
    equal += w.q_a_layernorm.ptr<bf16>()[k].bits == w.kv_a_layernorm.ptr<bf16>()[k].bits;
  }
  EXPECT_LT(equal, c.kv_lora_rank / 4);
}

TEST(Weights, ProjectionsHaveUnitFanInVariance) {
  const AttentionConfig c = small_config();
  const float output_gain = 0.5f;
  const LayerWeights w = LayerWeights::synthetic(c, 77, output_gain);
  for (const Named& n : expected_weights(w, c)) {
    if (n.shape.size() != 2) continue;
    SCOPED_TRACE(n.name);
    const double fan_in = static_cast<double>(n.shape[1]);
    const double gain = std::string(n.name) == "o_proj" ? output_gain : 1.0;
    const double want_std = gain / std::sqrt(fan_in);
    const Moments m = moments(*n.tensor);
    // The smallest projection here has 2560 elements: the sample std is within 1% (1 sigma).
    EXPECT_NEAR(m.std, want_std, 0.04 * want_std);
    EXPECT_NEAR(m.mean, 0.0, 0.1 * want_std);
    // Uniform init: nothing beyond sqrt(3)·std (plus bf16 rounding).
    EXPECT_LE(m.max_abs, std::sqrt(3.0) * want_std * 1.01);
  }
}

TEST(Weights, OutputGainScalesOnlyOProj) {
  const AttentionConfig c = small_config();
  const LayerWeights half = LayerWeights::synthetic(c, 5, 0.5f);
  const LayerWeights full = LayerWeights::synthetic(c, 5, 1.0f);
  EXPECT_NEAR(moments(half.o_proj).std / moments(full.o_proj).std, 0.5, 0.01);
  EXPECT_TRUE(same_bytes(half.q_b_proj, full.q_b_proj));
  EXPECT_TRUE(same_bytes(half.kv_b_proj, full.kv_b_proj));
}

TEST(Weights, NormWeightsAreNearOneAndBiasesNearZero) {
  const AttentionConfig c = small_config();
  const LayerWeights w = LayerWeights::synthetic(c, 31);
  for (const Tensor* t : {&w.q_a_layernorm, &w.kv_a_layernorm, &w.indexer_k_norm}) {
    const Moments m = moments(*t);
    EXPECT_NEAR(m.mean, 1.0, 0.02);
    EXPECT_GT(m.std, 0.01);  // not all ones: a kernel that ignores the weight must fail a test
    EXPECT_LT(m.std, 0.1);
  }
  const Moments b = moments(w.indexer_k_norm_bias);
  EXPECT_NEAR(b.mean, 0.0, 0.02);
  EXPECT_GT(b.std, 0.01);
  EXPECT_LT(b.max_abs, 0.1);
}

TEST(Weights, SyntheticRefusesAnInvalidConfig) {
  AttentionConfig c = small_config();
  c.qk_rope_head_dim = 15;
  EXPECT_THAT(thrown_message<ConfigError>([&] { (void)LayerWeights::synthetic(c, 1); }),
              HasSubstr("qk_rope_head_dim"));
}

TEST(Weights, ValidateRefusesAWrongShapeNamingTheTensor) {
  const AttentionConfig c = small_config();
  LayerWeights w = LayerWeights::synthetic(c, 3);
  w.kv_b_proj = Tensor::empty({c.num_heads * c.qk_nope_head_dim, c.kv_lora_rank}, DType::bf16);
  EXPECT_EQ(thrown_message<InvalidArgument>([&] { w.validate(c); }),
            "kv_b_proj must have shape [256, 64], got [96, 64]");

  // Weights built for one config do not pass for another.
  const LayerWeights good = LayerWeights::synthetic(c, 3);
  AttentionConfig wider = c;
  wider.hidden_size = 384;
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { good.validate(wider); }),
              AllOf(HasSubstr("q_a_proj"), HasSubstr("[96, 384]"), HasSubstr("[96, 320]")));
  AttentionConfig more_index_heads = c;
  more_index_heads.index_n_heads = 9;
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { good.validate(more_index_heads); }),
              HasSubstr("indexer.wq_b"));
}

TEST(Weights, ValidateRefusesAMissingTensorNamingIt) {
  const AttentionConfig c = small_config();
  LayerWeights w = LayerWeights::synthetic(c, 3);
  w.o_proj = Tensor();
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { w.validate(c); }),
              AllOf(HasSubstr("o_proj"), HasSubstr("missing")));
  w = LayerWeights::synthetic(c, 3);
  w.indexer_k_norm_bias = Tensor();
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { w.validate(c); }),
              HasSubstr("indexer.k_norm.bias"));
}

TEST(Weights, ValidateRefusesAWrongDtypeNamingTheTensor) {
  const AttentionConfig c = small_config();
  LayerWeights w = LayerWeights::synthetic(c, 3);
  w.indexer_wk = Tensor::empty({c.index_head_dim, c.hidden_size}, DType::f32);
  EXPECT_EQ(thrown_message<InvalidArgument>([&] { w.validate(c); }),
            "indexer.wk must have dtype bf16, got f32");
}

TEST(Weights, ToCpuCopiesEveryTensor) {
  const AttentionConfig c = small_config();
  const LayerWeights w = LayerWeights::synthetic(c, 8);
  const LayerWeights copy = w.to(Device::cpu());
  const auto a = expected_weights(w, c);
  const auto b = expected_weights(copy, c);
  for (std::size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE(a[i].name);
    EXPECT_EQ(shape_of(*b[i].tensor), a[i].shape);
    EXPECT_TRUE(same_bytes(*a[i].tensor, *b[i].tensor));
    EXPECT_NE(a[i].tensor->view().data(), b[i].tensor->view().data());
  }
  EXPECT_NO_THROW(copy.validate(c));
}

TEST(Weights, ToKeepsAMissingTensorMissing) {
  const AttentionConfig c = small_config();
  LayerWeights w = LayerWeights::synthetic(c, 8);
  w.indexer_wk = Tensor();
  const LayerWeights copy = w.to(Device::cpu());
  EXPECT_FALSE(copy.indexer_wk.defined());
  EXPECT_TRUE(same_bytes(copy.q_b_proj, w.q_b_proj));
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { copy.validate(c); }),
              AllOf(HasSubstr("indexer.wk"), HasSubstr("missing")));
}

TEST(Weights, FullDeepSeekV32LayerHasTheCheckpointShapes) {
  const AttentionConfig c;
  const LayerWeights w = LayerWeights::synthetic(c, 2);
  EXPECT_EQ(shape_of(w.q_a_proj), (Shape{1536, 7168}));
  EXPECT_EQ(shape_of(w.q_b_proj), (Shape{24576, 1536}));
  EXPECT_EQ(shape_of(w.kv_a_proj_with_mqa), (Shape{576, 7168}));
  EXPECT_EQ(shape_of(w.kv_b_proj), (Shape{32768, 512}));
  EXPECT_EQ(shape_of(w.o_proj), (Shape{7168, 16384}));
  EXPECT_EQ(shape_of(w.indexer_wq_b), (Shape{8192, 1536}));
  EXPECT_EQ(shape_of(w.indexer_wk), (Shape{128, 7168}));
  EXPECT_EQ(shape_of(w.indexer_weights_proj), (Shape{64, 7168}));
  EXPECT_NO_THROW(w.validate(c));
  const Moments m = moments(w.kv_a_proj_with_mqa);
  EXPECT_NEAR(m.std, 1.0 / std::sqrt(7168.0), 0.01 / std::sqrt(7168.0));
}

}  // namespace
}  // namespace dsattn
