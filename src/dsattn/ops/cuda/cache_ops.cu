#include "dsattn/ops/cuda/common.cuh"
#include "dsattn/ops/decode_request_tables.h"

namespace dsattn::ops::cuda {

namespace {

// One block per row; gather reads src[index[r]], scatter writes dst[index[r]].
template <typename Word>
__global__ void move_rows_kernel(MoveRowsParams p) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t from = p.gather ? p.index[r] : r, to = p.gather ? r : p.index[r];
  if (to < 0) return;  // a scatter's -1: the row is not written
  const auto* src =
      reinterpret_cast<const Word*>(static_cast<const char*>(p.src) + from * p.src_stride_bytes);
  auto* dst = reinterpret_cast<Word*>(static_cast<char*>(p.dst) + to * p.dst_stride_bytes);
  const std::int64_t words = p.row_bytes / static_cast<std::int64_t>(sizeof(Word));
  for (std::int64_t j = threadIdx.x; j < words; j += blockDim.x) dst[j] = src[j];
}

// A warp per row, a byte per lane and step (a row is 132 bytes; the write is not worth wider
// copies): values to the slot's place among its page's values, scales among the page's scales.
__global__ void index_keys_page_major_kernel(IndexKeysPageMajorParams p) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (i >= p.n || p.slots[i] < 0) return;
  const std::int64_t slot = p.slots[i], bytes = p.d + 4 * (p.d / 128);
  const std::int64_t page = slot / p.page_size, offset = slot % p.page_size;
  std::uint8_t* page_bytes = p.cache + page * p.page_size * bytes;
  const std::uint8_t* src = p.rows + i * p.stride_rows;
  for (std::int64_t j = threadIdx.x % 32; j < bytes; j += 32) {
    const std::int64_t to =
        j < p.d ? offset * p.d + j : p.page_size * p.d + offset * (bytes - p.d) + (j - p.d);
    page_bytes[to] = src[j];
  }
}

__global__ void map_positions_kernel(MapPositionsParams p) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i >= p.rows * p.k) return;
  const std::int64_t r = i / p.k, j = i % p.k;
  std::int32_t* idx = p.indices + r * p.stride_indices + j;
  if (*idx < 0) return;
  const std::int32_t* table = p.block_tables + p.row_request[r] * p.stride_tables;
  *idx = static_cast<std::int32_t>(table[*idx / p.page_size] * p.page_size + *idx % p.page_size);
}

// One block per request: its rows' positions and slots, its context and its block-table row.
__global__ void decode_tables_kernel(DecodeTablesParams p) {
  const std::int64_t b = blockIdx.x;
  const DecodeRequestTables r =
      decode_request_tables(p.prefix_lens[b], p.tables_in + b * p.stride_in, p.tokens, p.page_size,
                            p.num_pages, p.max_context);
  std::int32_t faults = threadIdx.x == 0 ? r.faults : 0;
  for (std::int64_t j = threadIdx.x; j < p.max_pages; j += blockDim.x) {
    if (r.page_fault(j)) faults |= kDecodeFaultPage;
    p.tables[b * p.max_pages + j] = r.page(j);
  }
  for (std::int64_t t = threadIdx.x; t < p.tokens; t += blockDim.x) {
    const std::int64_t row = b * p.tokens + t;
    p.positions[row] = r.position(t);
    p.visible[row] = r.position(t) + 1;
    p.slots[row] = r.slot(t);
    p.row_request[row] = static_cast<std::int32_t>(b);
  }
  if (threadIdx.x == 0) {
    p.context_lens[b] = r.context();
    p.cu_q[b] = static_cast<std::int32_t>(b * p.tokens);
    if (b == p.batch - 1) p.cu_q[p.batch] = static_cast<std::int32_t>(p.batch * p.tokens);
  }
  if (faults) atomicOr(p.faults, faults);
}

// One block per request, as decode_tables_kernel, with each request's own token count.
__global__ void prefill_tables_kernel(PrefillTablesParams p) {
  const std::int64_t b = blockIdx.x;
  const std::int64_t first = p.cu_tokens[b], tokens = p.cu_tokens[b + 1] - first;
  const DecodeRequestTables r =
      decode_request_tables(p.prefix_lens[b], p.tables_in + b * p.stride_in, tokens, p.page_size,
                            p.num_pages, p.max_pages * p.page_size);
  std::int32_t faults = threadIdx.x == 0 ? r.faults : 0;
  for (std::int64_t j = threadIdx.x; j < p.max_pages; j += blockDim.x) {
    if (r.page_fault(j)) faults |= kDecodeFaultPage;
    p.tables[b * p.max_pages + j] = r.page(j);
  }
  // Offsets from a device tensor: a store stays inside `slots` whatever they hold.
  for (std::int64_t t = threadIdx.x; t < tokens; t += blockDim.x) {
    if (first + t >= 0 && first + t < p.n_slots) p.slots[first + t] = r.slot(t);
  }
  if (faults) atomicOr(p.faults, faults);
}

}  // namespace

cudaError_t launch_prefill_tables(const PrefillTablesParams& p, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  prefill_tables_kernel<<<static_cast<unsigned>(p.batch), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_decode_tables(const DecodeTablesParams& p, cudaStream_t stream) {
  if (p.batch == 0) {  // only the first offset to write
    return cudaMemsetAsync(p.cu_q, 0, sizeof(std::int32_t), stream);
  }
  decode_tables_kernel<<<static_cast<unsigned>(p.batch), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_move_rows(const MoveRowsParams& p, cudaStream_t stream) {
  const auto aligned = [](std::uintptr_t v, unsigned a) { return v % a == 0; };
  const std::uintptr_t bits =
      reinterpret_cast<std::uintptr_t>(p.src) | reinterpret_cast<std::uintptr_t>(p.dst) |
      static_cast<std::uintptr_t>(p.row_bytes) | static_cast<std::uintptr_t>(p.src_stride_bytes) |
      static_cast<std::uintptr_t>(p.dst_stride_bytes);
  const unsigned grid = static_cast<unsigned>(p.rows);
  if (aligned(bits, 16)) {
    move_rows_kernel<uint4><<<grid, 128, 0, stream>>>(p);
  } else if (aligned(bits, 4)) {
    move_rows_kernel<std::uint32_t><<<grid, 128, 0, stream>>>(p);
  } else {
    move_rows_kernel<std::uint8_t><<<grid, 128, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

cudaError_t launch_index_keys_page_major(const IndexKeysPageMajorParams& p, cudaStream_t stream) {
  constexpr int kRowsPerBlock = 8;  // a warp each
  index_keys_page_major_kernel<<<blocks_for(p.n, kRowsPerBlock), 32 * kRowsPerBlock, 0, stream>>>(
      p);
  return cudaGetLastError();
}

cudaError_t launch_map_positions(const MapPositionsParams& p, cudaStream_t stream) {
  map_positions_kernel<<<blocks_for(p.rows * p.k, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda
