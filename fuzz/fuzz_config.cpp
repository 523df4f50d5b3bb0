// config.json: any bytes either give a valid AttentionConfig or a ConfigError; nothing else
// (no crash, no sanitizer report, no other exception) is allowed.
#include <cstddef>
#include <cstdint>
#include <string>

#include "dsattn/core/error.h"
#include "dsattn/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const dsattn::AttentionConfig c = dsattn::AttentionConfig::from_json_text(text, "fuzz.json");
    c.validate();  // what was accepted stays valid
    (void)c.softmax_scale();
  } catch (const dsattn::ConfigError&) {
  }
  return 0;
}
