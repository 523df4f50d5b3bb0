#include "dsattn/ops/op_checks.h"

namespace dsattn::ops {

Device common_device(std::span<const std::pair<const char*, const TensorView*>> args) {
  const auto& [first_name, first] = *args.begin();
  for (const auto& [name, t] : args) {
    if (!(t->device() == first->device())) {
      fail("{} is on {} but {} is on {}: all tensors of one call must share a device", name,
           to_string(t->device()), first_name, to_string(first->device()));
    }
  }
  return first->device();
}

void no_cuda_kernel(const char* op) {
  fail<Unsupported>("{} has no CUDA kernel in this build; run it on the CPU backend", op);
}

void check_rows_bf16(const TensorView& t, const char* name, std::int64_t n) {
  check_dtype(t, name, DType::bf16);
  check_shape(t, name, {kAny, n});
  check_inner_contiguous(t, name);
}

void check_index(const TensorView& index, const char* name, std::int64_t n, std::int64_t limit,
                 bool allow_skip) {
  check_dtype(index, name, DType::i32);
  check_shape(index, name, {n});
  check_contiguous(index, name);
  if (!index.device().is_cpu()) return;
  const std::int32_t* s = index.ptr<std::int32_t>();
  for (std::int64_t i = 0; i < n; ++i) {
    if ((s[i] < 0 || s[i] >= limit) && !(allow_skip && s[i] == -1)) {
      fail("{}[{}] = {} is outside [0, {}){}", name, i, s[i], limit, allow_skip ? " (or -1)" : "");
    }
  }
}

void check_offsets(const TensorView& cu, const char* name, std::int64_t batch, std::int64_t total) {
  check_dtype(cu, name, DType::i32);
  check_shape(cu, name, {batch + 1});
  check_contiguous(cu, name);
  if (!cu.device().is_cpu()) return;
  const std::int32_t* c = cu.ptr<std::int32_t>();
  DSATTN_CHECK(c[0] == 0, "{}[0] must be 0, got {}", name, c[0]);
  for (std::int64_t b = 0; b < batch; ++b) {
    DSATTN_CHECK(c[b + 1] >= c[b], "{} must be non-decreasing, got {} after {} at entry {}", name,
                 c[b + 1], c[b], b + 1);
  }
  DSATTN_CHECK(c[batch] == total, "{}[{}] must equal the {} packed rows, got {}", name, batch,
               total, c[batch]);
}

void check_varlen_offsets(const TensorView& cu_q, const TensorView& cu_k, std::int64_t total_q,
                          std::int64_t total_k, std::int64_t max_k) {
  DSATTN_CHECK(cu_q.ndim() == 1 && cu_q.size(0) >= 1, "cu_q must have shape [batch + 1], got {}",
               shape_string(cu_q.shape()));
  const std::int64_t batch = cu_q.size(0) - 1;
  check_offsets(cu_q, "cu_q", batch, total_q);
  check_offsets(cu_k, "cu_k", batch, total_k);
  // Both must live on the host to be read here; a mixed pair is refused by the device check.
  if (!cu_q.device().is_cpu() || !cu_k.device().is_cpu()) return;
  const std::int32_t* cq = cu_q.ptr<std::int32_t>();
  const std::int32_t* ck = cu_k.ptr<std::int32_t>();
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t n_q = cq[b + 1] - cq[b], n_k = ck[b + 1] - ck[b];
    DSATTN_CHECK(n_k >= n_q,
                 "request {} has {} query rows (cu_q) but {} keys (cu_k): keys must include the "
                 "queries",
                 b, n_q, n_k);
    DSATTN_CHECK(max_k < 0 || n_k <= max_k, "request {} has {} keys, more than the {} columns", b,
                 n_k, max_k);
  }
}

void check_paged_context(const TensorView& cu_q, const TensorView& context_lens,
                         const TensorView& block_tables, std::int64_t page_size,
                         std::int64_t total_q, std::int64_t max_k, std::int64_t num_slots) {
  const std::int64_t batch = cu_q.size(0) - 1;
  check_offsets(cu_q, "cu_q", batch, total_q);
  check_dtype(context_lens, "context_lens", DType::i32);
  check_shape(context_lens, "context_lens", {batch});
  check_contiguous(context_lens, "context_lens");
  check_dtype(block_tables, "block_tables", DType::i32);
  check_shape(block_tables, "block_tables", {batch, kAny});
  check_inner_contiguous(block_tables, "block_tables");
  // All three must live on the host to be read here; a mixed call is refused by the device check.
  if (!cu_q.device().is_cpu() || !context_lens.device().is_cpu() ||
      !block_tables.device().is_cpu()) {
    return;
  }
  const std::int32_t* cq = cu_q.ptr<std::int32_t>();
  const std::int32_t* len = context_lens.ptr<std::int32_t>();
  const std::int64_t capacity = block_tables.size(1) * page_size;
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t n_q = cq[b + 1] - cq[b], n_k = len[b];
    DSATTN_CHECK(n_k >= n_q,
                 "request {} has {} query rows (cu_q) but a context of {} (context_lens): the "
                 "context must include the queries",
                 b, n_q, n_k);
    DSATTN_CHECK(n_k <= max_k, "request {} has a context of {}, more than the {} score columns", b,
                 n_k, max_k);
    DSATTN_CHECK(n_k <= capacity,
                 "request {} has a context of {} but block_tables covers {} positions", b, n_k,
                 capacity);
    const std::int32_t* table = block_tables.row<std::int32_t>(b);
    for (std::int64_t p = 0; p < (n_k + page_size - 1) / page_size; ++p) {
      DSATTN_CHECK(table[p] >= 0 && (table[p] + 1) * page_size <= num_slots,
                   "block_tables[{}, {}] = {} is outside the cache's {} pages", b, p, table[p],
                   num_slots / page_size);
    }
  }
}

}  // namespace dsattn::ops
