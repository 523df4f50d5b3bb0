// Sparse MLA attention for DeepSeek-V3.2's absorbed shapes (q/k 576 = 512 latent + 64 rope,
// values the first 512 columns of each cached row) on sm_90 tensor cores (mma.sync m16n8k16,
// bf16 operands, f32 accumulators).
//
// Tiling: the work items are (query row, group of 64 heads); heads are the M dimension. One
// CTA of 8 warps per SM (227 KB of shared memory) walks items gridDim.x apart.
//   - Per item: Q [64 x 576] in shared memory (72 KB); the row's index list compacted (entries of
//   -1
//     or outside the cache dropped, order kept) into a shared slot list. Keys stream in tiles of 64
//     slots.
//   - Warps 4..7 (the loaders) gather the next tile's cached rows with cp.async while the others
//     compute: bf16 cache straight into the other of two K tiles [64 x 576]; FP8 cache as raw
//     656-byte rows into a staging tile, which all warps dequantise to bf16 between tiles.
//     Slots past the list's end are zero-filled and masked to -inf. During an item's last tile
//     the loaders also compact the next item's list, gather its first tile and (once S no
//     longer reads Q) load its Q, so consecutive items overlap.
//   - S = Q K^T on warps 0..3, each 32 heads x 32 keys over all 576 columns: a third less
//     shared-memory traffic per MMA than 8 warps of 16 x 32, and the S phase is bound by
//     ldmatrix bandwidth. The two warps of a head group exchange row maxima through shared
//     memory; both keep the same running max, each its own partial row sum.
//   - P (bf16) is written over the K tile's rope columns, which no warp reads after S.
//   - O += P V on all 8 warps: warp w owns heads 32(w%2).. x value columns 128(w/2)..: 32 x 128
//     f32 in registers (128 per thread); P and V (the K tile's first 512 columns,
//     ldmatrix.trans) come from shared memory. Rows are rescaled by the softmax correction the
//     S warps publish.
//   - End of item: O / l goes through shared memory (the last K tile) to 16-byte stores.
// Shared rows are XOR-swizzled in 16-byte chunks (chunk ^ (row & 7)), so each ldmatrix phase
// and each cp.async phase touches 32 distinct banks. Three barriers per key tile.
//
// Measured on an H100 SXM (`dsattn bench`, 16K-token batches, top-k 2048): prefill 176 / 238 /
// 281 / 314 / 329 / 336 TFLOPS at s = 256 / 512 / 1K / 2K / 4K / 8K; decode (bf16 cache,
// 8K context) 290 - 317 TFLOPS for b = 64 / 128, s_q = 1 / 2; FP8 cache 230 - 242 TFLOPS.
// What limits it: per tile, S takes ~35% of the time, P V ~28% and the gathers ~8%; the
// phases are separated by barriers (S and P V of consecutive tiles do not overlap), the tensor
// pipe runs at about half its mma.sync rate, and with the FP8 cache the dequantisation between
// tiles is not overlapped with math.
#include <algorithm>

#include "dsattn/ops/cuda/common.cuh"
#include "dsattn/ops/cuda/latent_fp8.cuh"
#include "dsattn/ops/cuda/ptx.cuh"

namespace dsattn::ops::cuda {

namespace {

using namespace ptx;  // NOLINT: the PTX wrappers read as intrinsics

constexpr int kHeads = kSparseMlaSm90HeadGroup;
constexpr int kKeys = 64;  // keys per tile
constexpr int kDqk = kSparseMlaSm90Dqk, kDv = kSparseMlaSm90Dv;
constexpr int kMaxTopk = kSparseMlaSm90MaxTopk;
constexpr int kThreads = 256;
constexpr int kLoaders = 128;        // warps 4..7 issue the gathers while warps 0..3 compute S
constexpr int kRowBytes = kDqk * 2;  // one bf16 row of Q or K: 72 chunks
constexpr int kTileBytes = kKeys * kRowBytes;  // 73,728
constexpr int kPChunk = kDv / 8;               // P lives in chunks 64..71 (the rope columns)
constexpr int kOutRowBytes = kDv * 2;          // staged output rows: 64 chunks
constexpr int kFp8RowBytes = kDv + 4 * (kDv / 128) + 2 * (kDqk - kDv);  // 656
constexpr int kFp8RopeOffset = kDv + 4 * (kDv / 128);                   // 528
constexpr float kLog2e = 1.4426950408889634f;

// Shared memory: Q, the bf16 K tile(s), the FP8 staging tile, the compacted slot list and the
// small per-row exchanges.
template <bool kFp8>
struct Smem {
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kTileBytes;
  static constexpr int kKTiles = kFp8 ? 1 : 2;
  static constexpr int kRaw = kK + kKTiles * kTileBytes;
  static constexpr int kRawBytes = kFp8 ? kKeys * kFp8RowBytes : 0;
  static constexpr int kList = kRaw + kRawBytes;
  static constexpr int kRowMax = kList + kMaxTopk * 4;         // [2][64] f32, one per key half
  static constexpr int kAlpha = kRowMax + 2 * kHeads * 4;      // [64] f32
  static constexpr int kRowSum = kAlpha + kHeads * 4;          // [2][64] f32
  static constexpr int kWarpCount = kRowSum + 2 * kHeads * 4;  // [4] i32, per loader warp
  static constexpr int kItemCount = kWarpCount + 4 * 4;        // [2] i32, this and the next item
  static constexpr int kBytes = kItemCount + 2 * 4;
  static_assert(kBytes <= 227 * 1024, "over the sm_90 shared-memory limit per block");
  static_assert(kHeads * kOutRowBytes <= kTileBytes, "the output is staged in a K tile");
};

// Byte offset of 16-byte chunk `c` of row `r` in rows of `row_bytes`.
template <int row_bytes>
__device__ __forceinline__ std::uint32_t swizzled(int r, int c) {
  return static_cast<std::uint32_t>(r * row_bytes + ((c ^ (r & 7)) << 4));
}

// d += a · b for one m16n8k16 tile.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const std::uint32_t (&a)[4],
                                         std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, "
      "%2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <bool kFp8>
__global__ void __launch_bounds__(kThreads, 1) sparse_mla_sm90_kernel(const SparseMlaParams p) {
  using L = Smem<kFp8>;
  extern __shared__ __align__(128) unsigned char smem[];
  const std::uint32_t sQ = smem_addr(smem) + L::kQ;
  const std::uint32_t sK0 = smem_addr(smem) + L::kK;
  const std::uint32_t sRaw = smem_addr(smem) + L::kRaw;
  auto* list = reinterpret_cast<int*>(smem + L::kList);
  auto* row_max_x = reinterpret_cast<float*>(smem + L::kRowMax);
  auto* alpha_x = reinterpret_cast<float*>(smem + L::kAlpha);
  auto* row_sum_x = reinterpret_cast<float*>(smem + L::kRowSum);
  auto* warp_count = reinterpret_cast<int*>(smem + L::kWarpCount);
  auto* item_count = reinterpret_cast<int*>(smem + L::kItemCount);

  const int groups = p.heads / kHeads;
  const int items = static_cast<int>(p.n * groups);  // < 2^31: checked by supports()
  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
  // Warps 0..3 compute S; warps 4..7 (the loaders) meanwhile gather the next tile and, during
  // an item's last tile, prepare the next item (its index list, its first tile, then its Q).
  const bool s_warp = warp < (kThreads - kLoaders) / 32;
  // Loader threads 0..127 move 8 per row (chunks sub + 8j), 16 rows a pass. Their indices are
  // recomputed from an opaque copy of tid inside each helper, so that the compiler does not
  // hoist (and spill) per-thread addresses out of the item loop.
  struct LoaderLane {
    int ltid, sub, row0;
  };
  auto loader_lane = [&] {
    int x = tid;
    asm volatile("" : "+r"(x));
    const int l = x - (kThreads - kLoaders);
    return LoaderLane{l, x % 8, l / 8};
  };
  const auto* kv = static_cast<const unsigned char*>(p.kv);

  // Q of item `it` -> shared (loaders).
  auto load_q = [&](int it) {
    const auto [ltid, gsub, grow0] = loader_lane();
    const auto* q = static_cast<const __nv_bfloat16*>(p.q) + std::int64_t(it / groups) * p.sq0 +
                    (it % groups) * kHeads * p.sq1;
#pragma unroll
    for (int pass = 0; pass < kHeads / (kLoaders / 8); ++pass) {
      const int r = pass * (kLoaders / 8) + grow0;
      const __nv_bfloat16* src = q + r * p.sq1 + gsub * 8;
      const std::uint32_t dst = sQ + swizzled<kRowBytes>(r, gsub);
#pragma unroll
      for (int j = 0; j < kDqk / 64; ++j) cp_async16(dst + j * 128, src + j * 64, true);
    }
    cp_async_commit();
  };

  // Compacts item `it`'s index list into `list` (holes dropped, order kept) and returns its
  // length (loaders only, synchronised by named barrier 1). Loader thread i scans entries
  // 16 i .. 16 i + 15; a prefix sum over the loaders places them.
  auto compact = [&](int it) {
    const auto [ltid, gsub, grow0] = loader_lane();
    constexpr int kPer = kMaxTopk / kLoaders;
    const std::int32_t* idx = p.indices + (it / groups) * p.stride_indices + ltid * kPer;
    const int n_here = min(kPer, p.topk - ltid * kPer);  // may be <= 0
    // A bit mask of the valid entries, so that nothing but it stays live; the valid entries
    // are read again (from L1) to be placed.
    unsigned valid = 0;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      if (j < n_here) {
        const std::int32_t slot = __ldg(idx + j);
        if (slot >= 0 && slot < p.slots) valid |= 1u << j;
      }
    }
    const int mine = __popc(valid);
    int incl = mine;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int n = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += n;
    }
    const int lw = ltid / 32;
    if (lane == 31) warp_count[lw] = incl;
    asm volatile("bar.sync 1, %0;\n" ::"n"(kLoaders) : "memory");
    int pos = incl - mine, count = 0;
#pragma unroll
    for (int w = 0; w < kLoaders / 32; ++w) {
      const int c = warp_count[w];
      pos += w < lw ? c : 0;
      count += c;
    }
    while (valid != 0) {
      const int j = __ffs(valid) - 1;
      valid &= valid - 1;
      list[pos++] = __ldg(idx + j);
    }
    asm volatile("bar.sync 1, %0;\n" ::"n"(kLoaders) : "memory");  // the list, for every loader
    return count;
  };

  // Gathers tile `t` of the list (`count` entries) into the bf16 K tile at `dst` or (FP8) the
  // raw rows into the staging tile (loaders). Slots past the end are zero-filled.
  auto gather = [&](int t, int count, std::uint32_t dst) {
    const auto [ltid, gsub, grow0] = loader_lane();
#pragma unroll
    for (int pass = 0; pass < kKeys / (kLoaders / 8); ++pass) {
      const int key = pass * (kLoaders / 8) + grow0, e = t * kKeys + key;
      const bool valid = e < count;
      const unsigned char* src = kv + (valid ? list[e] : 0) * p.kv_row_bytes + gsub * 16;
      if constexpr (kFp8) {
        const std::uint32_t d = dst + key * kFp8RowBytes + gsub * 16;
#pragma unroll
        for (int j = 0; j < kFp8RowBytes / 128; ++j) cp_async16(d + j * 128, src + j * 128, valid);
        if (gsub < (kFp8RowBytes % 128) / 16) {
          constexpr int j = kFp8RowBytes / 128;
          cp_async16(d + j * 128, src + j * 128, valid);
        }
      } else {
        const std::uint32_t d = dst + swizzled<kRowBytes>(key, gsub);
#pragma unroll
        for (int j = 0; j < kDqk / 64; ++j) cp_async16(d + j * 128, src + j * 128, valid);
      }
    }
    cp_async_commit();
  };

  // Loaders: everything item `it` needs before its first tile, except Q.
  auto prepare = [&](int it, int parity, std::uint32_t dst) {
    const int count = compact(it);
    if (tid == kThreads - kLoaders) item_count[parity] = count;
    if (count > 0) gather(0, count, dst);
  };

  // The S warps' counterpart of prepare(): two barriers of their own (id 2) for compact()'s
  // two loader-only ones, in the same interval between CTA barriers. compute-sanitizer's
  // racecheck orders shared accesses by how many barriers each warp has passed, whatever their
  // id: without these the loaders run two ahead per prepare(), and every loader access before a
  // __syncthreads() looks unordered with the S warps' accesses after it (item_count, the staged
  // output, the last tile's V against the staging writes). They order nothing the CTA
  // barriers do not already order; they keep every warp's count equal at each __syncthreads().
  auto match_prepare = [] {
    asm volatile("bar.sync 2, %0;\n" ::"n"(kThreads - kLoaders) : "memory");
    asm volatile("bar.sync 2, %0;\n" ::"n"(kThreads - kLoaders) : "memory");
  };

  // FP8: staging tile -> bf16 K tile (all threads). Thread (key, sub) converts code chunks
  // sub + 8j (block scale j) into bf16 chunks 2 (sub + 8j) and 2 (sub + 8j) + 1, and copies
  // rope chunk sub.
  auto dequantise = [&]() {
    const int sub = tid % 8, lrow0 = tid / 8;
#pragma unroll 1
    for (int pass = 0; pass < kKeys / (kThreads / 8); ++pass) {
      const int key = pass * (kThreads / 8) + lrow0;
      const unsigned char* raw = smem + L::kRaw + key * kFp8RowBytes;
      unsigned char* k = smem + L::kK;
#pragma unroll
      for (int j = 0; j < kDv / 128; ++j) {
        const int c = sub + 8 * j;
        const uint4 codes = *reinterpret_cast<const uint4*>(raw + c * 16);
        const float scale = reinterpret_cast<const float*>(raw + kDv)[j];
        const std::uint32_t w[4] = {codes.x, codes.y, codes.z, codes.w};
        std::uint32_t b[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          b[2 * i] = dequant_e4m3x2(w[i] & 0xffffu, scale);
          b[2 * i + 1] = dequant_e4m3x2(w[i] >> 16, scale);
        }
        *reinterpret_cast<uint4*>(k + swizzled<kRowBytes>(key, 2 * c)) =
            make_uint4(b[0], b[1], b[2], b[3]);
        *reinterpret_cast<uint4*>(k + swizzled<kRowBytes>(key, 2 * c + 1)) =
            make_uint4(b[4], b[5], b[6], b[7]);
      }
      *reinterpret_cast<uint4*>(k + swizzled<kRowBytes>(key, kPChunk + sub)) =
          *reinterpret_cast<const uint4*>(raw + kFp8RopeOffset + sub * 16);
    }
  };

  // Per-lane ldmatrix addresses. Every 8x8 matrix spans 8 rows starting at a multiple of 8, so a
  // row's swizzle key is lane & 7; fragment step j reads chunk 2j + (the lane's parity), which
  // lands at 8 (j / 4) + ((2 (j % 4) + parity) ^ key). Since 2j + parity = 2j | parity, that is
  // (2j ^ (key & 6)) + (parity ^ (key & 1)): every operand's address is one of Q's four
  // per-lane addresses plus a per-operand constant, which keeps the live registers down.
  const int g = lane / 4, t4 = lane % 4, x7 = lane & 7;
  const int a_row = lane % 16;                  // A (Q, P): rows lane % 16, parity lane / 16
  const int b_row = x7 + 8 * (lane / 16);       // B (K): keys lane % 8 + 8 (lane / 16) ...
  const int v_row = x7 + 8 * ((lane / 8) % 2);  // B (V^T): keys lane % 8 + 8 ((lane / 8) % 2)
  const int parity_a = ((lane / 16) ^ x7) & 1, parity_b = (((lane / 8) % 2) ^ x7) & 1;
  // S roles (warps 0..3): head rows 32 om.., keys 32 nh..; O roles (all warps): head rows
  // 32 om.., value columns 128 on..
  const int om = warp % 2, on = warp / 2, nh = (warp / 2) % 2;
  const std::uint32_t q_row = sQ + (32 * om + a_row) * kRowBytes + (parity_a << 4);
  const std::uint32_t x6 = (x7 & 6) << 4;
  auto step_addr = [&](int j) { return q_row + ((32u * j) ^ x6); };  // Q's step j (0..3)
  std::uint32_t q_addr[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) q_addr[j] = step_addr(j);
  // Offsets from q_addr (K tile 0) to K's B fragments, P's A fragments and V's B fragments.
  const std::uint32_t k_delta =
      (sK0 - sQ) + (32 * nh + b_row - 32 * om - a_row) * kRowBytes + (parity_b - parity_a) * 16;
  const std::uint32_t p_delta = (sK0 - sQ) + kPChunk * 16;
  const std::uint32_t v_delta = (sK0 - sQ) + (v_row - 32 * om - a_row) * kRowBytes + on * 256;
  const float scale_log2 = p.scale * kLog2e;

  // The CTA walks items (query row, head group) blockIdx.x, + gridDim.x, ...; `slot` counts
  // tiles across items and picks the bf16 K tile (slot & 1).
  int item = static_cast<int>(blockIdx.x);
  int parity = 0, slot = 0;
  if (!s_warp) {
    load_q(item);
    prepare(item, 0, kFp8 ? sRaw : sK0);
  } else {
    match_prepare();
  }
  while (item < items) {
    const int next = item + static_cast<int>(gridDim.x);
    const bool has_next = next < items;
    auto out_row = [&] {
      return static_cast<__nv_bfloat16*>(p.out) + std::int64_t(item / groups) * p.so0 +
             (item % groups) * kHeads * p.so1;
    };
    cp_async_wait_all();  // Q, the list and tile 0 of this item landed for this thread ...
    __syncthreads();      // ... and every thread; the previous item's output left shared
    const int count = item_count[parity];

    if (count == 0) {  // no valid index: zeros, as the generic kernel writes
      __nv_bfloat16* out = out_row();
      int etid = tid;  // opaque, as in the epilogue below
      asm volatile("" : "+r"(etid));
#pragma unroll
      for (int i = 0; i < kHeads * (kDv / 8) / kThreads; ++i) {
        const int c = i * kThreads + etid, r = c / (kDv / 8), chunk = c % (kDv / 8);
        *reinterpret_cast<uint4*>(out + r * p.so1 + chunk * 8) = make_uint4(0, 0, 0, 0);
      }
      if (has_next) {
        if (!s_warp) {
          load_q(next);
          prepare(next, parity ^ 1, kFp8 ? sRaw : sK0 + (slot & 1) * kTileBytes);
        } else {
          match_prepare();
        }
      }
      item = next;
      parity ^= 1;
      continue;
    }
    const int tiles = (count + kKeys - 1) / kKeys;

    float o[2][16][4];
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i / 64][(i / 4) % 16][i % 4] = 0.0f;
    // The S warps' running max (log2 units) and partial row sums of rows 32 om + 16 mt + g
    // (and + 8).
    float m_run[2][2], l_run[2][2];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      m_run[i / 2][i % 2] = -INFINITY;
      l_run[i / 2][i % 2] = 0.0f;
    }
    if constexpr (kFp8) dequantise();

    for (int t = 0; t < tiles; ++t, ++slot) {
      const std::uint32_t sK = sK0 + (kFp8 ? 0 : (slot & 1) * kTileBytes);
      if (kFp8 || t > 0) {
        if constexpr (!kFp8) cp_async_wait_all();  // tile t landed for this thread ...
        __syncthreads();  // ... and every thread; nobody still reads the tile gathered next
      }
      if (!s_warp) {
        const std::uint32_t dst = kFp8 ? sRaw : sK0 + ((slot + 1) & 1) * kTileBytes;
        if (t + 1 < tiles) {
          gather(t + 1, count, dst);
        } else if (has_next) {
          // This item's gathers are all issued: the list and the other K tile are free.
          prepare(next, parity ^ 1, dst);
        }
      } else if (t + 1 == tiles && has_next) {
        match_prepare();
      }
      const int live = min(kKeys, count - t * kKeys);
      // S = Q K^T for this warp's 32 heads x 32 keys.
      float sc[2][4][4];
      if (s_warp) {
#pragma unroll
        for (int i = 0; i < 32; ++i) sc[i / 16][(i / 4) % 4][i % 4] = 0.0f;
        const std::uint32_t k_off = k_delta + (sK - sK0);
#pragma unroll
        for (int kk = 0; kk < kDqk / 16; ++kk) {
          std::uint32_t a[2][4], b0[4], b1[4];
          ldmatrix_x4(a[0], q_addr[kk % 4] + (kk / 4) * 128);
          ldmatrix_x4(a[1], q_addr[kk % 4] + 16 * kRowBytes + (kk / 4) * 128);
          ldmatrix_x4(b0, q_addr[kk % 4] + k_off + (kk / 4) * 128);
          ldmatrix_x4(b1, q_addr[kk % 4] + k_off + 16 * kRowBytes + (kk / 4) * 128);
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            mma_bf16(sc[mt][0], a[mt], b0[0], b0[1]);
            mma_bf16(sc[mt][1], a[mt], b0[2], b0[3]);
            mma_bf16(sc[mt][2], a[mt], b1[0], b1[1]);
            mma_bf16(sc[mt][3], a[mt], b1[2], b1[3]);
          }
        }

        // Scores in log2 units; keys past the list's end are -inf. Row maxima of the warp's 32
        // keys (a row's scores are spread over the 4 lanes of a quad) go to the other key half.
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int key = 32 * nh + 8 * nt + 2 * t4 + (e & 1);
              sc[mt][nt][e] = key < live ? sc[mt][nt][e] * scale_log2 : -INFINITY;
              mx[e / 2] = fmaxf(mx[e / 2], sc[mt][nt][e]);
            }
          }
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            mx[hf] = quad_max(mx[hf]);
            if (t4 == 0) row_max_x[nh * kHeads + 32 * om + 16 * mt + g + 8 * hf] = mx[hf];
          }
        }
      }
      __syncthreads();  // row maxima published; nobody reads K's rope columns or Q any more
      if (!s_warp && t + 1 == tiles && has_next) load_q(next);

      // Both key halves' warps derive the same new max (every tile holds a valid key, so it is
      // finite); P goes over the rope columns, rows = heads, chunk 64 + key / 8.
      if (s_warp) {
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const std::uint32_t p_row = sK + (32 * om + 16 * mt + g) * kRowBytes + 4 * t4;
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int r = 32 * om + 16 * mt + g + 8 * hf;
            const float m_new = fmaxf(m_run[mt][hf], fmaxf(row_max_x[r], row_max_x[kHeads + r]));
            const float alpha = exp2_approx(m_run[mt][hf] - m_new);
            m_run[mt][hf] = m_new;
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
              const float p0 = exp2_approx(sc[mt][nt][2 * hf] - m_new);
              const float p1 = exp2_approx(sc[mt][nt][2 * hf + 1] - m_new);
              sum += p0 + p1;
              const std::uint32_t chunk = (kPChunk + 4 * nh + nt) ^ g;  // row & 7 == g
              asm volatile(
                  "st.shared.b32 [%0], %1;\n" ::"r"(p_row + 8 * hf * kRowBytes + (chunk << 4)),
                  "r"(pack_bf16(p0, p1))
                  : "memory");
            }
            l_run[mt][hf] = l_run[mt][hf] * alpha + sum;
            if (nh == 0 && t4 == 0) alpha_x[r] = alpha;
          }
        }
      }
      __syncthreads();  // P and the corrections published

      // O = O · alpha + P V for heads 32 om.., value columns 128 on..
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const float a0 = alpha_x[32 * om + 16 * mt + g], a1 = alpha_x[32 * om + 16 * mt + g + 8];
#pragma unroll
        for (int nt = 0; nt < 16; ++nt) {
          o[mt][nt][0] *= a0;
          o[mt][nt][1] *= a0;
          o[mt][nt][2] *= a1;
          o[mt][nt][3] *= a1;
        }
      }
      {
        const std::uint32_t p_off = p_delta + (sK - sK0), v_off = v_delta + (sK - sK0);
        // Unrolled by two only: V fragments hoisted across all four steps spill registers.
#pragma unroll 2
        for (int ks = 0; ks < kKeys / 16; ++ks) {
          std::uint32_t pa[2][4];
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            ldmatrix_x4(pa[mt], step_addr(ks) + p_off + mt * 16 * kRowBytes);
          }
#pragma unroll
          for (int np = 0; np < 8; ++np) {
            std::uint32_t vb[4];
            ldmatrix_x4_trans(vb, q_addr[np % 4] + v_off + ks * 16 * kRowBytes + (np / 4) * 128);
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
              mma_bf16(o[mt][2 * np], pa[mt], vb[0], vb[1]);
              mma_bf16(o[mt][2 * np + 1], pa[mt], vb[2], vb[3]);
            }
          }
        }
      }

      if constexpr (kFp8) {
        if (t + 1 < tiles) {
          cp_async_wait_all();
          __syncthreads();  // P V done with the K tile; the next raw tile visible
          dequantise();
        }
      }
    }

    // Row sums: each S lane holds a partial over its columns of its key half.
    if (s_warp) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int mt = i / 2, hf = i % 2;
        const float l = quad_sum(l_run[mt][hf]);
        if (t4 == 0) row_sum_x[nh * kHeads + 32 * om + 16 * mt + g + 8 * hf] = l;
      }
    }
    __syncthreads();  // sums published; the last K tile is free for the output

    // Normalise, stage as bf16 (rows of 64 swizzled chunks) in the last K tile (Q's space may
    // already be receiving the next item's Q), then 16-byte coalesced stores.
    unsigned char* staged = smem + L::kK + (kFp8 ? 0 : ((slot - 1) & 1) * kTileBytes);
    // The lane index made opaque, so that the compiler does not hoist (and spill) the 64
    // per-lane staging addresses out of the item loop.
    int ln = lane;
    asm volatile("" : "+r"(ln));
    const int eg = ln / 4, et4 = ln % 4;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int r = 32 * om + 16 * mt + eg + 8 * hf;
        const float inv = 1.0f / (row_sum_x[r] + row_sum_x[kHeads + r]);
#pragma unroll
        for (int nt = 0; nt < 16; ++nt) {
          *reinterpret_cast<std::uint32_t*>(staged + swizzled<kOutRowBytes>(r, 16 * on + nt) +
                                            4 * et4) =
              pack_bf16(o[mt][nt][2 * hf] * inv, o[mt][nt][2 * hf + 1] * inv);
        }
      }
    }
    __syncthreads();
    __nv_bfloat16* out = out_row();
    int etid = tid;
    asm volatile("" : "+r"(etid));
#pragma unroll
    for (int i = 0; i < kHeads * (kDv / 8) / kThreads; ++i) {
      const int c = i * kThreads + etid, r = c / (kDv / 8), chunk = c % (kDv / 8);
      *reinterpret_cast<uint4*>(out + r * p.so1 + chunk * 8) =
          *reinterpret_cast<const uint4*>(staged + swizzled<kOutRowBytes>(r, chunk));
    }
    item = next;
    parity ^= 1;
  }
}

template <bool kFp8>
cudaError_t launch(const SparseMlaParams& p, cudaStream_t stream) {
  constexpr int bytes = Smem<kFp8>::kBytes;
  const cudaError_t attr = cudaFuncSetAttribute(sparse_mla_sm90_kernel<kFp8>,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (attr != cudaSuccess) return attr;
  int device = 0, sms = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (const cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      e != cudaSuccess) {
    return e;
  }
  // One CTA per SM (shared memory allows no more), each walking items gridDim.x apart.
  const std::int64_t items = p.n * (p.heads / kHeads);
  const unsigned blocks = static_cast<unsigned>(std::min<std::int64_t>(items, sms));
  sparse_mla_sm90_kernel<kFp8><<<blocks, kThreads, bytes, stream>>>(p);
  return cudaGetLastError();
}

bool aligned16(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; }

}  // namespace

bool sparse_mla_sm90_supports(const SparseMlaParams& p) {
  return p.d_qk == kDqk && p.d_v == kDv && p.heads > 0 && p.heads % kHeads == 0 && p.topk >= 0 &&
         p.topk <= kMaxTopk && p.n * (p.heads / kHeads) <= 0x7fffffff && aligned16(p.q) &&
         aligned16(p.kv) && aligned16(p.out) && p.sq0 % 8 == 0 && p.sq1 % 8 == 0 &&
         p.so0 % 8 == 0 && p.so1 % 8 == 0 && p.kv_row_bytes % 16 == 0 &&
         p.kv_row_bytes >= (p.fp8 ? kFp8RowBytes : kRowBytes);
}

cudaError_t launch_sparse_mla_sm90(const SparseMlaParams& p, cudaStream_t stream) {
  if (!sparse_mla_sm90_supports(p)) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  return p.fp8 ? launch<true>(p, stream) : launch<false>(p, stream);
}

}  // namespace dsattn::ops::cuda
