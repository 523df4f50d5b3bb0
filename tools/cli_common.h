// Pieces every dsattn subcommand shares: the --device flag, path summaries and atomic file
// writes.
#pragma once

#include <string>
#include <vector>

#include "dsattn/core/tensor.h"
#include "dsattn/layer/planner.h"

namespace dsattn::tools {

// --device auto | cpu | cuda: auto takes the GPU when this build has CUDA and one is visible.
// Throws for any other value, and Unsupported for cuda without a usable GPU.
Device resolve_device(const std::string& flag);
// "cpu" or "cuda (NVIDIA H100 80GB HBM3)".
std::string device_label(Device device);

// Runs of equal paths, with request indices: "0-3 dense_mha, 4 sparse_mla".
std::string paths_summary(const std::vector<Path>& paths);

// Fails now (naming `flag`) when the directory that would hold `path` does not exist, so that a
// command does not find out after its work.
void check_writable_path(const std::string& flag, const std::string& path);
// Writes `text` to `path` through a temporary file, so that a failure leaves no partial file.
void write_file_atomically(const std::string& path, const std::string& text);

}  // namespace dsattn::tools
