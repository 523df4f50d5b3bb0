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
  // How many release() calls have returned pages: a plan made before a release may name pages
  // that are another request's now (AttentionLayer::run refuses it).
  std::uint64_t release_count() const { return releases_; }

  // Whose tokens a page holds, as the forwards that wrote it recorded: the first page of the
  // writer's block table (which names its sequence, except that requests sharing a prefix share
  // it), the page's index in that table, and the writer's sequence id (-1 when the request gave
  // none); {-1, -1, -1} until a forward writes the page after its allocation. A forward refuses
  // to write new tokens into a page that holds another sequence's, so a wrong block table cannot
  // silently change another live request's output.
  struct Holder {
    std::int32_t first_page = -1, index = -1;
    std::int64_t sequence = -1;
  };
  Holder holder(std::int32_t page) const { return holders_[static_cast<std::size_t>(page)]; }
  // Records that a forward wrote into `page` (bookkeeping beside the allocation, so a const
  // cache view can record it).
  void record_write(std::int32_t page, Holder h) const {
    holders_[static_cast<std::size_t>(page)] = h;
  }

 private:
  std::int64_t num_pages_;
  std::vector<std::int32_t> free_;  // a stack: the most recently freed page is reused first
  std::vector<bool> in_use_;
  mutable std::vector<Holder> holders_;
  std::uint64_t releases_ = 0;
};

}  // namespace dsattn
