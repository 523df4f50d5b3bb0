// Safetensors files: any bytes either open, with every tensor's bytes inside the file, or give a
// CheckpointError. Each input is written to a file (the reader memory-maps a path).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#include "dsattn/core/error.h"
#include "dsattn/model/safetensors.h"

namespace {

std::string scratch_file() {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/dsattn-fuzz-" + std::to_string(::getpid()) +
         ".safetensors";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string path = scratch_file();
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    const dsattn::SafetensorsFile f = dsattn::SafetensorsFile::open(path);
    for (const auto& [name, tensor] : f.tensors()) {
      const auto bytes = f.data(tensor);
      volatile std::uint8_t sink = 0;
      for (std::byte b : bytes) sink = sink ^ std::to_integer<std::uint8_t>(b);  // all readable
      (void)f.load(name);
    }
  } catch (const dsattn::CheckpointError&) {
  }
  return 0;
}
