// dsattn bench: every stage's time against the hardware ceilings measured in the same run, and
// the whole layer under each policy; a table on screen and JSON under bench/results/.
#include <fmt/ranges.h>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "bench/crossover.h"
#include "bench/stages.h"
#include "build_commit.h"
#include "cli_common.h"
#include "commands.h"
#include "dsattn/core/cuda_runtime.h"
#include "dsattn/core/date.h"
#include "tensor_parallel.h"

namespace dsattn::tools {

namespace {

// Every stage, in the order they run; the default runs them all.
const std::vector<std::string> kStages = {
    "mha",   "projections",  "sparse_mla",  "indexer",    "topk",      "decode",
    "layer", "layer_prefix", "layer_mixed", "layer_long", "crossover", "glm5"};

struct BenchOptions {
  std::string device = "auto";
  std::string json_path;
  std::string commit;
  std::string anchors;
  std::vector<std::string> stages = kStages;
  bool quick = false;
  std::vector<std::int64_t> seqs;  // overrides the sweep's sequence lengths
  std::string profile;             // the crossover's cost profile instead of the built-in one
  TensorParallelOptions tp;
};

std::string slug(const std::string& name) {
  std::string s;
  for (char ch : name) {
    if (std::isalnum(static_cast<unsigned char>(ch))) {
      s += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    } else if (!s.empty() && s.back() != '-') {
      s += '-';
    }
  }
  while (!s.empty() && s.back() == '-') s.pop_back();
  return s;
}

int run(const BenchOptions& o) {
  if (o.tp.requested()) return bench_tensor_parallel(o.tp, o.device, o.json_path, o.quick);
  for (const std::string& s : o.stages) {
    if (std::find(kStages.begin(), kStages.end(), s) == kStages.end()) {
      fail("--stages: unknown stage '{}' (known: {})", s, fmt::join(kStages, ", "));
    }
  }
  // Read before any stage runs, so that a bad file fails at once.
  const std::shared_ptr<const CostProfile> profile =
      o.profile.empty() ? nullptr
                        : std::make_shared<const CostProfile>(CostProfile::load(o.profile));
  // Each sweep batch holds about `tokens` tokens: a length must fit in one.
  const std::int64_t sweep_tokens = o.quick ? 512 : Sweep{}.tokens;
  for (std::int64_t s : o.seqs) {
    if (s < 1 || s > sweep_tokens) {
      fail("--seqs: every length must be in [1, {}], got {}", sweep_tokens, s);
    }
  }
  const Device dev = resolve_device(o.device);
  if (dev.is_cpu() && !o.quick) {
    fail("dsattn bench runs the full sweep on a GPU; on the CPU pass --quick (small sizes)");
  }
  const std::string device_name = dev.is_cpu() ? "cpu" : cuda::device_name(0);
  const std::string path =
      o.json_path.empty() ? fmt::format("bench/results/{}-{}.json", slug(device_name), utc_date())
                          : o.json_path;
  check_writable_path("--json", path);
  nlohmann::json anchors;
  if (!o.anchors.empty()) {
    std::ifstream in(o.anchors);
    if (!in) fail("--anchors: cannot open {}", o.anchors);
    try {
      anchors = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      fail("--anchors: {} is not valid JSON: {}", o.anchors, e.what());
    }
  }
  auto wants = [&](const char* s) {
    return std::find(o.stages.begin(), o.stages.end(), s) != o.stages.end();
  };

  std::printf("dsattn bench on %s\n", device_name.c_str());
  std::fflush(stdout);
  Sweep sweep;
  std::vector<TopkShape> topk_shapes = {{8192, 8192}, {32768, 32768}, {16, 131072}, {128, 65536}};
  std::int64_t layer_requests = 100;
  std::vector<std::int64_t> layer_lens = {512, 1024, 2000};
  if (o.quick) {
    sweep.seqs = {128, 256};
    sweep.tokens = sweep_tokens;
    topk_shapes = {{4096, 4096}};
    layer_requests = 2;
    layer_lens = {64};
  }
  if (!o.seqs.empty()) sweep.seqs = o.seqs;

  nlohmann::json j;
  j["device"] = device_name;
  j["date"] = utc_date();
  // The binary's own commit ("-dirty": built from sources that differ from it), not the commit
  // of whatever tree the benchmark is run in.
  j["commit"] = o.commit.empty() ? std::string(DSATTN_BUILD_COMMIT) : o.commit;
  j["quick"] = o.quick;
  const Ceilings c = measure_ceilings(dev);
  j["ceilings"] = {{"bf16_gemm_tflops", c.gemm_tflops}, {"copy_tbps", c.copy_tbps}};
  if (wants("mha")) j["mha_prefill"] = bench_mha_prefill(dev, sweep, c);
  if (wants("projections")) j["projections"] = bench_projections(dev, sweep, c);
  if (wants("sparse_mla")) j["sparse_mla_prefill"] = bench_sparse_mla_prefill(dev, sweep, c);
  if (wants("indexer")) j["indexer"] = bench_indexer(dev, sweep, c);
  if (wants("indexer") && !o.quick) j["indexer_decode"] = bench_indexer_decode(dev, c);
  if (wants("topk")) j["topk"] = bench_topk(dev, topk_shapes, c);
  if (wants("decode") && !o.quick) j["sparse_mla_decode"] = bench_decode(dev, c);
  if (wants("layer")) j["layer"] = bench_layer(dev, layer_requests, layer_lens);
  // Chunked prefill over a cached prefix: new rows few, context just under index_topk.
  if (wants("layer_prefix")) {
    j["layer_prefix"] =
        o.quick ? bench_layer_prefix(dev, 2, 192, 64) : bench_layer_prefix(dev, 64, 1984, 64);
  }
  // Short prompts, chunks over long prefixes and long prompts in one forward: what auto is for.
  if (wants("layer_mixed")) {
    j["layer_mixed"] =
        o.quick ? bench_layer_mixed(dev, {{2, 0, 64}, {2, 192, 16}, {1, 0, 400}}, profile)
                : bench_layer_mixed(dev, {{16, 0, 512}, {32, 1984, 64}, {1, 0, 8192}}, profile);
  }
  // Long contexts, where the sparse path and so selection dominate.
  if (wants("layer_long") && !o.quick) {
    j["layer_long"] = bench_layer(dev, 8, {8192});
    j["layer_long_chunked"] = bench_layer_chunked(dev, {65536, 131072}, 8192);
  }
  // The planner's paths against context and prefix length, measured and predicted.
  if (wants("crossover")) {
    CrossoverSweep cs;
    if (o.quick) {
      cs.contexts = {64, 128};
      cs.tokens = 128;
      cs.prefixes = {0, 64};
      cs.extend = 16;
      cs.prefix_requests = 1;
      cs.budget_ms = 50;
    }
    cs.profile = profile;
    j["crossover"] = bench_crossover(dev, cs);
  }
  // GLM-5's shapes: dense MHA at 64 heads of q/k 256 and v 256, and the layer.
  if (wants("glm5")) {
    Sweep glm_sweep = sweep;
    if (!o.quick && o.seqs.empty()) glm_sweep.seqs = {1024, 4096};
    nlohmann::json glm = {
        {"mha_prefill",
         bench_mha_prefill(dev, glm_sweep, c, AttentionConfig::glm5(), "GLM-5 dense MHA prefill")}};
    if (!o.quick) {
      glm["layer"] = bench_layer(dev, 100, {1024}, AttentionConfig::glm5());
      glm["layer_long"] = bench_layer(dev, 8, {8192}, AttentionConfig::glm5());
    }
    j["glm5"] = glm;
  }
  if (!anchors.is_null()) j["torch_anchors"] = anchors;

  write_file_atomically(path, j.dump(1));
  std::printf("\n%s\nwrote %s\n", j.dump(1).c_str(), path.c_str());
  return 0;
}

}  // namespace

Command add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Time every stage against the measured hardware ceilings; write JSON results");
  cmd->add_option("--device", o->device, "auto | cpu | cuda")->capture_default_str();
  cmd->add_option("--json", o->json_path,
                  "Output file (default bench/results/<device>-<date>.json)");
  cmd->add_option("--commit", o->commit,
                  "Commit to record (default: the one the binary was built from)");
  cmd->add_option("--anchors", o->anchors, "PyTorch anchor figures (JSON) to record alongside");
  cmd->add_option("--stages", o->stages, "Stages to run (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_flag("--quick", o->quick, "Small sizes (for a smoke run, or the CPU)");
  cmd->add_option("--seqs", o->seqs, "Sequence lengths of the stage sweeps (default 256 ... 8192)")
      ->delimiter(',');
  cmd->add_option("--profile", o->profile,
                  "Cost profile (dsattn calibrate's JSON) that auto plans with in the crossover "
                  "and the mixed batch, and the crossover predicts from, instead of the device's "
                  "built-in one");
  add_tensor_parallel_options(
      cmd, o->tp, "Layer prefill and decode with the heads split over 1, 2, 4 ... N GPUs");
  return [o] { return run(*o); };
}

}  // namespace dsattn::tools
