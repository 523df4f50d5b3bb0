// The subcommands of the dsattn CLI. Each registers its options on the app and returns the
// function that runs it (exit status 0 on success; errors are thrown as dsattn::Error).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace dsattn::tools {

using Command = std::function<int()>;

Command add_run_command(CLI::App& app);
Command add_check_command(CLI::App& app);
Command add_bench_command(CLI::App& app);
Command add_generate_command(CLI::App& app);
Command add_write_checkpoint_command(CLI::App& app);
Command add_calibrate_command(CLI::App& app);

}  // namespace dsattn::tools
