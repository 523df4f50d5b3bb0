// The dense causal MHA kernel for DeepSeek-V3.2's head sizes (q/k 192, v 128) on sm_90: which
// parameters it takes and the configuration of mha_sm90.cuh that the op launches.
#include <cmath>

#include "dsattn/ops/cuda/mha_sm90.cuh"

namespace dsattn::ops::cuda {

namespace {

// 4 warps of 32 query rows (128-row blocks, Q fragments read from shared memory), 32-key tiles in
// two stages: 252 registers, no spills, 94 KB of shared memory, two CTAs per SM. Fastest of the
// spill-free configurations in bench/mha_sm90_variants.cu on an H100 (307 TFLOPS at s = 2048 in
// `dsattn bench`); the warps' 32 rows halve the ldmatrix traffic per MMA of 16-row warps.
using MhaSm90Config = mha_sm90::Config<4, 2, false, 32, mha_sm90::Schedule::double_buffer>;

bool aligned16(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; }

}  // namespace

bool mha_sm90_supports(const MhaParams& p) {
  // cp.async moves 16-byte chunks of q, k and v rows; the output has no alignment requirement.
  const bool rows_aligned = aligned16(p.q) && aligned16(p.k) && aligned16(p.v) && p.sq0 % 8 == 0 &&
                            p.sq1 % 8 == 0 && p.sk0 % 8 == 0 && p.sk1 % 8 == 0 && p.sv0 % 8 == 0 &&
                            p.sv1 % 8 == 0;
  // The running maximum is taken over raw scores, which orders the scaled ones only for scale > 0.
  const bool scale_ok = p.scale > 0.0f && std::isfinite(p.scale);
  // It writes no log-sum-exp and takes no key mask.
  return p.lse == nullptr && p.key_mask == nullptr && p.d_qk == mha_sm90::kDqk &&
         p.d_v == mha_sm90::kDv && rows_aligned && scale_ok && p.heads <= 65535 &&
         p.batch <= 65535 && p.max_q <= (std::int64_t{1} << 30);
}

cudaError_t launch_mha_sm90(const MhaParams& p, cudaStream_t stream) {
  if (!mha_sm90_supports(p)) return cudaErrorInvalidValue;
  return mha_sm90::launch<MhaSm90Config>(p, stream);
}

}  // namespace dsattn::ops::cuda
