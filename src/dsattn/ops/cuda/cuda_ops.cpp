// The CUDA backend's entry points: each turns validated tensor views into its kernel's Params
// (params.h), launches on the current stream and turns a launch failure into a CudaError.
#include "dsattn/ops/cuda/cuda_ops.h"

#include <cstddef>

#include "dsattn/core/cuda_check.h"
#include "dsattn/core/cuda_runtime.h"
#include "dsattn/ops/cuda/kernel_choice.h"
#include "dsattn/ops/cuda/params.h"

namespace dsattn::ops::cuda {

namespace {

cudaStream_t stream() { return static_cast<cudaStream_t>(::dsattn::cuda::current_stream()); }

void check_launch(cudaError_t status, const char* op) {
  if (status != cudaSuccess)
    fail<CudaError>("{} kernel launch failed: {}", op, cudaGetErrorString(status));
}

std::int64_t bytes_of(const TensorView& t) {
  return static_cast<std::int64_t>(dtype_size(t.dtype()));
}

// The tensor-core sparse MLA kernel takes heads in groups of kSparseMlaSm90HeadGroup. A head count
// that is not a multiple (a tensor-parallel rank's 32 or 16 of DeepSeek-V3.2's 128 heads) runs it
// on queries padded with zero heads whose outputs are dropped: the padding costs MMA work, far less
// time than the generic kernel's one warp per (row, head). Returns false, having launched nothing,
// when the padded shape does not fit the kernel either.
bool sparse_mla_on_padded_heads(const SparseMlaParams& p, const TensorView& q,
                                const TensorView& out) {
  constexpr int group = kSparseMlaSm90HeadGroup;
  if (p.n == 0 || p.heads % group == 0) return false;
  const std::int64_t heads = (p.heads + group - 1) / group * group;
  SparseMlaParams padded = p;
  padded.heads = static_cast<int>(heads);
  padded.sq0 = heads * p.d_qk;
  padded.sq1 = p.d_qk;
  padded.so0 = heads * p.d_v;
  padded.so1 = p.d_v;
  // The padded buffers come from the allocator, aligned; an aligned stand-in lets the kernel's own
  // check judge the padded shape before anything is allocated (it reads only the alignment).
  alignas(16) static std::byte stand_in[16];
  padded.q = stand_in;
  padded.out = stand_in;
  if (!sparse_mla_sm90_supports(padded)) return false;

  const Tensor q_pad = Tensor::empty({p.n, heads, p.d_qk}, DType::bf16, q.device());
  const Tensor out_pad = Tensor::empty({p.n, heads, p.d_v}, DType::bf16, q.device());
  const std::size_t row_bytes = heads * p.d_qk * sizeof(bf16);
  const std::size_t real_bytes = static_cast<std::size_t>(p.heads) * p.d_qk * sizeof(bf16);
  DSATTN_CUDA_CHECK(cudaMemset2DAsync(static_cast<char*>(q_pad.view().data()) + real_bytes,
                                      row_bytes, 0, row_bytes - real_bytes,
                                      static_cast<std::size_t>(p.n), stream()));
  strided_copy(q, q_pad.view().slice(1, 0, p.heads));
  padded.q = q_pad.view().data();
  padded.out = out_pad.view().data();
  check_launch(launch_sparse_mla_sm90(padded, stream()), "sparse_mla");
  strided_copy(out_pad.view().slice(1, 0, p.heads), out);
  return true;
}

}  // namespace

void add(const TensorView& a, const TensorView& b, const TensorView& out) {
  const AddParams p{a.data(),  b.data(),    out.data(),  a.size(0),
                    a.size(1), a.stride(0), b.stride(0), out.stride(0)};
  check_launch(launch_add(p, stream()), "add");
}

void silu_mul(const TensorView& x, const TensorView& out) {
  const SiluMulParams p{x.data(), out.data(), x.size(0), out.size(1), x.stride(0), out.stride(0)};
  check_launch(launch_silu_mul(p, stream()), "silu_mul");
}

void strided_copy(const TensorView& src, const TensorView& dst) {
  StridedCopyParams p{};
  p.src = src.data();
  p.dst = dst.data();
  p.element_bytes = static_cast<int>(bytes_of(src));
  const int off = 4 - src.ndim();
  for (int k = 0; k < 4; ++k) p.shape[k] = 1;
  for (int i = 0; i < src.ndim(); ++i) {
    p.shape[off + i] = src.size(i);
    p.src_strides[off + i] = src.stride(i);
    p.dst_strides[off + i] = dst.stride(i);
  }
  check_launch(launch_strided_copy(p, stream()), "strided_copy");
}

void rms_norm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out) {
  const NormParams p{x.data(),  weight.data(), nullptr,       out.data(), x.size(0),
                     x.size(1), x.stride(0),   out.stride(0), eps};
  check_launch(launch_rms_norm(p, stream()), "rms_norm");
}

void layer_norm(const TensorView& x, const TensorView& weight, const TensorView& bias, float eps,
                const TensorView& out) {
  const NormParams p{x.data(),  weight.data(), bias.data(),   out.data(), x.size(0),
                     x.size(1), x.stride(0),   out.stride(0), eps};
  check_launch(launch_layer_norm(p, stream()), "layer_norm");
}

void apply_rope(const TensorView& x, const TensorView& positions, const RopeTable& table,
                RopeLayout layout) {
  RopeParams p{};
  p.pairs = static_cast<int>(table.inv_freq.size());
  if (p.pairs > kRopeMaxPairs) {
    fail<Unsupported>("apply_rope on CUDA supports up to {} rotary dims, got {}", 2 * kRopeMaxPairs,
                      2 * p.pairs);
  }
  for (int i = 0; i < p.pairs; ++i) p.inv_freq[i] = table.inv_freq[i];
  p.mscale = table.mscale;
  p.interleaved = layout == RopeLayout::interleaved;
  p.x = x.data();
  p.positions = static_cast<const std::int32_t*>(positions.data());
  p.tokens = x.size(0);
  p.heads = x.size(1);
  p.stride_token = x.stride(0);
  p.stride_head = x.stride(1);
  check_launch(launch_rope(p, stream()), "apply_rope");
}

void hadamard_rotate(const TensorView& x) {
  const HadamardParams p{x.data(), x.size(0), x.stride(0)};
  check_launch(launch_hadamard128(p, stream()), "hadamard_rotate");
}

void quantize_fp8_block128(const TensorView& x, const TensorView& q, const TensorView& scale) {
  const QuantizeParams p{x.data(),
                         static_cast<std::uint8_t*>(q.data()),
                         static_cast<float*>(scale.data()),
                         x.size(0),
                         x.size(1) / 128,
                         x.stride(0),
                         q.stride(0),
                         scale.stride(0)};
  check_launch(launch_quantize_fp8_block128(p, stream()), "quantize_fp8_block128");
}

namespace {

void move_rows(const TensorView& src, const TensorView& dst, const TensorView& index, bool gather) {
  const std::int64_t es = bytes_of(src);
  const MoveRowsParams p{src.data(),
                         dst.data(),
                         static_cast<const std::int32_t*>(index.data()),
                         index.size(0),
                         src.size(1) * es,
                         src.stride(0) * es,
                         dst.stride(0) * es,
                         gather};
  check_launch(launch_move_rows(p, stream()), gather ? "gather_rows" : "scatter_rows");
}

}  // namespace

void scatter_rows(const TensorView& rows, const TensorView& index, const TensorView& dst) {
  move_rows(rows, dst, index, false);
}

void gather_rows(const TensorView& src, const TensorView& index, const TensorView& out) {
  move_rows(src, out, index, true);
}

void write_index_keys_page_major(const TensorView& rows, const TensorView& slots,
                                 const TensorView& cache, std::int64_t page_size) {
  const IndexKeysPageMajorParams p{static_cast<const std::uint8_t*>(rows.data()),
                                   static_cast<const std::int32_t*>(slots.data()),
                                   static_cast<std::uint8_t*>(cache.data()),
                                   rows.size(0),
                                   rows.stride(0),
                                   index_head_dim_of(rows.size(1)),
                                   page_size};
  check_launch(launch_index_keys_page_major(p, stream()), "write_index_keys");
}

void map_positions_to_slots(const TensorView& indices, const TensorView& row_request,
                            const TensorView& block_tables, std::int64_t page_size) {
  const MapPositionsParams p{static_cast<std::int32_t*>(indices.data()),
                             static_cast<const std::int32_t*>(row_request.data()),
                             static_cast<const std::int32_t*>(block_tables.data()),
                             indices.size(0),
                             indices.size(1),
                             indices.stride(0),
                             block_tables.stride(0),
                             page_size};
  check_launch(launch_map_positions(p, stream()), "map_positions_to_slots");
}

void build_decode_tables(const TensorView& prefix_lens, const TensorView& block_tables,
                         std::int64_t tokens, std::int64_t page_size, std::int64_t num_pages,
                         std::int64_t max_context, const DecodeTables& out) {
  const auto i32 = [](const TensorView& t) { return static_cast<std::int32_t*>(t.data()); };
  const DecodeTablesParams p{static_cast<const std::int32_t*>(prefix_lens.data()),
                             static_cast<const std::int32_t*>(block_tables.data()),
                             i32(out.positions),
                             i32(out.visible),
                             i32(out.slots),
                             i32(out.row_request),
                             i32(out.cu_q),
                             i32(out.context_lens),
                             i32(out.block_tables),
                             i32(out.faults),
                             prefix_lens.size(0),
                             block_tables.stride(0),
                             tokens,
                             page_size,
                             num_pages,
                             max_context,
                             out.block_tables.size(1)};
  check_launch(launch_decode_tables(p, stream()), "build_decode_tables");
}

void build_prefill_tables(const TensorView& prefix_lens, const TensorView& cu_tokens,
                          const TensorView& block_tables, std::int64_t page_size,
                          std::int64_t num_pages, const TensorView& tables, const TensorView& slots,
                          const TensorView& faults) {
  const auto i32 = [](const TensorView& t) { return static_cast<std::int32_t*>(t.data()); };
  const PrefillTablesParams p{
      i32(prefix_lens), i32(cu_tokens), i32(block_tables),   i32(tables),
      i32(slots),       i32(faults),    prefix_lens.size(0), block_tables.stride(0),
      page_size,        num_pages,      tables.size(1),      slots.size(0)};
  check_launch(launch_prefill_tables(p, stream()), "build_prefill_tables");
}

namespace {

LatentFp8Params latent_params(const TensorView& latent, const TensorView& rows,
                              std::int64_t kv_lora_rank, bool quantize) {
  return {latent.data(),
          rows.data(),
          latent.size(0),
          latent.stride(0),
          rows.stride(0),
          static_cast<int>(kv_lora_rank),
          static_cast<int>(latent.size(1) - kv_lora_rank),
          quantize};
}

}  // namespace

void quantize_latent_fp8(const TensorView& latent, std::int64_t kv_lora_rank,
                         const TensorView& rows) {
  check_launch(launch_latent_fp8(latent_params(latent, rows, kv_lora_rank, true), stream()),
               "quantize_latent_fp8");
}

void dequantize_latent_fp8(const TensorView& rows, std::int64_t kv_lora_rank,
                           const TensorView& latent) {
  check_launch(launch_latent_fp8(latent_params(latent, rows, kv_lora_rank, false), stream()),
               "dequantize_latent_fp8");
}

void indexer_scores(const TensorView& q, const TensorView& q_scale, const TensorView& weights,
                    const TensorView& key_cache, const TensorView& block_tables,
                    std::int64_t page_size, const TensorView& cu_q, const TensorView& context_lens,
                    std::int64_t skip_rows_up_to, const TensorView& scores,
                    IndexKeyLayout key_layout) {
  if (q.size(2) != 128) {
    fail<Unsupported>("indexer_scores on CUDA needs an index head dim of 128, got {}", q.size(2));
  }
  IndexerParams p{};
  p.q = static_cast<const std::uint8_t*>(q.data());
  p.q_scale = static_cast<const float*>(q_scale.data());
  p.weights = static_cast<const float*>(weights.data());
  p.keys = static_cast<const std::uint8_t*>(key_cache.data());
  p.block_tables = static_cast<const std::int32_t*>(block_tables.data());
  p.cu_q = static_cast<const std::int32_t*>(cu_q.data());
  p.context_lens = static_cast<const std::int32_t*>(context_lens.data());
  p.scores = static_cast<float*>(scores.data());
  p.total_q = q.size(0);
  p.max_k = scores.size(1);
  p.stride_q_row = q.stride(0);
  p.stride_q_head = q.stride(1);
  p.stride_qs_row = q_scale.stride(0);
  p.stride_qs_head = q_scale.stride(1);
  p.stride_w = weights.stride(0);
  p.stride_key = key_cache.stride(0);
  p.stride_scores = scores.stride(0);
  p.stride_tables = block_tables.stride(0);
  p.page_size = page_size;
  p.skip_rows_up_to = skip_rows_up_to;
  p.batch = static_cast<int>(cu_q.size(0) - 1);
  p.heads = static_cast<int>(q.size(1));
  p.page_major = key_layout == IndexKeyLayout::page_major ? 1 : 0;
  if (indexer_fp8_sm90_supports(p)) {
    record_kernel("indexer_scores", "indexer_fp8_sm90");
    check_launch(launch_indexer_fp8_sm90(p, stream()), "indexer_scores");
    return;
  }
  record_fallback("indexer_scores", "indexer_generic", "indexer_fp8_sm90", [&] {
    return fmt::format(
        "it takes {} index heads of 128 with 16-byte aligned query rows (and keys, page-major); "
        "got {} heads, query strides {} and {}, keys at {}",
        kIndexerSm90Heads, p.heads, p.stride_q_row, p.stride_q_head,
        static_cast<const void*>(p.keys));
  });
  check_launch(launch_indexer_scores(p, stream()), "indexer_scores");
}

namespace {

TopkParams topk_params(const TensorView& scores, const TensorView& lengths, const TensorView& out) {
  return TopkParams{static_cast<const float*>(scores.data()),
                    static_cast<const std::int32_t*>(lengths.data()),
                    static_cast<std::int32_t*>(out.data()),
                    scores.size(0),
                    scores.size(1),
                    scores.stride(0),
                    out.stride(0),
                    static_cast<int>(out.size(1))};
}

void run_topk(const TopkParams& p, const char* op) {
  if (const char* binned = topk_binned_choice(p)) {
    record_kernel(op, binned);
    check_launch(launch_topk_binned(p, stream()), op);
    return;
  }
  // Longer rows, and rows too few to fill the GPU one block each: the sliced kernel shares each
  // row between the blocks of a cluster.
  record_kernel(op, "topk_sliced");
  check_launch(launch_topk(p, stream()), op);
}

}  // namespace

void topk(const TensorView& scores, const TensorView& lengths, const TensorView& out) {
  run_topk(topk_params(scores, lengths, out), "topk");
}

void topk_slots(const TensorView& scores, const TensorView& lengths, const TensorView& row_request,
                const TensorView& block_tables, std::int64_t page_size, const TensorView& out) {
  TopkParams p = topk_params(scores, lengths, out);
  p.row_request = static_cast<const std::int32_t*>(row_request.data());
  p.block_tables = static_cast<const std::int32_t*>(block_tables.data());
  p.stride_tables = block_tables.stride(0);
  p.table_width = block_tables.size(1);
  p.page_size = static_cast<int>(page_size);
  run_topk(p, "topk_slots");
}

void mha_varlen_causal(const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& cu_q, const TensorView& cu_k, std::int64_t max_q,
                       float scale, const TensorView& out, const TensorView& lse,
                       const TensorView& key_mask) {
  MhaParams p{};
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.out = out.data();
  p.cu_q = static_cast<const std::int32_t*>(cu_q.data());
  p.cu_k = static_cast<const std::int32_t*>(cu_k.data());
  p.total_q = q.size(0);
  p.max_q = max_q;
  p.sq0 = q.stride(0);
  p.sq1 = q.stride(1);
  p.sk0 = k.stride(0);
  p.sk1 = k.stride(1);
  p.sv0 = v.stride(0);
  p.sv1 = v.stride(1);
  p.so0 = out.stride(0);
  p.so1 = out.stride(1);
  p.lse = lse.empty() ? nullptr : static_cast<float*>(lse.data());
  p.s_lse = lse.empty() ? 0 : lse.stride(0);
  p.key_mask = key_mask.empty() ? nullptr : static_cast<const std::uint32_t*>(key_mask.data());
  p.s_mask = key_mask.empty() ? 0 : key_mask.stride(0);
  p.mask_words = key_mask.empty() ? 0 : key_mask.size(1);
  p.batch = static_cast<int>(cu_q.size(0) - 1);
  p.heads = static_cast<int>(q.size(1));
  p.d_qk = static_cast<int>(q.size(2));
  p.d_v = static_cast<int>(v.size(2));
  p.scale = scale;
  if (mha_wgmma_sm90_supports(p)) {
    record_kernel("mha_varlen_causal", "mha_wgmma_sm90");
    check_launch(launch_mha_wgmma_sm90(p, stream()), "mha_varlen_causal");
    return;
  }
  record_fallback("mha_varlen_causal", "mha_generic", "mha_wgmma_sm90", [&] {
    return fmt::format(
        "it takes q/k head dim {} and v head dim {} with 16-byte aligned rows and a positive "
        "scale; got {} and {}, strides {}/{}/{}, scale {}",
        kMhaSm90Dqk, kMhaSm90Dv, p.d_qk, p.d_v, p.sq0, p.sk0, p.sv0, p.scale);
  });
  check_launch(launch_mha_generic(p, stream()), "mha_varlen_causal");
}

void selection_mask(const TensorView& selected, const TensorView& mask) {
  SelectionMaskParams p{};
  p.selected = static_cast<const std::int32_t*>(selected.data());
  p.mask = static_cast<std::uint32_t*>(mask.data());
  p.n = selected.size(0);
  p.k = selected.size(1);
  p.words = mask.size(1);
  p.stride_selected = selected.stride(0);
  p.stride_mask = mask.stride(0);
  DSATTN_CHECK(p.words <= 12288,
               "mask has {} words a row; the GPU builds rows of up to 12288 (393216 keys)",
               p.words);
  check_launch(launch_selection_mask(p, stream()), "selection_mask");
}

void sparse_mla(const TensorView& q, const TensorView& kv_cache, const TensorView& indices,
                float scale, const TensorView& out, const TensorView& lse,
                const TensorView& topk_length) {
  SparseMlaParams p{};
  p.q = q.data();
  p.kv = kv_cache.data();
  p.indices = static_cast<const std::int32_t*>(indices.data());
  p.out = out.data();
  p.lse = lse.empty() ? nullptr : static_cast<float*>(lse.data());
  p.topk_length =
      topk_length.empty() ? nullptr : static_cast<const std::int32_t*>(topk_length.data());
  p.s_topk_length = topk_length.empty() ? 0 : topk_length.stride(0);
  p.n = q.size(0);
  p.slots = kv_cache.size(0);
  p.sq0 = q.stride(0);
  p.sq1 = q.stride(1);
  p.kv_row_bytes = kv_cache.stride(0) * bytes_of(kv_cache);
  p.stride_indices = indices.stride(0);
  p.so0 = out.stride(0);
  p.so1 = out.stride(1);
  p.s_lse = lse.empty() ? 0 : lse.stride(0);
  p.heads = static_cast<int>(q.size(1));
  p.d_qk = static_cast<int>(q.size(2));
  p.d_v = static_cast<int>(out.size(2));
  p.topk = static_cast<int>(indices.size(1));
  p.fp8 = kv_cache.dtype() == DType::u8;
  p.scale = scale;
  if (sparse_mla_wgmma_sm90_supports(p)) {
    record_kernel("sparse_mla", "sparse_mla_wgmma_sm90");
    const int splits = sparse_mla_wgmma_splits(p);
    if (splits == 1) {
      check_launch(launch_sparse_mla_wgmma_sm90(p, stream()), "sparse_mla");
      return;
    }
    // Few CTAs (a small decode batch): each row's entries in `splits` parts, merged after. The
    // workspace comes from the caching allocator, so a captured decode graph keeps it.
    const Tensor partial_out = Tensor::empty({splits, p.n, p.heads, p.d_v}, DType::f32, q.device());
    const Tensor partial_lse = Tensor::empty({splits, p.n, p.heads}, DType::f32, q.device());
    p.splits = splits;
    p.split_entries = sparse_mla_wgmma_split_entries(p, splits);
    p.partial_out = static_cast<float*>(partial_out.view().data());
    p.partial_lse = static_cast<float*>(partial_lse.view().data());
    check_launch(launch_sparse_mla_wgmma_sm90(p, stream()), "sparse_mla");
    check_launch(launch_sparse_mla_combine(p, stream()), "sparse_mla");
    return;
  }
  const auto wgmma_terms = [&] {
    return fmt::format(
        "it takes d_qk {}, d_v {}, 16-byte aligned q and cache rows and a positive scale; got "
        "d_qk {}, d_v {}, q strides {}/{}, cache rows of {} bytes, scale {}",
        kSparseMlaSm90Dqk, kSparseMlaSm90Dv, p.d_qk, p.d_v, p.sq0, p.sq1, p.kv_row_bytes, p.scale);
  };
  // The mma.sync kernel writes no log-sum-exp and reads whole index lists.
  const bool plain = p.lse == nullptr && p.topk_length == nullptr;
  if (plain && sparse_mla_sm90_supports(p)) {
    record_fallback("sparse_mla", "sparse_mla_sm90", "sparse_mla_wgmma_sm90", wgmma_terms);
    check_launch(launch_sparse_mla_sm90(p, stream()), "sparse_mla");
  } else if (plain && sparse_mla_on_padded_heads(p, q, out)) {
    record_fallback("sparse_mla", "sparse_mla_sm90 (zero-padded heads)", "sparse_mla_wgmma_sm90",
                    wgmma_terms);
  } else {
    record_fallback("sparse_mla", "sparse_mla_generic", "sparse_mla_wgmma_sm90", [&] {
      return plain ? wgmma_terms()
                   : wgmma_terms() +
                         "; the mma.sync kernel takes neither a log-sum-exp nor "
                         "topk_length";
    });
    check_launch(launch_sparse_mla_generic(p, stream()), "sparse_mla");
  }
}

}  // namespace dsattn::ops::cuda
