// PagedKvCache: storage shapes and sizes per layer, block-table growth, and all-or-nothing
// behaviour when the cache is full.
#include "dsattn/cache/paged_kv_cache.h"

#include <gmock/gmock-matchers.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "core/error_message.h"
#include "dsattn/core/cuda_runtime.h"

namespace dsattn {
namespace {

using ::dsattn::testing::thrown_message;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::vector<std::int64_t> shape_of(const TensorView& v) {
  return {v.shape().begin(), v.shape().end()};
}

CacheOptions options(std::int64_t num_pages, std::int64_t num_layers = 1) {
  CacheOptions o;
  o.num_pages = num_pages;
  o.num_layers = num_layers;
  return o;
}

TEST(CacheFormat, PageSizeAndIndexKeyWidth) {
  EXPECT_EQ(kPageSize, 64);
  EXPECT_EQ(index_key_bytes(128), 132);  // 128 e4m3 + one f32 scale
  EXPECT_EQ(index_key_bytes(256), 264);
}

TEST(CacheFormat, PagesForRoundsUp) {
  EXPECT_EQ(pages_for(0), 0);
  EXPECT_EQ(pages_for(1), 1);
  EXPECT_EQ(pages_for(63), 1);
  EXPECT_EQ(pages_for(64), 1);
  EXPECT_EQ(pages_for(65), 2);
  EXPECT_EQ(pages_for(128), 2);
  EXPECT_EQ(pages_for(163840), 2560);
  std::mt19937 rng(3);
  std::uniform_int_distribution<std::int64_t> tokens(0, 1 << 20);
  for (int i = 0; i < 1000; ++i) {
    const std::int64_t n = tokens(rng);
    const std::int64_t p = pages_for(n);
    EXPECT_GE(p * kPageSize, n);
    if (n > 0) {
      EXPECT_LT((p - 1) * kPageSize, n);  // and no more than needed
    }
  }
}

TEST(PagedKvCache, DefaultConfigLayerViews) {
  const AttentionConfig c;
  const PagedKvCache cache(c, options(5, 2));
  EXPECT_EQ(cache.page_size(), 64);
  EXPECT_EQ(cache.num_pages(), 5);
  EXPECT_EQ(cache.free_pages(), 5);
  EXPECT_EQ(cache.num_layers(), 2);
  EXPECT_EQ(cache.device(), Device::cpu());
  for (std::int64_t l = 0; l < 2; ++l) {
    const LayerCacheView v = cache.layer(l);
    EXPECT_EQ(shape_of(v.latent), (std::vector<std::int64_t>{5 * 64, 576}));
    EXPECT_EQ(v.latent.dtype(), DType::bf16);
    EXPECT_TRUE(v.latent.is_contiguous());
    EXPECT_EQ(shape_of(v.index_keys), (std::vector<std::int64_t>{5 * 64, 132}));
    EXPECT_EQ(v.index_keys.dtype(), DType::u8);
    EXPECT_TRUE(v.index_keys.is_contiguous());
    EXPECT_EQ(v.page_size, 64);
    EXPECT_EQ(v.num_pages, 5);
    EXPECT_EQ(v.latent.device(), Device::cpu());
  }
}

TEST(PagedKvCache, LayersDoNotShareStorage) {
  const AttentionConfig c;
  const PagedKvCache cache(c, options(2, 3));
  std::vector<std::pair<const char*, const char*>> ranges;
  for (std::int64_t l = 0; l < 3; ++l) {
    const LayerCacheView v = cache.layer(l);
    for (const TensorView& t : {v.latent, v.index_keys}) {
      const char* begin = static_cast<const char*>(t.data());
      ranges.emplace_back(begin, begin + t.numel() * dtype_size(t.dtype()));
    }
  }
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    for (std::size_t j = i + 1; j < ranges.size(); ++j) {
      EXPECT_TRUE(ranges[i].second <= ranges[j].first || ranges[j].second <= ranges[i].first)
          << "buffers " << i << " and " << j << " overlap";
    }
  }
  // Writes through one layer's view are seen through a second view of the same layer and not
  // through another layer's.
  std::mt19937 rng(12);
  const LayerCacheView l0 = cache.layer(0), l0_again = cache.layer(0), l1 = cache.layer(1);
  const std::int64_t slot = 77;
  for (std::int64_t k = 0; k < 576; ++k) {
    l0.latent.row<bf16>(slot)[k] =
        bf16::from_float(std::uniform_real_distribution<float>(-1, 1)(rng));
    l1.latent.row<bf16>(slot)[k] = bf16::from_float(5.0f);
  }
  for (std::int64_t k = 0; k < 576; ++k) {
    EXPECT_EQ(l0_again.latent.row<bf16>(slot)[k].bits, l0.latent.row<bf16>(slot)[k].bits);
    EXPECT_NE(l0.latent.row<bf16>(slot)[k].to_float(), 5.0f);
  }
}

TEST(PagedKvCache, SmallConfigShapes) {
  AttentionConfig c;
  c.kv_lora_rank = 256;
  c.qk_rope_head_dim = 32;
  c.index_head_dim = 256;
  const PagedKvCache cache(c, options(3));
  EXPECT_EQ(shape_of(cache.layer(0).latent), (std::vector<std::int64_t>{192, 288}));
  EXPECT_EQ(shape_of(cache.layer(0).index_keys), (std::vector<std::int64_t>{192, 264}));
  EXPECT_EQ(cache.bytes_per_token(), 288 * 2 + 264);
}

TEST(PagedKvCache, BytesPerTokenCountsBothCachesOfEveryLayer) {
  const AttentionConfig c;
  EXPECT_EQ(PagedKvCache(c, options(1, 1)).bytes_per_token(), 1152 + 132);
  EXPECT_EQ(PagedKvCache(c, options(1, 3)).bytes_per_token(), 3 * (1152 + 132));
}

TEST(PagedKvCache, ReserveGrowsTheTableToCoverTheTokens) {
  const AttentionConfig c;
  PagedKvCache cache(c, options(16));
  BlockTable t;
  cache.reserve(t, 0);
  EXPECT_TRUE(t.empty());
  std::int64_t covered = 0;
  for (std::int64_t tokens : {1, 64, 65, 100, 128, 129, 500}) {
    cache.reserve(t, tokens);
    covered = std::max(covered, tokens);
    EXPECT_EQ(static_cast<std::int64_t>(t.size()), pages_for(covered)) << tokens << " tokens";
    EXPECT_EQ(cache.free_pages(), 16 - pages_for(covered));
  }
  // Asking for fewer tokens than already covered neither shrinks nor grows the table.
  const BlockTable before = t;
  cache.reserve(t, 10);
  cache.reserve(t, 500);
  EXPECT_EQ(t, before);
  std::set<std::int32_t> distinct(t.begin(), t.end());
  EXPECT_EQ(distinct.size(), t.size());
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { cache.reserve(t, -1); }), HasSubstr("-1"));
  EXPECT_EQ(t, before);
}

TEST(PagedKvCache, ReserveIsAllOrNothingWhenFull) {
  const AttentionConfig c;
  PagedKvCache cache(c, options(4));
  BlockTable a, b;
  cache.reserve(a, 130);  // 3 pages
  cache.reserve(b, 10);   // 1 page: the cache is now full
  ASSERT_EQ(cache.free_pages(), 0);
  const BlockTable a_before = a, b_before = b;
  EXPECT_THROW(cache.reserve(a, 200), CacheFull);
  EXPECT_EQ(a, a_before);
  EXPECT_EQ(cache.free_pages(), 0);
  cache.reserve(b, 64);  // already covered: no page needed, no error
  EXPECT_EQ(b, b_before);

  cache.release(b);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(cache.free_pages(), 1);
  // Needing two more pages with one free fails without taking the free one.
  const std::string msg = thrown_message<CacheFull>([&] { cache.reserve(a, 257); });
  EXPECT_THAT(msg, AllOf(HasSubstr("2 pages needed"), HasSubstr("1 of 4 free")));
  EXPECT_EQ(a, a_before);
  EXPECT_EQ(cache.free_pages(), 1);
  cache.reserve(a, 256);
  EXPECT_EQ(a.size(), 4u);
  EXPECT_EQ(cache.free_pages(), 0);
}

TEST(PagedKvCache, ReleaseReturnsEveryPage) {
  const AttentionConfig c;
  PagedKvCache cache(c, options(8, 2));
  BlockTable t;
  cache.reserve(t, 8 * 64);
  EXPECT_EQ(cache.free_pages(), 0);
  cache.release(t);
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(cache.free_pages(), 8);
  BlockTable bogus = {3};
  EXPECT_THROW(cache.release(bogus), InvalidArgument);
  EXPECT_EQ(cache.free_pages(), 8);
}

TEST(PagedKvCache, BadOptionsAndLayerIndexAreRefused) {
  const AttentionConfig c;
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { PagedKvCache cache(c, options(4, 0)); }),
              AllOf(HasSubstr("num_layers"), HasSubstr("got 0")));
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { PagedKvCache cache(c, options(4, -2)); }),
              HasSubstr("num_layers"));
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { PagedKvCache cache(c, options(0, 1)); }),
              AllOf(HasSubstr("num_pages"), HasSubstr("got 0")));
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { PagedKvCache cache(c, options(-8, 1)); }),
              HasSubstr("num_pages"));

  const PagedKvCache cache(c, options(2, 2));
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { (void)cache.layer(2); }),
              AllOf(HasSubstr("[0, 2)"), HasSubstr("got 2")));
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { (void)cache.layer(-1); }), HasSubstr("got -1"));
}

TEST(PagedKvCache, InvalidConfigIsRefused) {
  AttentionConfig c;
  c.index_head_dim = 100;
  EXPECT_THAT(thrown_message<ConfigError>([&] { PagedKvCache cache(c, options(2)); }),
              HasSubstr("index_head_dim"));
}

TEST(PagedKvCache, CudaCacheWithoutAGpuThrows) {
  if (cuda::device_count() > 0) GTEST_SKIP() << "a GPU is present";
  CacheOptions o = options(2);
  o.device = Device::cuda();
  EXPECT_THROW(PagedKvCache(AttentionConfig{}, o), Error);
}

}  // namespace
}  // namespace dsattn
