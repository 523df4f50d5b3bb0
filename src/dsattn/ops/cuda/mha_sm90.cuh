// Dense causal varlen attention for DeepSeek-V3.2's head sizes (q/k 192, v 128): FlashAttention-2
// style, on mma.sync tensor cores (m16n8k16 bf16, f32 accumulators). Included by mha_sm90.cu
// (the configuration the op launches) and by bench/mha_sm90_variants.cu (every configuration,
// checked against the generic kernel and timed side by side).
//
// Tiling: a CTA owns kBlockM query rows of one (request, head); each warp owns 16 * kMTiles of
// them. Key tiles (K kBlockN x 192, V kBlockN x 128) stream through shared memory by cp.async,
// visited from the diagonal down, so only the first tiles of a block need the causal mask.
// S = Q·K^T, the online softmax (exp2 with scale·log2 e folded in) and P stay in registers; P is
// re-packed as bf16 A-fragments for O += P·V, with V's B-fragments from ldmatrix.trans. Shared
// rows are padded by 16 bytes (400 and 272 bytes), so the 8 rows of every ldmatrix matrix start
// in 8 different bank quads and every fragment address is one per-lane base plus a constant.
// Schedule says how tiles are buffered.
//
// Measured on an H100 SXM (16K tokens per batch, 128 heads, TFLOPS at s = 512 / 1K / 2K / 4K / 8K):
// the op's configuration (4 warps x 32 rows, Q in shared, 32-key tiles, double_buffer) reaches
// 234 / 268 / 307 / 328 / 339 in `dsattn bench` (39% of the 784 TFLOPS bf16 GEMM ceiling at 2K).
// Warps of 32 rows beat warps of 16 rows with Q in registers (~270 at 2K) at every length: each
// K/V fragment feeds two MMAs, so ldmatrix moves 166-205 instead of 256 bytes per MMA. Issuing the
// next tile's Q·K^T alongside this tile's softmax (Schedule::overlap) did not pay (~253 at 2K).
// What is left is the mma.sync path itself (no wgmma) and the softmax, which every warp runs
// between its two products. bench/results/mha_sm90_variants_h100.txt has the full table.
#pragma once

#include <type_traits>

#include "dsattn/ops/cuda/common.cuh"
#include "dsattn/ops/cuda/ptx.cuh"

namespace dsattn::ops::cuda::mha_sm90 {

using namespace ptx;  // NOLINT: the PTX wrappers read as intrinsics

inline constexpr int kDqk = kMhaSm90Dqk, kDv = kMhaSm90Dv;
inline constexpr int kChunksQk = kDqk / 8, kChunksV = kDv / 8;      // 16-byte chunks per row
inline constexpr int kRowQk = kDqk * 2 + 16, kRowV = kDv * 2 + 16;  // padded shared row bytes

// How key tiles move through shared memory.
enum class Schedule {
  // One K and one V buffer, two barriers per tile: V(n) loads during Q·K(n)^T, K(n - 1) during
  // the softmax and P·V(n).
  single,
  // Two K/V stages, one barrier per tile: tile n - 1 loads while tile n is computed.
  double_buffer,
  // Two K and two V buffers with K one tile ahead: the warp issues Q·K(n - 1)^T together with
  // tile n's softmax and P·V, so the tensor cores run while the exponentials are computed.
  overlap,
};

template <int Warps, int MTiles, bool QInRegs, int BlockN = 64, Schedule Sched = Schedule::single>
struct Config {
  static constexpr int kWarps = Warps;
  static constexpr int kMTiles = MTiles;     // 16-row MMA tiles per warp
  static constexpr bool kQInRegs = QInRegs;  // Q's A-fragments held in registers, else in shared
  static constexpr int kBlockN = BlockN;     // keys per tile
  static constexpr Schedule kSchedule = Sched;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockM = 16 * kMTiles * kWarps;
  // Registers cap the occupancy: O (64 f32 per 16 rows), S (kBlockN / 2 per 16 rows, twice when
  // overlapping) and Q's fragments (48 per 16 rows when held) leave room for one 256-thread or
  // two 128-thread CTAs per SM.
  static constexpr int kMinBlocks = kThreads <= 128 ? 2 : 1;
  static constexpr int kSmemQ = kBlockM * kRowQk;
  static constexpr int kSmemK = kBlockN * kRowQk;
  static constexpr int kSmemV = kBlockN * kRowV;
  static constexpr int kSmemKV = kSmemK + kSmemV;
  // With Q in registers its shared tile is free once loaded: the second stage (double_buffer) or
  // the second K buffer (overlap) lives there when it fits.
  static constexpr bool kStage1InQ =
      kSchedule == Schedule::double_buffer && kQInRegs && kSmemQ >= kSmemKV;
  static constexpr bool kK1InQ = kSchedule == Schedule::overlap && kSmemQ >= kSmemK;
  static constexpr int kSmem =
      kSmemQ + (kSchedule == Schedule::single          ? kSmemKV
                : kSchedule == Schedule::double_buffer ? (kStage1InQ ? 1 : 2) * kSmemKV
                                                       : (kK1InQ ? 1 : 2) * kSmemK + 2 * kSmemV);
  static_assert(!kQInRegs || kMTiles == 1, "Q in registers leaves no room for a second m-tile");
  static_assert(kSchedule != Schedule::overlap || kQInRegs, "overlap reuses Q's shared tile");
};

// d += a · b for one m16n8k16 tile, bf16 operands, f32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const std::uint32_t (&a)[4],
                                         std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Copies `rows` rows of `chunks` 16-byte chunks, row i from src + i * stride (elements), into a
// shared tile of `row_bytes` per row; rows at or past `valid_rows` are zero-filled. Thread `tid`
// copies chunks tid % 8 + 8j of rows tid / 8 + (threads / 8) i: a warp reads 4 rows × 128 bytes
// per step, and every address is a per-thread base plus a constant.
template <int kThreads, int rows, int chunks, int row_bytes>
__device__ __forceinline__ void load_tile(std::uint32_t dst, const __nv_bfloat16* src,
                                          std::int64_t stride, int valid_rows) {
  constexpr int kRowStep = kThreads / 8;
  static_assert(rows % kRowStep == 0 && chunks % 8 == 0);
  // Re-read per call (volatile): cached across the key loop, the per-thread row offsets would
  // hold registers through the whole loop for a few integer ops per tile.
  int tid;
  asm volatile("mov.u32 %0, %%tid.x;\n" : "=r"(tid));
  const int r0 = tid / 8, c0 = tid % 8;
  const std::uint32_t d = dst + r0 * row_bytes + c0 * 16;
  const __nv_bfloat16* s = src + r0 * stride + c0 * 8;
  const std::int64_t step = kRowStep * stride;
#pragma unroll
  for (int i = 0; i < rows / kRowStep; ++i, s += step) {
    const bool valid = r0 + i * kRowStep < valid_rows;
#pragma unroll
    for (int j = 0; j < chunks / 8; ++j) {
      cp_async16(d + i * kRowStep * row_bytes + j * 128, valid ? s + j * 64 : src, valid);
    }
  }
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    mha_fwd_kernel(const MhaParams p) {
  constexpr int kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kMT = Cfg::kMTiles;
  constexpr int kThreads = Cfg::kThreads;
  constexpr Schedule kSchedule = Cfg::kSchedule;
  extern __shared__ __align__(128) unsigned char smem[];
  const std::uint32_t sQ = smem_addr(smem);

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

  const auto* q = static_cast<const __nv_bfloat16*>(p.q) + (q_start + row0) * p.sq0 + h * p.sq1;
  const auto* k = static_cast<const __nv_bfloat16*>(p.k) + k_start * p.sk0 + h * p.sk1;
  const auto* v = static_cast<const __nv_bfloat16*>(p.v) + k_start * p.sv0 + h * p.sv1;

  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int wrow = warp * 16 * kMT;  // the warp's first row in the block
  const int g = lane / 4, t = lane % 4;

  auto load_k = [&](std::uint32_t dst, int n) {
    load_tile<kThreads, kBlockN, kChunksQk, kRowQk>(dst, k + std::int64_t(n) * kBlockN * p.sk0,
                                                    p.sk0, n_k - n * kBlockN);
  };
  auto load_v = [&](std::uint32_t dst, int n) {
    load_tile<kThreads, kBlockN, kChunksV, kRowV>(dst, v + std::int64_t(n) * kBlockN * p.sv0, p.sv0,
                                                  n_k - n * kBlockN);
  };

  // Per-lane ldmatrix offsets (lanes 8i..8i+7 give the rows of matrix i).
  // A (Q): rows lane % 16, chunk 2ks + lane / 16.
  const std::uint32_t q_frag = sQ + (wrow + lane % 16) * kRowQk + (lane / 16) * 16;
  // B (K): keys lane % 8 + 8 (lane / 16), chunk 2ks + (lane / 8) % 2.
  const std::uint32_t k_lane = (lane % 8 + 8 * (lane / 16)) * kRowQk + ((lane / 8) % 2) * 16;
  // B (V, transposed): keys lane % 8 + 8 ((lane / 8) % 2), chunk 2dp + lane / 16.
  const std::uint32_t v_lane = (lane % 8 + 8 * ((lane / 8) % 2)) * kRowV + (lane / 16) * 16;

  std::uint32_t qf[Cfg::kQInRegs ? kDqk / 16 : 1][4];
  float o[kMT][kDv / 8][4];
  float row_max[kMT][2], row_sum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int dn = 0; dn < kDv / 8; ++dn) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][dn][e] = 0.0f;
    }
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
  }
  const float scale_log2 = p.scale * 1.4426950408889634f;  // exp(x·scale) = 2^(x·scale·log2 e)

  using Scores = float[kMT][kBlockN / 8][4];

  // s = Q · K^T for the key tile at shared address k_tile.
  auto qk = [&](Scores& s, std::uint32_t k_tile) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
      }
    }
#pragma unroll
    for (int ks = 0; ks < kDqk / 16; ++ks) {
      std::uint32_t a[kMT][4];
      if constexpr (Cfg::kQInRegs) {
#pragma unroll
        for (int e = 0; e < 4; ++e) a[0][e] = qf[ks][e];
      } else {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          ldmatrix_x4(a[mt], q_frag + mt * 16 * kRowQk + ks * 32);
        }
      }
#pragma unroll
      for (int np = 0; np < kBlockN / 16; ++np) {
        std::uint32_t bk[4];
        ldmatrix_x4(bk, k_tile + k_lane + np * 16 * kRowQk + ks * 32);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_bf16(s[mt][2 * np], a[mt], bk[0], bk[1]);
          mma_bf16(s[mt][2 * np + 1], a[mt], bk[2], bk[3]);
        }
      }
    }
  };

  // The causal limit of key tile n for the block's first row, relative to the tile: its key c is
  // hidden from row r of the block when c > limit + r. Only tiles reaching past the first row's
  // last visible key need the mask.
  auto tile_needs_mask = [&](int n) { return n * kBlockN + kBlockN - 1 > offset + row0; };
  auto apply_mask = [&](Scores& s, int limit) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int row_limit = limit + wrow + mt * 16 + g + 8 * hf - 2 * t;
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if (nt * 8 + e > row_limit) s[mt][nt][2 * hf + e] = -INFINITY;
          }
        }
      }
    }
  };

  // Online softmax: rows g and g + 8 of each m-tile; a row's scores are spread over the 4 lanes
  // of a quad. A row whose scores are all masked in this tile keeps max -inf and uses 0 in its
  // place, so the exponentials are 0 rather than NaN. Leaves the probabilities in s.
  auto softmax = [&](Scores& s) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = row_max[mt][hf];
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt) {
          mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hf], s[mt][nt][2 * hf + 1]));
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float base = (mx == -INFINITY ? 0.0f : mx) * scale_log2;
        const float correction = exp2_approx(row_max[mt][hf] * scale_log2 - base);
        row_max[mt][hf] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pe = exp2_approx(fmaf(s[mt][nt][2 * hf + e], scale_log2, -base));
            s[mt][nt][2 * hf + e] = pe;
            sum += pe;
          }
        }
        // Each lane sums its own columns; the quad's partial sums are combined once, at the end.
        row_sum[mt][hf] = row_sum[mt][hf] * correction + sum;
#pragma unroll
        for (int dn = 0; dn < kDv / 8; ++dn) {
          o[mt][dn][2 * hf] *= correction;
          o[mt][dn][2 * hf + 1] *= correction;
        }
      }
    }
  };

  // O += P · V for the value tile at shared address v_tile; the accumulator layout of two
  // adjacent 8-key S tiles is the A-fragment layout of one 16-key step.
  auto pv = [&](const Scores& s, std::uint32_t v_tile) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      std::uint32_t pa[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        pa[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < kDv / 16; ++dp) {
        std::uint32_t bv[4];
        ldmatrix_x4_trans(bv, v_tile + v_lane + kk * 16 * kRowV + dp * 32);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_bf16(o[mt][2 * dp], pa[mt], bv[0], bv[1]);
          mma_bf16(o[mt][2 * dp + 1], pa[mt], bv[2], bv[3]);
        }
      }
    }
  };

  // A masked tile's value rows are hidden from some rows of the block, whose probabilities there
  // are 0; but 0 · NaN (or Inf) in P·V is NaN, so a non-finite value would reach rows that cannot
  // see its key. Such a tile (the test is a scan of the tile, block-wide) is handled exactly: each
  // thread adds, for its rows and columns, every non-finite value its rows see (so that a visible
  // NaN or Inf reaches the output as it would in the sum), then the non-finite values are zeroed
  // in shared memory before P·V. Tiles without one (every tile in practice) pay only the scan.
  auto guard_values = [&](std::uint32_t v_tile, int limit) {
    constexpr int kChunksPerThread = kBlockN * kChunksV / kThreads;
    static_assert(kBlockN * kChunksV % kThreads == 0);
    unsigned char* tile = smem + (v_tile - sQ);
    const auto non_finite = [](std::uint32_t w, int half) {  // bf16 exponent all ones
      return ((w >> (16 * half)) & 0x7f80u) == 0x7f80u;
    };
    int found = 0;
#pragma unroll
    for (int i = 0; i < kChunksPerThread; ++i) {
      const int chunk = static_cast<int>(threadIdx.x) + i * kThreads;
      const uint4 c = *reinterpret_cast<const uint4*>(tile + (chunk / kChunksV) * kRowV +
                                                      (chunk % kChunksV) * 16);
      const std::uint32_t words[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) found |= non_finite(words[j], 0) | non_finite(words[j], 1);
    }
    if (!__syncthreads_or(found)) return;
    for (int c = 0; c < kBlockN; ++c) {
#pragma unroll
      for (int dn = 0; dn < kDv / 8; ++dn) {
        const std::uint32_t w =
            *reinterpret_cast<const std::uint32_t*>(tile + c * kRowV + dn * 16 + 4 * t);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (!non_finite(w, e)) continue;
          const float value = __uint_as_float(((w >> (16 * e)) & 0xffffu) << 16);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
              if (c <= limit + wrow + mt * 16 + g + 8 * hf) o[mt][dn][2 * hf + e] += value;
            }
          }
        }
      }
    }
    __syncthreads();  // every thread has read the tile as it came
#pragma unroll
    for (int i = 0; i < kChunksPerThread; ++i) {
      const int chunk = static_cast<int>(threadIdx.x) + i * kThreads;
      auto* c = reinterpret_cast<std::uint32_t*>(tile + (chunk / kChunksV) * kRowV +
                                                 (chunk % kChunksV) * 16);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        std::uint32_t w = c[j];
        if (non_finite(w, 0)) w &= 0xffff0000u;
        if (non_finite(w, 1)) w &= 0x0000ffffu;
        c[j] = w;
      }
    }
    __syncthreads();
  };

  auto q_to_registers = [&] {
#pragma unroll
    for (int ks = 0; ks < kDqk / 16; ++ks) ldmatrix_x4(qf[ks], q_frag + ks * 32);
  };

  // Key tiles are visited from the last (the diagonal) down.
  if constexpr (kSchedule == Schedule::overlap) {
    // Buffers: K(i) of the i-th tile visited in k_buf[i % 2], V(i) in v_buf[i % 2]; the second K
    // buffer takes Q's tile once Q is in registers.
    const std::uint32_t k_buf0 = sQ + Cfg::kSmemQ, v_buf0 = k_buf0 + Cfg::kSmemK;
    const std::uint32_t v_buf1 = v_buf0 + Cfg::kSmemV;
    const std::uint32_t k_buf1 = Cfg::kK1InQ ? sQ : v_buf1 + Cfg::kSmemV;
    const int last = n_blocks - 1;
    load_tile<kThreads, kBlockM, kChunksQk, kRowQk>(sQ, q, p.sq0, rows_here);
    load_k(k_buf0, last);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    q_to_registers();
    __syncthreads();  // every warp holds Q before its tile becomes K(1)'s buffer
    load_v(v_buf0, last);
    if (n_blocks > 1) load_k(k_buf1, last - 1);
    cp_async_commit();

    float s_a[kMT][kBlockN / 8][4], s_b[kMT][kBlockN / 8][4];
    qk(s_a, k_buf0);
    // Step i: V(i) and K(i + 1) have landed; K(i + 2) and V(i + 1) load into the buffers step
    // i - 1 read; S(i + 1) = Q · K(i + 1)^T is issued alongside tile i's softmax and P·V, with a
    // select-based mask so that all of it stays one basic block for the scheduler. Returns
    // whether tile i was the last. The parity is a constant, so every buffer address is too.
    auto step = [&](auto parity, Scores& cur, Scores& next, int i) {
      constexpr bool kOdd = decltype(parity)::value;
      const std::uint32_t k_next = kOdd ? k_buf0 : k_buf1, k_free = kOdd ? k_buf1 : k_buf0;
      const std::uint32_t v_cur = kOdd ? v_buf1 : v_buf0, v_free = kOdd ? v_buf0 : v_buf1;
      const int n = last - i;
      cp_async_wait_all();
      __syncthreads();
      if (i + 2 < n_blocks) load_k(k_free, n - 2);
      if (i + 1 < n_blocks) load_v(v_free, n - 1);
      cp_async_commit();
      const bool masked = tile_needs_mask(n);
      const int limit = masked ? offset + row0 - n * kBlockN : (1 << 30);
      if (masked) guard_values(v_cur, limit);
      if (i + 1 < n_blocks) {
        qk(next, k_next);
        apply_mask(cur, limit);
        softmax(cur);
        pv(cur, v_cur);
        return false;
      }
      apply_mask(cur, limit);
      softmax(cur);
      pv(cur, v_cur);
      return true;
    };
    for (int i = 0;; i += 2) {
      if (step(std::false_type{}, s_a, s_b, i)) break;
      if (step(std::true_type{}, s_b, s_a, i + 1)) break;
    }
  } else {
    // single: K then V at kv0. double_buffer: tile n in stage (n_blocks - 1 - n) % 2, the first
    // one at kv0 so that it never lands on Q's tile.
    const std::uint32_t kv0 = sQ + Cfg::kSmemQ;
    const std::uint32_t kv1 = Cfg::kStage1InQ ? sQ : kv0 + Cfg::kSmemKV;
    auto stage_of = [&](int n) {
      return (kSchedule == Schedule::single || ((n_blocks - 1 - n) & 1) == 0) ? kv0 : kv1;
    };
    load_tile<kThreads, kBlockM, kChunksQk, kRowQk>(sQ, q, p.sq0, rows_here);
    load_k(kv0, n_blocks - 1);
    if constexpr (kSchedule == Schedule::double_buffer) load_v(kv0 + Cfg::kSmemK, n_blocks - 1);
    cp_async_commit();
    if constexpr (Cfg::kQInRegs) {
      cp_async_wait_all();
      __syncthreads();
      q_to_registers();
    }

    for (int n = n_blocks - 1; n >= 0; --n) {
      const std::uint32_t kv = stage_of(n);
      if constexpr (kSchedule == Schedule::double_buffer) {
        // One barrier per tile: tile n has landed for every thread, and nobody still reads the
        // other stage (tile n + 1), which now receives tile n - 1 while this one is computed.
        cp_async_wait_all();
        __syncthreads();
        if (n > 0) {
          load_k(stage_of(n - 1), n - 1);
          load_v(stage_of(n - 1) + Cfg::kSmemK, n - 1);
          cp_async_commit();
        }
      } else {
        cp_async_wait_all();  // K(n) (and Q) have landed ...
        __syncthreads();      // ... for every thread, and nobody still reads V(n + 1)
        load_v(kv + Cfg::kSmemK, n);
        cp_async_commit();
      }

      float s[kMT][kBlockN / 8][4];
      qk(s, kv);
      const bool masked = tile_needs_mask(n);
      if (masked) apply_mask(s, offset + row0 - n * kBlockN);

      if constexpr (kSchedule == Schedule::single) {
        cp_async_wait_all();  // V(n) has landed ...
        __syncthreads();      // ... for every thread, and nobody still reads K(n)
        if (n > 0) {
          load_k(kv, n - 1);
          cp_async_commit();
        }
      }
      softmax(s);
      if (masked) guard_values(kv + Cfg::kSmemK, offset + row0 - n * kBlockN);
      pv(s, kv + Cfg::kSmemK);
    }
  }

  // Normalise and stage the warp's rows as bf16 in its own Q rows, then write whole 16-byte
  // chunks: each output row is 256 contiguous bytes. No other warp reads those rows, unless they
  // hold the second K/V stage.
  if constexpr (Cfg::kStage1InQ || Cfg::kK1InQ) {
    __syncthreads();
  } else {
    __syncwarp();  // the warp's last ldmatrix of its Q rows precedes the stores below
  }
  auto* smem_bytes = smem;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float sum = row_sum[mt][hf];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv = 1.0f / sum;
      const int r = wrow + mt * 16 + g + 8 * hf;
#pragma unroll
      for (int dn = 0; dn < kDv / 8; ++dn) {
        *reinterpret_cast<std::uint32_t*>(smem_bytes + r * kRowQk + dn * 16 + 4 * t) =
            pack_bf16(o[mt][dn][2 * hf] * inv, o[mt][dn][2 * hf + 1] * inv);
      }
    }
  }
  __syncwarp();
  auto* out = static_cast<__nv_bfloat16*>(p.out) + (q_start + row0) * p.so0 + h * p.so1;
  // The output may be a window of a wider tensor at any element offset; 16-byte stores need
  // 16-byte aligned rows.
  const bool vector_store =
      ((reinterpret_cast<std::uintptr_t>(p.out) | static_cast<std::uintptr_t>(p.so0 | p.so1) * 2) &
       15) == 0;
#pragma unroll
  for (int i = 0; i < 16 * kMT * kChunksV / 32; ++i) {
    const int r = wrow + i * 2 + lane / 16, c = lane % 16;
    if (r < rows_here) {
      const uint4 chunk = *reinterpret_cast<const uint4*>(smem_bytes + r * kRowQk + c * 16);
      __nv_bfloat16* dst = out + r * p.so0 + c * 8;
      if (vector_store) {
        *reinterpret_cast<uint4*>(dst) = chunk;
      } else {
        const auto* e = reinterpret_cast<const __nv_bfloat16*>(&chunk);
#pragma unroll
        for (int x = 0; x < 8; ++x) dst[x] = e[x];
      }
    }
  }
}

// Launches configuration Cfg over every (query block, head, request).
template <class Cfg>
cudaError_t launch(const MhaParams& p, cudaStream_t stream) {
  if (p.d_qk != kDqk || p.d_v != kDv) return cudaErrorInvalidValue;
  if (p.total_q == 0 || p.max_q == 0 || p.batch == 0) return cudaSuccess;
  static const cudaError_t attr = cudaFuncSetAttribute(
      mha_fwd_kernel<Cfg>, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmem);
  if (attr != cudaSuccess) return attr;
  const dim3 grid(static_cast<unsigned>((p.max_q + Cfg::kBlockM - 1) / Cfg::kBlockM),
                  static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch));
  mha_fwd_kernel<Cfg><<<grid, Cfg::kThreads, Cfg::kSmem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda::mha_sm90
