// model.safetensors.index.json: any bytes, next to a valid config.json, either open as a
// checkpoint whose shard names stay inside its folder, or give a CheckpointError or ConfigError.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "dsattn/core/error.h"
#include "dsattn/model/checkpoint.h"

namespace {

std::string scratch_folder() {
  const char* dir = std::getenv("TMPDIR");
  const std::string path =
      std::string(dir ? dir : "/tmp") + "/dsattn-fuzz-index-" + std::to_string(::getpid());
  std::filesystem::create_directories(path);
  std::ofstream(path + "/config.json") << R"({"hidden_size": 256, "num_attention_heads": 4})";
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string folder = scratch_folder();
  {
    std::ofstream out(folder + "/model.safetensors.index.json", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    const dsattn::Checkpoint ck = dsattn::Checkpoint::open(folder);
    for (const auto& [tensor, shard] : ck.weight_map()) {
      const std::filesystem::path p(shard);
      bool escapes = p.is_absolute();
      for (const auto& part : p) escapes = escapes || part == "..";
      if (escapes) __builtin_trap();  // the reader must have refused it
      try {
        (void)ck.shard_for(tensor);  // no shard exists: refused by name
      } catch (const dsattn::CheckpointError&) {
      }
    }
  } catch (const dsattn::CheckpointError&) {
  } catch (const dsattn::ConfigError&) {
  }
  return 0;
}
