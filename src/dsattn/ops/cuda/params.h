// Parameters of the CUDA kernels: plain structs of pointers, sizes and element strides, filled
// from tensor views by cuda_ops.cpp. This header and the .cu files depend on nothing but the
// CUDA toolkit, so device code compiles without the host library's headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsattn::ops::cuda {

struct AddParams {
  const void* a;  // [rows, n] bf16
  const void* b;  // [rows, n] bf16
  void* out;      // [rows, n] bf16
  std::int64_t rows, n, stride_a, stride_b, stride_out;
};

struct SiluMulParams {
  const void* x;  // [rows, 2n] bf16: gate, then up
  void* out;      // [rows, n] bf16
  std::int64_t rows, n, stride_x, stride_out;
};

struct StridedCopyParams {
  const void* src;
  void* dst;
  int element_bytes;                                      // 1, 2 or 4
  std::int64_t shape[4], src_strides[4], dst_strides[4];  // padded to 4 dims, in elements
};

struct NormParams {
  const void* x;       // [rows, n] bf16
  const void* weight;  // [n] bf16
  const void* bias;    // [n] bf16, LayerNorm only
  void* out;           // [rows, n] bf16
  std::int64_t rows, n, stride_x, stride_out;
  float eps;
};

inline constexpr int kRopeMaxPairs = 64;
struct RopeParams {
  void* x;                        // [tokens, heads, 2 * pairs] bf16, strided
  const std::int32_t* positions;  // [tokens]
  std::int64_t tokens, heads, stride_token, stride_head;
  double inv_freq[kRopeMaxPairs];
  double mscale;
  int pairs;
  bool interleaved;
};

struct HadamardParams {
  void* x;  // [rows, 128] bf16
  std::int64_t rows, stride;
};

struct QuantizeParams {
  const void* x;    // [rows, blocks * 128] bf16
  std::uint8_t* q;  // [rows, blocks * 128] e4m3
  float* scale;     // [rows, blocks]
  std::int64_t rows, blocks, stride_x, stride_q, stride_scale;
};

struct MoveRowsParams {
  const void* src;
  void* dst;
  const std::int32_t* index;  // [rows]: gather reads src[index[r]], scatter writes dst[index[r]]
  std::int64_t rows, row_bytes, src_stride_bytes, dst_stride_bytes;
  bool gather;
};

struct IndexKeysPageMajorParams {
  const std::uint8_t* rows;   // [n, d + 4 · d / 128]
  const std::int32_t* slots;  // [n]; -1: not written
  std::uint8_t* cache;        // contiguous pages of page_size · (d + 4 · d / 128) bytes
  std::int64_t n, stride_rows, d, page_size;
};

struct MapPositionsParams {
  std::int32_t* indices;             // [rows, k], positions in, slots out; -1 stays
  const std::int32_t* row_request;   // [rows]
  const std::int32_t* block_tables;  // [requests, max_pages]
  std::int64_t rows, k, stride_indices, stride_tables, page_size;
};

struct DecodeTablesParams {
  const std::int32_t* prefix_lens;  // [batch]
  const std::int32_t* tables_in;    // [batch, >= max_pages], row stride stride_in
  std::int32_t *positions, *visible, *slots, *row_request;  // [batch * tokens]
  std::int32_t *cu_q, *context_lens;                        // [batch + 1], [batch]
  std::int32_t* tables;                                     // [batch, max_pages]
  std::int32_t* faults;                                     // [1], or-ed into
  std::int64_t batch, stride_in, tokens, page_size, num_pages, max_context, max_pages;
};

struct PrefillTablesParams {
  const std::int32_t* prefix_lens;  // [batch]
  const std::int32_t* cu_tokens;    // [batch + 1]
  const std::int32_t* tables_in;    // [batch, >= max_pages], row stride stride_in
  std::int32_t* tables;             // [batch, max_pages]
  std::int32_t* slots;              // [n_slots]; cu_tokens past it are not written
  std::int32_t* faults;             // [1], or-ed into
  std::int64_t batch, stride_in, page_size, num_pages, max_pages, n_slots;
};

struct LatentFp8Params {
  void* latent;  // [n, r + rope] bf16: read when quantising, written when dequantising
  void* rows;    // [n, latent_fp8_bytes] u8: written when quantising, read otherwise
  std::int64_t n, stride_latent, stride_rows;
  int r, rope;
  bool quantize;
};

struct IndexerParams {
  const std::uint8_t* q;             // [total_q, heads, 128] e4m3
  const float* q_scale;              // [total_q, heads, 1]
  const float* weights;              // [total_q, heads]
  const std::uint8_t* keys;          // [slots, 132] u8, rows or (page_major) page by page
  const std::int32_t* block_tables;  // [batch, max_pages]
  const std::int32_t* cu_q;          // [batch + 1]
  const std::int32_t* context_lens;  // [batch]
  float* scores;                     // [total_q, max_k]
  std::int64_t total_q, max_k, stride_q_row, stride_q_head, stride_qs_row, stride_qs_head, stride_w,
      stride_key, stride_scores, stride_tables, page_size, skip_rows_up_to;
  int batch, heads;
  // The keys' layout (cache/cache_format.h): 0 rows of stride_key bytes; 1 page-major, a page
  // being page_size · 128 value bytes then page_size f32 scales (stride_key is then 132).
  int page_major;
  // Set at launch for the FP8 tensor-core kernel: its split of each context, and log2(page_size)
  // when that is a power of two (else -1).
  int keys_per_split, page_shift;
};

struct TopkParams {
  const float* scores;          // [rows, cols]
  const std::int32_t* lengths;  // [rows], each <= cols
  std::int32_t* out;            // [rows, k]
  std::int64_t rows, cols, stride_scores, stride_out;
  int k;
  // When block_tables is set, out gets cache slots instead of positions: position p of row r is
  // block_tables[row_request[r] * stride_tables + p / page_size] * page_size + p % page_size
  // (-1 for a page past table_width).
  const std::int32_t* row_request = nullptr;
  const std::int32_t* block_tables = nullptr;
  std::int64_t stride_tables = 0, table_width = 0;
  int page_size = 1;
};

struct MhaParams {
  const void* q;  // [total_q, heads, d_qk] bf16
  const void* k;  // [total_k, heads, d_qk] bf16
  const void* v;  // [total_k, heads, d_v] bf16
  void* out;      // [total_q, heads, d_v] bf16
  float* lse;     // [total_q, heads] f32 (row stride s_lse, heads contiguous), or nullptr
  const std::int32_t* cu_q;
  const std::int32_t* cu_k;
  // Masked MHA, or nullptr: [total_q, mask_words] bit words (row stride s_mask); a row sees key j
  // of its request only if bit j % 32 of its word j / 32 is set (none past 32 mask_words).
  const std::uint32_t* key_mask;
  std::int64_t total_q, max_q, sq0, sq1, sk0, sk1, sv0, sv1, so0, so1, s_lse, s_mask, mask_words;
  int batch, heads, d_qk, d_v;
  float scale;
};

struct SelectionMaskParams {
  const std::int32_t* selected;  // [n, k] positions, -1 = unused
  std::uint32_t* mask;           // [n, words]
  std::int64_t n, k, words, stride_selected, stride_mask;
};

struct SparseMlaParams {
  const void* q;                // [n, heads, d_qk] bf16
  const void* kv;               // [slots, d_qk] bf16, or FP8 latent rows
  const std::int32_t* indices;  // [n, topk] slots; -1 (or any slot outside [0, slots)) unused
  void* out;                    // [n, heads, d_v] bf16
  float* lse;                   // [n, heads] f32 (row stride s_lse, heads contiguous), or nullptr
  const std::int32_t* topk_length;  // [n] (stride s_topk_length) entries to read, or nullptr
  std::int64_t n, slots, sq0, sq1, kv_row_bytes, stride_indices, so0, so1, s_lse, s_topk_length;
  int heads, d_qk, d_v, topk;
  bool fp8;
  float scale;
  // Split-K (the wgmma kernel, when its CTAs alone would leave most of the GPU idle): split s of
  // a row reads its entries [s · split_entries, (s + 1) · split_entries) and writes its
  // normalised output and log-sum-exp to partial_out [splits, n, heads, d_v] and partial_lse
  // [splits, n, heads]; launch_sparse_mla_combine merges them into out (and lse).
  int splits = 1, split_entries = 0;
  float* partial_out = nullptr;
  float* partial_lse = nullptr;
};

cudaError_t launch_add(const AddParams& p, cudaStream_t stream);
cudaError_t launch_silu_mul(const SiluMulParams& p, cudaStream_t stream);
cudaError_t launch_strided_copy(const StridedCopyParams& p, cudaStream_t stream);
cudaError_t launch_rms_norm(const NormParams& p, cudaStream_t stream);
cudaError_t launch_layer_norm(const NormParams& p, cudaStream_t stream);
cudaError_t launch_rope(const RopeParams& p, cudaStream_t stream);
cudaError_t launch_hadamard128(const HadamardParams& p, cudaStream_t stream);
cudaError_t launch_quantize_fp8_block128(const QuantizeParams& p, cudaStream_t stream);
cudaError_t launch_move_rows(const MoveRowsParams& p, cudaStream_t stream);
cudaError_t launch_map_positions(const MapPositionsParams& p, cudaStream_t stream);
cudaError_t launch_index_keys_page_major(const IndexKeysPageMajorParams& p, cudaStream_t stream);
cudaError_t launch_decode_tables(const DecodeTablesParams& p, cudaStream_t stream);
cudaError_t launch_prefill_tables(const PrefillTablesParams& p, cudaStream_t stream);
cudaError_t launch_latent_fp8(const LatentFp8Params& p, cudaStream_t stream);
cudaError_t launch_indexer_scores(const IndexerParams& p, cudaStream_t stream);
// The FP8 tensor-core (wgmma) kernel for the model's indexer: 64 heads of 128, 16-byte aligned
// query rows, 4-byte aligned key rows, non-negative scales (as the quantiser makes them);
// supports() says whether it takes p.
inline constexpr int kIndexerSm90Heads = 64;
bool indexer_fp8_sm90_supports(const IndexerParams& p);
cudaError_t launch_indexer_fp8_sm90(IndexerParams p, cudaStream_t stream);
cudaError_t launch_topk(const TopkParams& p, cudaStream_t stream);
// The register-resident top-k (topk_binned.cu): rows of up to 8,192 columns, or up to 32,768
// where the rows alone fill the GPU. choice() names the kernel it would run, or nullptr where it
// does not take p.
const char* topk_binned_choice(const TopkParams& p);
cudaError_t launch_topk_binned(const TopkParams& p, cudaStream_t stream);
cudaError_t launch_mha_generic(const MhaParams& p, cudaStream_t stream);
// The tensor-core kernels for DeepSeek-V3.2's MHA shapes (d_qk 192, d_v 128, 16-byte aligned q,
// k and v rows, scale > 0); supports() says whether one takes p. The wgmma kernel is the op's
// (GLM-5's 256/256 too, and the key mask); the mma.sync one (mha_sm90, no mask) is its GPU
// reference.
inline constexpr int kMhaSm90Dqk = 192, kMhaSm90Dv = 128;
bool mha_wgmma_sm90_supports(const MhaParams& p);
cudaError_t launch_mha_wgmma_sm90(const MhaParams& p, cudaStream_t stream);
bool mha_sm90_supports(const MhaParams& p);
cudaError_t launch_mha_sm90(const MhaParams& p, cudaStream_t stream);
cudaError_t launch_sparse_mla_generic(const SparseMlaParams& p, cudaStream_t stream);
// Rows of up to 12,288 words (393,216 keys).
cudaError_t launch_selection_mask(const SelectionMaskParams& p, cudaStream_t stream);
// The tensor-core kernel for DeepSeek-V3.2's absorbed shapes (d_qk 576, d_v 512, heads a
// multiple of kSparseMlaSm90HeadGroup, top-k <= 2048, 16-byte aligned rows); supports() says
// whether it takes p.
inline constexpr int kSparseMlaSm90HeadGroup = 64;  // heads per CTA
inline constexpr int kSparseMlaSm90Dqk = 576, kSparseMlaSm90Dv = 512, kSparseMlaSm90MaxTopk = 2048;
// The mma.sync kernel reads bf16 and FP8 caches and writes no log-sum-exp; the wgmma kernel (the
// op's) takes any head count (groups of 64, the last one partial), any top-k, bf16 or FP8 cache
// rows, topk_length and scale > 0, and writes the log-sum-exp when asked.
bool sparse_mla_sm90_supports(const SparseMlaParams& p);
cudaError_t launch_sparse_mla_sm90(const SparseMlaParams& p, cudaStream_t stream);
bool sparse_mla_wgmma_sm90_supports(const SparseMlaParams& p);
// The splits the wgmma kernel should cut each row's entries into (1: none), and the entries of
// a split (a multiple of 128).
int sparse_mla_wgmma_splits(const SparseMlaParams& p);
int sparse_mla_wgmma_split_entries(const SparseMlaParams& p, int splits);
cudaError_t launch_sparse_mla_combine(const SparseMlaParams& p, cudaStream_t stream);
cudaError_t launch_sparse_mla_wgmma_sm90(const SparseMlaParams& p, cudaStream_t stream);

}  // namespace dsattn::ops::cuda
