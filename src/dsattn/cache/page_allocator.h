// Hands out fixed-size pages of the paged caches. A request owns a block table: the list of its
// pages, so that token position p lives in page table[p / page_size] at offset p % page_size.
#pragma once

#include <cstdint>
#include <vector>

namespace dsattn {

using BlockTable = std::vector<std::int32_t>;

class PageAllocator {
 public:
  explicit PageAllocator(std::int64_t num_pages);

  std::int64_t num_pages() const { return num_pages_; }
  std::int64_t free_pages() const { return static_cast<std::int64_t>(free_.size()); }
  // Whether `page` (in [0, num_pages)) is allocated to some block table now.
  bool in_use(std::int32_t page) const { return in_use_[static_cast<std::size_t>(page)]; }

  // Appends `count` pages to `table`, all or nothing: throws CacheFull (and leaves `table` and
  // the allocator unchanged) when fewer than `count` pages are free.
  void allocate(std::int64_t count, BlockTable& table);
  // Returns every page of `table` and clears it. Throws InvalidArgument on a page that is out of
  // range or already free (nothing is released then).
  void release(BlockTable& table);

 private:
  std::int64_t num_pages_;
  std::vector<std::int32_t> free_;  // a stack: the most recently freed page is reused first
  std::vector<bool> in_use_;
};

}  // namespace dsattn
