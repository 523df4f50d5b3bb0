// dsattn calibrate: measures the planner's cost profile on this device (the GPU, or the CPU
// backend) and writes it as JSON, for `dsattn run --profile` and the APIs' profile arguments.
#include <cstdio>

#include "cli_common.h"
#include "commands.h"
#include "dsattn/layer/calibration.h"

namespace dsattn::tools {

namespace {

struct CalibrateOptions {
  std::string device = "auto";
  std::string model = "deepseek-v32";
  std::string config_path;
  std::string kv_cache = "bf16";
  std::string out_path = "cost_profile.json";
  int repeats = 3;
};

int calibrate_command(const CalibrateOptions& o, const CLI::App& cmd) {
  if (cmd.count("--model") > 0 && !o.config_path.empty()) {
    fail("--model and --config exclude each other");
  }
  if (o.repeats < 1) fail("--repeats must be >= 1, got {}", o.repeats);
  check_writable_path("--out", o.out_path);
  const AttentionConfig config = o.config_path.empty()
                                     ? AttentionConfig::preset(o.model)
                                     : AttentionConfig::from_json_file(o.config_path);
  const LatentFormat format = parse_latent_format(o.kv_cache);
  const Device dev = resolve_device(o.device);
  std::printf("calibrating the cost profile on %s\n", device_label(dev).c_str());
  const CostProfile profile =
      calibrate(config, dev, format, calibration_shapes(config, dev), o.repeats,
                [](const std::string& line) { std::printf("  %s\n", line.c_str()); });
  write_file_atomically(o.out_path, profile.to_json());
  std::printf("wrote %s\n", o.out_path.c_str());
  return 0;
}

}  // namespace

Command add_calibrate_command(CLI::App& app) {
  auto o = std::make_shared<CalibrateOptions>();
  CLI::App* cmd = app.add_subcommand(
      "calibrate", "Measure the planner's cost profile (policy auto) on this device, as JSON");
  cmd->add_option("--device", o->device, "auto | cpu | cuda")->capture_default_str();
  cmd->add_option("--model", o->model, "deepseek-v32 | glm5: the attention shapes")
      ->capture_default_str();
  cmd->add_option("--config", o->config_path, "A model config.json instead of --model");
  cmd->add_option("--kv-cache", o->kv_cache, "bf16 | fp8: the cache format to time")
      ->capture_default_str();
  cmd->add_option("--out", o->out_path, "Where to write the profile")->capture_default_str();
  cmd->add_option("--repeats", o->repeats, "Timed forwards per shape and path (the median)")
      ->capture_default_str();
  return [o, cmd] { return calibrate_command(*o, *cmd); };
}

}  // namespace dsattn::tools
