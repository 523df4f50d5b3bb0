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

// The cache's index-key layout reaches every layer's view; a page-major view whose rows are not
// contiguous (so its pages are not whole blocks) is refused before anything is written.
TEST(IndexKeyLayout, ReachesTheViewsAndNeedsContiguousPages) {
  const AttentionConfig config = testing::small_config(64);
  CacheOptions opts;
  opts.num_pages = 4;
  opts.num_layers = 2;
  opts.index_key_layout = parse_index_key_layout("page-major");
  PagedKvCache cache(config, opts);
  EXPECT_EQ(cache.index_key_layout(), IndexKeyLayout::page_major);
  EXPECT_EQ(cache.layer(1).index_key_layout, IndexKeyLayout::page_major);
  EXPECT_EQ(index_key_layout_name(cache.layer(0).index_key_layout), "page-major");
  EXPECT_THAT(thrown_message<InvalidArgument>([] { (void)parse_index_key_layout("page_major"); }),
              HasSubstr("index_key_layout must be \"rows\" or \"page-major\", got 'page_major'"));

  const AttentionLayer layer(config, LayerWeights::synthetic(config, 3));
  BlockTable table;
  cache.reserve(table, 10);
  LayerCacheView view = cache.layer(0);
  const std::int64_t slots = view.index_keys.size(0), bytes = view.index_keys.size(1);
  Tensor wide = Tensor::empty({slots, bytes + 4}, DType::u8);
  std::memset(wide.view().data(), 0x5a, wide.nbytes());
  view.index_keys = wide.view().slice(1, 0, bytes);
  std::vector<std::uint8_t> latent(static_cast<std::size_t>(view.latent.numel()) *
                                   dtype_size(view.latent.dtype()));
  std::memcpy(latent.data(), view.latent.data(), latent.size());
  Batch batch;
  batch.requests.push_back({0, 10, table});
  const Tensor x = testing::random_hidden(10, config.hidden_size, 5);
  Tensor y = Tensor::empty({10, config.hidden_size}, DType::bf16);
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { layer.forward(batch, x, view, y); }),
              HasSubstr("cache.index_keys in the page-major layout must be contiguous, got a row "
                        "stride of 136 bytes for rows of 132"));
  EXPECT_EQ(std::memcmp(latent.data(), view.latent.data(), latent.size()), 0);
  for (std::size_t i = 0; i < wide.nbytes(); ++i) {
    ASSERT_EQ(static_cast<const std::uint8_t*>(wide.view().data())[i], 0x5a) << "byte " << i;
  }
}

}  // namespace
}  // namespace dsattn
