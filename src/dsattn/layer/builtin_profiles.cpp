// The cost profiles shipped with dsattn: `dsattn calibrate` output (bf16 cache) for the layer
// shapes and devices named below; bench/results/cost-profile-*.json are the files.
#include <string_view>

#include "dsattn/core/cuda_runtime.h"
#include "dsattn/layer/cost_model.h"

namespace dsattn {

namespace {

struct Builtin {
  std::string_view device_contains;  // matched against the CUDA device's name; "cpu" for the CPU
  std::string_view json;             // with the layer shape it was measured on
};

constexpr Builtin kBuiltins[] = {
    // bench/results/cost-profile-cpu-2026-12-08.json: the 2-core build and CI machine.
    {"cpu", R"({
 "dense": {
  "attention_s_per_flop": 1.0420039749290237e-11,
  "decompress_s_per_flop": 5.822563955662434e-12,
  "fixed_s": 0.024051065245061915
 },
 "device": "cpu",
 "masked": {
  "attention_s_per_flop": 3.0232024105689017e-13,
  "fixed_s": 0.27581994396409676
 },
 "shape": "H128 qk192 v128 r512 rope64 topk2048",
 "shared": {
  "fixed_s": 0.1228865026154358,
  "s_per_token": 0.0012451761824683965
 },
 "source": "dsattn calibrate, 2026-12-08, bf16 cache",
 "sparse": {
  "absorb_s_per_flop": 1.5674181813073085e-11,
  "fixed_s": 0.01784346559768893,
  "mla_s_per_flop": 2.765619178098304e-12,
  "score_s_per_pair": 1.195127103591821e-06
 }
})"},
    // bench/results/cost-profile-nvidia-h100-80gb-hbm3-2026-12-07.json (H100 SXM).
    {"H100", R"({
 "dense": {
  "attention_s_per_flop": 1.630969862930378e-15,
  "decompress_s_per_flop": 6.892147202569223e-15,
  "fixed_s": 0.0016608646287397432
 },
 "device": "NVIDIA H100 80GB HBM3",
 "shape": "H128 qk192 v128 r512 rope64 topk2048",
 "shared": {
  "fixed_s": 8.004653731344095e-05,
  "s_per_token": 4.969241870481571e-07
 },
 "source": "dsattn calibrate, 2026-12-07, bf16 cache",
 "sparse": {
  "absorb_s_per_flop": 1.3286088877306668e-14,
  "fixed_s": 0.0,
  "mla_s_per_flop": 1.5336867057291117e-15,
  "score_s_per_pair": 3.534269895076499e-11
 }
})"},
    // bench/results/cost-profile-nvidia-h200-2026-12-07.json (H200; with masked MHA's costs).
    {"H200", R"({
 "dense": {
  "attention_s_per_flop": 1.4154701553942513e-15,
  "decompress_s_per_flop": 6.76177127239967e-15,
  "fixed_s": 0.0016975770416104684
 },
 "device": "NVIDIA H200",
 "masked": {
  "attention_s_per_flop": 2.306301972215019e-15,
  "fixed_s": 0.0027935771000467033
 },
 "shape": "H128 qk192 v128 r512 rope64 topk2048",
 "shared": {
  "fixed_s": 3.476524336283096e-05,
  "s_per_token": 5.010386498375277e-07
 },
 "source": "dsattn calibrate, 2026-12-07, bf16 cache",
 "sparse": {
  "absorb_s_per_flop": 1.205453523988707e-14,
  "fixed_s": 0.0,
  "mla_s_per_flop": 1.5524126098678063e-15,
  "score_s_per_pair": 4.0211739342503643e-11
 }
})"},
    // bench/results/cost-profile-nvidia-h100-80gb-hbm3-glm5-2026-12-06.json: GLM-5's shapes.
    {"H100", R"({
 "dense": {
  "attention_s_per_flop": 1.3648333547187406e-15,
  "decompress_s_per_flop": 5.763623692951168e-15,
  "fixed_s": 0.0015505256652713492
 },
 "device": "NVIDIA H100 80GB HBM3",
 "shape": "H64 qk256 v256 r512 rope64 topk2048",
 "source": "dsattn calibrate, 2026-12-06, bf16 cache",
 "sparse": {
  "absorb_s_per_flop": 0.0,
  "fixed_s": 0.0,
  "mla_s_per_flop": 0.0,
  "score_s_per_pair": 8.71324406323059e-10
 }
})"},
};

}  // namespace

std::optional<CostProfile> CostProfile::builtin(Device device, const AttentionConfig& config) {
  const std::string name = device.is_cpu() ? "cpu" : cuda::device_name(device.index);
  const std::string shape = profile_shape(config);
  for (const Builtin& b : kBuiltins) {
    if (name.find(b.device_contains) == std::string::npos) continue;
    CostProfile p = parse(b.json);
    if (p.shape == shape) return p;
  }
  return std::nullopt;
}

}  // namespace dsattn
