#include "dsattn/cache/paged_kv_cache.h"

namespace dsattn {

PagedKvCache::PagedKvCache(const AttentionConfig& config, const CacheOptions& options)
    : device_(options.device), allocator_(options.num_pages) {
  config.validate();
  if (options.num_layers <= 0) fail("num_layers must be positive, got {}", options.num_layers);
  const std::int64_t slots = options.num_pages * kPageSize;
  for (std::int64_t l = 0; l < options.num_layers; ++l) {
    latent_.push_back(Tensor::empty({slots, config.latent_dim()}, DType::bf16, device_));
    index_keys_.push_back(
        Tensor::empty({slots, index_key_bytes(config.index_head_dim)}, DType::u8, device_));
  }
}

std::int64_t PagedKvCache::bytes_per_token() const {
  std::int64_t bytes = 0;
  for (std::size_t l = 0; l < latent_.size(); ++l) {
    bytes += latent_[l].size(1) * 2 + index_keys_[l].size(1);
  }
  return bytes;
}

void PagedKvCache::reserve(BlockTable& table, std::int64_t tokens) {
  if (tokens < 0) fail("tokens to reserve must be non-negative, got {}", tokens);
  const std::int64_t have = static_cast<std::int64_t>(table.size());
  const std::int64_t need = pages_for(tokens);
  if (need > have) allocator_.allocate(need - have, table);
}

LayerCacheView PagedKvCache::layer(std::int64_t index) const {
  if (index < 0 || index >= num_layers()) {
    fail("cache layer must be in [0, {}), got {}", num_layers(), index);
  }
  return {latent_[index].view(), index_keys_[index].view(), kPageSize, num_pages()};
}

}  // namespace dsattn
