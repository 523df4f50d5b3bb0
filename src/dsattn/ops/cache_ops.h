// Reads and writes of the paged caches, addressed by slot (page · page_size + offset).
#pragma once

#include <cstdint>
#include <span>

#include "dsattn/core/tensor.h"

namespace dsattn::ops {

// slots[i] = table[positions[i] / page_size] · page_size + positions[i] % page_size
//   positions, slots: [n] i32. Throws when a position lies past the table.
void positions_to_slots(std::span<const std::int32_t> block_table, std::int64_t page_size,
                        std::span<const std::int32_t> positions, std::span<std::int32_t> slots);

// cache[slots[t], :] = rows[t, :]       rows: [n, w]; cache: [num_slots, w], same dtype
void scatter_rows(const TensorView& rows, const TensorView& slots, const TensorView& cache);
// out[t, :] = cache[slots[t], :]        slots: [n] i32 (each valid); out: [n, w]
void gather_rows(const TensorView& cache, const TensorView& slots, const TensorView& out);

}  // namespace dsattn::ops
