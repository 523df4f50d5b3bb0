#include "dsattn/layer/batch.h"

#include <limits>

#include "dsattn/core/error.h"

namespace dsattn {

std::int64_t Batch::total_tokens() const {
  std::int64_t n = 0;
  for (const RequestInput& r : requests) n += r.extend_len;
  return n;
}

std::vector<std::int64_t> Batch::token_offsets() const {
  std::vector<std::int64_t> offsets{0};
  for (const RequestInput& r : requests) offsets.push_back(offsets.back() + r.extend_len);
  return offsets;
}

void validate_batch(const Batch& batch, const AttentionConfig& config,
                    const LayerCacheView& cache) {
  if (batch.requests.empty()) fail("batch must hold at least one request, got none");
  std::vector<std::int32_t> owner(cache.num_pages, -1);
  for (std::size_t i = 0; i < batch.requests.size(); ++i) {
    const RequestInput& r = batch.requests[i];
    if (r.prefix_len < 0) fail("request {}: prefix_len must be >= 0, got {}", i, r.prefix_len);
    if (r.extend_len <= 0) {
      fail("request {}: extend_len must be >= 1 (a request brings new tokens), got {}", i,
           r.extend_len);
    }
    if (r.context_len() > config.max_position_embeddings ||
        r.context_len() > std::numeric_limits<std::int32_t>::max()) {
      fail("request {}: context of {} tokens exceeds max_position_embeddings {}", i,
           r.context_len(), config.max_position_embeddings);
    }
    const std::int64_t pages = pages_for(r.context_len(), cache.page_size);
    if (static_cast<std::int64_t>(r.block_table.size()) < pages) {
      fail(
          "request {}: block table must cover {} positions ({} pages of {}), got {} pages: "
          "reserve cache pages before the forward",
          i, r.context_len(), pages, cache.page_size, r.block_table.size());
    }
    for (std::int64_t p = 0; p < pages; ++p) {
      const std::int32_t page = r.block_table[p];
      if (page < 0 || page >= cache.num_pages) {
        fail("request {}: block_table[{}] = {} is outside the cache's [0, {}) pages", i, p, page,
             cache.num_pages);
      }
      if (owner[page] != -1) {
        fail("request {}: page {} is also used by request {} (or twice by this one)", i, page,
             owner[page]);
      }
      owner[page] = static_cast<std::int32_t>(i);
    }
  }
}

}  // namespace dsattn
