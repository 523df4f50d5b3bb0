// A batch of requests for one forward of the attention layer.
//
// Each request has `prefix_len` tokens already in the cache and `extend_len` new tokens in this
// forward; its new tokens' hidden states are packed one request after another, in the order of
// `requests`. The block table lists the request's cache pages and must cover
// prefix_len + extend_len positions.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "dsattn/cache/paged_kv_cache.h"
#include "dsattn/model/config.h"

namespace dsattn {

// prefill: new prompt tokens (with or without a cached prefix, chunked or not).
// decode: one (decode) or a few (speculative verify) new tokens per request.
enum class ForwardMode { prefill, decode };

struct RequestInput {
  std::int64_t prefix_len = 0;
  std::int64_t extend_len = 0;
  std::span<const std::int32_t> block_table;
  // The engine's id of the request's sequence (>= 0), or -1 for none. With ids, new tokens go
  // only into pages that no forward has written since their allocation or that this same
  // sequence wrote at this place of its table: requests that share a prefix's pages, whose block
  // tables may be equal up to the page written, are told apart (without ids, by the first page
  // of the block table; see PageAllocator::Holder).
  std::int64_t sequence_id = -1;

  std::int64_t context_len() const { return prefix_len + extend_len; }
};

struct Batch {
  ForwardMode mode = ForwardMode::prefill;
  std::vector<RequestInput> requests;

  std::int64_t total_tokens() const;
  // offsets[i] = first packed row of request i; offsets[size] = total_tokens().
  std::vector<std::int64_t> token_offsets() const;
};

// Throws InvalidArgument naming the request and field when the batch cannot run against a cache
// of `cache` (empty batch, non-positive extend, negative prefix, block table too short or naming
// pages outside the cache or twice, positions past max_position_embeddings; with the cache's
// allocator: free pages, and new tokens bound for a page that holds another sequence's tokens,
// PageAllocator::Holder; a sequence id below -1 or given to two requests). Records nothing.
void validate_batch(const Batch& batch, const AttentionConfig& config, const LayerCacheView& cache);

// Records in the cache's allocator (if the view has one) that the requests' new tokens are
// written into their pages: called by a forward once every check has passed.
void record_writes(std::span<const RequestInput> requests, const LayerCacheView& cache);

}  // namespace dsattn
