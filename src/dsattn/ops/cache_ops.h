// Reads and writes of the paged caches, addressed by slot (page · page_size + offset), and the
// row gathers/scatters that pack a path's requests.
#pragma once

#include <cstdint>
#include <span>

#include "dsattn/core/tensor.h"

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

// dst[index[t], :] = rows[t, :]      rows: [n, w]; index: [n] i32; dst: [num_rows, w], same dtype
void scatter_rows(const TensorView& rows, const TensorView& index, const TensorView& dst);
// out[t, :] = src[index[t], :]       src: [num_rows, w]; index: [n] i32 (each valid); out: [n, w]
void gather_rows(const TensorView& src, const TensorView& index, const TensorView& out);

}  // namespace dsattn::ops
