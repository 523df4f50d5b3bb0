#include "bench/crossover.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>

#include "bench/stages.h"
#include "bench/timer.h"
#include "dsattn/cache/cache_format.h"
#include "dsattn/core/random.h"
#include "dsattn/layer/attention_stack.h"
#include "dsattn/layer/planner.h"

namespace dsattn::tools {

namespace {

using nlohmann::json;

// The predicted time of a forward of `n` copies of `r` on each path under `profile`, the fixed
// costs of the path groups it runs and the shared stages (projections, o_proj) included; null for
// a path that is not exact for `r`.
json predictions(const CostProfile& profile, const RequestInput& r, std::int64_t n,
                 const AttentionConfig& config) {
  const PathCosts c = predict_paths(r, config, profile);
  const double shared = profile.shared_seconds(static_cast<double>(n * r.extend_len));
  const auto ms = [&](std::optional<double> s, double fixed) {
    return s ? json(1e3 * (shared + fixed + static_cast<double>(n) * *s)) : json(nullptr);
  };
  return {{"sparse_mla_ms", ms(c.sparse_mla, profile.sparse_fixed_s)},
          {"dense_mha_ms", ms(c.dense_mha, profile.dense_fixed_s)},
          {"row_split_ms", ms(c.row_split, profile.dense_fixed_s + profile.sparse_fixed_s)},
          {"masked_mha_ms", ms(c.masked_mha, profile.masked_fixed_s)}};
}

// One point of a sweep: `n` requests of (prefix, extend), the prefixes written first (untimed);
// the measured time under mha (where exact), masked (where mha is not: it serves contexts past
// index_topk), mla and auto, auto's path, and the predictions.
json point(AttentionStack& stack, const AttentionConfig& config, Device device, std::int64_t n,
           std::int64_t prefix, std::int64_t extend,
           const std::shared_ptr<const CostProfile>& profile, double budget_ms) {
  auto [cache, tables] = reserve_requests(config, device, n, prefix + extend);
  ForwardOptions fo;
  fo.time_stages = false;
  if (prefix > 0) {
    stack.set_policy(Policy::parse("mla"));
    Batch b;
    for (const BlockTable& t : tables) b.requests.push_back({0, prefix, t});
    Tensor xp = Tensor::empty({n * prefix, config.hidden_size}, DType::bf16);
    fill_uniform(xp, 31, 1, 1.0f);
    const Tensor xd = device.is_cpu() ? xp : xp.to(device);
    stack.forward(b, xd, cache, fo);
  }
  Batch batch;
  for (const BlockTable& t : tables) batch.requests.push_back({prefix, extend, t});
  Tensor xh = Tensor::empty({n * extend, config.hidden_size}, DType::bf16);
  fill_uniform(xh, 31, 2, 1.0f);
  const Tensor x = device.is_cpu() ? xh : xh.to(device);
  json row = {{"requests", n}, {"prefix_len", prefix}, {"extend_len", extend}};
  const bool exact = dense_mha_is_exact(batch.requests[0], config);
  for (const char* policy : {"mha", "masked", "mla", "auto"}) {
    if (std::string_view(policy) == (exact ? "masked" : "mha")) {
      row[fmt::format("{}_ms", policy)] = nullptr;
      continue;
    }
    Policy p = Policy::parse(policy);
    if (p.kind == Policy::Kind::automatic) p.profile = profile;
    stack.set_policy(p);
    const Timing t = time_median(
        device, [&] { stack.forward(batch, x, cache, fo); }, budget_ms);
    row[fmt::format("{}_ms", policy)] = t.median_ms;
    if (std::string_view(policy) == "auto") {
      row["auto_path"] = std::string(path_name(stack.forward(batch, x, cache, fo).paths.front()));
    }
  }
  if (profile != nullptr) row["predicted"] = predictions(*profile, batch.requests[0], n, config);
  const auto ms = [&](const char* key) {
    return row[key].is_null() ? std::string("-") : fmt::format("{:.2f}", row[key].get<double>());
  };
  std::fprintf(
      stderr,
      "  ... crossover %lld x (%lld cached + %lld new): mha %s, masked %s, mla %s, auto %s "
      "ms (%s)\n",
      static_cast<long long>(n), static_cast<long long>(prefix), static_cast<long long>(extend),
      ms("mha_ms").c_str(), ms("masked_ms").c_str(), ms("mla_ms").c_str(), ms("auto_ms").c_str(),
      row["auto_path"].get<std::string>().c_str());
  return row;
}

}  // namespace

json bench_crossover(Device device, const CrossoverSweep& sweep) {
  const AttentionConfig config = AttentionConfig::deepseek_v32();
  Policy automatic = Policy::parse("auto");
  automatic.profile = sweep.profile;
  AttentionStack stack = AttentionStack::synthetic(config, 1, 3, automatic, device);
  const std::shared_ptr<const CostProfile> profile = planning_profile(automatic, device, config);
  json j = {{"profile", profile ? json::parse(profile->to_json()) : json(nullptr)},
            {"by_context", json::array()},
            {"by_prefix", json::array()}};
  for (std::int64_t len : sweep.contexts) {
    const std::int64_t n = std::max<std::int64_t>(1, sweep.tokens / len);
    j["by_context"].push_back(point(stack, config, device, n, 0, len, profile, sweep.budget_ms));
  }
  for (std::int64_t prefix : sweep.prefixes) {
    j["by_prefix"].push_back(point(stack, config, device, sweep.prefix_requests, prefix,
                                   sweep.extend, profile, sweep.budget_ms));
  }
  return j;
}

}  // namespace dsattn::tools
