// Top-k selection for rows of up to 8,192 scores: one block of 512 threads per row, the row in
// registers, and a first radix pass that counts value bins instead of the top bits of the float.
//
// Each thread holds 16 consecutive scores of the row in registers from the one read of the row
// to the end.
//
// 1. Bins. The top 11 bits of a float put most scores of a typical row into a few dozen buckets
//    (sign, exponent and two mantissa bits), and the shared-memory atomics of the histogram then
//    collide. Instead, the block finds the row's finite minimum and maximum and cuts that range
//    into 2,048 equal bins: bin(x) = floor((x/2 - lo/2) · scale), clamped, is a non-decreasing
//    function of x under IEEE rounding (each step is), so a higher bin holds only higher scores;
//    NaN and -inf fall in bin 0 and +inf in the last bin, as their order requires.
// 2. The bin B holding the k-th largest score, from the histogram.
// 3. Bin B's scores (usually a handful) are listed as order-preserving 32-bit keys, and up to
//    three radix passes over the list find the exact threshold key and how many keys equal to it
//    are taken (those of lowest position). A list that overflows is not kept: its passes walk the
//    registers instead.
// 4. Each thread flags its selected scores in two 16-bit masks (certainly taken; equal to the
//    threshold), and a block scan gives each thread its first output slot, so the positions come
//    out in ascending order.
//
// Per score this costs the read, about 25 instructions and one shared-memory atomic, which
// rarely collides unless most of a row shares a value (ties, an outlier, a narrow range). Longer
// rows go to the sliced kernel (topk.cu), whose clusters share a row between blocks.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "dsattn/ops/cuda/common.cuh"
#include "dsattn/ops/cuda/topk_keys.cuh"

namespace dsattn::ops::cuda {

namespace {

constexpr int kThreads = 512;
constexpr int kPerThread = 16;
constexpr int kMaxCols = kThreads * kPerThread;
constexpr int kBins = 2048;
constexpr int kListCapacity = 2048;  // bin B's entries the block lists

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

struct Shared {
  int histogram[2][kBins];  // the value bins, then the key passes (alternating)
  float2 range;             // the row's finite minimum and maximum
  Choice choice;
  int listed;  // bin B's entries found (may exceed the capacity)
  std::uint32_t list_key[kListCapacity];
};

// The threshold on the keys of bin B: masked keys above `prefix` are taken, and of those equal to
// it the first `remaining` in position order.
struct Threshold {
  std::uint32_t prefix, mask;
  int remaining;
};

__global__ void __launch_bounds__(kThreads, 2) topk_binned_kernel(TopkParams p) {
  __shared__ Shared sm;
  const int t = static_cast<int>(threadIdx.x);
  const std::int64_t r = blockIdx.x;
  const int n = p.lengths[r], k = p.k;
  std::int32_t* o = p.out + r * p.stride_out;
  if (n <= k) {  // every position is selected; the scores are not read
    for (int i = t; i < k; i += kThreads) o[i] = i < n ? i : -1;
    return;
  }

  for (int i = t; i < kBins; i += kThreads) sm.histogram[0][i] = 0;
  if (t == 0) sm.listed = 0;

  // The thread's 16 scores; positions at or past the row's length read as NaN and are not
  // counted (`valid`).
  const int base = t * kPerThread;  // the row position of x[0]
  const float* src = p.scores + r * p.stride_scores + base;
  float x[kPerThread];
  const bool full = base + kPerThread <= n;
  const unsigned valid = full ? 0xffffu : (base >= n ? 0u : (1u << (n - base)) - 1u);
  if (full && reinterpret_cast<std::uintptr_t>(src) % 16 == 0) {
#pragma unroll
    for (int v = 0; v < kPerThread / 4; ++v) {
      const float4 q = __ldg(reinterpret_cast<const float4*>(src) + v);
      x[4 * v] = q.x, x[4 * v + 1] = q.y, x[4 * v + 2] = q.z, x[4 * v + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j)
      x[j] = (valid >> j) & 1u ? __ldg(src + j) : __int_as_float(0x7fffffff);
  }

  // Step 1: the row's finite range (fminf and fmaxf skip NaN; infinities are dropped in a second
  // look, taken only by rows that hold one).
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  const auto block_range = [&](auto&& keep) {
    float lo = INFINITY, hi = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const float v = keep(x[j]) ? x[j] : __int_as_float(0x7fffffff);
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
    lo = Reduce(reduce_storage).Reduce(lo, [](float a, float b) { return fminf(a, b); });
    __syncthreads();
    hi = Reduce(reduce_storage).Reduce(hi, [](float a, float b) { return fmaxf(a, b); });
    if (t == 0) sm.range = make_float2(lo, hi);
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
  __syncthreads();  // the histogram is complete
  // The bucket of histogram h holding the `remaining`-th key (one instantiation for every pass).
  const auto choose = [&](const int* h, int bins, int remaining) {
    return choose_bucket<kThreads, kBins>([h](int bin) { return h[bin]; }, bins, remaining,
                                          &sm.choice);
  };
  const Choice c0 = choose(sm.histogram[0], kBins, k);
  const int chosen = c0.bucket;
  Threshold th{0u, 0u, k - c0.above};
  bool resolved = c0.count == th.remaining;  // all of bin B is taken

  // Step 3: list bin B's entries, then refine the threshold on the list.
  if (!resolved) {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      if (((valid >> j) & 1u) && bin(x[j]) == chosen) {
        const int slot = atomicAdd(&sm.listed, 1);
        if (slot < kListCapacity) sm.list_key[slot] = order_key(x[j]);
      }
    }
  }
  __syncthreads();
  const int listed = sm.listed;
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
        if (((valid >> j) & 1u) && bin(x[j]) == chosen) count(order_key(x[j]));
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
  unsigned taken = 0, equal = 0;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int b = bin(x[j]);
    bool above = b > chosen, same = false;
    if (b == chosen) {
      const std::uint32_t key = order_key(x[j]) & th.mask;
      above = key > th.prefix;
      same = key == th.prefix;
    }
    taken |= static_cast<unsigned>(above) << j;
    equal |= static_cast<unsigned>(same) << j;
  }
  taken &= valid;
  equal &= valid;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  int before;  // packed: taken << 16 | equal (each at most 8,192)
  Scan(scan_storage).ExclusiveSum(static_cast<int>((__popc(taken) << 16) | __popc(equal)), before);
  const int taken_before = before >> 16, equal_before = before & 0xffff;
  // The equal keys this thread takes: the lowest `quota` of its flags.
  int quota = min(max(th.remaining - equal_before, 0), __popc(equal));
  unsigned picked = taken;
  for (unsigned e = equal; quota > 0; --quota, e &= e - 1) picked |= e & (~e + 1u);
  int slot = taken_before + min(equal_before, th.remaining);
  for (; picked != 0; picked &= picked - 1) o[slot++] = base + __ffs(picked) - 1;
}

}  // namespace

bool topk_binned_supports(const TopkParams& p) { return p.cols <= kMaxCols; }

cudaError_t launch_topk_binned(const TopkParams& p, cudaStream_t stream) {
  if (!topk_binned_supports(p)) return cudaErrorInvalidValue;
  if (p.rows == 0) return cudaSuccess;
  topk_binned_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsattn::ops::cuda
