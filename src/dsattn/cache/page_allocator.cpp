#include "dsattn/cache/page_allocator.h"

#include <limits>

#include "dsattn/core/error.h"

namespace dsattn {

PageAllocator::PageAllocator(std::int64_t num_pages) : num_pages_(num_pages) {
  if (num_pages <= 0 || num_pages > std::numeric_limits<std::int32_t>::max()) {
    fail("num_pages must be in [1, 2^31), got {}", num_pages);
  }
  free_.reserve(num_pages);
  for (std::int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(static_cast<std::int32_t>(p));
  in_use_.assign(num_pages, false);
  holders_.assign(num_pages, Holder{});
}

void PageAllocator::allocate(std::int64_t count, BlockTable& table) {
  if (count < 0) fail("page count must be non-negative, got {}", count);
  if (count > free_pages()) {
    fail<CacheFull>("kv cache full: {} pages needed, {} of {} free", count, free_pages(),
                    num_pages_);
  }
  table.reserve(table.size() + count);
  for (std::int64_t i = 0; i < count; ++i) {
    const std::int32_t page = free_.back();
    free_.pop_back();
    in_use_[page] = true;
    table.push_back(page);
  }
}

void PageAllocator::release(BlockTable& table) {
  std::vector<bool> seen(num_pages_, false);
  for (std::int32_t page : table) {
    if (page < 0 || page >= num_pages_) {
      fail("block table holds page {}, outside [0, {})", page, num_pages_);
    }
    if (!in_use_[page] || seen[page])
      fail("block table releases page {} which is not in use", page);
    seen[page] = true;
  }
  for (std::int32_t page : table) {
    in_use_[page] = false;
    holders_[page] = Holder{};
    free_.push_back(page);
  }
  if (!table.empty()) ++releases_;
  table.clear();
}

}  // namespace dsattn
