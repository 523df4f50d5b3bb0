// PageAllocator: pages are handed out once, come back on release, and every failure leaves the
// allocator and the caller's block table exactly as they were.
#include "dsattn/cache/page_allocator.h"

#include <gmock/gmock-matchers.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "core/error_message.h"
#include "dsattn/core/error.h"

namespace dsattn {
namespace {

using ::dsattn::testing::thrown_message;
using ::testing::AllOf;
using ::testing::HasSubstr;

void expect_distinct_in_range(const BlockTable& table, std::int64_t num_pages) {
  std::set<std::int32_t> seen;
  for (std::int32_t p : table) {
    EXPECT_GE(p, 0);
    EXPECT_LT(p, num_pages);
    EXPECT_TRUE(seen.insert(p).second) << "page " << p << " handed out twice";
  }
}

TEST(PageAllocator, StartsWithEveryPageFree) {
  const PageAllocator a(37);
  EXPECT_EQ(a.num_pages(), 37);
  EXPECT_EQ(a.free_pages(), 37);
}

TEST(PageAllocator, RefusesAnImpossiblePageCount) {
  EXPECT_THAT(thrown_message<InvalidArgument>([] { PageAllocator a(0); }),
              AllOf(HasSubstr("num_pages"), HasSubstr("got 0")));
  EXPECT_THAT(thrown_message<InvalidArgument>([] { PageAllocator a(-3); }), HasSubstr("-3"));
  EXPECT_THROW(PageAllocator(std::int64_t{1} << 31), InvalidArgument);
}

TEST(PageAllocator, AllocateAppendsDistinctPages) {
  PageAllocator a(16);
  BlockTable t = {};
  a.allocate(5, t);
  EXPECT_EQ(t.size(), 5u);
  EXPECT_EQ(a.free_pages(), 11);
  a.allocate(3, t);  // appends; the first five stay in place
  ASSERT_EQ(t.size(), 8u);
  EXPECT_EQ(a.free_pages(), 8);
  BlockTable other;
  a.allocate(8, other);
  EXPECT_EQ(a.free_pages(), 0);
  BlockTable all = t;
  all.insert(all.end(), other.begin(), other.end());
  expect_distinct_in_range(all, 16);
  EXPECT_EQ(all.size(), 16u);
}

TEST(PageAllocator, AllocatingZeroPagesChangesNothing) {
  PageAllocator a(4);
  BlockTable t = {};
  a.allocate(0, t);
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(a.free_pages(), 4);
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { a.allocate(-1, t); }), HasSubstr("-1"));
  EXPECT_EQ(a.free_pages(), 4);
}

TEST(PageAllocator, CacheFullLeavesTableAndFreeCountUnchanged) {
  PageAllocator a(8);
  BlockTable t;
  a.allocate(6, t);
  const BlockTable before = t;
  const std::string msg = thrown_message<CacheFull>([&] { a.allocate(3, t); });
  EXPECT_THAT(msg, AllOf(HasSubstr("3 pages needed"), HasSubstr("2 of 8 free")));
  EXPECT_EQ(t, before);
  EXPECT_EQ(a.free_pages(), 2);
  // The two free pages are still there to be had.
  a.allocate(2, t);
  EXPECT_EQ(a.free_pages(), 0);
  expect_distinct_in_range(t, 8);
  EXPECT_THROW(a.allocate(1, t), CacheFull);
  EXPECT_EQ(t.size(), 8u);
}

TEST(PageAllocator, ReleaseReturnsPagesAndClearsTheTable) {
  PageAllocator a(10);
  BlockTable t1, t2;
  a.allocate(4, t1);
  a.allocate(6, t2);
  const BlockTable old = t1;
  a.release(t1);
  EXPECT_TRUE(t1.empty());
  EXPECT_EQ(a.free_pages(), 4);
  // Freed pages are what is available again; none of t2's pages are handed out.
  BlockTable t3;
  a.allocate(4, t3);
  std::vector<std::int32_t> got = t3, want = old;
  std::sort(got.begin(), got.end());
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
  EXPECT_EQ(a.free_pages(), 0);
  BlockTable empty;
  a.release(empty);  // releasing nothing is fine
  EXPECT_EQ(a.free_pages(), 0);
}

TEST(PageAllocator, ReleaseOfAnOutOfRangePageThrowsAndReleasesNothing) {
  PageAllocator a(8);
  BlockTable t;
  a.allocate(3, t);
  for (std::int32_t bad : {8, 1000, -1}) {
    BlockTable with_bad = t;
    with_bad.push_back(bad);
    const BlockTable before = with_bad;
    EXPECT_THAT(thrown_message<InvalidArgument>([&] { a.release(with_bad); }),
                AllOf(HasSubstr(std::to_string(bad)), HasSubstr("[0, 8)")));
    EXPECT_EQ(with_bad, before);
    EXPECT_EQ(a.free_pages(), 5);
  }
  a.release(t);  // the valid pages were never released, so this succeeds
  EXPECT_EQ(a.free_pages(), 8);
}

TEST(PageAllocator, DoubleFreeThrowsAndReleasesNothing) {
  PageAllocator a(8);
  BlockTable t;
  a.allocate(4, t);

  BlockTable twice = {t[0], t[1], t[0]};  // one page listed twice in a table
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { a.release(twice); }),
              AllOf(HasSubstr(std::to_string(t[0])), HasSubstr("not in use")));
  EXPECT_EQ(a.free_pages(), 4);
  EXPECT_EQ(twice.size(), 3u);

  BlockTable copy = t;
  a.release(t);
  EXPECT_EQ(a.free_pages(), 8);
  // Releasing the same pages again through a stale copy of the table.
  EXPECT_THROW(a.release(copy), InvalidArgument);
  EXPECT_EQ(a.free_pages(), 8);
  EXPECT_EQ(copy.size(), 4u);
}

TEST(PageAllocator, ReleaseOfANeverAllocatedPageThrows) {
  PageAllocator a(8);
  BlockTable t;
  a.allocate(2, t);
  std::int32_t unused = 0;
  while (std::find(t.begin(), t.end(), unused) != t.end()) ++unused;
  BlockTable mixed = {t[0], unused};
  EXPECT_THROW(a.release(mixed), InvalidArgument);
  EXPECT_EQ(a.free_pages(), 6);
  BlockTable again;
  a.allocate(6, again);  // every free page is still free exactly once
  t.insert(t.end(), again.begin(), again.end());
  expect_distinct_in_range(t, 8);
}

// Random interleavings of allocations and releases over several requests: no page is ever held
// by two tables and free + held always equals the total.
TEST(PageAllocator, RandomWorkloadKeepsPagesDisjoint) {
  constexpr std::int64_t kPages = 64;
  PageAllocator a(kPages);
  std::vector<BlockTable> tables(6);
  std::mt19937 rng(2025);
  std::uniform_int_distribution<int> pick(0, 5);
  std::uniform_int_distribution<int> count(0, 20);
  std::bernoulli_distribution release(0.3);
  int full = 0;
  for (int step = 0; step < 2000; ++step) {
    BlockTable& t = tables[pick(rng)];
    if (release(rng)) {
      a.release(t);
      ASSERT_TRUE(t.empty());
    } else {
      const int n = count(rng);
      const std::size_t size_before = t.size();
      const std::int64_t free_before = a.free_pages();
      try {
        a.allocate(n, t);
        ASSERT_EQ(t.size(), size_before + n);
        ASSERT_EQ(a.free_pages(), free_before - n);
      } catch (const CacheFull&) {
        ASSERT_GT(n, free_before);
        ASSERT_EQ(t.size(), size_before);
        ASSERT_EQ(a.free_pages(), free_before);
        ++full;
      }
    }
    BlockTable all;
    for (const BlockTable& u : tables) all.insert(all.end(), u.begin(), u.end());
    ASSERT_EQ(static_cast<std::int64_t>(all.size()) + a.free_pages(), kPages);
    expect_distinct_in_range(all, kPages);
    if (::testing::Test::HasFailure()) return;
  }
  EXPECT_GT(full, 0);  // the workload did reach a full cache
}

}  // namespace
}  // namespace dsattn
