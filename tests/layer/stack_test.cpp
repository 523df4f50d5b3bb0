// The synthetic weights keep activations O(1) through a deep residual stack.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "dsattn/core/error.h"
#include "dsattn/layer/attention_stack.h"
#include "layer_test_util.h"

namespace dsattn {
namespace {

double rms(const TensorView& t) {
  double s = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    const double v = t.ptr<bf16>()[i].to_float();
    s += v * v;
  }
  return std::sqrt(s / double(t.numel()));
}

TEST(AttentionStack, ActivationsStayOrderOneThroughManyLayers) {
  const AttentionConfig config = testing::small_config(32);
  const std::int64_t layers = 24, tokens = 48;
  AttentionStack stack = AttentionStack::synthetic(config, layers, 13);
  CacheOptions opts;
  opts.num_layers = layers;
  opts.num_pages = 2;
  PagedKvCache cache(config, opts);
  BlockTable table;
  cache.reserve(table, tokens);
  Batch b;
  b.requests.push_back({0, tokens, table});
  Tensor hidden = testing::random_hidden(tokens, config.hidden_size, 8);
  const double rms_in = rms(hidden);
  stack.forward(b, hidden, cache);
  const double rms_out = rms(hidden);
  EXPECT_TRUE(std::isfinite(rms_out));
  EXPECT_GT(rms_out, 0.5 * rms_in);
  EXPECT_LT(rms_out, 8.0 * rms_in) << "residual stream grew from " << rms_in << " to " << rms_out;
}

// One lse buffer cannot hold every layer's log-sum-exp: the stack refuses it before any layer
// runs (the hidden state is left as it was).
TEST(AttentionStack, LseIsRefused) {
  const AttentionConfig config = testing::small_config(32);
  AttentionStack stack = AttentionStack::synthetic(config, 2, 13);
  CacheOptions opts;
  opts.num_layers = 2;
  opts.num_pages = 1;
  PagedKvCache cache(config, opts);
  BlockTable table;
  cache.reserve(table, 8);
  Batch b;
  b.requests.push_back({0, 8, table});
  Tensor hidden = testing::random_hidden(8, config.hidden_size, 8);
  const Tensor before = testing::random_hidden(8, config.hidden_size, 8);
  Tensor lse = Tensor::empty({8, config.num_heads}, DType::f32);
  ForwardOptions options;
  options.lse = lse.view();
  EXPECT_THROW(stack.forward(b, hidden, cache, options), InvalidArgument);
  EXPECT_EQ(testing::relative_difference(hidden, before), 0.0);
}

// `layers` input norms of ones.
std::vector<Tensor> unit_norms(const AttentionConfig& config, int layers) {
  std::vector<Tensor> norms;
  for (int l = 0; l < layers; ++l) {
    Tensor n = Tensor::empty({config.hidden_size}, DType::bf16);
    std::fill_n(n.ptr<bf16>(), config.hidden_size, bf16::from_float(1.0f));
    norms.push_back(std::move(n));
  }
  return norms;
}

// A forward plans the batch once for its layers: a stack of layers of two shapes is refused.
TEST(AttentionStack, LayersOfTwoShapesAreRefused) {
  const AttentionConfig config = testing::small_config(32);
  AttentionConfig wider = config;
  wider.num_heads = 4;
  std::vector<AttentionLayer> layers;
  layers.emplace_back(config, LayerWeights::synthetic(config, 1));
  layers.emplace_back(wider, LayerWeights::synthetic(wider, 2));
  try {
    AttentionStack stack(std::move(layers), unit_norms(config, 2));
    ADD_FAILURE() << "not refused";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("must have one shape: layer 1 is D96 H4"),
              std::string::npos)
        << e.what();
  }
}

// Layers given with their own policies keep them: the stack plans again for a layer whose policy
// differs from the layer before (the last layer's paths are its own policy's, not the first's).
TEST(AttentionStack, LayersOfTwoPoliciesEachRunTheirOwn) {
  const AttentionConfig config = testing::small_config(32);
  std::vector<AttentionLayer> layers;
  layers.emplace_back(config, LayerWeights::synthetic(config, 5), Policy::parse("mla"));
  layers.emplace_back(config, LayerWeights::synthetic(config, 6), Policy::parse("per-request"));
  const AttentionStack stack(std::move(layers), unit_norms(config, 2));
  CacheOptions opts;
  opts.num_layers = 2;
  opts.num_pages = 1;
  PagedKvCache cache(config, opts);
  BlockTable table;
  cache.reserve(table, 20);
  Batch b;
  b.requests.push_back({0, 20, table});
  Tensor hidden = testing::random_hidden(20, config.hidden_size, 8);
  const ForwardResult r = stack.forward(b, hidden, cache);
  EXPECT_EQ(r.paths, std::vector<Path>{Path::dense_mha});  // the last layer's: per-request
  EXPECT_GT(r.times.planning, 0.0);
}

}  // namespace
}  // namespace dsattn
