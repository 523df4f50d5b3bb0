// Top-k selection: radix select on order-preserving 32-bit keys, one thread-block cluster per row.
// The op's kernel for the rows topk_binned.cu does not take (past 32,768 scores, or past 8,192
// when too few to fill the GPU one block a row), and that kernel's GPU reference.
//
// A row is cut into as many contiguous slices as its cluster has blocks (one slice per block, so
// few long rows still fill the GPU). Each block reads its slice once with 16-byte loads, keeps
// the keys in shared memory (up to the cache capacity; the rest is re-read, usually from L2) and
// builds the first histogram while loading. Three radix passes of 11, 11 and 10 bits find the key
// T of the k-th largest score; the blocks of a cluster add their histograms through distributed
// shared memory, so each block picks the same bucket. Passes stop early once the candidates left
// are all taken. The final pass keeps every key above T and the lowest-positioned keys equal to
// T: warps walk contiguous segments 32 keys at a time, and ballots turn the flags into output
// offsets, so positions come out in ascending order without sorting.
//
// Reading the scores once is the floor; the passes after the load run from shared memory, and
// several blocks share a multiprocessor so that one block's passes overlap another's load.
#include <cooperative_groups.h>

#include "dsattn/ops/cuda/common.cuh"
#include "dsattn/ops/cuda/topk_keys.cuh"

namespace dsattn::ops::cuda {

namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 2048;  // first two passes: 11 bits each; the last pass 10 bits
constexpr int kMaxCluster = 8;
// Keys a block keeps in shared memory: 64 KiB, so that two blocks still share a multiprocessor
// with their histograms and candidate lists (registers allow two blocks of 512 threads as well)
// and clusters of 8 stay resident in one wave. A slice of a 128K row cut eight ways fits whole.
constexpr int kCacheKeys = 16 * 1024;
// A slice shorter than this is not worth another block of the cluster.
constexpr int kMinSlice = 4096;

// One block's slice of a row: keys [0, cached) in shared memory, [cached, len) re-read.
struct Slice {
  const float* scores;  // the slice's first score
  const std::uint32_t* cache;
  int len, cached;
  bool aligned;  // scores is 16-byte aligned (cached is then a multiple of 4 or len)

  __device__ std::uint32_t operator[](int s) const {
    return s < cached ? cache[s] : order_key(__ldg(scores + s));
  }

  // Calls f(key) for every key of the slice, in no particular order.
  template <typename F>
  __device__ void for_each(F&& f) const {
    const int vec_cached = cached & ~3;
    const uint4* cache4 = reinterpret_cast<const uint4*>(cache);
    for (int i = threadIdx.x; i < vec_cached / 4; i += kThreads) {
      const uint4 v = cache4[i];
      f(v.x), f(v.y), f(v.z), f(v.w);
    }
    for (int s = vec_cached + threadIdx.x; s < cached; s += kThreads) f(cache[s]);
    int s0 = cached;
    if (aligned) {
      const float4* g4 = reinterpret_cast<const float4*>(scores);
      const int end4 = len / 4;
      for (int i = s0 / 4 + threadIdx.x; i < end4; i += kThreads) {
        const float4 v = __ldg(g4 + i);
        f(order_key(v.x)), f(order_key(v.y)), f(order_key(v.z)), f(order_key(v.w));
      }
      s0 = max(s0, end4 * 4);
    }
    for (int s = s0 + threadIdx.x; s < len; s += kThreads) f(order_key(__ldg(scores + s)));
  }
};

// Reads the slice once: stores keys in the cache and counts the first pass's histogram.
__device__ void load_slice(const Slice& slice, std::uint32_t* cache, int* histogram) {
  constexpr int shift = radix_pass(0).shift;
  const auto count = [&](std::uint32_t key) { atomicAdd(&histogram[key >> shift], 1); };
  int s0 = 0;
  if (slice.aligned) {
    // Four 16-byte loads in flight per thread before any is used: the load is latency-bound
    // otherwise.
    constexpr int kUnroll = 4;
    const float4* g4 = reinterpret_cast<const float4*>(slice.scores);
    uint4* cache4 = reinterpret_cast<uint4*>(cache);
    const int end4 = slice.len / 4, cached4 = slice.cached / 4;
    for (int base = threadIdx.x; base < end4; base += kThreads * kUnroll) {
      float4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * kThreads;
        if (i < end4) v[u] = __ldcs(g4 + i);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * kThreads;
        if (i >= end4) break;
        const uint4 key{order_key(v[u].x), order_key(v[u].y), order_key(v[u].z), order_key(v[u].w)};
        if (i < cached4) cache4[i] = key;
        count(key.x), count(key.y), count(key.z), count(key.w);
      }
    }
    s0 = end4 * 4;
  }
  for (int s = s0 + threadIdx.x; s < slice.len; s += kThreads) {
    const std::uint32_t key = order_key(__ldg(slice.scores + s));
    if (s < slice.cached) cache[s] = key;
    count(key);
  }
}

// Adds the cluster's histograms of one pass and finds, from the highest bucket down, the bucket
// holding the `remaining`-th candidate. Every block of the cluster computes the same choice.
__device__ Choice choose_cluster_bucket(const cg::cluster_group& cluster, int* histogram, int bins,
                                        int remaining, Choice* shared_choice) {
  cluster.sync();  // every block's histogram of this pass is complete
  const int blocks = static_cast<int>(cluster.num_blocks());
  // choose_bucket gives each thread `per_thread` consecutive buckets from `low` (4 of 2,048 or 2
  // of 1,024). Their sums over the cluster take one 16- or 8-byte load from each block's
  // histogram, all independent, so the round trips to the other blocks overlap.
  const int per_thread = bins / kThreads;
  const int low = bins - (static_cast<int>(threadIdx.x) + 1) * per_thread;
  int4 sum{0, 0, 0, 0};
#pragma unroll
  for (int b = 0; b < kMaxCluster; ++b) {
    if (b < blocks) {
      const int* h = cluster.map_shared_rank(histogram, b) + low;
      if (per_thread == 4) {
        const int4 v = *reinterpret_cast<const int4*>(h);
        sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
      } else {
        const int2 v = *reinterpret_cast<const int2*>(h);
        sum.x += v.x, sum.y += v.y;
      }
    }
  }
  const auto count = [&](int bin) {
    const int i = bin - low;
    return i == 0 ? sum.x : i == 1 ? sum.y : i == 2 ? sum.z : sum.w;
  };
  return choose_bucket<kThreads, kBins, cub::BLOCK_SCAN_WARP_SCANS>(count, bins, remaining,
                                                                    shared_choice);
}

// Each warp of a block owns a contiguous segment of the slice, a multiple of 32 keys long, so
// that ballots over 32 consecutive keys turn per-key flags into ordered output offsets.
struct Segment {
  int begin, end;
  __device__ Segment(int len) {
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int size = (len + kWarps * 32 - 1) / (kWarps * 32) * 32;
    begin = min(len, warp * size);
    end = min(len, begin + size);
  }
};

// Per warp: how many keys of its segment lie above the threshold and how many equal it.
struct WarpCounts {
  int above[kWarps], equal[kWarps];
};

// The threshold key: masked keys above `prefix` are taken, and of those equal to it the first
// `remaining` in position order.
struct Threshold {
  std::uint32_t prefix, mask;
  int remaining;
};

// Counts, for the fallback path, each warp's keys above and equal to the threshold by walking
// the slice.
__device__ void count_by_walk(const Slice& slice, const Threshold& t, WarpCounts* counts) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const Segment seg(slice.len);
  int above = 0, equal = 0;
  for (int s = seg.begin + lane; s - lane < seg.end; s += 32) {
    const bool valid = s < seg.end;
    const std::uint32_t key = valid ? slice[s] & t.mask : 0u;
    above += __popc(__ballot_sync(0xffffffffu, valid && key > t.prefix));
    equal += __popc(__ballot_sync(0xffffffffu, valid && key == t.prefix));
  }
  if (lane == 0) counts->above[warp] = above, counts->equal[warp] = equal;
}

// Writes the slice's selected positions (offset by `first`, the slice's position in the row) from
// each warp's counts: the counts of the blocks before this one in the cluster and of the warps
// before each warp give its first output slot and how many equal keys precede it. For topk_slots
// each warp then turns its run of positions into what `value` maps them to.
__device__ void write_selected(const cg::cluster_group& cluster, const Slice& slice,
                               const Threshold& t, int first, const SelectedValue& value,
                               WarpCounts* counts, std::int32_t* out, int* block_totals) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const Segment seg(slice.len);
  const unsigned below_lane = (1u << lane) - 1u;
  __syncthreads();  // every warp's counts are in
  const int above = counts->above[warp], equal = counts->equal[warp];
  // Warp 0: the block's totals for the other blocks of the cluster, then each warp's count of
  // above and equal keys before it in the whole row.
  int a = 0, e = 0;
  if (warp == 0) {
    a = lane < kWarps ? counts->above[lane] : 0;
    e = lane < kWarps ? counts->equal[lane] : 0;
    int a_incl = a, e_incl = e;
    for (int o = 1; o < 32; o <<= 1) {
      const int av = __shfl_up_sync(0xffffffffu, a_incl, o);
      const int ev = __shfl_up_sync(0xffffffffu, e_incl, o);
      if (lane >= o) a_incl += av, e_incl += ev;
    }
    if (lane == 31) block_totals[0] = a_incl, block_totals[1] = e_incl;
    a = a_incl - a, e = e_incl - e;  // exclusive within the block
  }
  cluster.sync();  // every block's totals are visible; every warp has read its own counts
  if (warp == 0) {
    for (int b = 0; b < static_cast<int>(cluster.block_rank()); ++b) {
      const int* totals = cluster.map_shared_rank(block_totals, b);
      a += totals[0], e += totals[1];
    }
    if (lane < kWarps) counts->above[lane] = a, counts->equal[lane] = e;
  }
  __syncthreads();

  const int equal_before = counts->equal[warp];
  int written = counts->above[warp] + min(equal_before, t.remaining);
  int equal_seen = equal_before;
  const int quota_end = written + above + max(0, min(equal, t.remaining - equal_before));
  const int run_begin = written;  // the warp writes out[run_begin, quota_end)
  for (int s = seg.begin + lane; s - lane < seg.end && written < quota_end; s += 32) {
    const bool valid = s < seg.end;
    const std::uint32_t key = valid ? slice[s] & t.mask : 0u;
    const unsigned eq = __ballot_sync(0xffffffffu, valid && key == t.prefix);
    const bool take =
        valid &&
        (key > t.prefix || (key == t.prefix && equal_seen + __popc(eq & below_lane) < t.remaining));
    const unsigned taken = __ballot_sync(0xffffffffu, take);
    if (take) out[written + __popc(taken & below_lane)] = first + s;
    written += __popc(taken);
    equal_seen += __popc(eq);
  }
  if (value.table != nullptr) {
    // topk_slots: the warp's run of positions to cache slots, in place, all lanes at once (a
    // block-table lookup per store inside the walk waited on each one in turn).
    __syncwarp();  // the run's positions, written by every lane, are visible to every lane
    for (int i = run_begin + lane; i < quota_end; i += 32) out[i] = value(out[i]);
  }
  cluster.sync();  // no block leaves while another may still read its totals
}

// The fast path's candidates: per warp, in position order, the keys of its segment that fell in
// the first pass's bucket (with their positions in the slice). Usually a few percent of the keys.
constexpr int kCandidatesPerWarp = 224;  // within the shared memory two blocks allow
struct Candidates {
  std::uint32_t key[kWarps][kCandidatesPerWarp];
  int pos[kWarps][kCandidatesPerWarp];
  int count[kWarps];
  int overflow;  // some warp had more candidates than it can hold
};

// Walks the slice once after the first pass: counts each warp's keys above the first pass's
// bucket and lists those in it.
__device__ void collect_candidates(const Slice& slice, std::uint32_t bucket, WarpCounts* counts,
                                   Candidates* cand) {
  constexpr int shift = radix_pass(0).shift;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const Segment seg(slice.len);
  const unsigned below_lane = (1u << lane) - 1u;
  int above = 0, listed = 0;
  for (int s = seg.begin + lane; s - lane < seg.end; s += 32) {
    const bool valid = s < seg.end;
    const std::uint32_t key = valid ? slice[s] : 0u;
    const std::uint32_t b = key >> shift;
    above += __popc(__ballot_sync(0xffffffffu, valid && b > bucket));
    const bool in = valid && b == bucket;
    const unsigned in_mask = __ballot_sync(0xffffffffu, in);
    const int slot = listed + __popc(in_mask & below_lane);
    if (in && slot < kCandidatesPerWarp) cand->key[warp][slot] = key, cand->pos[warp][slot] = s;
    listed += __popc(in_mask);
  }
  if (lane == 0) {
    counts->above[warp] = above;
    counts->equal[warp] = listed;
    cand->count[warp] = min(listed, kCandidatesPerWarp);
    if (listed > kCandidatesPerWarp) cand->overflow = 1;
  }
}

__global__ void __launch_bounds__(kThreads) topk_kernel(TopkParams p, int cache_keys) {
  // Alternate passes: a block may still read the last one. Aligned for choose_cluster_bucket's
  // vector loads.
  __shared__ alignas(16) int histograms[2][kBins];
  __shared__ Choice choice;
  __shared__ int block_totals[2];
  __shared__ WarpCounts counts;
  __shared__ Candidates cand;
  extern __shared__ uint4 dynamic_smem[];
  std::uint32_t* cache = reinterpret_cast<std::uint32_t*>(dynamic_smem);

  const cg::cluster_group cluster = cg::this_cluster();
  const int blocks = static_cast<int>(cluster.num_blocks());
  const int rank = static_cast<int>(cluster.block_rank());
  const std::int64_t r = blockIdx.x / blocks;
  const int n = p.lengths[r], k = p.k;
  std::int32_t* o = p.out + r * p.stride_out;
  if (n <= k) {  // every position is selected; the scores are not read
    const SelectedValue value(p, r);
    for (int i = rank * kThreads + threadIdx.x; i < k; i += blocks * kThreads)
      o[i] = i < n ? value(i) : -1;
    return;  // uniform over the cluster: no block touches another's shared memory
  }
  const int slice_len = ((n + blocks - 1) / blocks + 3) & ~3;
  const int first = min(n, rank * slice_len);
  const float* scores = p.scores + r * p.stride_scores + first;
  Slice slice{scores, cache, min(n, first + slice_len) - first, 0,
              reinterpret_cast<std::uintptr_t>(scores) % 16 == 0};
  slice.cached = min(slice.len, cache_keys);

  for (int i = threadIdx.x; i < kBins; i += kThreads) histograms[0][i] = 0;
  __syncthreads();
  load_slice(slice, cache, histograms[0]);

  // Pass 1 (counted while loading): the bucket of the k-th largest key.
  const Choice c0 = choose_cluster_bucket(cluster, histograms[0], radix_pass(0).bins, k, &choice);
  Threshold t{static_cast<std::uint32_t>(c0.bucket) << radix_pass(0).shift,
              static_cast<std::uint32_t>(radix_pass(0).bins - 1) << radix_pass(0).shift,
              k - c0.above};
  // Every candidate left in the bucket is taken: no need to tell them apart further.
  const bool resolved_first = c0.count == t.remaining;
  bool resolved = resolved_first;

  // Fast path: list the bucket's keys, refine the threshold on the list alone.
  if (threadIdx.x == 0) cand.overflow = 0;
  __syncthreads();
  collect_candidates(slice, static_cast<std::uint32_t>(c0.bucket), &counts, &cand);
  cluster.sync();  // every block's lists and overflow flag are complete
  bool overflow = false;
  for (int b = 0; b < blocks; ++b) overflow |= cluster.map_shared_rank(&cand.overflow, b)[0] != 0;

#pragma unroll
  for (int pass = 1; pass < 3; ++pass) {
    if (resolved) break;
    const RadixPass ps = radix_pass(pass);
    int* histogram = histograms[pass % 2];
    for (int i = threadIdx.x; i < ps.bins; i += kThreads) histogram[i] = 0;
    __syncthreads();
    const std::uint32_t bin_mask = static_cast<std::uint32_t>(ps.bins - 1);
    const auto count = [&](std::uint32_t key) {
      if ((key & t.mask) == t.prefix) atomicAdd(&histogram[(key >> ps.shift) & bin_mask], 1);
    };
    if (overflow) {
      slice.for_each(count);
    } else {
      for (int i = threadIdx.x; i < kWarps * kCandidatesPerWarp; i += kThreads) {
        const int w = i / kCandidatesPerWarp, j = i % kCandidatesPerWarp;
        if (j < cand.count[w]) count(cand.key[w][j]);
      }
    }
    const Choice c = choose_cluster_bucket(cluster, histogram, ps.bins, t.remaining, &choice);
    t.remaining -= c.above;
    t.prefix |= static_cast<std::uint32_t>(c.bucket) << ps.shift;
    t.mask |= bin_mask << ps.shift;
    resolved = c.count == t.remaining;
  }

  if (resolved_first) {
    // The walk's counts stand: keys above the bucket, and the whole bucket taken.
  } else if (overflow) {
    count_by_walk(slice, t, &counts);
  } else {
    // Each warp adds its listed keys above the refined threshold; the listed keys equal to it
    // are all the equal keys of its segment.
    const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
    int above = 0, equal = 0;
    for (int j = lane; j < cand.count[warp]; j += 32) {
      const std::uint32_t key = cand.key[warp][j] & t.mask;
      above += key > t.prefix;
      equal += key == t.prefix;
    }
    for (int o = 16; o > 0; o >>= 1) {
      above += __shfl_xor_sync(0xffffffffu, above, o);
      equal += __shfl_xor_sync(0xffffffffu, equal, o);
    }
    if (lane == 0) counts.above[warp] += above, counts.equal[warp] = equal;
  }
  write_selected(cluster, slice, t, first, SelectedValue(p, r), &counts, o, block_totals);
}

}  // namespace

cudaError_t launch_topk(const TopkParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  // Blocks per row: one when the rows alone fill the GPU (a cluster's exchanges cost more than
  // they save there); for fewer rows, more blocks while the grid stays within about two blocks
  // per multiprocessor and each slice stays long enough to pay for the exchanges.
  const std::int64_t sms = multiprocessor_count();
  int blocks = 1;
  for (int next = 2; next <= kMaxCluster && p.rows * next <= 2 * sms && p.cols / next >= kMinSlice;
       next *= 2) {
    blocks = next;
  }
  const std::int64_t slice = ((p.cols + blocks - 1) / blocks + 3) & ~std::int64_t{3};
  const int cache_keys = static_cast<int>(std::min<std::int64_t>(slice, kCacheKeys));
  const std::size_t smem = sizeof(std::uint32_t) * static_cast<std::size_t>(cache_keys);
  // The static histograms and lists leave less than 48 KiB for the cache without the opt-in;
  // the largest carveout lets two blocks share a multiprocessor.
  if (const cudaError_t e = cudaFuncSetAttribute(
          topk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      e != cudaSuccess) {
    return e;
  }
  if (const cudaError_t e =
          cudaFuncSetAttribute(topk_kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                               cudaSharedmemCarveoutMaxShared);
      e != cudaSuccess) {
    return e;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(p.rows * blocks));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = static_cast<unsigned>(blocks);
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  config.attrs = &cluster;
  config.numAttrs = 1;
  const cudaError_t e = cudaLaunchKernelEx(&config, topk_kernel, p, cache_keys);
  const cudaError_t last = cudaGetLastError();  // clears the error the launch may have left
  return e != cudaSuccess ? e : last;
}

}  // namespace dsattn::ops::cuda
