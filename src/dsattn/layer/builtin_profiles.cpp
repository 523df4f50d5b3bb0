// The cost profiles shipped with dsattn: `dsattn calibrate` output (DeepSeek-V3.2's shapes, bf16
// cache), measured on each device named below; bench/results/ holds the runs they come from.
#include <string_view>

#include "dsattn/core/cuda_runtime.h"
#include "dsattn/layer/cost_model.h"

namespace dsattn {

namespace {

struct Builtin {
  std::string_view device_contains;  // matched against the CUDA device's name; "cpu" for the CPU
  std::string_view json;
};

constexpr Builtin kBuiltins[] = {
    // bench/results/cost-profile-cpu-2026-12-06.json: the 2-core build and CI machine.
    {"cpu", R"({
 "dense": {
  "attention_s_per_flop": 9.241148269243076e-12,
  "decompress_s_per_flop": 8.877446151741889e-12,
  "fixed_s": 0.053792352468329106
 },
 "device": "cpu",
 "source": "dsattn calibrate, 2026-12-06, bf16 cache",
 "sparse": {
  "absorb_s_per_flop": 1.243746584247142e-11,
  "fixed_s": 0.07757912011585624,
  "mla_s_per_flop": 0.0,
  "score_s_per_pair": 1.8773291473283946e-06
 }
})"},
};

}  // namespace

std::optional<CostProfile> CostProfile::builtin(Device device) {
  const std::string name = device.is_cpu() ? "cpu" : cuda::device_name(device.index);
  for (const Builtin& b : kBuiltins) {
    if (name.find(b.device_contains) != std::string::npos) return parse(b.json);
  }
  return std::nullopt;
}

}  // namespace dsattn
