// Every tiling of the sm_90 dense MHA kernel (src/dsattn/ops/cuda/mha_sm90.cuh), checked against
// the generic kernel and timed side by side on the bench's shapes (16K tokens, 128 heads, v a
// slice of [tokens, heads, 256] as the layer passes it).
//
// Build (no GPU needed) and run on an sm_90 machine:
//   nvcc -std=c++20 -O3 -gencode=arch=compute_90a,code=sm_90a -Isrc \
//     bench/mha_sm90_variants.cu src/dsattn/ops/cuda/attention_generic.cu -o build-dev/mha_variants
//   build-dev/mha_variants [reps]   (all variants: checks, then timings)
//   build-dev/mha_variants check I  (variant I's small check only, for compute-sanitizer)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dsattn/ops/cuda/mha_sm90.cuh"

using namespace dsattn::ops::cuda;

#define CHECK(x)                                                                                \
  do {                                                                                          \
    const cudaError_t e_ = (x);                                                                 \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s failed at line %d: %s\n", #x, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

namespace {

using Launch = cudaError_t (*)(const MhaParams&, cudaStream_t);
struct Variant {
  const char* name;
  Launch launch;
};
// Configurations: warps, 16-row m-tiles per warp, Q in registers, keys per tile, schedule.
#define VARIANT(w, m, qr, n, sched)                                                            \
  {                                                                                            \
#w "w " #m "m " #qr " N" #n " " #sched, mha_sm90::launch < mha_sm90::Config < w, m, qr, n, \
        mha_sm90::Schedule::sched>>                                                            \
  }
const Variant kVariants[] = {
    VARIANT(4, 1, true, 64, single),         VARIANT(4, 1, true, 64, double_buffer),
    VARIANT(8, 1, true, 64, single),         VARIANT(8, 1, true, 64, double_buffer),
    VARIANT(4, 2, false, 64, single),        VARIANT(4, 2, false, 32, single),
    VARIANT(4, 2, false, 32, double_buffer), VARIANT(8, 2, false, 32, single),
    VARIANT(4, 1, true, 128, single),        VARIANT(8, 1, true, 128, double_buffer),
    VARIANT(4, 1, true, 64, overlap),        VARIANT(8, 1, true, 64, overlap),
    VARIANT(4, 1, true, 64, overlap),  // again: the spread between identical runs
};

constexpr int Dqk = 192, Dv = 128;

float from_bf16(std::uint16_t b) {
  const std::uint32_t u = std::uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Uniform values in [-range, range) from a hash of the index, drawn on the device: the timing
// shapes hold 1.3G elements.
__global__ void fill_random_kernel(__nv_bfloat16* x, std::size_t n, std::uint64_t seed,
                                   float range) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
       i += std::size_t(gridDim.x) * blockDim.x) {
    std::uint64_t z = (i + 1) * 0x9e3779b97f4a7c15ull ^ seed * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    x[i] = __float2bfloat16(range * (static_cast<float>(z >> 40) / float(1 << 24) * 2.0f - 1.0f));
  }
}

void fill_random(void* dev, std::size_t n, std::uint64_t seed, float range) {
  fill_random_kernel<<<1024, 256>>>(static_cast<__nv_bfloat16*>(dev), n, seed, range);
  CHECK(cudaGetLastError());
}

struct Problem {
  std::vector<int> cq{0}, ck{0};
  int max_q = 0, H;
  void* q = nullptr;
  void* k = nullptr;
  void* kv = nullptr;  // [total_k, H, 256]: v is columns 128..255
  int* cu = nullptr;   // cu_q then cu_k
  MhaParams p{};

  Problem(const std::vector<std::pair<int, int>>& requests, std::uint64_t seed, int heads)
      : H(heads) {
    for (auto [nq, nk] : requests) {
      cq.push_back(cq.back() + nq);
      ck.push_back(ck.back() + nk);
      max_q = std::max(max_q, nq);
    }
    const std::size_t tq = cq.back(), tk = ck.back();
    CHECK(cudaMalloc(&q, tq * H * Dqk * 2));
    CHECK(cudaMalloc(&k, tk * H * Dqk * 2));
    CHECK(cudaMalloc(&kv, tk * H * 256 * 2));
    CHECK(cudaMalloc(&cu, 2 * cq.size() * sizeof(int)));
    fill_random(q, tq * H * Dqk, seed, 2.0f);
    fill_random(k, tk * H * Dqk, seed + 1, 2.0f);
    fill_random(kv, tk * H * 256, seed + 2, 1.0f);
    CHECK(cudaMemcpy(cu, cq.data(), cq.size() * sizeof(int), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(cu + cq.size(), ck.data(), ck.size() * sizeof(int), cudaMemcpyHostToDevice));
    p.q = q;
    p.k = k;
    p.v = static_cast<std::uint16_t*>(kv) + 128;
    p.cu_q = cu;
    p.cu_k = cu + cq.size();
    p.total_q = tq;
    p.max_q = max_q;
    p.sq0 = H * Dqk, p.sq1 = Dqk, p.sk0 = H * Dqk, p.sk1 = Dqk, p.sv0 = H * 256, p.sv1 = 256;
    p.so0 = H * Dv, p.so1 = Dv;
    p.batch = static_cast<int>(requests.size());
    p.heads = H;
    p.d_qk = Dqk;
    p.d_v = Dv;
    p.scale = 0.1352f;
  }
  ~Problem() {
    cudaFree(q);
    cudaFree(k);
    cudaFree(kv);
    cudaFree(cu);
  }
  double flops() const {
    double f = 0;
    for (std::size_t b = 0; b + 1 < cq.size(); ++b) {
      const double nq = cq[b + 1] - cq[b], nk = ck[b + 1] - ck[b];
      f += 2.0 * H * (Dqk + Dv) * (nq * (nk - nq) + nq * (nq + 1) / 2);
    }
    return f;
  }
};

// Runs `launch` into a NaN-poisoned output and returns it.
std::vector<std::uint16_t> run(Problem& pr, Launch launch) {
  const std::size_t n = std::size_t(pr.p.total_q) * pr.H * Dv;
  void* out;
  CHECK(cudaMalloc(&out, n * 2));
  CHECK(cudaMemset(out, 0xff, n * 2));
  pr.p.out = out;
  CHECK(launch(pr.p, nullptr));
  CHECK(cudaDeviceSynchronize());
  std::vector<std::uint16_t> h(n);
  CHECK(cudaMemcpy(h.data(), out, n * 2, cudaMemcpyDeviceToHost));
  cudaFree(out);
  return h;
}

// The generic kernel (one warp per row and head, keys in sequence) is slow: checks use few heads.
void check(const char* what, const std::vector<std::pair<int, int>>& requests, int heads,
           std::vector<bool>& ok, int only = -1) {
  Problem pr(requests, 7, heads);
  const auto ref = run(pr, launch_mha_generic);
  for (std::size_t vi = 0; vi < std::size(kVariants); ++vi) {
    if (only >= 0 && static_cast<int>(vi) != only) continue;
    const Variant& v = kVariants[vi];
    const auto got = run(pr, v.launch);
    double num = 0, den = 0, worst = 0;
    std::size_t bad = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      const double a = from_bf16(got[i]), b = from_bf16(ref[i]);
      if (!std::isfinite(a)) ++bad;
      num += (a - b) * (a - b);
      den += b * b;
      worst = std::max(worst, std::fabs(a - b));
    }
    const double rel = std::sqrt(num / den);
    const bool pass = bad == 0 && rel < 8e-3;
    ok[vi] = ok[vi] && pass;
    std::printf("check %-28s %-26s rel %.2e  max|diff| %.3e  non-finite %zu  %s\n", what, v.name,
                rel, worst, bad, pass ? "ok" : "FAIL");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool check_only = argc > 2 && std::strcmp(argv[1], "check") == 0;
  const int reps = argc > 1 && !check_only ? std::atoi(argv[1]) : 20;
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);

  std::setvbuf(stdout, nullptr, _IONBF, 0);  // every line reaches a log even if cut short
  std::vector<bool> ok(std::size(kVariants), true);
  if (check_only) {
    const int only = std::atoi(argv[2]);
    check("small varlen + prefixes", {{1, 1}, {24, 64}, {65, 65}, {30, 130}, {129, 129}}, 2, ok,
          only);
    return ok[only] ? 0 : 1;
  }
  check("mixed varlen + prefixes",
        {{1, 1},
         {63, 63},
         {24, 64},
         {65, 65},
         {30, 130},
         {200, 200},
         {128, 1000},
         {129, 129},
         {7, 7},
         {1, 300}},
        4, ok);
  check("2 x 1024", std::vector<std::pair<int, int>>(2, {1024, 1024}), 2, ok);
  check("3 x 777 over 1500 prefix", std::vector<std::pair<int, int>>(3, {777, 2277}), 1, ok);

  const int seqs[] = {512, 1024, 2048, 4096, 8192};
  std::printf("\nTFLOPS (16K tokens, 128 heads; batch = 16384 / s)\n%-28s", "variant");
  for (int s : seqs) std::printf(" %8d", s);
  std::printf("\n");
  std::vector<std::vector<double>> tflops(std::size(kVariants));
  for (int s : seqs) {
    const int batch = 16384 / s;
    Problem pr(std::vector<std::pair<int, int>>(batch, {s, s}), 11, 128);
    void* out;
    CHECK(cudaMalloc(&out, std::size_t(pr.p.total_q) * pr.H * Dv * 2));
    pr.p.out = out;
    for (std::size_t vi = 0; vi < std::size(kVariants); ++vi) {
      cudaEvent_t a, b;
      CHECK(cudaEventCreate(&a));
      CHECK(cudaEventCreate(&b));
      std::vector<float> ms;
      for (int r = 0; r < reps + 2; ++r) {
        CHECK(cudaEventRecord(a));
        CHECK(kVariants[vi].launch(pr.p, nullptr));
        CHECK(cudaEventRecord(b));
        CHECK(cudaEventSynchronize(b));
        float t;
        CHECK(cudaEventElapsedTime(&t, a, b));
        if (r >= 2) ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      tflops[vi].push_back(pr.flops() / (ms[ms.size() / 2] * 1e9));
      cudaEventDestroy(a);
      cudaEventDestroy(b);
    }
    cudaFree(out);
  }
  for (std::size_t vi = 0; vi < std::size(kVariants); ++vi) {
    std::printf("%-28s", kVariants[vi].name);
    for (double t : tflops[vi]) std::printf(" %8.1f", t);
    std::printf("\n");
  }
  // One line per variant for scripts: index, checks passed, TFLOPS per sequence length.
  for (std::size_t vi = 0; vi < std::size(kVariants); ++vi) {
    std::printf("RESULT %zu %d", vi, ok[vi] ? 1 : 0);
    for (double t : tflops[vi]) std::printf(" %.1f", t);
    std::printf("\n");
  }
  const bool all = std::all_of(ok.begin(), ok.end(), [](bool b) { return b; });
  std::printf("%s\n", all ? "all checks passed" : "SOME CHECKS FAILED");
  return all ? 0 : 1;
}
