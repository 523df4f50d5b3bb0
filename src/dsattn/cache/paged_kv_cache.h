// The two paged caches of a DeepSeek-V3.2 attention stack: the MLA latent (576 bf16 per token)
// and the indexer keys (128 e4m3 + one f32 scale = 132 bytes per token), for every layer,
// sharing one page allocator and one block table per request.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/cache/page_allocator.h"
#include "dsattn/core/tensor.h"
#include "dsattn/model/config.h"

namespace dsattn {

struct CacheOptions {
  std::int64_t num_pages = 1024;
  std::int64_t page_size = kPageSize;  // tokens per page: a multiple of 16, at most 256
  std::int64_t num_layers = 1;
  LatentFormat latent_format = LatentFormat::bf16;
  IndexKeyLayout index_key_layout = IndexKeyLayout::rows;
  Device device = Device::cpu();
};

// Parses "bf16" or "fp8".
LatentFormat parse_latent_format(std::string_view text);
std::string_view latent_format_name(LatentFormat f);
// Parses "rows" or "page-major".
IndexKeyLayout parse_index_key_layout(std::string_view text);
std::string_view index_key_layout_name(IndexKeyLayout layout);

// One layer's storage, addressed by slot = page · page_size + offset.
struct LayerCacheView {
  // bf16: [num_slots, kv_lora_rank + d_rope] bf16 = [c_kv, k_pe];
  // fp8:  [num_slots, latent_fp8_bytes] u8 (ops/latent_fp8.h)
  TensorView latent;
  LatentFormat latent_format = LatentFormat::bf16;
  TensorView index_keys;  // [num_slots, index_key_bytes(d_I)] u8, bytes as index_key_layout says
  IndexKeyLayout index_key_layout = IndexKeyLayout::rows;
  std::int64_t page_size = kPageSize;
  std::int64_t num_pages = 0;
  // The cache's allocator, when the view comes from a PagedKvCache: a forward then refuses
  // block tables that name free pages (released, or never allocated).
  const PageAllocator* allocator = nullptr;
};

class PagedKvCache {
 public:
  PagedKvCache(const AttentionConfig& config, const CacheOptions& options);

  std::int64_t page_size() const { return page_size_; }
  std::int64_t num_pages() const { return allocator_.num_pages(); }
  std::int64_t free_pages() const { return allocator_.free_pages(); }
  std::int64_t num_layers() const { return static_cast<std::int64_t>(latent_.size()); }
  Device device() const { return device_; }
  LatentFormat latent_format() const { return latent_format_; }
  IndexKeyLayout index_key_layout() const { return index_key_layout_; }
  // Bytes per token across all layers (both caches).
  std::int64_t bytes_per_token() const;

  // Grows `table` so that it covers positions [0, tokens); all or nothing (CacheFull otherwise).
  void reserve(BlockTable& table, std::int64_t tokens);
  // Frees every page of `table`.
  void release(BlockTable& table) { allocator_.release(table); }

  LayerCacheView layer(std::int64_t index) const;

 private:
  Device device_;
  LatentFormat latent_format_;
  IndexKeyLayout index_key_layout_;
  std::int64_t page_size_;
  PageAllocator allocator_;
  std::vector<Tensor> latent_;
  std::vector<Tensor> index_keys_;
};

}  // namespace dsattn
