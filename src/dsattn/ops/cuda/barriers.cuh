// Synchronisation between the warp roles of one CTA: shared-memory mbarriers (a phase completes
// when its expected number of arrivals has come; waiters spin on the phase's parity) and named
// hardware barriers over a subset of the CTA's warps. Device code only, sm_90.
#pragma once

#include <cstdint>

namespace dsattn::ops::cuda::barriers {

// Initialises the mbarrier at shared address `bar` to expect `arrivals` arrivals per phase. One
// thread initialises; a CTA barrier publishes it before any other thread uses it.
__device__ __forceinline__ void mbarrier_init(std::uint32_t bar, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
}

// Arrives once (release: the thread's earlier shared-memory writes are visible to the threads
// that see the phase complete).
__device__ __forceinline__ void mbarrier_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// Waits until the phase of parity `parity` has completed (acquire).
__device__ __forceinline__ void mbarrier_wait(std::uint32_t bar, std::uint32_t parity) {
  std::uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (done == 0);
}

// Arrives once when all of this thread's earlier cp.async copies have landed, without waiting
// for them here. The arrival counts towards the phase's expected count (noinc).
__device__ __forceinline__ void mbarrier_arrive_on_copies(std::uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}

// Hardware barrier `id` (1-15; 0 is __syncthreads) over `threads` threads (a multiple of 32).
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Hardware barrier `id` over `threads` threads that the warps of different roles reach from
// different code (named_sync's form requires every participating thread to execute the same
// instruction): role_sync waits, role_arrive only signals (a hand-over to warps that wait there
// with role_sync).
__device__ __forceinline__ void role_sync(int id, int threads) {
  asm volatile("barrier.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void role_arrive(int id, int threads) {
  asm volatile("barrier.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// named_sync that also returns whether `value` was true for any of the threads.
__device__ __forceinline__ bool named_sync_or(int id, int threads, bool value) {
  std::uint32_t any = 0;
  asm volatile(
      "{\n.reg .pred p, q;\n"
      "setp.ne.u32 q, %1, 0;\n"
      "bar.red.or.pred p, %2, %3, q;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(any)
      : "r"(static_cast<std::uint32_t>(value)), "r"(id), "r"(threads)
      : "memory");
  return any != 0;
}

// Hands registers between warp roles: the warps of a warpgroup lower (or raise) their register
// allotment to `N` per thread, so that the warpgroups that run the products can hold more.
template <int N>
__device__ __forceinline__ void release_registers() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

template <int N>
__device__ __forceinline__ void claim_registers() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

}  // namespace dsattn::ops::cuda::barriers
