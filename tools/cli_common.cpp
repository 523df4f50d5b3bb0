#include "cli_common.h"

#include <filesystem>
#include <fstream>

#include "dsattn/core/cuda_runtime.h"
#include "dsattn/core/error.h"

namespace dsattn::tools {

Device resolve_device(const std::string& flag) {
  if (flag != "auto" && flag != "cpu" && flag != "cuda") {
    fail("--device must be auto, cpu or cuda, got '{}'", flag);
  }
  const bool gpu = cuda::built_with_cuda() && cuda::device_count() > 0;
  if (flag == "cuda" && !gpu) {
    fail<Unsupported>(
        "--device cuda: {}; use --device cpu",
        cuda::built_with_cuda() ? "no CUDA device is visible" : "this build has no CUDA backend");
  }
  return (flag == "cuda" || (flag == "auto" && gpu)) ? Device::cuda(0) : Device::cpu();
}

std::string device_label(Device device) {
  return device.is_cpu() ? std::string("cpu")
                         : fmt::format("cuda ({})", cuda::device_name(device.index));
}

std::string paths_summary(const std::vector<Path>& paths) {
  std::string out;
  for (std::size_t i = 0; i < paths.size();) {
    std::size_t j = i;
    while (j + 1 < paths.size() && paths[j + 1] == paths[i]) ++j;
    if (!out.empty()) out += ", ";
    out += i == j ? fmt::format("{} {}", i, path_name(paths[i]))
                  : fmt::format("{}-{} {}", i, j, path_name(paths[i]));
    i = j + 1;
  }
  return out;
}

void check_writable_path(const std::string& flag, const std::string& path) {
  const auto dir = std::filesystem::absolute(path).parent_path();
  if (!std::filesystem::is_directory(dir)) {
    fail("{}: directory {} does not exist", flag, dir.string());
  }
  // Checked before any work, so that a run does not end by failing to write its figures.
  if (std::filesystem::is_directory(path)) fail("{}: {} is a directory, not a file", flag, path);
}

void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  std::error_code ec;
  {
    std::ofstream out(tmp);
    if (out) out << text << "\n";
    if (!out) {
      std::filesystem::remove(tmp, ec);
      fail("cannot write {}", path);
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);  // nothing half-written is left behind
    fail("cannot write {}: {}", path, ec.message());
  }
}

}  // namespace dsattn::tools
