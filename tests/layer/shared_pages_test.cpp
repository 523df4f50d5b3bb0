// Prefix caching: requests of one batch may share the pages of a common cached prefix, read only.
// Each computes exactly what it computes over a private copy of that prefix.
#include <gtest/gtest.h>

#include "dsattn/layer/attention_layer.h"
#include "layer_test_util.h"

namespace dsattn {
namespace {

TEST(SharedPages, RequestsReadACommonPrefixAsTheirOwn) {
  const AttentionConfig config = testing::small_config(32);
  const AttentionLayer layer(config, LayerWeights::synthetic(config, 4));
  CacheOptions opts;
  opts.num_pages = 12;
  PagedKvCache cache(config, opts);
  const Tensor prefix_hidden = testing::random_hidden(128, config.hidden_size, 5);
  const Tensor new_hidden = testing::random_hidden(30, config.hidden_size, 6);
  const auto forward = [&](const Batch& b, const TensorView& x) {
    Tensor y = Tensor::empty({x.size(0), config.hidden_size}, DType::bf16);
    layer.forward(b, x, cache.layer(0), y);
    return y;
  };
  const auto prefill_prefix = [&](BlockTable& t) {
    cache.reserve(t, 128);
    Batch b;
    b.requests.push_back({0, 128, t});
    forward(b, prefix_hidden);
  };

  // Two requests over one copy of the prefix (two whole pages), each with its own third page.
  BlockTable a;
  prefill_prefix(a);
  BlockTable b = a;
  cache.reserve(a, 140);
  BlockTable own;
  cache.reserve(own, 64);
  b.push_back(own[0]);
  Batch shared;
  shared.requests = {{128, 10, a}, {128, 20, b}};
  const Tensor together = forward(shared, new_hidden);

  // The same requests, each over a private copy of the prefix.
  for (const auto& [rows, first] :
       {std::pair{std::int64_t{10}, 0}, std::pair{std::int64_t{20}, 10}}) {
    BlockTable alone;
    prefill_prefix(alone);
    cache.reserve(alone, 128 + rows);
    Batch one;
    one.requests.push_back({128, rows, alone});
    const Tensor y = forward(one, new_hidden.view().slice(0, first, first + rows));
    const TensorView mine = together.view().slice(0, first, first + rows);
    for (std::int64_t i = 0; i < y.numel(); ++i) {
      ASSERT_EQ(y.ptr<bf16>()[i].bits, mine.ptr<bf16>()[i].bits) << "request rows " << first;
    }
  }
}

}  // namespace
}  // namespace dsattn
