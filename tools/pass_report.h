// The passes of `dsattn run` (the policy, then each forced path that is exact for the workload
// and decides differently) and their report: the table printed and its JSON. Shared by the
// one-GPU run and the ranks of --tp.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "workload.h"

namespace dsattn::tools {

// The policy's pass, then `mha` (when exact for every request) and `mla`, each only when it
// decides differently from the policy somewhere. The plan depends on shapes only, so every
// rank of a tensor-parallel run serves the same passes.
std::vector<PassResult> serve_passes(const AttentionConfig& config, AttentionStack& stack,
                                     const WorkloadSpec& spec, const Policy& policy, Device device,
                                     const Progress& progress);

double per_second(std::int64_t n, double seconds);

// One pass's figures; `diff` is its largest relative difference from the baseline pass.
nlohmann::json pass_json(const PassResult& p, std::optional<double> diff = std::nullopt);

// Prints the table header, then one row per pass (the first is the baseline the others are
// compared with), and returns the passes' JSON.
void print_pass_header();
void print_pass_row(const std::string& name, const PassResult& p, std::optional<double> diff);
nlohmann::json print_passes(const std::vector<PassResult>& passes);

}  // namespace dsattn::tools
