#include "dsattn/layer/batch.h"

#include <limits>
#include <unordered_map>

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
  // Pages may be shared between requests (a prefix cache) as long as nobody writes them: the
  // pages holding a request's new tokens must be its own in this batch.
  std::vector<std::int32_t> writer(cache.num_pages, -1), user(cache.num_pages, -1);
  std::unordered_map<std::int64_t, std::size_t> with_id;  // sequence id -> its request
  for (std::size_t i = 0; i < batch.requests.size(); ++i) {
    const RequestInput& r = batch.requests[i];
    if (r.prefix_len < 0) fail("request {}: prefix_len must be >= 0, got {}", i, r.prefix_len);
    if (r.sequence_id < -1) {
      fail("request {}: sequence_id must be >= 0 (or -1 for none), got {}", i, r.sequence_id);
    }
    if (r.sequence_id >= 0) {
      if (const auto [it, fresh] = with_id.emplace(r.sequence_id, i); !fresh) {
        fail("request {}: sequence_id {} is also request {}'s: a sequence runs once per forward", i,
             r.sequence_id, it->second);
      }
    }
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
    const std::int64_t first_written = r.prefix_len / cache.page_size;
    for (std::int64_t p = 0; p < pages; ++p) {
      const std::int32_t page = r.block_table[p];
      if (page < 0 || page >= cache.num_pages) {
        fail("request {}: block_table[{}] = {} is outside the cache's [0, {}) pages", i, p, page,
             cache.num_pages);
      }
      if (cache.allocator && !cache.allocator->in_use(page)) {
        fail("request {}: block_table[{}] = {} is a free page (released, or never allocated)", i, p,
             page);
      }
      const bool writes = p >= first_written;
      if (writes && cache.allocator) {
        // Across forwards: a page that holds another sequence's tokens (another sequence id
        // where both have one, else another first page; or another place in the table) never
        // receives new ones. Nothing is recorded here (record_writes, once the whole forward
        // has been checked).
        const PageAllocator::Holder h = cache.allocator->holder(page);
        const bool by_id = h.sequence >= 0 && r.sequence_id >= 0;
        const bool same_sequence =
            by_id ? h.sequence == r.sequence_id : h.first_page == r.block_table[0];
        if (h.first_page != -1 && (!same_sequence || h.index != p)) {
          if (by_id) {
            fail(
                "request {}: block_table[{}] = {} holds tokens of sequence {} (page {} of its "
                "block table); new tokens go only into the request's own pages",
                i, p, page, h.sequence, h.index);
          }
          fail(
              "request {}: block_table[{}] = {} holds tokens of another sequence (page {} of the "
              "block table that starts with page {}); new tokens go only into the request's own "
              "pages",
              i, p, page, h.index, h.first_page);
        }
      }
      const std::int32_t self = static_cast<std::int32_t>(i);
      if (user[page] == self) fail("request {}: page {} appears twice in its block table", i, page);
      if (writes && user[page] != -1) {
        fail("request {}: page {} receives its new tokens but is also used by request {}", i, page,
             user[page]);
      }
      if (writer[page] != -1) {
        fail("request {}: page {} is also used by request {}, which writes its new tokens there", i,
             page, writer[page]);
      }
      user[page] = self;
      if (writes) writer[page] = self;
    }
  }
}

void record_writes(std::span<const RequestInput> requests, const LayerCacheView& cache) {
  if (cache.allocator == nullptr) return;
  for (const RequestInput& r : requests) {
    const std::int64_t pages = pages_for(r.context_len(), cache.page_size);
    for (std::int64_t p = r.prefix_len / cache.page_size; p < pages; ++p) {
      cache.allocator->record_write(
          r.block_table[p],
          PageAllocator::Holder{r.block_table[0], static_cast<std::int32_t>(p), r.sequence_id});
    }
  }
}

}  // namespace dsattn
