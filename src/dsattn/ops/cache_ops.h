// Reads and writes of the paged caches, addressed by slot (page · page_size + offset), and the
// row gathers/scatters that pack a path's requests.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "dsattn/cache/cache_format.h"
#include "dsattn/core/tensor.h"
#include "dsattn/ops/decode_request_tables.h"

namespace dsattn::ops {

// Host-side addressing: slots[i] = table[positions[i] / page_size] · page_size + positions[i] %
// page_size. Every position is checked before anything is written; throws when a position lies
// outside the table.
void positions_to_slots(std::span<const std::int32_t> block_table, std::int64_t page_size,
                        std::span<const std::int32_t> positions, std::span<std::int32_t> slots);

// Device-side addressing of selected positions, in place: for row r of request
// row_request[r], indices[r, j] <- block_tables[row_request[r], p / page_size] · page_size +
// p % page_size for p = indices[r, j] >= 0; -1 stays -1.
//   indices: [rows, k] i32; row_request: [rows] i32; block_tables: [requests, max_pages] i32
void map_positions_to_slots(const TensorView& indices, const TensorView& row_request,
                            const TensorView& block_tables, std::int64_t page_size);

// The tables a decode or verify step reads (layer/decode_step.h), built on the device from the
// caller's per-request cached lengths and block tables: request b has `tokens` new rows after
// prefix_lens[b] cached tokens, at positions prefix_lens[b] + t. No host work, so that the step
// can be captured in a CUDA graph and replayed with new lengths and tables.
struct DecodeTables {
  TensorView positions;     // [batch * tokens] i32
  TensorView visible;       // [batch * tokens] i32, position + 1
  TensorView slots;         // [batch * tokens] i32 cache slots of the new tokens; -1: not written
  TensorView row_request;   // [batch * tokens] i32
  TensorView cu_q;          // [batch + 1] i32
  TensorView context_lens;  // [batch] i32, prefix + tokens
  TensorView block_tables;  // [batch, max_pages] i32, the pages a request sees; 0 past them
  TensorView faults;        // [1] i32: fault bits of every build since it was last cleared
};
// Fault bits: kDecodeFault* (ops/decode_request_tables.h).
//   prefix_lens: [batch] i32; block_tables: [batch, >= max_pages] i32, rows inner-contiguous;
//   out's tables as above, with max_pages = out.block_tables.size(1) covering max_context
void build_decode_tables(const TensorView& prefix_lens, const TensorView& block_tables,
                         std::int64_t tokens, std::int64_t page_size, std::int64_t num_pages,
                         std::int64_t max_context, const DecodeTables& out);

// The tables a prefill plan over the caller's device block tables reads (AttentionLayer::plan
// with device tables), built on the device: request b has the tokens cu_tokens[b] ..
// cu_tokens[b + 1] at positions prefix_lens[b] + t. Its row of `tables` holds the first
// pages_for(context) entries of its block-table row, an entry outside [0, num_pages) read as page 0
// (and kDecodeFaultPage or-ed into faults), 0 past them; `slots` holds each new token's cache slot,
// -1 (not written) where its page entry is outside the cache. No access leaves the cache whatever
// the block tables hold. The lengths are the plan's, checked on the host.
//   prefix_lens: [batch] i32; cu_tokens: [batch + 1] i32; block_tables: [batch, >= max_pages] i32,
//   rows inner-contiguous; tables: [batch, max_pages] i32 with max_pages x page_size covering every
//   context; slots: [tokens] i32; faults: [1] i32
void build_prefill_tables(const TensorView& prefix_lens, const TensorView& cu_tokens,
                          const TensorView& block_tables, std::int64_t page_size,
                          std::int64_t num_pages, const TensorView& tables, const TensorView& slots,
                          const TensorView& faults);

// What kDecodeFaultPage means for the caller, as DecodeStep and ForwardPlan report it.
std::string page_fault_sentence(std::int64_t num_pages);

// dst[index[t], :] = rows[t, :] for index[t] >= 0 (-1: row t is not written)
//   rows: [n, w]; index: [n] i32; dst: [num_rows, w], same dtype
void scatter_rows(const TensorView& rows, const TensorView& index, const TensorView& dst);
// Refuses (naming the cache `name`) an index-key cache that `layout` cannot be read from:
// page_major needs contiguous rows holding whole pages of page_size slots.
void check_index_key_cache(const TensorView& cache, const char* name, std::int64_t page_size,
                           IndexKeyLayout layout);

// Writes quantised indexer-key rows (quantize_index_key_rows' output: d_I e4m3 values, then
// their d_I / 128 f32 scales) into the index-key cache at their slots, in the cache's layout
// (cache/cache_format.h); -1: row t is not written. With IndexKeyLayout::rows this is
// scatter_rows.
//   rows: [n, index_key_bytes(d_I)] u8; slots: [n] i32; cache: [num_slots, same] u8 (contiguous
//   whole pages of page_size slots for page_major)
void write_index_keys(const TensorView& rows, const TensorView& slots, const TensorView& cache,
                      std::int64_t page_size, IndexKeyLayout layout);

// out[t, :] = src[index[t], :]       src: [num_rows, w]; index: [n] i32 (each valid); out: [n, w]
void gather_rows(const TensorView& src, const TensorView& index, const TensorView& out);

}  // namespace dsattn::ops
