// Top-k selection for rows of up to 32,768 scores: a persistent grid, one block a row at a time,
// the row in registers, and a first radix pass that counts value bins instead of the top bits of
// the float.
//
// Two shapes of block: 512 threads keeping 16 scores each (rows of up to 8,192; two blocks a
// multiprocessor) and 1,024 threads keeping 32 (up to 32,768; one block). Each block walks rows
// blockIdx.x, blockIdx.x + gridDim.x, ... and copies its next row into shared memory with
// cp.async while it selects from the current one, so the read of the scores, the floor of this
// op, goes on during the passes below instead of after them.
//
// 1. Bins. The top 11 bits of a float put most scores of a typical row into a few dozen buckets
//    (sign, exponent and two mantissa bits), and the shared-memory atomics of the histogram then
//    collide. Instead, the block finds the row's finite minimum and maximum and cuts that range
//    into 2,048 equal bins: bin(x) = floor((x/2 - lo/2) · scale), clamped, is a non-decreasing
//    function of x under IEEE rounding (each step is), so a higher bin holds only higher scores;
//    NaN and -inf fall in bin 0 and +inf in the last bin, as their order requires.
// 2. The bin B holding the k-th largest score, from the histogram.
// 3. Bin B's scores (usually a handful) are listed as order-preserving 32-bit keys. Up to 32 of
//    them, one warp ranks the list against itself and finds the exact threshold key; a longer
//    list takes up to three radix passes. A list that overflows is not kept: its passes walk the
//    registers instead.
// 4. Each thread flags its selected scores in two masks (certainly taken; equal to the
//    threshold), and a block scan gives each thread its first output slot, so the positions come
//    out in ascending order. For topk_slots each position is written as its cache slot, through
//    its request's block table (SelectedValue), so the map costs no pass of its own.
//
// Per score this costs the read, about 25 instructions and one shared-memory atomic, which
// rarely collides unless most of a row shares a value (ties, an outlier, a narrow range). Rows
// past 32,768 scores, and rows past 8,192 too few to fill the GPU one block each, go to the
// sliced kernel (topk.cu), whose clusters share a row between blocks.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "dsattn/ops/cuda/common.cuh"
#include "dsattn/ops/cuda/ptx.cuh"
#include "dsattn/ops/cuda/topk_keys.cuh"

namespace dsattn::ops::cuda {

namespace {

// A block shape: threads, scores each thread keeps, and blocks a multiprocessor holds (which
// bounds the registers a thread gets: 64 in both shapes; the wide shape spills some of its state
// to local memory around the block scans).
template <int Threads, int PerThread, int MinBlocks>
struct Shape {
  static constexpr int kThreads = Threads, kPerThread = PerThread, kMinBlocks = MinBlocks;
  static constexpr int kMaxCols = Threads * PerThread;
  static constexpr int kChunks = PerThread / 4;  // 16-byte chunks a thread keeps
};
using Narrow = Shape<512, 16, 2>;
using Wide = Shape<1024, 32, 1>;

constexpr int kBins = 2048;
constexpr int kListCapacity = 2048;  // bin B's entries the block lists
constexpr int kExactList = 32;       // lists up to this long are ranked by one warp

// The value bins of step 1: bin(x) = clamp(floor((x/2 - lo/2) · scale)). Halving first keeps
// x - lo finite for any two finite floats; the product inside the fma is exact, so each step is
// a monotone rounding.
struct Bins {
  float lo_half, scale;
  __device__ int operator()(float x) const {
    const int b = __float2int_rz(fmaf(x, 0.5f, -lo_half) * scale);  // NaN -> 0
    return min(max(b, 0), kBins - 1);
  }
};

// The threshold on the keys of bin B: masked keys above `prefix` are taken, and of those equal to
// it the first `remaining` in position order.
struct Threshold {
  std::uint32_t prefix, mask;
  int remaining;
};

struct Shared {
  int histogram[2][kBins];  // the value bins, then the key passes (alternating)
  float2 range;             // the row's finite minimum and maximum
  Choice choice;
  Threshold exact;  // the one-warp ranking's result
  int listed;       // bin B's entries found (may exceed the capacity)
  std::uint32_t list_key[kListCapacity];
};

// The shared-memory slot of a row's 16-byte chunk c: the chunk's place in its 128-byte line is
// XORed with the line's low three bits, so that the eight lanes of a quarter warp, each reading
// chunks of its own consecutive scores (one or two lines apart), hit different banks.
__device__ __forceinline__ int chunk_slot(int c) { return c ^ ((c >> 3) & 7); }

// The scores of row r the block selects from (its length clamped to the block's capacity, as the
// reads of the row are).
template <class S>
__device__ __forceinline__ int row_length(const TopkParams& p, std::int64_t r) {
  return min(p.lengths[r], S::kMaxCols);
}

// Starts copying row r into `buffer` (16-byte chunks at chunk_slot; 4-byte copies for a row that
// is not 16-byte aligned and for a partial last chunk). Rows past the grid's last and rows that
// select every position are not read. Every thread commits one group, empty or not.
template <class S>
__device__ void prefetch_row(const TopkParams& p, std::int64_t r, float* buffer) {
  if (r < p.rows) {
    const int n = row_length<S>(p, r);
    if (n > p.k) {
      const float* src = p.scores + r * p.stride_scores;
      const bool aligned = reinterpret_cast<std::uintptr_t>(src) % 16 == 0;
      for (int c = static_cast<int>(threadIdx.x); c * 4 < n; c += S::kThreads) {
        const std::uint32_t dst = ptx::smem_addr(buffer + chunk_slot(c) * 4);
        if (aligned && c * 4 + 4 <= n) {
          ptx::cp_async16(dst, src + c * 4, true);
        } else {
          for (int i = 0; i < 4 && c * 4 + i < n; ++i) ptx::cp_async4(dst + 4 * i, src + c * 4 + i);
        }
      }
    }
  }
  ptx::cp_async_commit();
}

// What a thread writes for a selected position of its run base ... base + kPerThread - 1: the
// position (topk), or with kSlots its cache slot (topk_slots). Two builds of the kernel, so that
// the positions one holds no block-table state in registers (the 512-thread shape has 64 a
// thread).
template <bool kSlots, int kPerThread>
struct ThreadOutput {
  __device__ ThreadOutput(const TopkParams&, std::int64_t, int) {}
  __device__ std::int32_t operator()(int pos) const { return pos; }
};

// Pages of at least kPerThread tokens hold the run in at most two pages, whose block-table
// entries the thread loads once (a load per selected position, each waited for before the next
// store, made the slots cost a quarter more than the positions); smaller pages look each
// position up.
template <int kPerThread>
struct ThreadOutput<true, kPerThread> {
  SelectedValue lookup;
  bool two_pages;
  int start;                   // the first position of the run's first page
  std::int32_t first, second;  // the two pages' first slots; -1 past the table
  __device__ ThreadOutput(const TopkParams& p, std::int64_t r, int base)
      : lookup(p, r), two_pages(p.page_size >= kPerThread), start(0), first(-1), second(-1) {
    if (!two_pages) return;
    const int page = base / p.page_size;
    start = page * p.page_size;
    if (page < lookup.width) first = lookup.table[page] * p.page_size;
    if (page + 1 < lookup.width) second = lookup.table[page + 1] * p.page_size;
  }
  __device__ std::int32_t operator()(int pos) const {
    if (!two_pages) return lookup(pos);
    const int offset = pos - start;  // in [0, 2 · page_size)
    if (offset < lookup.page_size) return first < 0 ? -1 : first + offset;
    return second < 0 ? -1 : second + offset - lookup.page_size;
  }
};

template <class S, bool kSlots>
__global__ void __launch_bounds__(S::kThreads, S::kMinBlocks) topk_binned_kernel(TopkParams p) {
  constexpr int kThreads = S::kThreads, kPerThread = S::kPerThread;
  __shared__ Shared sm;
  using Reduce = cub::BlockReduce<float2, kThreads>;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  __shared__ typename Scan::TempStorage scan_storage;
  extern __shared__ float4 dynamic_smem[];
  float* buffer = reinterpret_cast<float*>(dynamic_smem);  // the next row, S::kMaxCols scores
  const int t = static_cast<int>(threadIdx.x);
  const int k = p.k;

  prefetch_row<S>(p, blockIdx.x, buffer);
  for (std::int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const int n = row_length<S>(p, r);
    std::int32_t* o = p.out + r * p.stride_out;

    // The thread's scores; positions at or past the row's length read as NaN and are not
    // counted (`valid`).
    ptx::cp_async_wait_all();
    __syncthreads();  // row r has landed; every thread is done with the previous row
    const int base = t * kPerThread;  // the row position of x[0]
    const std::uint32_t valid = base + kPerThread <= n ? ~0u
                                : base >= n            ? 0u
                                                       : (1u << (n - base)) - 1u;
    float x[kPerThread];
    if (n > k) {
#pragma unroll
      for (int v = 0; v < S::kChunks; ++v) {
        const float4 q = reinterpret_cast<const float4*>(buffer)[chunk_slot(t * S::kChunks + v)];
        const float nan = __int_as_float(0x7fffffff);
        x[4 * v] = (valid >> (4 * v)) & 1u ? q.x : nan;
        x[4 * v + 1] = (valid >> (4 * v + 1)) & 1u ? q.y : nan;
        x[4 * v + 2] = (valid >> (4 * v + 2)) & 1u ? q.z : nan;
        x[4 * v + 3] = (valid >> (4 * v + 3)) & 1u ? q.w : nan;
      }
    }
    for (int i = t; i < kBins; i += kThreads) sm.histogram[0][i] = 0;
    if (t == 0) sm.listed = 0;
    __syncthreads();  // the buffer is free for the next row
    prefetch_row<S>(p, r + gridDim.x, buffer);
    if (n <= k) {  // every position is selected; the scores are not read
      const SelectedValue slots(p, r);
      for (int i = t; i < k; i += kThreads) {
        if constexpr (kSlots) {
          o[i] = i < n ? slots(i) : -1;
        } else {
          o[i] = i < n ? i : -1;
        }
      }
      continue;
    }

    // Step 1: the row's finite range (fminf and fmaxf skip NaN; infinities are dropped in a
    // second look, taken only by rows that hold one).
    const auto block_range = [&](auto&& keep) {
      float2 v{INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const float y = keep(x[j]) ? x[j] : __int_as_float(0x7fffffff);
        v.x = fminf(v.x, y);
        v.y = fmaxf(v.y, y);
      }
      v = Reduce(reduce_storage).Reduce(v, [](float2 a, float2 b) {
        return make_float2(fminf(a.x, b.x), fmaxf(a.y, b.y));
      });
      if (t == 0) sm.range = v;
      __syncthreads();
      return sm.range;
    };
    float2 range = block_range([](float) { return true; });
    if (isinf(range.x) || isinf(range.y)) {
      __syncthreads();  // every thread has read sm.range
      range = block_range([](float v) { return fabsf(v) < INFINITY; });
    }
    Bins bin{0.0f, 0.0f};
    if (range.x <= range.y) {  // some finite score
      bin.lo_half = range.x * 0.5f;
      const float span_half = range.y * 0.5f - bin.lo_half;
      bin.scale = span_half > 0.0f ? kBins / span_half : 0.0f;
    }

    // Step 2: the histogram, then the bin of the k-th largest score.
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      if ((valid >> j) & 1u) atomicAdd(&sm.histogram[0][bin(x[j])], 1);
    }
    // The bins are recomputed below rather than kept: 32 more live registers would spill more.
    asm volatile("" : "+f"(bin.lo_half), "+f"(bin.scale));
    __syncthreads();  // the histogram is complete
    // The bucket of histogram h holding the `remaining`-th key (one instantiation for every
    // pass).
    const auto choose = [&](const int* h, int bins, int remaining) {
      return choose_bucket<kThreads, kBins, cub::BLOCK_SCAN_RAKING>([h](int b) { return h[b]; },
                                                                    bins, remaining, &sm.choice);
    };
    const Choice c0 = choose(sm.histogram[0], kBins, k);
    const int chosen = c0.bucket;
    Threshold th{0u, 0u, k - c0.above};
    bool resolved = c0.count == th.remaining;  // all of bin B is taken
    // The thread's scores above bin B (all taken) and in it.
    std::uint32_t above_bin = 0, in_bin = 0;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int b = bin(x[j]);
      above_bin |= static_cast<std::uint32_t>(b > chosen) << j;
      in_bin |= static_cast<std::uint32_t>(b == chosen) << j;
    }
    above_bin &= valid;
    in_bin &= valid;

    // Step 3: list bin B's entries, then find the exact threshold on the list.
    if (!resolved) {
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        if ((in_bin >> j) & 1u) {
          const int slot = atomicAdd(&sm.listed, 1);
          if (slot < kListCapacity) sm.list_key[slot] = order_key(x[j]);
        }
      }
    }
    __syncthreads();
    const int listed = sm.listed;
    if (!resolved && listed <= kExactList) {
      // One warp: each lane's key, ranked against the whole list; the threshold is the key with
      // fewer than `remaining` keys above it and at least `remaining` at or above it.
      if (t < 32) {
        const bool has = t < listed;
        const std::uint32_t key = has ? sm.list_key[t] : 0u;
        int above = 0, equal = 0;
        for (int j = 0; j < listed; ++j) {
          const std::uint32_t other = __shfl_sync(0xffffffffu, key, j);
          above += other > key;
          equal += other == key;
        }
        const bool is_threshold = has && above < th.remaining && th.remaining <= above + equal;
        const int src = __ffs(__ballot_sync(0xffffffffu, is_threshold)) - 1;
        const std::uint32_t threshold = __shfl_sync(0xffffffffu, key, src);
        const int above_threshold = __shfl_sync(0xffffffffu, above, src);
        if (t == 0) sm.exact = {threshold, ~0u, th.remaining - above_threshold};
      }
      __syncthreads();
      th = sm.exact;
      resolved = true;
    }
    const bool walk = listed > kListCapacity;  // count from the registers
#pragma unroll
    for (int pass = 0; pass < 3; ++pass) {
      if (resolved) break;
      const RadixPass ps = radix_pass(pass);
      int* histogram = sm.histogram[(pass + 1) % 2];
      for (int i = t; i < ps.bins; i += kThreads) histogram[i] = 0;
      __syncthreads();
      const std::uint32_t digit_mask = static_cast<std::uint32_t>(ps.bins - 1);
      const auto count = [&](std::uint32_t key) {
        if ((key & th.mask) == th.prefix) atomicAdd(&histogram[(key >> ps.shift) & digit_mask], 1);
      };
      if (walk) {
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) {
          if ((in_bin >> j) & 1u) count(order_key(x[j]));
        }
      } else {
        for (int i = t; i < listed; i += kThreads) count(sm.list_key[i]);
      }
      __syncthreads();  // the histogram of this pass is complete
      const Choice c = choose(histogram, ps.bins, th.remaining);
      th.remaining -= c.above;
      th.prefix |= static_cast<std::uint32_t>(c.bucket) << ps.shift;
      th.mask |= digit_mask << ps.shift;
      resolved = c.count == th.remaining;
    }

    // Step 4: flags, each thread's first output slot, the positions.
    std::uint32_t taken = above_bin, equal = 0;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      if ((in_bin >> j) & 1u) {
        const std::uint32_t key = order_key(x[j]) & th.mask;
        taken |= static_cast<std::uint32_t>(key > th.prefix) << j;
        equal |= static_cast<std::uint32_t>(key == th.prefix) << j;
      }
    }
    // Packed: taken << 16 | equal. A row holds at most 32,768 scores and takes fewer than that
    // above the threshold (k < n), so neither field overflows.
    int before;
    Scan(scan_storage)
        .ExclusiveSum(static_cast<int>((__popc(taken) << 16) | __popc(equal)), before);
    const int taken_before = before >> 16, equal_before = before & 0xffff;
    // The equal keys this thread takes: the lowest `quota` of its flags.
    int quota = min(max(th.remaining - equal_before, 0), __popc(equal));
    std::uint32_t picked = taken;
    for (std::uint32_t e = equal; quota > 0; --quota, e &= e - 1) picked |= e & (~e + 1u);
    int slot = taken_before + min(equal_before, th.remaining);
    const ThreadOutput<kSlots, kPerThread> output(p, r, base);
    for (; picked != 0; picked &= picked - 1) o[slot++] = output(base + __ffs(picked) - 1);
  }
}

template <class S, bool kSlots>
cudaError_t launch_shape(const TopkParams& p, cudaStream_t stream) {
  const auto kernel = topk_binned_kernel<S, kSlots>;
  constexpr int smem = S::kMaxCols * static_cast<int>(sizeof(float));
  if (const cudaError_t e =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
      e != cudaSuccess) {
    return e;
  }
  int per_sm = 0;
  if (const cudaError_t e =
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, S::kThreads, smem);
      e != cudaSuccess) {
    return e;
  }
  // Persistent: as many blocks as are resident at once, each walking rows a grid apart.
  const std::int64_t grid =
      std::min<std::int64_t>(p.rows, std::int64_t{std::max(per_sm, 1)} * multiprocessor_count());
  kernel<<<static_cast<unsigned>(grid), S::kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

const char* topk_binned_choice(const TopkParams& p) {
  if (p.cols <= Narrow::kMaxCols) return "topk_binned";
  // One block a row: worth it only where the rows alone fill the GPU.
  if (p.cols <= Wide::kMaxCols && p.rows >= multiprocessor_count()) return "topk_binned_wide";
  return nullptr;
}

cudaError_t launch_topk_binned(const TopkParams& p, cudaStream_t stream) {
  const char* choice = topk_binned_choice(p);
  if (choice == nullptr) return cudaErrorInvalidValue;
  if (p.rows == 0) return cudaSuccess;
  const bool narrow = p.cols <= Narrow::kMaxCols;
  if (p.block_tables != nullptr) {
    return narrow ? launch_shape<Narrow, true>(p, stream) : launch_shape<Wide, true>(p, stream);
  }
  return narrow ? launch_shape<Narrow, false>(p, stream) : launch_shape<Wide, false>(p, stream);
}

}  // namespace dsattn::ops::cuda
