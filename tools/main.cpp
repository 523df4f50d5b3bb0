// dsattn: DeepSeek Sparse Attention along the cheapest exact path.
//   dsattn run    serve a synthetic workload through the layer and compare the paths
//   dsattn check  random shapes through every path against a float64 reference
//   dsattn bench  every stage against the hardware ceilings, JSON under bench/results/
//   dsattn generate          greedy generation with the tiny decoder, each step's paths
//   dsattn write-checkpoint  a synthetic tiny-decoder checkpoint
//   dsattn calibrate         the planner's cost profile, measured on this device
#include <cstdio>
#include <map>

#include "commands.h"
#include "dsattn/core/error.h"
#include "dsattn/ops/cpu/blas_kernels.h"

int main(int argc, char** argv) {
  // Before any output: this may run the program again, on faster OpenBLAS kernels.
  dsattn::ops::cpu::reexec_with_best_blas_kernels(argv);
  CLI::App app{"dsattn: DeepSeek-V3.2 sparse attention along the cheapest exact path"};
  app.require_subcommand(1);
  std::map<CLI::App*, dsattn::tools::Command> commands;
  for (auto add :
       {dsattn::tools::add_run_command, dsattn::tools::add_check_command,
        dsattn::tools::add_bench_command, dsattn::tools::add_generate_command,
        dsattn::tools::add_write_checkpoint_command, dsattn::tools::add_calibrate_command}) {
    const std::size_t before = app.get_subcommands({}).size();
    dsattn::tools::Command run = add(app);
    commands[app.get_subcommands({}).at(before)] = std::move(run);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "dsattn: error: %s (see dsattn --help)\n", e.what());
    return e.get_exit_code() ? e.get_exit_code() : 2;
  }
  try {
    for (auto& [sub, run] : commands) {
      if (sub->parsed()) return run();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsattn: error: %s\n", e.what());
    return 2;
  }
  return 1;
}
