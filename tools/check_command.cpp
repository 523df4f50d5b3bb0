// dsattn check: random configurations and batches through every path and both forms, each
// output row measured against the float64 reference; non-zero exit on any failure.
#include <cstdio>

#include "commands.h"
#include "dsattn/core/cuda_runtime.h"
#include "dsattn/reference/layer_check.h"

namespace dsattn::tools {

namespace {

struct CheckOptions {
  std::int64_t cases = 12;
  std::int64_t seed = 1;
  std::string device = "cpu";
};

int run(const CheckOptions& o) {
  DSATTN_CHECK(o.cases >= 1, "--cases must be >= 1, got {}", o.cases);
  if (o.device != "cpu" && o.device != "cuda")
    fail("--device must be cpu or cuda, got '{}'", o.device);
  if (o.device == "cuda" && cuda::device_count() == 0) {
    fail<Unsupported>(
        "--device cuda: no CUDA device is visible (or this build has no CUDA backend)");
  }
  int failures = 0;
  for (std::int64_t i = 0; i < o.cases; ++i) {
    reference::CheckCase c = reference::random_case(static_cast<std::uint64_t>(o.seed + i));
    if (o.device == "cuda") c.device = Device::cuda(0);
    const reference::CaseReport r = reference::check_case(c);
    std::printf("case %lld: %s\n%s", static_cast<long long>(i), c.to_string().c_str(),
                r.to_string().c_str());
    std::fflush(stdout);
    if (!r.pass) ++failures;
  }
  std::printf("%lld passed, %d failed\n", static_cast<long long>(o.cases - failures), failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace

Command add_check_command(CLI::App& app) {
  auto o = std::make_shared<CheckOptions>();
  CLI::App* cmd =
      app.add_subcommand("check", "Random shapes through every path against a float64 reference");
  cmd->add_option("--cases", o->cases, "Random cases to run")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the first case")->capture_default_str();
  cmd->add_option("--device", o->device, "cpu | cuda: where the layer runs")->capture_default_str();
  return [o] { return run(*o); };
}

}  // namespace dsattn::tools
