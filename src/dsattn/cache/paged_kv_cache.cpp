#include "dsattn/cache/paged_kv_cache.h"

namespace dsattn {

LatentFormat parse_latent_format(std::string_view text) {
  if (text == "bf16") return LatentFormat::bf16;
  if (text == "fp8") return LatentFormat::fp8;
  fail("kv cache format must be bf16 or fp8, got '{}'", text);
}

std::string_view latent_format_name(LatentFormat f) {
  return f == LatentFormat::bf16 ? "bf16" : "fp8";
}

IndexKeyLayout parse_index_key_layout(std::string_view text) {
  if (text == "rows") return IndexKeyLayout::rows;
  if (text == "page-major") return IndexKeyLayout::page_major;
  fail("index_key_layout must be \"rows\" or \"page-major\", got '{}'", text);
}

std::string_view index_key_layout_name(IndexKeyLayout layout) {
  return layout == IndexKeyLayout::rows ? "rows" : "page-major";
}

PagedKvCache::PagedKvCache(const AttentionConfig& config, const CacheOptions& options)
    : device_(options.device),
      latent_format_(options.latent_format),
      index_key_layout_(options.index_key_layout),
      page_size_(options.page_size),
      allocator_(options.num_pages) {
  config.validate();
  if (page_size_ < kPageSizeStep || page_size_ > kMaxPageSize || page_size_ % kPageSizeStep != 0) {
    fail("page_size must be a multiple of {} in [{}, {}], got {}", kPageSizeStep, kPageSizeStep,
         kMaxPageSize, page_size_);
  }
  if (options.num_layers <= 0) fail("num_layers must be positive, got {}", options.num_layers);
  if (latent_format_ == LatentFormat::fp8 && config.kv_lora_rank % 128 != 0) {
    fail("kv cache format fp8 needs kv_lora_rank to be a multiple of 128, got {}",
         config.kv_lora_rank);
  }
  const std::int64_t slots = options.num_pages * page_size_;
  for (std::int64_t l = 0; l < options.num_layers; ++l) {
    if (latent_format_ == LatentFormat::bf16) {
      latent_.push_back(Tensor::empty({slots, config.latent_dim()}, DType::bf16, device_));
    } else {
      latent_.push_back(
          Tensor::empty({slots, latent_fp8_bytes(config.kv_lora_rank, config.qk_rope_head_dim)},
                        DType::u8, device_));
    }
    index_keys_.push_back(
        Tensor::empty({slots, index_key_bytes(config.index_head_dim)}, DType::u8, device_));
  }
}

std::int64_t PagedKvCache::bytes_per_token() const {
  std::int64_t bytes = 0;
  for (std::size_t l = 0; l < latent_.size(); ++l) {
    bytes += latent_[l].size(1) * static_cast<std::int64_t>(dtype_size(latent_[l].dtype())) +
             index_keys_[l].size(1);
  }
  return bytes;
}

void PagedKvCache::reserve(BlockTable& table, std::int64_t tokens) {
  if (tokens < 0) fail("tokens to reserve must be non-negative, got {}", tokens);
  const std::int64_t have = static_cast<std::int64_t>(table.size());
  const std::int64_t need = pages_for(tokens, page_size_);
  if (need > have) allocator_.allocate(need - have, table);
}

LayerCacheView PagedKvCache::layer(std::int64_t index) const {
  if (index < 0 || index >= num_layers()) {
    fail("cache layer must be in [0, {}), got {}", num_layers(), index);
  }
  return {latent_[index].view(),
          latent_format_,
          index_keys_[index].view(),
          index_key_layout_,
          page_size_,
          num_pages(),
          &allocator_};
}

}  // namespace dsattn
