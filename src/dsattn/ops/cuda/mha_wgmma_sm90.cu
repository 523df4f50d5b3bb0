// Dense causal varlen attention on Hopper's warpgroup MMAs (wgmma, sm_90a) for the models' head
// sizes: DeepSeek-V3.2's q/k 192, v 128 (128-key tiles) and GLM-5's q/k 256, v 256 (64-key
// tiles, so that O's 128 accumulators per thread fit beside S), warp-specialised:
//
// - A CTA owns 128 query rows of one (request, head) and three warpgroups. The producer
//   warpgroup copies Q once and then the key tiles (K and V), from the diagonal
//   down, with 16-byte cp.async into 128-byte-swizzled shared tiles: K and Q K-major, V in the
//   same physical layout read MN-major, so no operand is transposed in memory. Two K/V stages;
//   mbarriers say when K, and separately V, of a stage has landed and when both consumers are
//   done with it.
// - Each consumer warpgroup owns 64 query rows: S = Q·Kᵀ (d_qk / 16 products from shared
//   memory), the causal mask, the online softmax in registers, then O += P·V with P as the A
//   operand straight from registers (the f32 accumulator layout packs pairwise into it).
// - Overlap inside a warpgroup: tile i's S = Q·Kᵀ and tile i - 1's P·V are issued together; the
//   softmax of tile i runs while P·V(i - 1) is still on the tensor cores, and O is rescaled once
//   it has landed. The two consumers run the same schedule on different rows, so one's softmax
//   also overlaps the other's products.
// - Masked MHA (a key mask given): the same schedule; each thread loads its two rows' bit words
//   for a tile while the tile's S = Q·Kᵀ runs and hides the unselected keys before the softmax,
//   and every value tile is checked for non-finite values (a hidden key's NaN must not reach a
//   row through 0 · NaN), as the causal diagonal's tiles are.
//
// Registers: the producer drops to 40 per thread so that the consumers can hold 232 (192/128:
// S 64, O 64, P 32; 256/256: S 32, O 128, P 16; and the row statistics). Shared memory:
// 192/128: Q 48 KB and two stages of K 48 KB + V 32 KB; 256/256: Q 64 KB, stages of 32 + 32 KB.
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

constexpr int kBlockM = 128;  // query rows per CTA, 64 per consumer warpgroup
constexpr int kStages = 2;
constexpr int kThreads = 384;  // producer warpgroup, then two consumers
constexpr int kProducerRegs = 40, kConsumerRegs = 232;

// A head shape: q/k and v widths, keys per tile. Tiles are made of swizzled sub-tiles of 64 bf16
// (128 bytes) per row: Q's of 128 rows, K's and V's of BlockN rows.
template <int Dqk, int Dv, int BlockN>
struct Shape {
  static constexpr int kDqk = Dqk, kDv = Dv, kBlockN = BlockN;
  static constexpr int kQkSubs = Dqk / 64, kVSubs = Dv / 64;
  static constexpr int kQSub = kBlockM * 128, kKvSub = BlockN * 128;
  static_assert(Dqk % 64 == 0 && Dv % 128 == 0 && (BlockN == 64 || BlockN == 128));
  static_assert(kVSubs <= kQkSubs, "the output is staged in Q's sub-tiles");

  struct alignas(1024) Smem {
    std::uint8_t q[kQkSubs][kQSub];
    std::uint8_t k[kStages][kQkSubs][kKvSub];
    std::uint8_t v[kStages][kVSubs][kKvSub];
    std::uint64_t q_full, k_full[kStages], v_full[kStages], empty[kStages];
  };
  static constexpr int kSmemBytes = sizeof(Smem) + 1024;  // + room to align the allocation
};
using DeepSeekShape = Shape<192, 128, 128>;
using Glm5Shape = Shape<256, 256, 64>;

// Named barriers (0 is __syncthreads): both consumers; each consumer alone.
constexpr int kConsumersBarrier = 1, kConsumerBarrier0 = 2;

// S (+)= Q·Kᵀ step: m64nNk16 from shared memory for N = 128 or 64 keys.
template <int N>
__device__ __forceinline__ void mma_qk(float (&s)[N / 2], std::uint64_t desc_q,
                                       std::uint64_t desc_k, bool accumulate) {
  if constexpr (N == 128) {
    wgmma::mma_m64n128k16_bf16_ss(s, desc_q, desc_k, accumulate);
  } else {
    wgmma::mma_m64n64k16_bf16_ss(s, desc_q, desc_k, accumulate);
  }
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// The producer's half of a landing: its own copies are complete (cp_async_wait), made visible to
// the tensor cores' reads (proxy fence), and announced.
__device__ __forceinline__ void announce(std::uint32_t bar) {
  wgmma::fence_proxy_async_smem();
  mbarrier_arrive(bar);
}

// kMasked: masked MHA, each row also limited to the keys its bit words (p.key_mask) select.
template <class Sh, bool kMasked>
__global__ void __launch_bounds__(kThreads, 1) mha_wgmma_kernel(const MhaParams p) {
  constexpr int kDqk = Sh::kDqk, kDv = Sh::kDv, kBlockN = Sh::kBlockN;
  constexpr int kQkSubs = Sh::kQkSubs, kVSubs = Sh::kVSubs, kQSub = Sh::kQSub;
  constexpr int kKvSub = Sh::kKvSub;
  using Smem = typename Sh::Smem;
  static_assert(kDqk == kQkSubs * 64);
  extern __shared__ unsigned char smem_raw[];
  Smem& sm = *reinterpret_cast<Smem*>((reinterpret_cast<std::uintptr_t>(smem_raw) + 1023) &
                                      ~std::uintptr_t{1023});

  // The heaviest (most keys) query blocks of a head go first, so the tail of the launch is short
  // work; the blocks of one head run together and share its K/V in L2.
  const int b = blockIdx.z, h = blockIdx.y;
  const int m_block = static_cast<int>(gridDim.x - 1 - blockIdx.x);
  const int q_start = p.cu_q[b], n_q = p.cu_q[b + 1] - q_start;
  const int k_start = p.cu_k[b], n_k = p.cu_k[b + 1] - k_start;
  const int row0 = m_block * kBlockM;
  if (row0 >= n_q) return;
  const int offset = n_k - n_q;  // query i sees keys j <= offset + i
  const int rows_here = min(kBlockM, n_q - row0);
  const int n_blocks = (offset + row0 + rows_here + kBlockN - 1) / kBlockN;
  // A block whose rows see no key (only offsets that break n_k >= n_q, which the host checks
  // when it holds them) is left alone rather than waited for.
  if (n_blocks <= 0) return;
  // Tiles are visited from the last (the diagonal) down: visit i is tile n_blocks - 1 - i, in
  // stage i % kStages. The causal limit of tile n for the block's first row, relative to the
  // tile: its key c is hidden from block row r when c > limit(n) + r.
  const auto limit = [&](int n) { return offset + row0 - n * kBlockN; };
  const auto needs_mask = [&](int n) { return limit(n) < kBlockN - 1; };

  const int warpgroup = static_cast<int>(threadIdx.x) / 128;
  const int t = static_cast<int>(threadIdx.x) % 128;
  if (threadIdx.x == 0) {
    mbarrier_init(smem_addr(&sm.q_full), 128);
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(smem_addr(&sm.k_full[s]), 128);
      mbarrier_init(smem_addr(&sm.v_full[s]), 128);
      mbarrier_init(smem_addr(&sm.empty[s]), 256);
    }
  }
  __syncthreads();

  if (warpgroup == 0) {
    // Producer.
    release_registers<kProducerRegs>();
    const auto* q = static_cast<const __nv_bfloat16*>(p.q) + (q_start + row0) * p.sq0 + h * p.sq1;
    const auto* k = static_cast<const __nv_bfloat16*>(p.k) + k_start * p.sk0 + h * p.sk1;
    const auto* v = static_cast<const __nv_bfloat16*>(p.v) + k_start * p.sv0 + h * p.sv1;
    copy_rows_swizzled<kBlockM, kQkSubs>(smem_addr(sm.q), q, p.sq0, rows_here, t);
    cp_async_commit();
    for (int i = 0; i < n_blocks; ++i) {
      const int n = n_blocks - 1 - i, s = i % kStages;
      if (i >= kStages) mbarrier_wait(smem_addr(&sm.empty[s]), (i / kStages - 1) & 1);
      copy_rows_swizzled<kBlockN, kQkSubs>(
          smem_addr(sm.k[s]), k + std::int64_t(n) * kBlockN * p.sk0, p.sk0, n_k - n * kBlockN, t);
      cp_async_commit();
      copy_rows_swizzled<kBlockN, kVSubs>(smem_addr(sm.v[s]), v + std::int64_t(n) * kBlockN * p.sv0,
                                          p.sv0, n_k - n * kBlockN, t);
      cp_async_commit();
      if (i == 0) {
        cp_async_wait<2>();
        announce(smem_addr(&sm.q_full));
      }
      cp_async_wait<1>();
      announce(smem_addr(&sm.k_full[s]));
      cp_async_wait<0>();
      announce(smem_addr(&sm.v_full[s]));
    }
    return;
  }

  // Consumers.
  claim_registers<kConsumerRegs>();
  const int c = warpgroup - 1;  // consumer 0 or 1
  const int warp = t / 32, g = (t % 32) / 4, tq = t % 4;
  const int row_lo = 64 * c + 16 * warp + g;  // block rows of hf = 0 and 1: row_lo, row_lo + 8
  const std::uint32_t q_rows = smem_addr(sm.q) + 64 * c * 128;
  const float scale_log2 = p.scale * 1.4426950408889634f;  // exp(x·scale) = 2^(x·scale·log2 e)

  // s[i] and o[i] hold block row row_lo + 8 ((i / 2) % 2), column 8 (i / 4) + 2 tq + i % 2 (of
  // the tile, of the output).
  constexpr int kS = kBlockN / 2, kO = kDv / 2, kP = kBlockN / 4;
  float s[kS], o[kO];
  std::uint32_t pf[kP];  // P as bf16 pairs, the A operand of P·V
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < kO; ++i) o[i] = 0.0f;

  const auto issue_qk = [&](int stage) {
    wgmma::fence();
#pragma unroll
    for (int kc = 0; kc < kQkSubs; ++kc) {
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
        mma_qk<kBlockN>(s, wgmma::desc_k_major_sw128(q_rows + kc * kQSub + ks * 32),
                        wgmma::desc_k_major_sw128(smem_addr(sm.k[stage][kc]) + ks * 32),
                        kc + ks > 0);
      }
    }
    wgmma::commit_group();
  };
  const auto issue_pv = [&](int stage) {
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
#pragma unroll
      for (int nb = 0; nb < kDv / 128; ++nb) {  // 128 output columns: two V sub-tiles
        wgmma::mma_m64n128k16_bf16_rs(
            *reinterpret_cast<float(*)[64]>(o + 64 * nb), pf + 4 * kk,
            wgmma::desc_mn_major_sw128(smem_addr(sm.v[stage][2 * nb]) + kk * 2048, kKvSub));
      }
    }
    wgmma::commit_group();
  };

  // Masked MHA: the bit words of this thread's two rows for tile n, loaded once the tile's
  // S = Q·Kᵀ is issued so that the loads overlap the products. Column 8j + 2tq + e of the tile is
  // bit 8 (j % 4) + 2tq + e of word j / 4. Rows past the block's own and words past the mask's
  // read as 0 (hidden).
  constexpr int kWords = kBlockN / 32;
  std::uint32_t mask_words[2][kWords];
  const auto load_mask_words = [&](int n) {
    if constexpr (kMasked) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int r = row_lo + 8 * hf;
        const std::uint32_t* row = p.key_mask + (q_start + row0 + r) * p.s_mask;
#pragma unroll
        for (int w = 0; w < kWords; ++w) {
          const std::int64_t word = std::int64_t(n) * kWords + w;
          mask_words[hf][w] = r < rows_here && word < p.mask_words ? __ldg(row + word) : 0u;
        }
      }
    }
  };
  const auto apply_key_mask = [&] {
    if constexpr (kMasked) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
#pragma unroll
        for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if (((mask_words[hf][j / 4] >> (8 * (j % 4) + 2 * tq + e)) & 1u) == 0) {
              s[4 * j + 2 * hf + e] = -INFINITY;
            }
          }
        }
      }
    }
  };
  const auto apply_mask = [&](int n) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int row_limit = limit(n) + row_lo + 8 * hf - 2 * tq;
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (8 * j + e > row_limit) s[4 * j + 2 * hf + e] = -INFINITY;
        }
      }
    }
  };
  // Online softmax over the tile in s (a row's scores spread over the 4 lanes of a quad):
  // leaves the probabilities in s and returns, per row, the factor O must be rescaled by. A row
  // whose scores are all masked so far keeps max -inf and uses 0 in its place, so that its
  // exponentials are 0 rather than NaN.
  const auto softmax = [&](float(&correction)[2]) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float mx = row_max[hf];
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
        mx = fmaxf(mx, fmaxf(s[4 * j + 2 * hf], s[4 * j + 2 * hf + 1]));
      }
      mx = quad_max(mx);
      const float base = (mx == -INFINITY ? 0.0f : mx) * scale_log2;
      correction[hf] = exp2_approx(row_max[hf] * scale_log2 - base);
      row_max[hf] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[4 * j + 2 * hf + e];
          x = exp2_approx(fmaf(x, scale_log2, -base));
          sum += x;
        }
      }
      // Each lane sums its own columns; the quad's partial sums are combined once, at the end.
      row_sum[hf] = row_sum[hf] * correction[hf] + sum;
    }
  };
  const auto pack_probabilities = [&] {
#pragma unroll
    for (int i = 0; i < kP; ++i) pf[i] = pack_bf16(s[2 * i], s[2 * i + 1]);
  };

  // A masked tile's value rows are hidden from some rows, whose probabilities there are 0; but
  // 0 · NaN (or Inf) in P·V is NaN, so a non-finite value would reach rows that cannot see its
  // key. Such a tile (a scan of the tile by both consumers) is handled exactly: each thread adds,
  // for its rows and columns, every non-finite value its rows see (so that a visible NaN or Inf
  // reaches the output as it would in the sum), then the non-finite values are zeroed in shared
  // memory before P·V. Tiles without one (every tile in practice) pay only the scan, which the
  // two consumers share.
  const auto guard_values = [&](int stage, int n) {
    const auto non_finite = [](std::uint32_t w, int half) {  // bf16 exponent all ones
      return ((w >> (16 * half)) & 0x7f80u) == 0x7f80u;
    };
    unsigned char* tile = sm.v[stage][0];
    // 16-byte chunks; each consumer scans half and the barrier below or-s their findings.
    constexpr int kChunks = kVSubs * kKvSub / 16;
    bool found = false;
#pragma unroll 4
    for (int i = t + 128 * c; i < kChunks; i += 256) {
      const uint4 w = reinterpret_cast<const uint4*>(tile)[i];
      const std::uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int x = 0; x < 4; ++x) found |= non_finite(words[x], 0) || non_finite(words[x], 1);
    }
    if (!named_sync_or(kConsumersBarrier, 256, found)) return;
    // Value (key, column 8j + 2tq + e) sits in sub-tile j / 8, row key, chunk (j % 8) ^ (key % 8).
    for (int key = 0; key < kBlockN; ++key) {
#pragma unroll
      for (int j = 0; j < kDv / 8; ++j) {
        const std::uint32_t w = *reinterpret_cast<const std::uint32_t*>(
            tile + (j / 8) * kKvSub + key * 128 + (((j % 8) ^ (key % 8)) << 4) + 4 * tq);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (!non_finite(w, e)) continue;
          const float value = __uint_as_float(((w >> (16 * e)) & 0xffffu) << 16);
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            if (key > limit(n) + row_lo + 8 * hf) continue;
            if constexpr (kMasked) {
              // Rare (a non-finite value): the row's bit straight from memory.
              const int r = row_lo + 8 * hf;
              const std::int64_t column = std::int64_t(n) * kBlockN + key;
              if (r >= rows_here || column / 32 >= p.mask_words) continue;
              const std::uint32_t word = p.key_mask[(q_start + row0 + r) * p.s_mask + column / 32];
              if (((word >> (column % 32)) & 1u) == 0) continue;
            }
            o[4 * j + 2 * hf + e] += value;
          }
        }
      }
    }
    named_sync(kConsumersBarrier, 256);  // both consumers have read the tile as it came
    for (int i = t + 128 * c; i < kChunks; i += 256) {
      auto* w = reinterpret_cast<std::uint32_t*>(tile) + 4 * i;
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        std::uint32_t word = w[x];
        if (non_finite(word, 0)) word &= 0xffff0000u;
        if (non_finite(word, 1)) word &= 0x0000ffffu;
        w[x] = word;
      }
    }
    wgmma::fence_proxy_async_smem();
    named_sync(kConsumersBarrier, 256);
  };
  const auto value_tile_ready = [&](int i) {
    const int stage = i % kStages, n = n_blocks - 1 - i;
    mbarrier_wait(smem_addr(&sm.v_full[stage]), (i / kStages) & 1);
    // Under a key mask any tile may hide keys from some rows.
    if (kMasked || needs_mask(n)) guard_values(stage, n);
  };

  mbarrier_wait(smem_addr(&sm.q_full), 0);
  mbarrier_wait(smem_addr(&sm.k_full[0]), 0);
  issue_qk(0);
  load_mask_words(n_blocks - 1);
  wgmma::wait_group<0>();
  wgmma::fence_operands(s);
  if (needs_mask(n_blocks - 1)) apply_mask(n_blocks - 1);
  apply_key_mask();
  {
    float unused[2];
    softmax(unused);
  }
  pack_probabilities();
  for (int i = 1; i < n_blocks; ++i) {
    const int stage = i % kStages, prev = (i - 1) % kStages, n = n_blocks - 1 - i;
    mbarrier_wait(smem_addr(&sm.k_full[stage]), (i / kStages) & 1);
    issue_qk(stage);
    load_mask_words(n);
    value_tile_ready(i - 1);
    issue_pv(prev);
    wgmma::wait_group<1>();  // S(i) has landed; P·V(i - 1) may still run
    wgmma::fence_operands(s);
    if (needs_mask(n)) apply_mask(n);
    apply_key_mask();
    float correction[2];
    softmax(correction);
    wgmma::wait_group<0>();
    wgmma::fence_operands(o);
    wgmma::fence_operands(pf);
    mbarrier_arrive(smem_addr(&sm.empty[prev]));
#pragma unroll
    for (int i2 = 0; i2 < kO; ++i2) o[i2] *= correction[(i2 / 2) % 2];
    pack_probabilities();
  }
  value_tile_ready(n_blocks - 1);
  issue_pv((n_blocks - 1) % kStages);
  wgmma::wait_group<0>();
  wgmma::fence_operands(o);
  wgmma::fence_operands(pf);

  // Normalise and stage the rows as bf16 in this consumer's own Q rows (its products are done
  // with them), 2 d_v bytes a row over d_v / 64 swizzled sub-tiles; then write 16-byte chunks.
  unsigned char* staging = sm.q[0] + 64 * c * 128;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float sum = quad_sum(row_sum[hf]);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // 0: a masked row that sees no key
    const int r = row_lo - 64 * c + 8 * hf;            // row within the consumer's 64
    // sum = Σ exp(scale · (x - max)) over the row's keys, so ln Σ exp(scale · x) is this:
    if (p.lse != nullptr && tq == 0 && row_lo + 8 * hf < rows_here) {
      p.lse[(q_start + row0 + row_lo + 8 * hf) * p.s_lse + h] =
          fmaf(row_max[hf], p.scale, logf(sum));
    }
#pragma unroll
    for (int j = 0; j < kDv / 8; ++j) {
      *reinterpret_cast<std::uint32_t*>(staging + (j / 8) * kQSub + r * 128 +
                                        (((j % 8) ^ (r % 8)) << 4) + 4 * tq) =
          pack_bf16(o[4 * j + 2 * hf] * inv, o[4 * j + 2 * hf + 1] * inv);
    }
  }
  named_sync(kConsumerBarrier0 + c, 128);
  auto* out = static_cast<__nv_bfloat16*>(p.out) + (q_start + row0 + 64 * c) * p.so0 + h * p.so1;
  // The output may be a window of a wider tensor at any element offset; 16-byte stores need
  // 16-byte aligned rows.
  const bool vector_store =
      ((reinterpret_cast<std::uintptr_t>(p.out) | static_cast<std::uintptr_t>(p.so0 | p.so1) * 2) &
       15) == 0;
  const int rows_mine = rows_here - 64 * c;
  constexpr int kChunksPerRow = kDv / 8, kRowsPerStep = 128 / kChunksPerRow;
#pragma unroll
  for (int i = 0; i < 64 / kRowsPerStep; ++i) {
    const int r = i * kRowsPerStep + t / kChunksPerRow, chunk = t % kChunksPerRow;
    if (r < rows_mine) {
      const uint4 value = *reinterpret_cast<const uint4*>(staging + (chunk / 8) * kQSub + r * 128 +
                                                          (((chunk % 8) ^ (r % 8)) << 4));
      __nv_bfloat16* dst = out + r * p.so0 + chunk * 8;
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

bool aligned16(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; }

template <class Sh, bool kMasked>
cudaError_t launch(const MhaParams& p, cudaStream_t stream) {
  static const cudaError_t attr = cudaFuncSetAttribute(
      mha_wgmma_kernel<Sh, kMasked>, cudaFuncAttributeMaxDynamicSharedMemorySize, Sh::kSmemBytes);
  if (attr != cudaSuccess) return attr;
  const dim3 grid(static_cast<unsigned>((p.max_q + kBlockM - 1) / kBlockM),
                  static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch));
  mha_wgmma_kernel<Sh, kMasked><<<grid, kThreads, Sh::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <class Sh>
cudaError_t launch(const MhaParams& p, cudaStream_t stream) {
  return p.key_mask != nullptr ? launch<Sh, true>(p, stream) : launch<Sh, false>(p, stream);
}

}  // namespace

bool mha_wgmma_sm90_supports(const MhaParams& p) {
  // cp.async moves 16-byte chunks of q, k and v rows; the output has no alignment requirement.
  const bool rows_aligned = aligned16(p.q) && aligned16(p.k) && aligned16(p.v) && p.sq0 % 8 == 0 &&
                            p.sq1 % 8 == 0 && p.sk0 % 8 == 0 && p.sk1 % 8 == 0 && p.sv0 % 8 == 0 &&
                            p.sv1 % 8 == 0;
  // The running maximum is taken over raw scores, which orders the scaled ones only for scale > 0.
  const bool scale_ok = p.scale > 0.0f && std::isfinite(p.scale);
  const bool shape = (p.d_qk == DeepSeekShape::kDqk && p.d_v == DeepSeekShape::kDv) ||
                     (p.d_qk == Glm5Shape::kDqk && p.d_v == Glm5Shape::kDv);
  return shape && rows_aligned && scale_ok && p.heads <= 65535 && p.batch <= 65535 &&
         p.max_q <= (std::int64_t{1} << 30);
}

cudaError_t launch_mha_wgmma_sm90(const MhaParams& p, cudaStream_t stream) {
  if (!mha_wgmma_sm90_supports(p)) return cudaErrorInvalidValue;
  if (p.total_q == 0 || p.max_q == 0 || p.batch == 0) return cudaSuccess;
  return p.d_qk == DeepSeekShape::kDqk ? launch<DeepSeekShape>(p, stream)
                                       : launch<Glm5Shape>(p, stream);
}

}  // namespace dsattn::ops::cuda
