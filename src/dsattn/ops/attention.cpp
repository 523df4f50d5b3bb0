#include "dsattn/ops/attention.h"

#include "dsattn/ops/latent_fp8.h"
#include "dsattn/ops/op_checks.h"

namespace dsattn::ops {

void mha_varlen_causal(const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& cu_q, const TensorView& cu_k, std::int64_t max_q,
                       float scale, const TensorView& out, const TensorView& lse,
                       const TensorView& key_mask) {
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
  if (!lse.empty()) {
    check_dtype(lse, "lse", DType::f32);
    check_shape(lse, "lse", {q.size(0), heads});
    check_inner_contiguous(lse, "lse");
  }
  if (!key_mask.empty()) {
    check_dtype(key_mask, "key_mask", DType::i32);
    check_shape(key_mask, "key_mask", {q.size(0), kAny});
    check_inner_contiguous(key_mask, "key_mask");
  }
  check_varlen_offsets(cu_q, cu_k, q.size(0), k.size(0), -1);
  DSATTN_CHECK(max_q >= 0, "max_q must be >= 0, got {}", max_q);
  if (cu_q.device().is_cpu()) {
    const std::int32_t* cq = cu_q.ptr<std::int32_t>();
    for (std::int64_t b = 0; b + 1 < cu_q.size(0); ++b) {
      DSATTN_CHECK(cq[b + 1] - cq[b] <= max_q, "max_q is {} but request {} has {} query rows",
                   max_q, b, cq[b + 1] - cq[b]);
    }
  }
  std::vector<std::pair<const char*, const TensorView*>> tensors{
      {"q", &q}, {"k", &k}, {"v", &v}, {"cu_q", &cu_q}, {"cu_k", &cu_k}, {"out", &out}};
  if (!lse.empty()) tensors.emplace_back("lse", &lse);
  if (!key_mask.empty()) tensors.emplace_back("key_mask", &key_mask);
  const Device d = common_device(tensors);
  if (q.size(0) == 0) return;
  DSATTN_DISPATCH(d, mha_varlen_causal, q, k, v, cu_q, cu_k, max_q, scale, out, lse, key_mask);
}

void selection_mask(const TensorView& selected, const TensorView& mask) {
  check_dtype(selected, "selected", DType::i32);
  check_shape(selected, "selected", {kAny, kAny});
  check_inner_contiguous(selected, "selected");
  check_dtype(mask, "mask", DType::i32);
  check_shape(mask, "mask", {selected.size(0), kAny});
  check_inner_contiguous(mask, "mask");
  const Device d = common_device({{"selected", &selected}, {"mask", &mask}});
  if (mask.numel() == 0) return;
  DSATTN_DISPATCH(d, selection_mask, selected, mask);
}

void sparse_mla(const TensorView& q, const TensorView& kv_cache, const TensorView& indices,
                float scale, const TensorView& out, const TensorView& lse,
                const TensorView& topk_length) {
  check_dtype(q, "q", DType::bf16);
  check_shape(q, "q", {kAny, kAny, kAny});
  check_inner_contiguous(q, "q");
  const std::int64_t n = q.size(0), heads = q.size(1), d_qk = q.size(2);
  check_dtype(out, "out", DType::bf16);
  check_shape(out, "out", {n, heads, kAny});
  check_inner_contiguous(out, "out");
  const std::int64_t d_v = out.size(2);
  DSATTN_CHECK(d_v <= d_qk, "out must have a value dim of at most {}, got {}", d_qk, d_v);
  if (kv_cache.dtype() == DType::bf16) {
    check_shape(kv_cache, "kv_cache", {kAny, d_qk});
  } else if (kv_cache.dtype() == DType::u8) {
    DSATTN_CHECK(d_v % 128 == 0,
                 "out must have a value dim that is a multiple of 128 with an FP8 "
                 "kv_cache, got {}",
                 d_v);
    check_shape(kv_cache, "kv_cache", {kAny, latent_fp8_bytes(d_v, d_qk - d_v)});
  } else {
    fail("kv_cache must have dtype bf16 or u8 (FP8 latent rows), got {}",
         dtype_name(kv_cache.dtype()));
  }
  check_inner_contiguous(kv_cache, "kv_cache");
  check_dtype(indices, "indices", DType::i32);
  check_shape(indices, "indices", {n, kAny});
  check_inner_contiguous(indices, "indices");
  if (!lse.empty()) {
    check_dtype(lse, "lse", DType::f32);
    check_shape(lse, "lse", {n, heads});
    check_inner_contiguous(lse, "lse");
  }
  if (!topk_length.empty()) {
    check_dtype(topk_length, "topk_length", DType::i32);
    check_shape(topk_length, "topk_length", {n});
  }
  const Device d =
      common_device({{"q", &q}, {"kv_cache", &kv_cache}, {"indices", &indices}, {"out", &out}});
  if (!lse.empty()) common_device({{"q", &q}, {"lse", &lse}});
  if (!topk_length.empty()) common_device({{"q", &q}, {"topk_length", &topk_length}});
  if (d.is_cpu() && !topk_length.empty()) {
    for (std::int64_t t = 0; t < n; ++t) {
      const std::int32_t len = topk_length.ptr<std::int32_t>()[t * topk_length.stride(0)];
      DSATTN_CHECK(len >= 0 && len <= indices.size(1),
                   "topk_length[{}] = {} is outside [0, {}] (the index lists' length)", t, len,
                   indices.size(1));
    }
  }
  if (d.is_cpu()) {
    const std::int64_t slots = kv_cache.size(0);
    for (std::int64_t t = 0; t < n; ++t) {
      const std::int32_t* idx = indices.row<std::int32_t>(t);
      for (std::int64_t i = 0; i < indices.size(1); ++i) {
        DSATTN_CHECK(idx[i] >= -1 && idx[i] < slots,
                     "indices[{}, {}] = {} is outside the cache's [0, {}) slots (or -1 for unused)",
                     t, i, idx[i], slots);
      }
    }
  }
  if (n == 0) return;
  DSATTN_DISPATCH(d, sparse_mla, q, kv_cache, indices, scale, out, lse, topk_length);
}

}  // namespace dsattn::ops
