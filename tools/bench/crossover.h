// The crossover of the planner's paths: measured and predicted time of each exact path against
// context length (prompts without a prefix) and against prefix length for a fixed extend, for the
// plot of scripts/plot_crossover.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "dsattn/core/tensor.h"
#include "dsattn/layer/cost_model.h"

namespace dsattn::tools {

struct CrossoverSweep {
  // Prompts of each length, as many per forward as fit `tokens`.
  std::vector<std::int64_t> contexts = {256, 512, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 16384};
  std::int64_t tokens = 16384;
  // prefix_requests requests of `extend` new tokens over cached prefixes of each length.
  std::vector<std::int64_t> prefixes = {0, 256, 512, 1024, 1536, 1984};
  std::int64_t extend = 64, prefix_requests = 64;
  double budget_ms = 300;  // timing budget per measured point
  // The costs auto plans with and the predictions come from; null: the device's built-in ones.
  std::shared_ptr<const CostProfile> profile;
};

// DeepSeek-V3.2's layer on `device` under mha (where exact), masked (where mha is not), mla and
// auto at each point of `sweep`, beside the predictions of the profile auto plans with there
// (none: no predictions).
nlohmann::json bench_crossover(Device device, const CrossoverSweep& sweep);

}  // namespace dsattn::tools
