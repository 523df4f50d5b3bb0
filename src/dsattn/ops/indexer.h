// The lightning indexer's scores.
#pragma once

#include "dsattn/cache/cache_format.h"
#include "dsattn/core/tensor.h"

namespace dsattn::ops {

// Scores of packed variable-length requests against their paged keys. Request b owns query rows
// [cu_q[b], cu_q[b+1]) and context_lens[b] cached keys, position s living at slot
// block_tables[b, s / page_size] · page_size + s % page_size. Its queries are its newest
// positions, so query row i of the request sees keys s <= n_k - n_q + i (bottom-right causal).
// For each visible key:
//   scores[row, s] = Σ_h weights[row, h] · ReLU(dequant(q[row, h]) · dequant(key[s]))
// and -inf for the columns s in [visible, n_k) of the row; columns past n_k are not written.
// Rows that see at most `skip_rows_up_to` keys are not written at all (top-k selects all their
// keys without reading scores); 0 computes every row. All metadata lives on the op's device, so
// a decode step can be captured in a CUDA graph.
//   q: [total_q, H_I, d_I] fp8_e4m3; q_scale: [total_q, H_I, d_I / 128] f32;
//   weights: [total_q, H_I] f32; key_cache: [num_slots, index_key_bytes(d_I)] u8, its bytes in
//   `key_layout` (cache/cache_format.h; page_major needs it contiguous and whole pages);
//   block_tables: [batch, max_pages] i32; cu_q: [batch + 1] i32; context_lens: [batch] i32;
//   scores: [total_q, max_k] f32 with max_k >= every context_lens[b] (rows may be strided)
void indexer_scores(const TensorView& q, const TensorView& q_scale, const TensorView& weights,
                    const TensorView& key_cache, const TensorView& block_tables,
                    std::int64_t page_size, const TensorView& cu_q, const TensorView& context_lens,
                    std::int64_t skip_rows_up_to, const TensorView& scores,
                    IndexKeyLayout key_layout = IndexKeyLayout::rows);

}  // namespace dsattn::ops
