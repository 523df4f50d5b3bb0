// The synthetic weights keep activations O(1) through a deep residual stack.
#include <gtest/gtest.h>

#include <cmath>

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

}  // namespace
}  // namespace dsattn
