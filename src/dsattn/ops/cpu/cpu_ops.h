// The CPU backend: plain implementations of every op, f32 arithmetic over bf16/fp8 storage.
// They are the oracle the CUDA kernels are checked against and the backend on machines without a
// GPU. Arguments are validated by the dispatchers in ops/dispatch.cpp before these run.
#pragma once

#include "dsattn/ops/attention.h"
#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/elementwise.h"
#include "dsattn/ops/gemm.h"
#include "dsattn/ops/indexer.h"
#include "dsattn/ops/latent_fp8.h"
#include "dsattn/ops/norm.h"
#include "dsattn/ops/quantize.h"
#include "dsattn/ops/rope.h"
#include "dsattn/ops/topk.h"

namespace dsattn::ops::cpu {

void add(const TensorView& a, const TensorView& b, const TensorView& out);
void silu_mul(const TensorView& x, const TensorView& out);
void strided_copy(const TensorView& src, const TensorView& dst);
void rms_norm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out);
void layer_norm(const TensorView& x, const TensorView& weight, const TensorView& bias, float eps,
                const TensorView& out);
void apply_rope(const TensorView& x, const TensorView& positions, const RopeTable& table,
                RopeLayout layout);
void gemm(const TensorView& a, const TensorView& b, const TensorView& c, BLayout layout,
          float alpha);
void hadamard_rotate(const TensorView& x);
void quantize_fp8_block128(const TensorView& x, const TensorView& q, const TensorView& scale);
void build_decode_tables(const TensorView& prefix_lens, const TensorView& block_tables,
                         std::int64_t tokens, std::int64_t page_size, std::int64_t num_pages,
                         std::int64_t max_context, const DecodeTables& out);
void build_prefill_tables(const TensorView& prefix_lens, const TensorView& cu_tokens,
                          const TensorView& block_tables, std::int64_t page_size,
                          std::int64_t num_pages, const TensorView& tables, const TensorView& slots,
                          const TensorView& faults);
// write_index_keys with IndexKeyLayout::page_major, its arguments checked.
void write_index_keys_page_major(const TensorView& rows, const TensorView& slots,
                                 const TensorView& cache, std::int64_t page_size);
void scatter_rows(const TensorView& rows, const TensorView& index, const TensorView& dst);
void gather_rows(const TensorView& src, const TensorView& index, const TensorView& out);
void map_positions_to_slots(const TensorView& indices, const TensorView& row_request,
                            const TensorView& block_tables, std::int64_t page_size);
void quantize_latent_fp8(const TensorView& latent, std::int64_t kv_lora_rank,
                         const TensorView& rows);
void dequantize_latent_fp8(const TensorView& rows, std::int64_t kv_lora_rank,
                           const TensorView& latent);
void indexer_scores(const TensorView& q, const TensorView& q_scale, const TensorView& weights,
                    const TensorView& key_cache, const TensorView& block_tables,
                    std::int64_t page_size, const TensorView& cu_q, const TensorView& context_lens,
                    std::int64_t skip_rows_up_to, const TensorView& scores,
                    IndexKeyLayout key_layout);
void topk(const TensorView& scores, const TensorView& lengths, const TensorView& out);
void topk_slots(const TensorView& scores, const TensorView& lengths, const TensorView& row_request,
                const TensorView& block_tables, std::int64_t page_size, const TensorView& out);
void mha_varlen_causal(const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& cu_q, const TensorView& cu_k, std::int64_t max_q,
                       float scale, const TensorView& out, const TensorView& lse,
                       const TensorView& key_mask);
void selection_mask(const TensorView& selected, const TensorView& mask);
void sparse_mla(const TensorView& q, const TensorView& kv_cache, const TensorView& indices,
                float scale, const TensorView& out, const TensorView& lse,
                const TensorView& topk_length);

// Widens `n` bf16 values to f32 (shared by the ops that hand rows to BLAS).
void widen(const bf16* src, float* dst, std::int64_t n);

}  // namespace dsattn::ops::cpu
