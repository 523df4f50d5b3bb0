// dsattn run: the default workload through the layer under a policy, compared with every other
// exact path on the same requests.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli_common.h"
#include "commands.h"
#include "dsattn/ops/cpu/blas_kernels.h"
#include "pass_report.h"
#include "tensor_parallel.h"
#include "workload.h"

namespace dsattn::tools {

namespace {

struct RunOptions {
  WorkloadSpec spec;
  std::string policy = "auto";
  std::string profile_path;
  std::string device = "auto";
  std::string kv_cache = "bf16";
  std::string config_path;
  std::string model = "deepseek-v32";
  std::string checkpoint_dir;
  int layer = 0;
  std::string json_path;
  std::int64_t seed = 0;
  TensorParallelOptions tp;
};

// The CPU backend runs the workload scaled down so that it ends in well under a minute on two
// cores; flags given explicitly are always honoured.
constexpr WorkloadSpec kCpuScaledDefaults{4, 256, 0, 4, 1, 16384, 0};

int run(const RunOptions& o, const CLI::App& cmd) {
  WorkloadSpec spec = o.spec;
  spec.seed = static_cast<std::uint64_t>(o.seed);
  spec.kv_cache = parse_latent_format(o.kv_cache);
  Policy policy = Policy::parse(o.policy);
  if (!o.profile_path.empty()) {
    if (policy.kind != Policy::Kind::automatic) {
      fail("--profile gives the costs of policy auto; --policy is {}", policy.to_string());
    }
    policy.profile = std::make_shared<const CostProfile>(CostProfile::load(o.profile_path));
  }
  std::optional<Checkpoint> checkpoint;
  if (!o.checkpoint_dir.empty()) {
    if (!o.config_path.empty()) {
      fail("--config and --checkpoint exclude each other: the checkpoint's config.json is used");
    }
    if (o.tp.requested()) {
      fail<Unsupported>(
          "--checkpoint with --tp: the tensor-parallel workload uses synthetic "
          "weights only");
    }
    checkpoint = Checkpoint::open(o.checkpoint_dir);
  } else if (cmd.count("--layer") > 0) {
    fail("--layer selects a layer of --checkpoint, which is not given");
  }
  if (o.layer < 0) fail("--layer must be >= 0, got {}", o.layer);
  if (cmd.count("--model") > 0 && (checkpoint || !o.config_path.empty())) {
    fail("--model picks a synthetic model's shapes; --config and --checkpoint bring their own");
  }
  const AttentionConfig config = checkpoint ? checkpoint->config()
                                 : o.config_path.empty()
                                     ? AttentionConfig::preset(o.model)
                                     : AttentionConfig::from_json_file(o.config_path);
  if (o.tp.requested()) {
    return run_tensor_parallel(o.tp, {spec, policy, config, o.device, o.json_path});
  }
  const Device dev = resolve_device(o.device);
  const std::string device = device_label(dev);

  bool scaled = false;
  auto scale = [&](const char* flag, std::int64_t& field, std::int64_t value) {
    if (cmd.count(flag) == 0 && field != value) {
      field = value;
      scaled = true;
    }
  };
  if (dev.is_cpu()) {
    scale("--requests", spec.requests, kCpuScaledDefaults.requests);
    scale("--prompt-len", spec.prompt_len, kCpuScaledDefaults.prompt_len);
    scale("--decode-steps", spec.decode_steps, kCpuScaledDefaults.decode_steps);
  }
  spec.validate();
  if (!o.json_path.empty()) check_writable_path("--json", o.json_path);

  // On the CPU, which OpenBLAS kernels the products run on (a factor of 3 to 5 between them).
  const std::string kernels =
      dev.is_cpu() ? fmt::format(" (OpenBLAS {} kernels)", ops::cpu::blas_kernel_family()) : "";
  std::printf("dsattn run: %s on %s%s, policy %s\n", spec.to_string().c_str(), device.c_str(),
              kernels.c_str(), policy.to_string().c_str());
  if (policy.kind == Policy::Kind::automatic) {
    const std::shared_ptr<const CostProfile> used = planning_profile(policy, dev, config);
    if (used) {
      std::printf("  cost profile: %s, measured on %s (%s)\n",
                  policy.profile ? o.profile_path.c_str() : "built-in", used->device.c_str(),
                  used->source.c_str());
    } else {
      std::printf(
          "  cost profile: none built in for this device and shape (%s): dense MHA wherever it "
          "is exact, as per-request; `dsattn calibrate` measures one\n",
          profile_shape(config).c_str());
    }
  }
  if (checkpoint) {
    std::printf("  weights: checkpoint %s, layers %d..%lld%s\n", o.checkpoint_dir.c_str(), o.layer,
                static_cast<long long>(o.layer + spec.layers - 1),
                checkpoint->quantization().fp8 ? " (fp8 weights dequantised to bf16)" : "");
  }
  if (scaled) {
    std::printf(
        "  (CPU backend: the default workload, 100 requests x 1024-token prompts + 32 decode "
        "steps, is scaled down to finish in under a minute; pass the flags to choose sizes)\n");
  }
  std::fflush(stdout);
  auto progress = [](const std::string& line) { std::fprintf(stderr, "  ... %s\n", line.c_str()); };

  const auto t0 = std::chrono::steady_clock::now();
  AttentionStack stack =
      checkpoint ? AttentionStack::from_checkpoint(*checkpoint, o.layer,
                                                   static_cast<int>(spec.layers), policy, dev)
                 : AttentionStack::synthetic(config, spec.layers, spec.seed, policy, dev);
  const std::vector<PassResult> passes = serve_passes(config, stack, spec, policy, dev, progress);
  for (const PassResult& pass : passes) check_outputs_finite(pass);
  const double total_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::printf("\npaths under %s: prefill %s; decode %s\n", passes[0].policy.c_str(),
              paths_summary(passes[0].prefill_paths).c_str(),
              passes[0].decode_paths.empty()
                  ? "-"
                  : std::string(path_name(passes[0].decode_paths.front())).c_str());
  const std::vector<Path>& planned = passes[0].prefill_paths;
  if (std::find(planned.begin(), planned.end(), Path::row_split) != planned.end()) {
    const std::int64_t head = dense_rows({spec.prefix_len, spec.prompt_len, {}}, config);
    std::printf(
        "  row_split: rows 0-%lld of each such prompt on dense_mha, rows %lld-%lld on "
        "sparse_mla\n",
        static_cast<long long>(head - 1), static_cast<long long>(head),
        static_cast<long long>(spec.prompt_len - 1));
  }
  const nlohmann::json json_passes = print_passes(passes);
  const StageTimes& st = passes[0].prefill_stages;
  std::printf(
      "\nprefill stages under %s: planning %.3f s, projections %.3f s, dense_mha %.3f s, "
      "sparse_mla %.3f s, masked_mha %.3f s, o_proj %.3f s\n",
      passes[0].policy.c_str(), st.planning, st.projections, st.dense_mha, st.sparse_mla,
      st.masked_mha, st.o_proj);
  double worst = 0;
  for (std::size_t i = 1; i < passes.size(); ++i) {
    worst = std::max(worst, max_relative_difference(passes[i], passes[0]));
  }
  if (passes.size() > 1) {
    std::printf("largest relative difference between paths on the same requests: %.2e\n", worst);
  }
  const PassResult& p0 = passes[0];
  std::printf(
      "memory: kv cache %.1f MiB%s%s\n", p0.cache_bytes / 1048576.0,
      p0.decode_graph ? fmt::format(", decode graph {:.1f} MiB (one graph for every step)",
                                    p0.decode_graph_bytes / 1048576.0)
                            .c_str()
                      : "",
      p0.peak_device_bytes
          ? fmt::format(", device peak {:.1f} MiB", p0.peak_device_bytes / 1048576.0).c_str()
          : "");
  std::printf("total %.1f s\n", total_s);

  if (!o.json_path.empty()) {
    nlohmann::json j;
    j["workload"] = {{"requests", spec.requests},
                     {"prompt_len", spec.prompt_len},
                     {"prefix_len", spec.prefix_len},
                     {"decode_steps", spec.decode_steps},
                     {"layers", spec.layers},
                     {"max_batch_tokens", spec.max_batch_tokens},
                     {"seed", spec.seed},
                     {"scaled_down_for_cpu", scaled}};
    j["device"] = device;
    if (checkpoint) j["weights"] = {{"checkpoint", o.checkpoint_dir}, {"first_layer", o.layer}};
    j["policy"] = passes[0].policy;
    j["index_topk"] = config.index_topk;
    j["passes"] = json_passes;
    j["max_relative_difference"] = worst;
    write_file_atomically(o.json_path, j.dump(1));
    std::printf("wrote %s\n", o.json_path.c_str());
  }
  return 0;
}

}  // namespace

Command add_run_command(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand(
      "run", "Serve a synthetic workload through the layer and compare the exact paths");
  cmd->add_option("--requests", o->spec.requests, "Requests in the workload")
      ->capture_default_str();
  cmd->add_option("--prompt-len", o->spec.prompt_len, "New prompt tokens per request")
      ->capture_default_str();
  cmd->add_option("--prefix-len", o->spec.prefix_len,
                  "Tokens per request already in the cache before the prompt")
      ->capture_default_str();
  cmd->add_option("--decode-steps", o->spec.decode_steps, "Decode steps after the prefill")
      ->capture_default_str();
  cmd->add_option("--layers", o->spec.layers, "Attention layers in the stack")
      ->capture_default_str();
  cmd->add_option("--max-batch-tokens", o->spec.max_batch_tokens,
                  "Prefill tokens per forward; longer prompts are prefilled in chunks")
      ->capture_default_str();
  cmd->add_option("--policy", o->policy, "auto | per-request | threshold[=N] | mha | mla | masked")
      ->capture_default_str();
  cmd->add_option("--profile", o->profile_path,
                  "Cost profile for policy auto (dsattn calibrate's JSON; default: the "
                  "device's built-in one)");
  cmd->add_option("--device", o->device, "auto | cpu | cuda")->capture_default_str();
  cmd->add_option("--kv-cache", o->kv_cache,
                  "Latent cache format: bf16 (1152 B/token) | fp8 (656 B/token)")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the synthetic weights and inputs")
      ->capture_default_str();
  cmd->add_option("--json", o->json_path, "Also write the figures as JSON to this file");
  cmd->add_option("--model", o->model,
                  "deepseek-v32 | glm5: the attention shapes of the synthetic layers")
      ->capture_default_str();
  cmd->add_option("--config", o->config_path,
                  "A Hugging Face config.json (default: DeepSeek-V3.2's attention)");
  cmd->add_option("--checkpoint", o->checkpoint_dir,
                  "A Hugging Face checkpoint folder: its config and its layers' weights (FP8 "
                  "block-scaled ones dequantised) instead of synthetic ones");
  cmd->add_option("--layer", o->layer,
                  "With --checkpoint: the first of the --layers layers taken from it")
      ->capture_default_str();
  add_tensor_parallel_options(cmd, o->tp,
                              "Split the heads over N GPUs, one process each, joined by NCCL");
  return [o, cmd] { return run(*o, *cmd); };
}

}  // namespace dsattn::tools
