// Hopper warpgroup MMA (wgmma, sm_90a) wrappers: shared-memory matrix descriptors for
// 128-byte-swizzled K-major tiles, the fences around asynchronous MMAs, and the FP8 e4m3
// m64nNk32 products the kernels use. Device code only.
#pragma once

#include <cstdint>

namespace dsattn::ops::cuda::wgmma {

// A K-major tile of rows of exactly 128 bytes, stored with the 128-byte swizzle: byte c of row r
// lives at r * 128 + ((c / 16) ^ (r % 8)) * 16 + c % 16, the tile 1024-byte aligned. Eight rows
// form one 1024-byte swizzle atom; atoms follow each other along M (or N).
__device__ __forceinline__ std::uint32_t swizzled_offset(int row, int byte) {
  return static_cast<std::uint32_t>(row * 128 + (((byte >> 4) ^ (row & 7)) << 4) + (byte & 15));
}

// The matrix descriptor of such a tile starting at shared address `addr` (1024-byte aligned, or
// advanced inside the atom by a multiple of 16 bytes to step along K): leading byte offset unused
// for swizzled K-major layouts (1 by convention), stride byte offset 1024 (one atom of 8 rows),
// swizzle mode 1 (128 bytes).
__device__ __forceinline__ std::uint64_t desc_k_major_sw128(std::uint32_t addr) {
  std::uint64_t d = 0;
  d |= static_cast<std::uint64_t>((addr & 0x3FFFF) >> 4);
  d |= static_cast<std::uint64_t>(1) << 16;
  d |= static_cast<std::uint64_t>(1024 >> 4) << 32;
  d |= static_cast<std::uint64_t>(1) << 62;
  return d;
}

// The descriptor of an MN-major operand (B of D = A · B with B's N index contiguous) stored as
// 128-byte-swizzled tiles of the same physical layout: row r of a tile holds 64 consecutive N
// values (128 bytes) of K index r, eight K rows per 1024-byte atom (stride byte offset 1024), and
// the next 64 N values start `n_block_bytes` further (leading byte offset). `addr` is
// 1024-byte aligned; stepping along K by 16 moves it by two atoms.
__device__ __forceinline__ std::uint64_t desc_mn_major_sw128(std::uint32_t addr,
                                                             std::uint32_t n_block_bytes) {
  std::uint64_t d = 0;
  d |= static_cast<std::uint64_t>((addr & 0x3FFFF) >> 4);
  d |= static_cast<std::uint64_t>((n_block_bytes >> 4) & 0x3FFF) << 16;
  d |= static_cast<std::uint64_t>(1024 >> 4) << 32;
  d |= static_cast<std::uint64_t>(1) << 62;
  return d;
}

__device__ __forceinline__ void fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void commit_group() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void wait_group() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Shared memory written by ordinary stores (or cp.async) that wgmma reads next: each writing
// thread fences before the barrier that publishes it.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Keeps the compiler from moving reads or writes of accumulator registers across an
// asynchronous MMA that owns them.
template <int R>
__device__ __forceinline__ void fence_operands(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// The 64 accumulator operands of an m64n128 product, in asm operand order %0 ... %63.
#define DSATTN_WGMMA_D64(d)                                                                       \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),    \
      "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),  \
      "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),  \
      "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),  \
      "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),  \
      "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),  \
      "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),  \
      "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define DSATTN_WGMMA_D64_REGS                                                                   \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "  \
  "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "  \
  "%56, %57, %58, %59, %60, %61, %62, %63}"

// The 32 accumulator operands of an m64n64 product, in asm operand order %0 ... %31.
#define DSATTN_WGMMA_D32(d)                                                                       \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),    \
      "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),  \
      "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),  \
      "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define DSATTN_WGMMA_D32_REGS                                                                   \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"

// D[64 x 128] (+)= A[64 x 32] · B[128 x 32]ᵀ, e4m3 operands from shared memory (both K-major),
// f32 accumulators: thread t of the warpgroup holds rows 16 (t / 32) + (t % 32) / 4 + 8 ((i / 2)
// % 2) and columns 8 (i / 4) + 2 (t % 4) + i % 2 in d[i]. accumulate = false overwrites D.
__device__ __forceinline__ void mma_m64n128k32_e4m3(float (&d)[64], std::uint64_t desc_a,
                                                    std::uint64_t desc_b, bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 " DSATTN_WGMMA_D64_REGS
      ", %64, %65, p, 1, 1;\n}\n"
      : DSATTN_WGMMA_D64(d)
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
}

// D[64 x 64] (+)= A[64 x 32] · B[64 x 32]ᵀ, e4m3 operands from shared memory (both K-major);
// the accumulator layout is mma_m64n128k32_e4m3's first 64 columns.
__device__ __forceinline__ void mma_m64n64k32_e4m3(float (&d)[32], std::uint64_t desc_a,
                                                   std::uint64_t desc_b, bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 " DSATTN_WGMMA_D32_REGS
      ", %32, %33, p, 1, 1;\n}\n"
      : DSATTN_WGMMA_D32(d)
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
}

// D[64 x 128] (+)= A[64 x 16] · B[128 x 16]ᵀ, bf16 operands from shared memory, both K-major;
// the accumulator layout is mma_m64n128k32_e4m3's.
__device__ __forceinline__ void mma_m64n128k16_bf16_ss(float (&d)[64], std::uint64_t desc_a,
                                                       std::uint64_t desc_b, bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " DSATTN_WGMMA_D64_REGS
      ", %64, %65, p, 1, 1, 0, 0;\n}\n"
      : DSATTN_WGMMA_D64(d)
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
}

// D[64 x 64] (+)= A[64 x 16] · B[64 x 16]ᵀ, bf16 operands from shared memory, both K-major;
// thread t holds rows 16 (t / 32) + (t % 32) / 4 + 8 ((i / 2) % 2), columns 8 (i / 4) + 2 (t % 4)
// + i % 2 in d[i], as the m64n128 products do for their first 64 columns.
__device__ __forceinline__ void mma_m64n64k16_bf16_ss(float (&d)[32], std::uint64_t desc_a,
                                                      std::uint64_t desc_b, bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " DSATTN_WGMMA_D32_REGS
      ", %32, %33, p, 1, 1, 0, 0;\n}\n"
      : DSATTN_WGMMA_D32(d)
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
}

// D[64 x 128] += A[64 x 16] · B[16 x 128], A in registers, B in shared memory MN-major (its 128
// columns contiguous, see desc_mn_major_sw128). Thread t holds A's rows 16 (t / 32) + (t % 32) / 4
// (a[0], a[2]) and 8 more (a[1], a[3]), columns 2 (t % 4) (a[0], a[1]) and 8 more (a[2], a[3]),
// two bf16 each: the layout of the accumulator columns 16j ... 16j + 15, so that a product's
// f32 result packs pairwise into the next product's A (a[i] = d[2i], d[2i + 1] for j = 0).
__device__ __forceinline__ void mma_m64n128k16_bf16_rs(float (&d)[64], const std::uint32_t* a,
                                                       std::uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.eq.u32 p, 1, 1;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " DSATTN_WGMMA_D64_REGS
      ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : DSATTN_WGMMA_D64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

// D[64 x 128] += A[64 x 16] · B[16 x 128], both from shared memory: A K-major (as in
// mma_m64n128k16_bf16_ss), B MN-major (as in mma_m64n128k16_bf16_rs). For a product whose A was
// computed by another warpgroup and handed over through shared memory.
__device__ __forceinline__ void mma_m64n128k16_bf16_ss_mn(float (&d)[64], std::uint64_t desc_a,
                                                          std::uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.eq.u32 p, 1, 1;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " DSATTN_WGMMA_D64_REGS
      ", %64, %65, p, 1, 1, 0, 1;\n}\n"
      : DSATTN_WGMMA_D64(d)
      : "l"(desc_a), "l"(desc_b));
}

template <int R>
__device__ __forceinline__ void fence_operands(std::uint32_t (&r)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

}  // namespace dsattn::ops::cuda::wgmma
