// What every op dispatcher shares: the device check across arguments and the routing of a call
// to the CPU backend or the CUDA kernels.
#pragma once

#include <initializer_list>
#include <span>
#include <utility>

#include "dsattn/core/checks.h"
#include "dsattn/ops/cpu/cpu_ops.h"
#ifdef DSATTN_WITH_CUDA
#include "dsattn/ops/cuda/cuda_ops.h"
#endif

namespace dsattn::ops {

// All tensors of one call live on one device; returns it.
Device common_device(std::span<const std::pair<const char*, const TensorView*>> args);
inline Device common_device(std::initializer_list<std::pair<const char*, const TensorView*>> args) {
  return common_device(std::span(args.begin(), args.size()));
}

[[noreturn]] void no_cuda_kernel(const char* op);

// bf16, [*, n], unit inner stride.
void check_rows_bf16(const TensorView& t, const char* name, std::int64_t n);

// An index tensor: i32, [n], contiguous; on the CPU its entries are checked against
// [0, limit), or -1 too with allow_skip (CUDA indices are built by the layer and trusted by the
// kernels).
void check_index(const TensorView& index, const char* name, std::int64_t n, std::int64_t limit,
                 bool allow_skip = false);

// cu: [batch + 1] i32 with cu[0] = 0, non-decreasing, cu[batch] = total. Entries are read only
// on the CPU; CUDA offsets are built by the layer (and the kernels stay inside `total`).
void check_offsets(const TensorView& cu, const char* name, std::int64_t batch, std::int64_t total);

// Packed variable-length offsets: cu_q, cu_k [batch + 1] i32 starting at 0, non-decreasing,
// ending at total_q / total_k, each request with at least as many keys as queries and (when
// max_k >= 0) at most max_k keys. Entries are read only on the CPU.
void check_varlen_offsets(const TensorView& cu_q, const TensorView& cu_k, std::int64_t total_q,
                          std::int64_t total_k, std::int64_t max_k);

// Paged contexts: cu_q [batch + 1] offsets of total_q query rows; context_lens [batch] with
// n_q <= n_k <= max_k; block_tables [batch, max_pages] covering each context with pages whose
// slots lie below num_slots. Entries are read only on the CPU.
void check_paged_context(const TensorView& cu_q, const TensorView& context_lens,
                         const TensorView& block_tables, std::int64_t page_size,
                         std::int64_t total_q, std::int64_t max_k, std::int64_t num_slots);

}  // namespace dsattn::ops

// Runs `op` on the backend of `device` with the remaining arguments.
#ifdef DSATTN_WITH_CUDA
#define DSATTN_DISPATCH(device, op, ...)    \
  do {                                      \
    if ((device).is_cuda()) {               \
      ::dsattn::ops::cuda::op(__VA_ARGS__); \
    } else {                                \
      ::dsattn::ops::cpu::op(__VA_ARGS__);  \
    }                                       \
  } while (0)
#else
#define DSATTN_DISPATCH(device, op, ...)                        \
  do {                                                          \
    if ((device).is_cuda()) ::dsattn::ops::no_cuda_kernel(#op); \
    ::dsattn::ops::cpu::op(__VA_ARGS__);                        \
  } while (0)
#endif
