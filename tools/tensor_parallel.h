// `dsattn run --tp N` and `dsattn bench --tp N`: the workload, or the layer benchmark, served by N
// processes, one per GPU, each holding its heads' slices of the attention weights (parallel/) and
// a replica of the caches, joined by NCCL. The command the user starts is the launcher
// (rank_launcher.h); the ranks it starts are the same command with hidden rank options.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "dsattn/layer/planner.h"
#include "workload.h"

namespace dsattn::tools {

struct TensorParallelOptions {
  int tp = -1;             // --tp: GPUs to split the heads over (-1: not given)
  int rank = -1;           // hidden, set by the launcher: this process's rank
  int world = 0;           // hidden: the size of this process's group
  std::string rendezvous;  // hidden: the launcher's private directory (NCCL id, results)

  bool requested() const { return tp != -1 || rank >= 0; }
};

// Adds --tp (and the hidden rank options) to `cmd`.
void add_tensor_parallel_options(CLI::App* cmd, TensorParallelOptions& o, const std::string& help);

struct TensorParallelRun {
  WorkloadSpec spec;
  Policy policy;
  AttentionConfig config;
  std::string device;  // the --device flag: auto or cuda (cpu is refused)
  std::string json_path;
};

// dsattn run --tp N: the launcher checks the request (one-line errors: --tp above the device
// count, not dividing the heads, with --device cpu, a build without NCCL), starts the ranks and
// checks that every rank ended with the same outputs; a rank serves the workload on its GPU and
// rank 0 prints the paths and figures, then compares with the single-GPU stack.
int run_tensor_parallel(const TensorParallelOptions& o, const TensorParallelRun& run);

// dsattn bench --tp N: layer prefill and decode at 1, 2, 4, ... N GPUs (the sizes that divide the
// heads), one group of ranks per size, and the scaling between them.
int bench_tensor_parallel(const TensorParallelOptions& o, const std::string& device,
                          const std::string& json_path, bool quick);

}  // namespace dsattn::tools
