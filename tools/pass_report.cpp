#include "pass_report.h"

#include <cstdio>

namespace dsattn::tools {

std::vector<PassResult> serve_passes(const AttentionConfig& config, AttentionStack& stack,
                                     const WorkloadSpec& spec, const Policy& policy, Device device,
                                     const Progress& progress) {
  std::vector<PassResult> passes;
  passes.push_back(run_pass(config, stack, spec, policy, device, progress));
  const bool mha_exact = spec.prefix_len + spec.prompt_len + spec.decode_steps <= config.index_topk;
  // Each other exact path forced: dense MHA where it is exact, masked MHA where it is not.
  for (const char* forced : {"mha", "mla", "masked"}) {
    const Policy p = Policy::parse(forced);
    if (p.kind == Policy::Kind::mha && !mha_exact) continue;
    if (p.kind == Policy::Kind::masked && mha_exact) continue;
    const Path path = p.kind == Policy::Kind::mha      ? Path::dense_mha
                      : p.kind == Policy::Kind::masked ? Path::masked_mha
                                                       : Path::sparse_mla;
    bool differs = spec.decode_steps > 0 && passes[0].decode_paths.front() != path;
    for (Path x : passes[0].prefill_paths) differs = differs || x != path;
    if (differs) passes.push_back(run_pass(config, stack, spec, p, device, progress));
  }
  return passes;
}

double per_second(std::int64_t n, double seconds) {
  return seconds > 0 ? double(n) / seconds : 0.0;
}

nlohmann::json pass_json(const PassResult& p, std::optional<double> diff) {
  nlohmann::json j;
  j["policy"] = p.policy;
  j["prefill"] = {{"tokens", p.prefill_tokens},
                  {"seconds", p.prefill_seconds},
                  {"tokens_per_s", per_second(p.prefill_tokens, p.prefill_seconds)},
                  {"stage_seconds",
                   {{"planning", p.prefill_stages.planning},
                    {"projections", p.prefill_stages.projections},
                    {"dense_mha", p.prefill_stages.dense_mha},
                    {"sparse_mla", p.prefill_stages.sparse_mla},
                    {"masked_mha", p.prefill_stages.masked_mha},
                    {"o_proj", p.prefill_stages.o_proj}}}};
  std::vector<std::string> paths;
  for (Path x : p.prefill_paths) paths.emplace_back(path_name(x));
  j["prefill"]["paths"] = paths;
  j["decode"] = {{"tokens", p.decode_tokens},
                 {"seconds", p.decode_seconds},
                 {"tokens_per_s", per_second(p.decode_tokens, p.decode_seconds)}};
  if (!p.decode_paths.empty()) j["decode"]["path"] = path_name(p.decode_paths.front());
  j["decode"]["cuda_graph"] = p.decode_graph;
  j["memory_bytes"] = {{"kv_cache", p.cache_bytes},
                       {"decode_graph", p.decode_graph_bytes},
                       {"peak_device", p.peak_device_bytes}};
  if (diff) j["max_relative_difference"] = *diff;
  return j;
}

void print_pass_header() {
  std::printf("\n%-12s %10s %10s %12s %10s %10s %12s %14s\n", "pass", "prefill tok", "seconds",
              "tok/s", "decode tok", "seconds", "tok/s", "max rel diff");
}

void print_pass_row(const std::string& name, const PassResult& p, std::optional<double> diff) {
  std::printf("%-12s %10lld %10.3f %12.1f %10lld %10.3f %12.1f %14s\n", name.c_str(),
              static_cast<long long>(p.prefill_tokens), p.prefill_seconds,
              per_second(p.prefill_tokens, p.prefill_seconds),
              static_cast<long long>(p.decode_tokens), p.decode_seconds,
              per_second(p.decode_tokens, p.decode_seconds),
              diff ? fmt::format("{:.2e}", *diff).c_str() : "(baseline)");
}

nlohmann::json print_passes(const std::vector<PassResult>& passes) {
  print_pass_header();
  nlohmann::json json_passes = nlohmann::json::array();
  for (std::size_t i = 0; i < passes.size(); ++i) {
    std::optional<double> diff;
    if (i > 0) diff = max_relative_difference(passes[i], passes[0]);
    print_pass_row(passes[i].policy, passes[i], diff);
    json_passes.push_back(pass_json(passes[i], diff));
  }
  return json_passes;
}

}  // namespace dsattn::tools
