// The cache's page size (a multiple of 16 up to 256, as serving engines choose theirs) changes
// where tokens live, never what the layer computes: chunked prefill over a cached prefix and
// decode, on both paths, give the same bytes at every page size; impossible sizes are refused.
#include <gmock/gmock-matchers.h>
#include <gtest/gtest.h>

#include <cstring>

#include "core/error_message.h"
#include "dsattn/layer/attention_layer.h"
#include "layer_test_util.h"

namespace dsattn {
namespace {

using ::dsattn::testing::thrown_message;
using ::testing::HasSubstr;

// Prefills requests of 40 (dense) and 150 (sparse) tokens in two chunks, then one decode step;
// returns every output row, in order.
std::vector<std::uint16_t> run(std::int64_t page_size) {
  const AttentionConfig config = testing::small_config(64);
  const AttentionLayer layer(config, LayerWeights::synthetic(config, 3));
  CacheOptions opts;
  opts.page_size = page_size;
  opts.num_pages = 2 * ((160 + page_size - 1) / page_size) + 3;
  PagedKvCache cache(config, opts);
  // Interleaved tables: the two requests' pages alternate, so slots are not in position order.
  BlockTable a, b;
  for (std::int64_t p = 0; p < (160 + page_size - 1) / page_size; ++p) {
    cache.reserve(a, (p + 1) * page_size);
    cache.reserve(b, (p + 1) * page_size);
  }
  const Tensor x = testing::random_hidden(200, config.hidden_size, 9);
  std::vector<std::uint16_t> out;
  const auto step = [&](const Batch& batch, std::int64_t rows) {
    Tensor y = Tensor::empty({rows, config.hidden_size}, DType::bf16);
    layer.forward(batch, x.view().slice(0, 0, rows), cache.layer(0), y);
    const auto* bits = reinterpret_cast<const std::uint16_t*>(y.ptr<bf16>());
    out.insert(out.end(), bits, bits + y.numel());
  };
  Batch first;
  first.requests = {{0, 25, a}, {0, 100, b}};
  step(first, 125);
  Batch second;
  second.requests = {{25, 15, a}, {100, 50, b}};
  step(second, 65);
  Batch decode;
  decode.mode = ForwardMode::decode;
  decode.requests = {{40, 1, a}, {150, 1, b}};
  step(decode, 2);
  return out;
}

TEST(PageSize, OutputsDoNotDependOnIt) {
  const std::vector<std::uint16_t> base = run(kPageSize);
  for (const std::int64_t page_size : {16, 32, 48, 128, 256}) {
    EXPECT_EQ(run(page_size), base) << "page size " << page_size;
  }
}

TEST(PageSize, ImpossibleSizesAreRefused) {
  const AttentionConfig config = testing::small_config(64);
  for (const std::int64_t page_size : {0, 8, 24, 272, -16}) {
    CacheOptions opts;
    opts.page_size = page_size;
    EXPECT_THAT(thrown_message<InvalidArgument>([&] { PagedKvCache(config, opts); }),
                HasSubstr("page_size must be a multiple of 16 in [16, 256], got " +
                          std::to_string(page_size)));
  }
}

}  // namespace
}  // namespace dsattn
