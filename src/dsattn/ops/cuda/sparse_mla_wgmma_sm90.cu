// Sparse MLA attention for DeepSeek-V3.2's absorbed shapes (q/k 576 = 512 latent + 64 rope,
// values the first 512 columns of each cached row; bf16 or FP8 cache rows) on Hopper's warpgroup
// MMAs (wgmma, sm_90a), warp-specialised:
//
// - A CTA owns one query row and a group of 64 heads (the M of every product; a last group of
//   fewer heads runs with zero query rows in place of the missing ones and does not store them).
//   The row's keys are visited in blocks of 64 index entries, two blocks (a pair) at a time: block
//   2i in key buffer 0, block 2i + 1 in key buffer 1, each 64 keys × 576 in nine 128-byte-swizzled
//   sub-tiles of 64 columns.
// - The producer warpgroup copies Q once, finds the last valid index entry (blocks past it are not
//   visited: a context shorter than top-k leaves a -1 tail), and gathers the cached rows a block
//   names with 16-byte cp.async (an invalid entry, -1 or outside the cache, gives a zero row and a
//   "not valid" flag the consumers mask with). FP8 rows (656 bytes): the codes land by 8-byte
//   cp.async in the upper half of their 16-byte destination chunks and are expanded to bf16 in
//   place (up to three halves in flight), so there is no staging buffer and no bf16 copy of the
//   cache. Each buffer is announced in two halves, sub-tiles 0-3 (values 0-255) and 4-8 (values
//   256-511 and the rope columns), each with its own landed/released mbarrier, so a half is
//   refilled as soon as its last reader is done.
// - Consumer warpgroup c computes S_c = Q·K_cᵀ for its block (64 × 64, 36 products from shared
//   memory) and the online softmax; the two share one running maximum per head, consumer 0 going
//   first and consumer 1 folding its block into consumer 0's maximum. Each then owns half of the
//   output (values 256c ... 256c + 255, 128 f32 accumulators a thread) and adds both blocks to it:
//   its own P from registers (the accumulator layout packs into wgmma's A operand) and the other
//   consumer's P from shared memory, with V read MN-major straight from the key buffers, so
//   nothing is transposed. Consumer 0's P lives in buffer 0's rope sub-tile, which only S_0 reads.
// - While one consumer runs its softmax the other's products keep the tensor cores busy; consumer
//   0 issues the next pair's S_0 behind its last P·V.
//
// Registers: the producer drops to 56 per thread (88 with FP8 rows) so that the consumers can
// hold 224 (208): O 128, S 32, P 16. Shared memory: Q 72 KB (the output is staged there at the
// end), two key buffers of 72 KB, consumer 1's P 8 KB.
#include <algorithm>
#include <cmath>

#include "dsattn/ops/cuda/barriers.cuh"
#include "dsattn/ops/cuda/common.cuh"
#include "dsattn/ops/cuda/ptx.cuh"
#include "dsattn/ops/cuda/swizzled_copy.cuh"
#include "dsattn/ops/cuda/wgmma.cuh"

namespace dsattn::ops::cuda {

namespace {

using namespace ptx;       // NOLINT: the PTX wrappers read as intrinsics
using namespace barriers;  // NOLINT

constexpr int kHeads = 64;  // query heads per CTA
constexpr int kKeys = 64;   // index entries per block
constexpr int kDqk = 576, kDv = 512;
constexpr int kSubs = kDqk / 64;  // sub-tiles of 64 columns (128-byte rows)
constexpr int kLeftSubs = 4;      // sub-tiles 0-3 (values 0-255); 4-8 are the right half
constexpr int kRopeSub = kSubs - 1;
constexpr int kSub = 64 * 128;  // a sub-tile of 64 rows
// FP8 cache rows (cache/cache_format.h): 512 e4m3 codes, 4 f32 scales, 64 bf16 rope values.
constexpr int kFp8ScaleOffset = kDv, kFp8RopeOffset = kDv + 4 * (kDv / 128);
constexpr int kFp8RowBytes = kFp8RopeOffset + 2 * (kDqk - kDv);
constexpr int kThreads = 384;  // producer warpgroup, then two consumers
// Registers per thread after setmaxnreg (128 · producer + 256 · consumer <= 65,536): the FP8
// producer expands codes in registers and needs more.
template <bool kFp8>
constexpr int kProducerRegs = kFp8 ? 88 : 56;
template <bool kFp8>
constexpr int kConsumerRegs = kFp8 ? 208 : 224;
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
// The running maximum (of scaled scores, in log2 units) before any key: finite, so that a block
// whose keys are all masked gives exp2(-inf - kMaxInit) = 0 and a correction of exp2(0) = 1.
constexpr float kMaxInit = -1e30f;

// The role lambdas are inlined so that the arrays they touch (accumulators, gather offsets) stay
// in registers rather than being passed through the stack.
#define DSATTN_INLINE __attribute__((always_inline))

struct alignas(1024) Smem {
  std::uint8_t q[kSubs][kSub];     // Q; the output once the products are done
  std::uint8_t k[2][kSubs][kSub];  // the pair's two blocks; k[0][kRopeSub] then holds P_0
  std::uint8_t p1[kSub];           // P_1, consumer 1's probabilities
  std::uint8_t valid[2][kKeys];    // whether each index entry of the pair names a cached row
  float2 row_max[32];              // the shared running maximum, rows (r, r + 8) per quad
  float2 row_sum[2][32];           // each consumer's row sums, for the other
  int last_valid[4];               // per producer warp
  // Q landed (with the block count); each half (left, right) of each buffer landed / released;
  // the pair's valid flags written; consumer c's running maximum published (max_from[c]).
  std::uint64_t q_full, k_full[2][2], k_free[2][2], valid_full, max_from[2];
};
constexpr int kSmemBytes = sizeof(Smem) + 1024;  // + room to align the allocation
static_assert(kSmemBytes <= 227 * 1024, "over the sm_90 shared-memory limit per block");

// Named barriers (0 is __syncthreads). The hand-overs of the running maximum from one consumer to
// the other are mbarriers (max_from): an arrival orders the publisher's stores before the waiter's
// loads for compute-sanitizer's racecheck too, which a named barrier's arrive does not.
enum Barrier : int {
  kPReady = 1,  // P_0 and P_1 are in shared memory (a full barrier: see the consumers)
  kSums,        // both consumers' row sums are published, and all their products are done
  kConsumer0,   // consumer 0 alone (then kConsumer0 + 1: consumer 1)
  kProducer = kConsumer0 + 2,
};

__device__ __forceinline__ void store_shared(std::uint32_t addr, std::uint32_t value) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(value) : "memory");
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// An index entry, or `otherwise` when !valid (without a branch), kept in program order with the
// barrier waits around it: an ordinary read-only load may be hoisted above the waits of earlier
// blocks, holding values of a whole pair in registers at once.
__device__ __forceinline__ std::int32_t load_global_i32(const std::int32_t* p, bool valid,
                                                        std::int32_t otherwise) {
  std::int32_t v;
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %2, 0;\nmov.b32 %0, %3;\n"
      "@p ld.global.nc.b32 %0, [%1];\n}\n"
      : "=r"(v)
      : "l"(p), "r"(static_cast<int>(valid)), "r"(otherwise));
  return v;
}

// 8 bytes global -> shared (zero-filled when !valid), as ptx::cp_async16 does 16.
__device__ __forceinline__ void cp_async8(std::uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 8 : 0));
}

// Eight e4m3 codes (w, low byte first) times `scale`, rounded to bf16 as latent_fp8.cuh's
// dequant_e4m3x2 does (e4m3 -> f16 -> f32 exactly, one f32 product, round to nearest even), stored
// as one 16-byte chunk at shared address `addr`. One asm block: written as separate conversions,
// the producer's code needs more registers than it has.
__device__ __forceinline__ void dequant8_to_shared(std::uint32_t addr, uint2 w, float scale) {
  asm volatile(
      "{\n.reg .b16 c<4>, x<8>;\n.reg .b32 h<4>, o<4>;\n.reg .f32 f<8>;\n"
      "mov.b32 {c0, c1}, %1;\nmov.b32 {c2, c3}, %2;\n"
      "cvt.rn.f16x2.e4m3x2 h0, c0;\ncvt.rn.f16x2.e4m3x2 h1, c1;\n"
      "cvt.rn.f16x2.e4m3x2 h2, c2;\ncvt.rn.f16x2.e4m3x2 h3, c3;\n"
      "mov.b32 {x0, x1}, h0;\nmov.b32 {x2, x3}, h1;\nmov.b32 {x4, x5}, h2;\nmov.b32 {x6, x7}, h3;\n"
      "cvt.f32.f16 f0, x0;\ncvt.f32.f16 f1, x1;\ncvt.f32.f16 f2, x2;\ncvt.f32.f16 f3, x3;\n"
      "cvt.f32.f16 f4, x4;\ncvt.f32.f16 f5, x5;\ncvt.f32.f16 f6, x6;\ncvt.f32.f16 f7, x7;\n"
      "mul.rn.f32 f0, f0, %3;\nmul.rn.f32 f1, f1, %3;\nmul.rn.f32 f2, f2, %3;\n"
      "mul.rn.f32 f3, f3, %3;\nmul.rn.f32 f4, f4, %3;\nmul.rn.f32 f5, f5, %3;\n"
      "mul.rn.f32 f6, f6, %3;\nmul.rn.f32 f7, f7, %3;\n"
      "cvt.rn.bf16x2.f32 o0, f1, f0;\ncvt.rn.bf16x2.f32 o1, f3, f2;\n"
      "cvt.rn.bf16x2.f32 o2, f5, f4;\ncvt.rn.bf16x2.f32 o3, f7, f6;\n"
      "st.shared.v4.b32 [%0], {o0, o1, o2, o3};\n}\n" ::"r"(addr),
      "r"(w.x), "r"(w.y), "f"(scale)
      : "memory");
}

__device__ __forceinline__ uint2 load_shared_v2(std::uint32_t addr) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr) : "memory");
  return v;
}

// A block's index entries of thread t: rows r0 + 16 i (r0 = t / 8) of block `block`, each the byte
// offset of its cached row (0 when the entry is invalid) and a bit of `ok` (bit i: valid).
struct RowSources {
  std::int64_t offset[4];
  unsigned ok;
};

__device__ __forceinline__ RowSources row_sources(const SparseMlaParams& p,
                                                  const std::int32_t* indices, int entries,
                                                  int block, int t) {
  RowSources r{{}, 0};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int entry = block * kKeys + t / 8 + 16 * i;
    const std::int32_t slot = load_global_i32(indices + entry, entry < entries, -1);
    const bool ok = slot >= 0 && slot < p.slots;
    r.ok |= static_cast<unsigned>(ok) << i;
    r.offset[i] = ok ? slot * p.kv_row_bytes : 0;
  }
  return r;
}

// The halves of a pair in the order the consumers read them: S_0 left then right, S_1 right then
// left; as (buffer, half).
__device__ __forceinline__ int half_buffer(int k) { return k == 1 || k == 3; }
__device__ __forceinline__ int half_side(int k) { return k == 1 || k == 2; }

// Where thread t's chunks sit in a sub-tile: chunk t % 8 of row t / 8 (swizzled); rows t / 8 + 16 i
// follow 2,048 bytes apart.
__device__ __forceinline__ std::uint32_t chunk_offset(int t) {
  const int r0 = t / 8, c = t % 8;
  return r0 * 128 + ((c ^ (r0 % 8)) << 4);
}

// The shared address of the chunk at `offset` (chunk_offset) of sub-tile j, row r0 + 16 i, of
// buffer b.
__device__ __forceinline__ std::uint32_t chunk_address(Smem& sm, int b, int j, int i,
                                                       std::uint32_t offset) {
  return smem_addr(sm.k[b][j]) + offset + i * 2048;
}

// Publishes the pair's valid flags (thread t's rows; one arrival per 8-thread copy group). Called
// once the pair's releases of the previous pair have been waited for: both consumers have masked
// it by then.
__device__ __forceinline__ void publish_valid(Smem& sm, unsigned ok0, unsigned ok1, int t) {
  if (t % 8 != 0) return;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    sm.valid[0][t / 8 + 16 * i] = (ok0 >> i) & 1u;
    sm.valid[1][t / 8 + 16 * i] = (ok1 >> i) & 1u;
  }
  mbarrier_arrive(smem_addr(&sm.valid_full));
}

__device__ __forceinline__ void wait_free(Smem& sm, int b, int side, int pair) {
  if (pair > 0) mbarrier_wait(smem_addr(&sm.k_free[b][side]), (pair - 1) & 1);
}

// bf16 rows: 16-byte cp.async straight into the swizzled buffers, each half announced when its
// copies land (no waiting here).
__device__ __forceinline__ void gather_bf16_blocks(const SparseMlaParams& p, Smem& sm,
                                                   const std::int32_t* indices, int entries,
                                                   int blocks, int t) {
  const auto* kv = static_cast<const std::uint8_t*>(p.kv) + 16 * (t % 8);
  const std::uint32_t offset = chunk_offset(t);
  for (int pair = 0; 2 * pair < blocks; ++pair) {
    unsigned ok[2] = {0, 0};
    const auto gather = [&](int b, int side) DSATTN_INLINE {
      // The slots are read again for each half (from L1) rather than kept: the producer runs on
      // few registers.
      const __nv_bfloat16* src[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int entry = (2 * pair + b) * kKeys + t / 8 + 16 * i;
        const std::int32_t slot = entry < entries ? __ldg(indices + entry) : -1;
        const bool valid = slot >= 0 && slot < p.slots;
        ok[b] |= static_cast<unsigned>(valid) << i;
        src[i] = reinterpret_cast<const __nv_bfloat16*>(kv + (valid ? slot * p.kv_row_bytes : 0));
      }
      wait_free(sm, b, side, pair);
      const int sub0 = side == 0 ? 0 : kLeftSubs, sub1 = side == 0 ? kLeftSubs : kSubs;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = sub0; j < sub1; ++j) {
          cp_async16(chunk_address(sm, b, j, i, offset), src[i] + j * 64, (ok[b] >> i) & 1u);
        }
      }
      mbarrier_arrive_on_copies(smem_addr(&sm.k_full[b][side]));
    };
    // In the order the consumers read: S_0 left then right, S_1 right then left.
    gather(0, 0);
    gather(1, 1);
    gather(0, 1);
    gather(1, 0);
    publish_valid(sm, ok[0], ok[1], t);
  }
  cp_async_commit();
  cp_async_wait_all();
}

// FP8 rows: sub-tile j < 8 holds values 64 j ...: chunk c is 8 codes at byte 64 j + 8 c times
// scale j / 2; sub-tile 8 is the bf16 rope part, copied as it is. The 8 code bytes land
// (cp.async) in the upper half of their 16-byte destination chunk and are expanded to 8 bf16 in
// place, so no staging buffer is needed; the half's two scales of the row land in the lower half
// of its first chunk, read before that chunk is expanded. An invalid row is zeros (codes and
// scales 0).
//
// Up to three halves are in flight. Which half may be issued before which is expanded follows
// from what its release waits for (the consumers' order): in pair P (halves a = 4P ...),
//   a + 1 (buffer 1 right) and a + 2 (buffer 0 right) wait for pair P - 1 only;
//   a + 3 (buffer 1 left) waits for consumer 0 to have started S_0 of pair P: a expanded;
//   a + 4 (next pair, buffer 0 left) waits for P_0·V_0 of pair P: a and a + 2 expanded.
// Hence, per pair: issue a + 1, a + 2; expand a; issue a + 3; expand a + 1, a + 2, a + 3; issue
// a + 4 (which may wait for consumer 0's P_0·V_0: a + 3 goes first, so S_1 does not wait for it).
// The pair's valid flags are published once a + 3 is issued (its wait orders them after both
// consumers' masks of pair P - 1).
__device__ __forceinline__ void gather_fp8_blocks(const SparseMlaParams& p, Smem& sm,
                                                  const std::int32_t* indices, int entries,
                                                  int blocks, int t) {
  const auto* kv = static_cast<const std::uint8_t*>(p.kv);
  const int c = t % 8;
  const std::uint32_t offset = chunk_offset(t);
  const int halves = 4 * ((blocks + 1) / 2);
  unsigned ok[2] = {0, 0};
  const auto issue = [&](int h) DSATTN_INLINE {
    const int pair = h / 4, k = h % 4, b = half_buffer(k), side = half_side(k);
    const RowSources rows = row_sources(p, indices, entries, 2 * pair + b, t);
    if (b == 0) {
      ok[0] = rows.ok;
    } else {
      ok[1] = rows.ok;
    }
    wait_free(sm, b, side, pair);
    const int sub0 = side == 0 ? 0 : kLeftSubs;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const bool valid = (rows.ok >> i) & 1u;
      const std::uint8_t* row = kv + rows.offset[i];
      cp_async8(chunk_address(sm, b, sub0, i, offset), row + kFp8ScaleOffset + 8 * side, valid);
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        cp_async8(chunk_address(sm, b, sub0 + jj, i, offset) + 8, row + (sub0 + jj) * 64 + 8 * c,
                  valid);
      }
      if (side == 1) {
        cp_async16(chunk_address(sm, b, kRopeSub, i, offset), row + kFp8RopeOffset + 16 * c, valid);
      }
    }
    cp_async_commit();
  };
  const auto expand = [&](int h) DSATTN_INLINE {
    const int k = h % 4, b = half_buffer(k), side = half_side(k);
    const int sub0 = side == 0 ? 0 : kLeftSubs;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint2 sc = load_shared_v2(chunk_address(sm, b, sub0, i, offset));
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const std::uint32_t chunk = chunk_address(sm, b, sub0 + jj, i, offset);
        dequant8_to_shared(chunk, load_shared_v2(chunk + 8), __uint_as_float(jj < 2 ? sc.x : sc.y));
      }
    }
    wgmma::fence_proxy_async_smem();  // generic-proxy stores the products read
    mbarrier_arrive(smem_addr(&sm.k_full[b][side]));
  };
  if (halves > 0) issue(0);
#pragma unroll 1
  for (int a = 0; a < halves; a += 4) {
    issue(a + 1);
    issue(a + 2);
    cp_async_wait<2>();  // a (and Q's copies, committed with it)
    expand(a);
    issue(a + 3);
    publish_valid(sm, ok[0], ok[1], t);
    cp_async_wait<2>();
    expand(a + 1);
    cp_async_wait<1>();
    expand(a + 2);
    cp_async_wait<0>();
    expand(a + 3);  // before a + 4's wait for P_0·V_0, so that S_1 need not wait for it
    if (a + 4 < halves) issue(a + 4);
  }
  cp_async_commit();  // Q's copies, where no block was gathered
  cp_async_wait_all();
}

// The producer: Q, the block count, then every pair's gathers and valid flags.
template <bool kFp8>
__device__ __forceinline__ void produce(const SparseMlaParams& p, Smem& sm, std::int64_t row,
                                        int group, int heads_here, int t) {
  const auto* q = static_cast<const __nv_bfloat16*>(p.q) + row * p.sq0 + group * kHeads * p.sq1;
  copy_rows_swizzled<kHeads, kSubs>(smem_addr(sm.q), q, p.sq1, heads_here, t);
  mbarrier_arrive_on_copies(smem_addr(&sm.q_full));

  // The entries the row reads (topk_length clamps them; a split reads its part of them, as a list
  // of its own), and the last valid one: entries past it are never gathered.
  const std::int32_t* indices = p.indices + row * p.stride_indices;
  int entries = p.topk_length == nullptr
                    ? p.topk
                    : min(max(__ldg(p.topk_length + row * p.s_topk_length), 0), p.topk);
  if (p.splits > 1) {
    const int begin = static_cast<int>(blockIdx.y) * p.split_entries;
    indices += begin;
    entries = min(max(entries - begin, 0), p.split_entries);
  }
  int last = -1;
  for (int i = t; i < entries; i += 128) {
    const std::int32_t slot = __ldg(indices + i);
    if (slot >= 0 && slot < p.slots) last = i;
  }
  last = __reduce_max_sync(0xffffffffu, last);
  if (t % 32 == 0) sm.last_valid[t / 32] = last;
  named_sync(kProducer, 128);
  last = max(max(sm.last_valid[0], sm.last_valid[1]), max(sm.last_valid[2], sm.last_valid[3]));
  const int blocks = (last + kKeys) / kKeys;           // (last + 1) rounded up
  if (t == 0) mbarrier_arrive(smem_addr(&sm.q_full));  // publishes the count with Q

  if constexpr (kFp8) {
    gather_fp8_blocks(p, sm, indices, entries, blocks, t);
  } else {
    gather_bf16_blocks(p, sm, indices, entries, blocks, t);
  }
}

// Consumer warpgroup kC of the CTA (see the top of the file).
template <int kC>
__device__ __forceinline__ void consume(const SparseMlaParams& p, Smem& sm, std::int64_t row,
                                        int group, int heads_here, int t) {
  const int warp = t / 32, g = (t % 32) / 4, tq = t % 4;
  const int r_lo = 16 * warp + g;  // this thread's rows (heads of the group): r_lo, r_lo + 8
  const float scale_log2 = p.scale * kLog2e;

  // s[i] and o[i] hold row r_lo + 8 ((i / 2) % 2), column 8 (i / 4) + 2 tq + i % 2 (of the block,
  // of this consumer's half of the output).
  float s[32], o[128];
  std::uint32_t pf[16];  // P as bf16 pairs, the A operand of P·V
  float row_max[2] = {kMaxInit, kMaxInit}, row_sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.0f;

  const std::uint32_t q_base = smem_addr(sm.q);
  const std::uint32_t p0_base = smem_addr(sm.k[0][kRopeSub]), p1_base = smem_addr(sm.p1);
  const auto wait_full = [&](int b, int half, int pair) DSATTN_INLINE {
    mbarrier_wait(smem_addr(&sm.k_full[b][half]), pair & 1);
    wgmma::fence_proxy_async_smem();  // the gathers were generic-proxy writes
  };
  const auto issue_qk = [&](int b, int sub0, int sub1, bool first) DSATTN_INLINE {
    wgmma::fence();
#pragma unroll
    for (int j = sub0; j < sub1; ++j) {
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
        wgmma::mma_m64n64k16_bf16_ss(s, wgmma::desc_k_major_sw128(q_base + j * kSub + ks * 32),
                                     wgmma::desc_k_major_sw128(smem_addr(sm.k[b][j]) + ks * 32),
                                     !(first && j == sub0 && ks == 0));
      }
    }
    wgmma::commit_group();
  };
  // O += P_b · V_b[:, 256 kC ...], P from registers (rs) or from shared memory at p_base.
  const auto issue_pv_rs = [&](int b) DSATTN_INLINE {
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
#pragma unroll
      for (int nb = 0; nb < 2; ++nb) {
        wgmma::mma_m64n128k16_bf16_rs(
            *reinterpret_cast<float(*)[64]>(o + 64 * nb), pf + 4 * kk,
            wgmma::desc_mn_major_sw128(smem_addr(sm.k[b][4 * kC + 2 * nb]) + kk * 2048, kSub));
      }
    }
    wgmma::commit_group();
  };
  const auto issue_pv_ss = [&](int b, std::uint32_t p_base) DSATTN_INLINE {
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
#pragma unroll
      for (int nb = 0; nb < 2; ++nb) {
        wgmma::mma_m64n128k16_bf16_ss_mn(
            *reinterpret_cast<float(*)[64]>(o + 64 * nb),
            wgmma::desc_k_major_sw128(p_base + kk * 32),
            wgmma::desc_mn_major_sw128(smem_addr(sm.k[b][4 * kC + 2 * nb]) + kk * 2048, kSub));
      }
    }
    wgmma::commit_group();
  };
  const auto mask = [&](int b, int pair) DSATTN_INLINE {
    mbarrier_wait(smem_addr(&sm.valid_full), pair & 1);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const std::uint8_t* v = sm.valid[b] + 8 * j + 2 * tq;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (!v[e]) s[4 * j + e] = s[4 * j + 2 + e] = -INFINITY;
      }
    }
  };
  // Online softmax of the block in s against the running maximum `base_max` (this consumer's own
  // for consumer 0, consumer 0's fresh one for consumer 1): leaves the probabilities in s, the new
  // maximum in row_max, and rescales O and the row sums to it.
  const auto softmax = [&](const float(&base_max)[2]) DSATTN_INLINE {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 8; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * hf], s[4 * j + 2 * hf + 1]));
      const float new_max = fmaxf(base_max[hf], quad_max(mx) * scale_log2);
      const float correction = exp2_approx(row_max[hf] - new_max);
      row_max[hf] = new_max;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[4 * j + 2 * hf + e];
          x = exp2_approx(fmaf(x, scale_log2, -new_max));
          sum += x;
        }
      }
      row_sum[hf] = row_sum[hf] * correction + sum;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        o[4 * j + 2 * hf] *= correction;
        o[4 * j + 2 * hf + 1] *= correction;
      }
    }
  };
  // Stores this consumer's running maximum for the other (one thread a quad) and arrives on
  // max_from[kC]: 32 arrivals complete the phase.
  const auto publish_max = [&]() DSATTN_INLINE {
    __syncwarp();  // the quad has read the previous value
    if (tq == 0) {
      sm.row_max[t / 4] = make_float2(row_max[0], row_max[1]);
      mbarrier_arrive(smem_addr(&sm.max_from[kC]));
    }
  };
  // P (times `scale` per row) as bf16 into a K-major swizzled 64 × 64 tile at `base`.
  const auto store_p = [&](std::uint32_t base, const float(&scale)[2]) DSATTN_INLINE {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int r = r_lo + 8 * hf;
        store_shared(base + wgmma::swizzled_offset(r, 16 * j + 4 * tq),
                     pack_bf16(s[4 * j + 2 * hf] * scale[hf], s[4 * j + 2 * hf + 1] * scale[hf]));
      }
    }
  };
  const auto pack_probabilities = [&]() DSATTN_INLINE {
#pragma unroll
    for (int i = 0; i < 16; ++i) pf[i] = pack_bf16(s[2 * i], s[2 * i + 1]);
  };

  mbarrier_wait(smem_addr(&sm.q_full), 0);
  wgmma::fence_proxy_async_smem();
  const int blocks = [&] {
    const int last =
        max(max(sm.last_valid[0], sm.last_valid[1]), max(sm.last_valid[2], sm.last_valid[3]));
    return (last + kKeys) / kKeys;
  }();
  const int pairs = (blocks + 1) / 2;

  if constexpr (kC == 0) {
    if (pairs > 0) {
      wait_full(0, 0, 0);
      issue_qk(0, 0, kLeftSubs, true);
      wait_full(0, 1, 0);
      issue_qk(0, kLeftSubs, kSubs, false);
      wgmma::wait_group<0>();
      wgmma::fence_operands(s);
    }
    for (int pair = 0; pair < pairs; ++pair) {
      mask(0, pair);
      softmax(row_max);
      publish_max();
      pack_probabilities();
      issue_pv_rs(0);
      wgmma::wait_group<0>();
      wgmma::fence_operands(o);
      wgmma::fence_operands(pf);
      mbarrier_arrive(smem_addr(&sm.k_free[0][0]));

      // Consumer 1 has folded its block in: move P_0, O and the sums to the pair's maximum.
      mbarrier_wait(smem_addr(&sm.max_from[1]), pair & 1);
      const float2 m = sm.row_max[t / 4];
      const float rescale[2] = {exp2_approx(row_max[0] - m.x), exp2_approx(row_max[1] - m.y)};
      row_max[0] = m.x;
      row_max[1] = m.y;
      store_p(p0_base, rescale);
      wgmma::fence_proxy_async_smem();
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        row_sum[hf] *= rescale[hf];
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          o[4 * j + 2 * hf] *= rescale[hf];
          o[4 * j + 2 * hf + 1] *= rescale[hf];
        }
      }
      // Both consumers wait here (not an arrive on one side): besides handing over the two P
      // tiles, the barrier orders this pair's reads of the shared maximum before the next pair's
      // writes.
      role_sync(kPReady, 256);
      // P_0 lies in buffer 0's right half: its refill waits for these stores too (an arrival
      // orders them before the producer's copies, also for racecheck).
      mbarrier_arrive(smem_addr(&sm.k_free[0][1]));
      issue_pv_ss(1, p1_base);
      if (pair + 1 < pairs) {
        // The next pair's S_0 queues behind P_1·V_1.
        wait_full(0, 0, pair + 1);
        issue_qk(0, 0, kLeftSubs, true);
        wgmma::wait_group<1>();
        wgmma::fence_operands(o);
        mbarrier_arrive(smem_addr(&sm.k_free[1][0]));
        wait_full(0, 1, pair + 1);
        issue_qk(0, kLeftSubs, kSubs, false);
        wgmma::wait_group<0>();
        wgmma::fence_operands(s);
      } else {
        wgmma::wait_group<0>();
        wgmma::fence_operands(o);
        mbarrier_arrive(smem_addr(&sm.k_free[1][0]));
      }
    }
  } else {
    for (int pair = 0; pair < pairs; ++pair) {
      wait_full(1, 1, pair);
      issue_qk(1, kLeftSubs, kSubs, true);
      wait_full(1, 0, pair);
      issue_qk(1, 0, kLeftSubs, false);
      wgmma::wait_group<0>();
      wgmma::fence_operands(s);
      mask(1, pair);
      mbarrier_wait(smem_addr(&sm.max_from[0]), pair & 1);
      const float2 m = sm.row_max[t / 4];
      const float base_max[2] = {m.x, m.y};
      softmax(base_max);
      publish_max();
      pack_probabilities();
      issue_pv_rs(1);
      constexpr float kOne[2] = {1.0f, 1.0f};
      store_p(p1_base, kOne);
      wgmma::fence_proxy_async_smem();
      role_sync(kPReady, 256);
      issue_pv_ss(0, p0_base);
      wgmma::wait_group<1>();
      wgmma::fence_operands(pf);
      mbarrier_arrive(smem_addr(&sm.k_free[1][1]));
      wgmma::wait_group<0>();
      wgmma::fence_operands(o);
      mbarrier_arrive(smem_addr(&sm.k_free[0][1]));
    }
  }

  // Row sums over both consumers; both hold the same final maximum.
  float sum[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) sum[hf] = quad_sum(row_sum[hf]);
  if (tq == 0) sm.row_sum[kC][t / 4] = make_float2(sum[0], sum[1]);
  role_sync(kSums, 256);
  const float2 other = sm.row_sum[1 - kC][t / 4];
  sum[0] += other.x;
  sum[1] += other.y;

  // ln Σ exp(scale · x) = ln 2 · (max + log2 Σ 2^(scale · x · log2 e - max)); -inf for a row
  // without a valid entry (its output is zeros).
  if (p.partial_out != nullptr) {
    // A split: its normalised output and log-sum-exp in f32, for the combine kernel.
    const std::int64_t first = (static_cast<std::int64_t>(blockIdx.y) * p.n + row) * p.heads +
                               group * kHeads;  // (split, row, head) of this CTA's first head
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = r_lo + 8 * hf;
      if (r >= heads_here) continue;
      const float inv = sum[hf] > 0.0f ? 1.0f / sum[hf] : 0.0f;
      float* dst = p.partial_out + (first + r) * kDv + 256 * kC + 2 * tq;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        *reinterpret_cast<float2*>(dst + 8 * j) =
            make_float2(o[4 * j + 2 * hf] * inv, o[4 * j + 2 * hf + 1] * inv);
      }
      if (kC == 0 && tq == 0) {
        p.partial_lse[first + r] =
            sum[hf] > 0.0f ? (row_max[hf] + __log2f(sum[hf])) * kLn2 : -INFINITY;
      }
    }
    return;
  }
  if (kC == 0 && p.lse != nullptr && tq == 0) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = r_lo + 8 * hf;
      if (r < heads_here) {
        p.lse[row * p.s_lse + group * kHeads + r] =
            sum[hf] > 0.0f ? (row_max[hf] + __log2f(sum[hf])) * kLn2 : -INFINITY;
      }
    }
  }

  // Normalise and stage this consumer's half as bf16 in Q's sub-tiles 4 kC ... 4 kC + 3 (every
  // product that read Q is done: kSums), then write 16-byte chunks.
  const std::uint32_t staging = q_base + 4 * kC * kSub;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float inv = sum[hf] > 0.0f ? 1.0f / sum[hf] : 0.0f;
    const int r = r_lo + 8 * hf;
#pragma unroll
    for (int j = 0; j < 32; ++j) {  // columns 8 j ... 8 j + 7 of the half
      store_shared(staging + (j / 8) * kSub + wgmma::swizzled_offset(r, 16 * (j % 8) + 4 * tq),
                   pack_bf16(o[4 * j + 2 * hf] * inv, o[4 * j + 2 * hf + 1] * inv));
    }
  }
  named_sync(kConsumer0 + kC, 128);
  auto* out = static_cast<__nv_bfloat16*>(p.out) + row * p.so0 + group * kHeads * p.so1 + 256 * kC;
  // The output may be a window of a wider tensor at any element offset; 16-byte stores need
  // 16-byte aligned rows.
  const bool vector_store =
      ((reinterpret_cast<std::uintptr_t>(p.out) | static_cast<std::uintptr_t>(p.so0 | p.so1) * 2) &
       15) == 0;
  const unsigned char* staged = sm.q[4 * kC];
#pragma unroll 4
  for (int i = 0; i < kHeads * 32 / 128; ++i) {
    const int r = i * 4 + t / 32, chunk = t % 32;  // 32 chunks of 16 bytes a row
    if (r < heads_here) {
      const uint4 value = *reinterpret_cast<const uint4*>(
          staged + (chunk / 8) * kSub + wgmma::swizzled_offset(r, 16 * (chunk % 8)));
      __nv_bfloat16* dst = out + r * p.so1 + chunk * 8;
      if (vector_store) {
        *reinterpret_cast<uint4*>(dst) = value;
      } else {
        const auto* e = reinterpret_cast<const __nv_bfloat16*>(&value);
#pragma unroll
        for (int x = 0; x < 8; ++x) dst[x] = e[x];
      }
    }
  }
}

template <bool kFp8>
__global__ void __launch_bounds__(kThreads, 1) sparse_mla_wgmma_kernel(const SparseMlaParams p) {
  extern __shared__ unsigned char smem_raw[];
  Smem& sm = *reinterpret_cast<Smem*>((reinterpret_cast<std::uintptr_t>(smem_raw) + 1023) &
                                      ~std::uintptr_t{1023});
  // The groups of one row are neighbours in the launch, so they share its gathered rows in L2.
  const int groups = (p.heads + kHeads - 1) / kHeads;
  const std::int64_t row = blockIdx.x / groups;
  const int group = static_cast<int>(blockIdx.x % groups);
  const int heads_here = min(kHeads, p.heads - group * kHeads);
  const int warpgroup = static_cast<int>(threadIdx.x) / 128;
  const int t = static_cast<int>(threadIdx.x) % 128;
  if (threadIdx.x == 0) {
    mbarrier_init(smem_addr(&sm.q_full), 128 + 1);  // the Q copies, and the block count
    for (int b = 0; b < 2; ++b) {
      for (int half = 0; half < 2; ++half) {
        mbarrier_init(smem_addr(&sm.k_full[b][half]), 128);
        // Buffer 0's right half holds P_0 as well: consumer 0 releases it too.
        mbarrier_init(smem_addr(&sm.k_free[b][half]), b == 0 && half == 1 ? 256 : 128);
      }
    }
    mbarrier_init(smem_addr(&sm.valid_full), 16);  // one thread per 8-thread copy group
    for (int c = 0; c < 2; ++c) mbarrier_init(smem_addr(&sm.max_from[c]), 32);
  }
  __syncthreads();

  if (warpgroup == 0) {
    release_registers<kProducerRegs<kFp8>>();
    produce<kFp8>(p, sm, row, group, heads_here, t);
  } else {
    claim_registers<kConsumerRegs<kFp8>>();
    if (warpgroup == 1) {
      consume<0>(p, sm, row, group, heads_here, t);
    } else {
      consume<1>(p, sm, row, group, heads_here, t);
    }
  }
}

bool aligned16(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; }

// One warp per (row, head): out = Σ_s exp(lse_s - lse) · O_s with lse = ln Σ_s exp(lse_s), each
// lane 16 of the 512 columns. A row whose splits all lack a valid entry gets zeros and -inf.
__global__ void __launch_bounds__(256) sparse_mla_combine_kernel(const SparseMlaParams p) {
  const std::int64_t pair = static_cast<std::int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  if (pair >= p.n * p.heads) return;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t row = pair / p.heads, head = pair % p.heads;
  const std::int64_t split_stride = p.n * p.heads;
  float top = -INFINITY;
  for (int s = 0; s < p.splits; ++s) top = fmaxf(top, p.partial_lse[s * split_stride + pair]);
  float acc[16] = {}, total = 0.0f;
  if (top > -INFINITY) {
    for (int s = 0; s < p.splits; ++s) {
      const float w = __expf(p.partial_lse[s * split_stride + pair] - top);
      total += w;
      const float4* src =
          reinterpret_cast<const float4*>(p.partial_out + (s * split_stride + pair) * kDv) +
          4 * lane;
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const float4 x = src[v];
        acc[4 * v] += w * x.x;
        acc[4 * v + 1] += w * x.y;
        acc[4 * v + 2] += w * x.z;
        acc[4 * v + 3] += w * x.w;
      }
    }
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  auto* out = static_cast<__nv_bfloat16*>(p.out) + row * p.so0 + head * p.so1 + 16 * lane;
#pragma unroll
  for (int i = 0; i < 16; ++i) out[i] = __float2bfloat16_rn(acc[i] * inv);
  if (p.lse != nullptr && lane == 0) {
    p.lse[row * p.s_lse + head] = total > 0.0f ? top + __logf(total) : -INFINITY;
  }
}

template <bool kFp8>
cudaError_t launch(const SparseMlaParams& p, cudaStream_t stream) {
  static const cudaError_t attr = cudaFuncSetAttribute(
      sparse_mla_wgmma_kernel<kFp8>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (attr != cudaSuccess) return attr;
  const std::int64_t groups = (p.heads + kHeads - 1) / kHeads;
  const dim3 grid(static_cast<unsigned>(p.n * groups), static_cast<unsigned>(max(p.splits, 1)));
  sparse_mla_wgmma_kernel<kFp8><<<grid, kThreads, kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

bool sparse_mla_wgmma_sm90_supports(const SparseMlaParams& p) {
  // 16-byte copies of q and cache rows; the output has no alignment requirement.
  const bool rows_aligned = aligned16(p.q) && aligned16(p.kv) && p.sq0 % 8 == 0 && p.sq1 % 8 == 0 &&
                            p.kv_row_bytes % 16 == 0 &&
                            p.kv_row_bytes >= (p.fp8 ? kFp8RowBytes : kDqk * 2);
  // The running maximum is taken over raw scores, which orders the scaled ones only for scale > 0.
  const bool scale_ok = p.scale > 0.0f && std::isfinite(p.scale);
  const std::int64_t groups = (p.heads + kHeads - 1) / kHeads;
  return p.d_qk == kDqk && p.d_v == kDv && p.heads > 0 && p.topk >= 0 && rows_aligned && scale_ok &&
         p.n * groups <= 0x7fffffff;
}

cudaError_t launch_sparse_mla_wgmma_sm90(const SparseMlaParams& p, cudaStream_t stream) {
  if (!sparse_mla_wgmma_sm90_supports(p)) return cudaErrorInvalidValue;
  // Splits write only to the workspace, and together cover every entry.
  if (p.splits > 1 &&
      (p.partial_out == nullptr || p.partial_lse == nullptr || p.split_entries <= 0 ||
       static_cast<std::int64_t>(p.splits) * p.split_entries < p.topk)) {
    return cudaErrorInvalidValue;
  }
  if (p.n == 0) return cudaSuccess;
  return p.fp8 ? launch<true>(p, stream) : launch<false>(p, stream);
}

int sparse_mla_wgmma_split_entries(const SparseMlaParams& p, int splits) {
  const int per = (p.topk + splits - 1) / splits;
  return (per + 2 * kKeys - 1) / (2 * kKeys) * (2 * kKeys);  // whole pairs of blocks
}

int sparse_mla_wgmma_splits(const SparseMlaParams& p) {
  // Split only when the CTAs alone (one a multiprocessor: the kernel takes ~220 KB of shared
  // memory) would fill at most half of the GPU, and keep at least 256 entries a split.
  const std::int64_t ctas = p.n * ((p.heads + kHeads - 1) / kHeads);
  const std::int64_t sms = multiprocessor_count();
  if (ctas <= 0 || 2 * ctas > sms) return 1;
  const int wanted =
      static_cast<int>(std::clamp<std::int64_t>(sms / ctas, 1, std::max(p.topk / 256, 1)));
  if (wanted == 1) return 1;
  // No split left without entries once each is rounded up to whole block pairs.
  const int per = sparse_mla_wgmma_split_entries(p, wanted);
  return std::max(1, (p.topk + per - 1) / per);
}

cudaError_t launch_sparse_mla_combine(const SparseMlaParams& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  if (p.splits < 2 || p.partial_out == nullptr || p.partial_lse == nullptr) {
    return cudaErrorInvalidValue;
  }
  const std::int64_t warps = p.n * p.heads;
  sparse_mla_combine_kernel<<<static_cast<unsigned>((warps + 7) / 8), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda

#undef DSATTN_INLINE
