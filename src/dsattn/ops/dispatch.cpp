// Argument validation and backend dispatch for every op: one place decides whether a call is
// valid, and which backend runs it. Nothing is written before validation passes.
#include <algorithm>

#include "dsattn/core/checks.h"
#include "dsattn/ops/cpu/cpu_ops.h"

namespace dsattn::ops {

namespace {

// All tensors of one call live on one device; returns it.
Device common_device(std::initializer_list<std::pair<const char*, const TensorView*>> args) {
  const auto& [first_name, first] = *args.begin();
  for (const auto& [name, t] : args) {
    if (!(t->device() == first->device())) {
      fail("{} is on {} but {} is on {}: all tensors of one call must share a device", name,
           to_string(t->device()), first_name, to_string(first->device()));
    }
  }
  return first->device();
}

[[noreturn]] void no_cuda_kernel(const char* op) {
  fail<Unsupported>("{} has no CUDA kernel in this build; run it on the CPU backend", op);
}

void check_rows_bf16(const TensorView& t, const char* name, std::int64_t n) {
  check_dtype(t, name, DType::bf16);
  check_shape(t, name, {kAny, n});
  check_inner_contiguous(t, name);
}

}  // namespace

void add(const TensorView& a, const TensorView& b, const TensorView& out) {
  check_dtype(a, "a", DType::bf16);
  check_shape(a, "a", {kAny, kAny});
  check_inner_contiguous(a, "a");
  check_rows_bf16(b, "b", a.size(1));
  check_shape(b, "b", {a.size(0), a.size(1)});
  check_rows_bf16(out, "out", a.size(1));
  check_shape(out, "out", {a.size(0), a.size(1)});
  const Device d = common_device({{"a", &a}, {"b", &b}, {"out", &out}});
  if (!d.is_cpu()) no_cuda_kernel("add");
  cpu::add(a, b, out);
}

void rms_norm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out) {
  check_dtype(x, "x", DType::bf16);
  check_shape(x, "x", {kAny, kAny});
  check_inner_contiguous(x, "x");
  check_rows_bf16(out, "out", x.size(1));
  check_shape(out, "out", {x.size(0), x.size(1)});
  check_dtype(weight, "weight", DType::bf16);
  check_shape(weight, "weight", {x.size(1)});
  check_contiguous(weight, "weight");
  DSATTN_CHECK(eps > 0.0f, "eps must be positive, got {}", eps);
  const Device d = common_device({{"x", &x}, {"weight", &weight}, {"out", &out}});
  if (!d.is_cpu()) no_cuda_kernel("rms_norm");
  cpu::rms_norm(x, weight, eps, out);
}

void layer_norm(const TensorView& x, const TensorView& weight, const TensorView& bias, float eps,
                const TensorView& out) {
  check_dtype(x, "x", DType::bf16);
  check_shape(x, "x", {kAny, kAny});
  check_inner_contiguous(x, "x");
  check_rows_bf16(out, "out", x.size(1));
  check_shape(out, "out", {x.size(0), x.size(1)});
  for (auto [name, t] : {std::pair{"weight", &weight}, std::pair{"bias", &bias}}) {
    check_dtype(*t, name, DType::bf16);
    check_shape(*t, name, {x.size(1)});
    check_contiguous(*t, name);
  }
  DSATTN_CHECK(eps > 0.0f, "eps must be positive, got {}", eps);
  const Device d = common_device({{"x", &x}, {"weight", &weight}, {"bias", &bias}, {"out", &out}});
  if (!d.is_cpu()) no_cuda_kernel("layer_norm");
  cpu::layer_norm(x, weight, bias, eps, out);
}

void apply_rope(const TensorView& x, const TensorView& positions, const RopeTable& table,
                RopeLayout layout) {
  check_dtype(x, "x", DType::bf16);
  check_shape(x, "x", {kAny, kAny, table.rotary_dim()});
  check_inner_contiguous(x, "x");
  check_dtype(positions, "positions", DType::i32);
  check_shape(positions, "positions", {x.size(0)});
  check_contiguous(positions, "positions");
  const Device d = common_device({{"x", &x}, {"positions", &positions}});
  if (!d.is_cpu()) no_cuda_kernel("apply_rope");
  const std::int32_t* p = positions.ptr<std::int32_t>();
  for (std::int64_t i = 0; i < positions.size(0); ++i) {
    DSATTN_CHECK(p[i] >= 0, "positions[{}] must be non-negative, got {}", i, p[i]);
  }
  cpu::apply_rope(x, positions, table, layout);
}

void gemm(const TensorView& a, const TensorView& b, const TensorView& c, BLayout layout,
          float alpha) {
  check_dtype(a, "a", DType::bf16);
  check_shape(a, "a", {kAny, kAny});
  check_inner_contiguous(a, "a");
  if (b.dtype() != DType::bf16 && b.dtype() != DType::f32) {
    fail("b must have dtype bf16 or f32, got {}", dtype_name(b.dtype()));
  }
  const std::int64_t k = a.size(1);
  if (layout == BLayout::nt) {
    check_shape(b, "b", {kAny, k});
  } else {
    check_shape(b, "b", {k, kAny});
  }
  check_inner_contiguous(b, "b");
  const std::int64_t n = layout == BLayout::nt ? b.size(0) : b.size(1);
  if (c.dtype() != DType::bf16 && c.dtype() != DType::f32) {
    fail("c must have dtype bf16 or f32, got {}", dtype_name(c.dtype()));
  }
  check_shape(c, "c", {a.size(0), n});
  check_inner_contiguous(c, "c");
  const Device d = common_device({{"a", &a}, {"b", &b}, {"c", &c}});
  if (!d.is_cpu()) no_cuda_kernel("gemm");
  cpu::gemm(a, b, c, layout, alpha);
}

void hadamard_rotate(const TensorView& x) {
  check_dtype(x, "x", DType::bf16);
  check_shape(x, "x", {kAny, kAny});
  check_inner_contiguous(x, "x");
  const std::int64_t n = x.size(1);
  DSATTN_CHECK(n > 0 && (n & (n - 1)) == 0, "x must have a power-of-two row length, got {}", n);
  if (!x.device().is_cpu()) no_cuda_kernel("hadamard_rotate");
  cpu::hadamard_rotate(x);
}

void quantize_fp8_block128(const TensorView& x, const TensorView& q, const TensorView& scale) {
  check_dtype(x, "x", DType::bf16);
  check_shape(x, "x", {kAny, kAny});
  check_inner_contiguous(x, "x");
  const std::int64_t rows = x.size(0), n = x.size(1);
  DSATTN_CHECK(n % kQuantBlock == 0, "x must have a row length that is a multiple of {}, got {}",
               kQuantBlock, n);
  if (q.dtype() != DType::fp8_e4m3 && q.dtype() != DType::u8) {
    fail("q must have dtype fp8_e4m3 or u8, got {}", dtype_name(q.dtype()));
  }
  check_shape(q, "q", {rows, n});
  check_inner_contiguous(q, "q");
  check_dtype(scale, "scale", DType::f32);
  check_shape(scale, "scale", {rows, n / kQuantBlock});
  check_inner_contiguous(scale, "scale");
  const Device d = common_device({{"x", &x}, {"q", &q}, {"scale", &scale}});
  if (!d.is_cpu()) no_cuda_kernel("quantize_fp8_block128");
  cpu::quantize_fp8_block128(x, q, scale);
}

void positions_to_slots(std::span<const std::int32_t> block_table, std::int64_t page_size,
                        std::span<const std::int32_t> positions, std::span<std::int32_t> slots) {
  DSATTN_CHECK(page_size > 0, "page_size must be positive, got {}", page_size);
  DSATTN_CHECK(slots.size() == positions.size(), "slots must have {} entries, got {}",
               positions.size(), slots.size());
  const std::int64_t capacity = static_cast<std::int64_t>(block_table.size()) * page_size;
  // Every position is checked before any slot is written, so a failed call writes nothing.
  for (std::size_t i = 0; i < positions.size(); ++i) {
    const std::int64_t p = positions[i];
    if (p < 0 || p >= capacity) {
      fail("positions[{}]: position {} lies outside the block table, which covers [0, {})", i, p,
           capacity);
    }
  }
  for (std::size_t i = 0; i < positions.size(); ++i) {
    const std::int64_t p = positions[i];
    slots[i] = static_cast<std::int32_t>(block_table[p / page_size] * page_size + p % page_size);
  }
}

namespace {

void check_slots(const TensorView& slots, const char* name, std::int64_t n,
                 std::int64_t num_slots) {
  check_dtype(slots, name, DType::i32);
  check_shape(slots, name, {n});
  check_contiguous(slots, name);
  if (!slots.device().is_cpu()) return;  // device-side indices are checked by the kernels
  const std::int32_t* s = slots.ptr<std::int32_t>();
  for (std::int64_t i = 0; i < n; ++i) {
    if (s[i] < 0 || s[i] >= num_slots) {
      fail("{}[{}] = {} is outside the cache's [0, {}) slots", name, i, s[i], num_slots);
    }
  }
}

void check_row_copy(const TensorView& rows, const char* rows_name, const TensorView& cache) {
  check_shape(cache, "cache", {kAny, kAny});
  check_inner_contiguous(cache, "cache");
  check_shape(rows, rows_name, {kAny, cache.size(1)});
  check_inner_contiguous(rows, rows_name);
  if (rows.dtype() != cache.dtype()) {
    fail("{} must have the cache's dtype {}, got {}", rows_name, dtype_name(cache.dtype()),
         dtype_name(rows.dtype()));
  }
}

}  // namespace

void scatter_rows(const TensorView& rows, const TensorView& slots, const TensorView& cache) {
  check_row_copy(rows, "rows", cache);
  check_slots(slots, "slots", rows.size(0), cache.size(0));
  const Device d = common_device({{"rows", &rows}, {"slots", &slots}, {"cache", &cache}});
  if (!d.is_cpu()) no_cuda_kernel("scatter_rows");
  cpu::scatter_rows(rows, slots, cache);
}

void gather_rows(const TensorView& cache, const TensorView& slots, const TensorView& out) {
  check_row_copy(out, "out", cache);
  check_slots(slots, "slots", out.size(0), cache.size(0));
  const Device d = common_device({{"cache", &cache}, {"slots", &slots}, {"out", &out}});
  if (!d.is_cpu()) no_cuda_kernel("gather_rows");
  cpu::gather_rows(cache, slots, out);
}

void indexer_scores(const TensorView& q, const TensorView& q_scale, const TensorView& weights,
                    const TensorView& key_cache, const TensorView& key_slots,
                    const TensorView& scores) {
  if (q.dtype() != DType::fp8_e4m3 && q.dtype() != DType::u8) {
    fail("q must have dtype fp8_e4m3 or u8, got {}", dtype_name(q.dtype()));
  }
  check_shape(q, "q", {kAny, kAny, kAny});
  check_inner_contiguous(q, "q");
  const std::int64_t n_q = q.size(0), heads = q.size(1), d = q.size(2);
  DSATTN_CHECK(d % kQuantBlock == 0, "q must have a head dim that is a multiple of {}, got {}",
               kQuantBlock, d);
  check_dtype(q_scale, "q_scale", DType::f32);
  check_shape(q_scale, "q_scale", {n_q, heads, d / kQuantBlock});
  check_inner_contiguous(q_scale, "q_scale");
  check_dtype(weights, "weights", DType::f32);
  check_shape(weights, "weights", {n_q, heads});
  check_dtype(key_cache, "key_cache", DType::u8);
  check_shape(key_cache, "key_cache", {kAny, index_key_bytes(d)});
  check_inner_contiguous(key_cache, "key_cache");
  const std::int64_t n_k = key_slots.ndim() == 1 ? key_slots.size(0) : -1;
  check_slots(key_slots, "key_slots", n_k, key_cache.size(0));
  DSATTN_CHECK(n_k >= n_q, "key_slots must cover at least the {} query rows, got {}", n_q, n_k);
  check_dtype(scores, "scores", DType::f32);
  check_shape(scores, "scores", {n_q, n_k});
  check_inner_contiguous(scores, "scores");
  const Device dev = common_device({{"q", &q},
                                    {"q_scale", &q_scale},
                                    {"weights", &weights},
                                    {"key_cache", &key_cache},
                                    {"key_slots", &key_slots},
                                    {"scores", &scores}});
  if (!dev.is_cpu()) no_cuda_kernel("indexer_scores");
  cpu::indexer_scores(q, q_scale, weights, key_cache, key_slots, scores);
}

void topk(const TensorView& scores, const TensorView& lengths, const TensorView& out) {
  check_dtype(scores, "scores", DType::f32);
  check_shape(scores, "scores", {kAny, kAny});
  check_inner_contiguous(scores, "scores");
  const std::int64_t rows = scores.size(0), n = scores.size(1);
  check_dtype(lengths, "lengths", DType::i32);
  check_shape(lengths, "lengths", {rows});
  check_contiguous(lengths, "lengths");
  check_dtype(out, "out", DType::i32);
  check_shape(out, "out", {rows, kAny});
  check_inner_contiguous(out, "out");
  DSATTN_CHECK(out.size(1) > 0, "out must select at least one position (k > 0), got k = {}",
               out.size(1));
  const Device d = common_device({{"scores", &scores}, {"lengths", &lengths}, {"out", &out}});
  if (!d.is_cpu()) no_cuda_kernel("topk");
  const std::int32_t* len = lengths.ptr<std::int32_t>();
  for (std::int64_t r = 0; r < rows; ++r) {
    DSATTN_CHECK(len[r] >= 0 && len[r] <= n, "lengths[{}] must be in [0, {}], got {}", r, n,
                 len[r]);
  }
  cpu::topk(scores, lengths, out);
}

namespace {

void check_cu_seqlens(const TensorView& cu, const char* name, std::int64_t batch,
                      std::int64_t total) {
  check_dtype(cu, name, DType::i32);
  check_shape(cu, name, {batch + 1});
  check_device(cu, name, Device::cpu());
  const std::int32_t* c = cu.ptr<std::int32_t>();
  DSATTN_CHECK(c[0] == 0, "{}[0] must be 0, got {}", name, c[0]);
  for (std::int64_t b = 0; b < batch; ++b) {
    DSATTN_CHECK(c[b + 1] >= c[b], "{} must be non-decreasing, got {} after {} at entry {}", name,
                 c[b + 1], c[b], b + 1);
  }
  DSATTN_CHECK(c[batch] == total, "{}[{}] must equal the {} packed rows, got {}", name, batch,
               total, c[batch]);
}

}  // namespace

void mha_varlen_causal(const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& cu_q, const TensorView& cu_k, float scale,
                       const TensorView& out) {
  for (auto [name, t] :
       {std::pair{"q", &q}, std::pair{"k", &k}, std::pair{"v", &v}, std::pair{"out", &out}}) {
    check_dtype(*t, name, DType::bf16);
    check_shape(*t, name, {kAny, kAny, kAny});
    check_inner_contiguous(*t, name);
  }
  const std::int64_t heads = q.size(1), d_qk = q.size(2), d_v = v.size(2);
  check_shape(k, "k", {kAny, heads, d_qk});
  check_shape(v, "v", {k.size(0), heads, kAny});
  check_shape(out, "out", {q.size(0), heads, d_v});
  DSATTN_CHECK(cu_q.ndim() == 1 && cu_q.size(0) >= 1, "cu_q must have shape [batch + 1], got {}",
               shape_string(cu_q.shape()));
  const std::int64_t batch = cu_q.size(0) - 1;
  check_cu_seqlens(cu_q, "cu_q", batch, q.size(0));
  check_cu_seqlens(cu_k, "cu_k", batch, k.size(0));
  const std::int32_t* cq = cu_q.ptr<std::int32_t>();
  const std::int32_t* ck = cu_k.ptr<std::int32_t>();
  for (std::int64_t b = 0; b < batch; ++b) {
    DSATTN_CHECK(ck[b + 1] - ck[b] >= cq[b + 1] - cq[b],
                 "request {} has {} queries but only {} keys: keys must include the queries", b,
                 cq[b + 1] - cq[b], ck[b + 1] - ck[b]);
  }
  const Device d = common_device({{"q", &q}, {"k", &k}, {"v", &v}, {"out", &out}});
  if (!d.is_cpu()) no_cuda_kernel("mha_varlen_causal");
  cpu::mha_varlen_causal(q, k, v, cu_q, cu_k, scale, out);
}

void sparse_mla(const TensorView& q, const TensorView& kv_cache, const TensorView& indices,
                float scale, const TensorView& out) {
  check_dtype(q, "q", DType::bf16);
  check_shape(q, "q", {kAny, kAny, kAny});
  check_inner_contiguous(q, "q");
  const std::int64_t n = q.size(0), heads = q.size(1), d_qk = q.size(2);
  check_dtype(kv_cache, "kv_cache", DType::bf16);
  check_shape(kv_cache, "kv_cache", {kAny, d_qk});
  check_inner_contiguous(kv_cache, "kv_cache");
  check_dtype(indices, "indices", DType::i32);
  check_shape(indices, "indices", {n, kAny});
  check_inner_contiguous(indices, "indices");
  check_dtype(out, "out", DType::bf16);
  check_shape(out, "out", {n, heads, kAny});
  check_inner_contiguous(out, "out");
  DSATTN_CHECK(out.size(2) <= d_qk, "out must have a value dim of at most {}, got {}", d_qk,
               out.size(2));
  const Device d =
      common_device({{"q", &q}, {"kv_cache", &kv_cache}, {"indices", &indices}, {"out", &out}});
  if (!d.is_cpu()) no_cuda_kernel("sparse_mla");
  const std::int64_t slots = kv_cache.size(0);
  for (std::int64_t t = 0; t < n; ++t) {
    const std::int32_t* idx = indices.row<std::int32_t>(t);
    for (std::int64_t i = 0; i < indices.size(1); ++i) {
      DSATTN_CHECK(idx[i] >= -1 && idx[i] < slots,
                   "indices[{}, {}] = {} is outside the cache's [0, {}) slots (or -1 for unused)",
                   t, i, idx[i], slots);
    }
  }
  cpu::sparse_mla(q, kv_cache, indices, scale, out);
}

}  // namespace dsattn::ops
