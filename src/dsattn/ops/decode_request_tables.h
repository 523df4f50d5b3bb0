// One request's share of build_decode_tables (ops/cache_ops.h), written once for both backends:
// the CPU loops over requests, the CUDA kernel gives each request a block. The rules for a bad
// length or page (clamp, read page 0, skip the write) live here only.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define DSATTN_HOST_DEVICE __host__ __device__
#else
#define DSATTN_HOST_DEVICE
#endif

namespace dsattn::ops {

// Fault bits of build_decode_tables. A request whose prefix_len is below -1 or leaves no room for
// its tokens within max_context is clamped into [0, max_context - tokens] for its reads; a page
// entry outside [0, num_pages) is read as page 0. Either way its new tokens are not written (where
// a clamped request would write is some other token's slot), no access leaves the cache, and the
// request's output is not meaningful.
inline constexpr std::int32_t kDecodeFaultContext = 1, kDecodeFaultPage = 2;
// prefix_len -1 marks an inactive row (padding of a fixed-size batch): no fault, nothing written,
// its table not read (every page read as page 0), its output not meaningful.
inline constexpr std::int32_t kDecodeInactive = -1;

struct DecodeRequestTables {
  const std::int32_t* table;  // the caller's block-table row
  std::int64_t prefix, tokens, page_size, num_pages, pages;
  std::int32_t faults;
  bool writes;  // false for an inactive or clamped request

  DSATTN_HOST_DEVICE bool page_ok(std::int64_t j) const {
    return table[j] >= 0 && table[j] < num_pages;
  }
  // An entry the request reads (an inactive request reads none of its table) that is not a page.
  DSATTN_HOST_DEVICE bool page_fault(std::int64_t j) const {
    return active() && j < pages && !page_ok(j);
  }
  // The page the step reads at table index j: the caller's where it is valid and seen, else 0.
  DSATTN_HOST_DEVICE std::int32_t page(std::int64_t j) const {
    return active() && j < pages && page_ok(j) ? table[j] : 0;
  }
  DSATTN_HOST_DEVICE bool active() const { return pages > 0; }
  DSATTN_HOST_DEVICE std::int32_t position(std::int64_t t) const {
    return static_cast<std::int32_t>(prefix + t);
  }
  DSATTN_HOST_DEVICE std::int32_t context() const {
    return static_cast<std::int32_t>(prefix + tokens);
  }
  // The new token t's cache slot, or -1 (not written): an inactive or clamped request, or an
  // invalid page entry.
  DSATTN_HOST_DEVICE std::int32_t slot(std::int64_t t) const {
    const std::int64_t p = prefix + t, j = p / page_size;
    return writes && page_ok(j) ? static_cast<std::int32_t>(table[j] * page_size + p % page_size)
                                : -1;
  }
};

// A request's tables from its prefix length and block-table row. faults holds the length's fault
// bit; a page entry's (page_fault) is found by whoever copies the table, entry by entry.
DSATTN_HOST_DEVICE inline DecodeRequestTables decode_request_tables(
    std::int32_t prefix, const std::int32_t* table, std::int64_t tokens, std::int64_t page_size,
    std::int64_t num_pages, std::int64_t max_context) {
  DecodeRequestTables r{table, prefix, tokens, page_size, num_pages, 0, 0, true};
  if (prefix == kDecodeInactive) {
    r.prefix = 0;
    r.writes = false;
    return r;  // pages = 0: inactive
  }
  if (prefix < 0 || prefix > max_context - tokens) {
    r.faults |= kDecodeFaultContext;
    r.writes = false;
    r.prefix = prefix < 0 ? 0 : max_context - tokens;
  }
  r.pages = (r.prefix + tokens + page_size - 1) / page_size;
  return r;
}

}  // namespace dsattn::ops
