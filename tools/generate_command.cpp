// dsattn generate: greedy generation with the tiny decoder (a checkpoint's, or synthetic
// weights), printing every step's tokens and the attention path each request took.
// dsattn write-checkpoint: a synthetic tiny-decoder checkpoint in the Hugging Face format.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>

#include "cli_common.h"
#include "commands.h"
#include "dsattn/decoder/greedy_generation.h"

namespace dsattn::tools {

namespace {

// Prompt and generation lengths stay far below what would wrap the cache's sizes.
constexpr std::int64_t kMaxTokens = std::int64_t(1) << 20;

struct GenerateOptions {
  std::string checkpoint_dir;
  std::vector<std::int64_t> prompt_lens = {23, 64, 65, 150};
  std::int64_t tokens = 32;
  std::string policy = "auto";
  std::string kv_cache = "bf16";
  std::string device = "auto";
  std::int64_t seed = 1;
  bool compare = false;
  bool quiet = false;
  std::string json_path;
};

std::vector<std::vector<std::int32_t>> seeded_prompts(const std::vector<std::int64_t>& lengths,
                                                      std::int64_t vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(vocab - 1));
  std::vector<std::vector<std::int32_t>> prompts;
  for (std::int64_t n : lengths) {
    if (n < 1) fail("--prompt-lens: every length must be positive, got {}", n);
    if (n > kMaxTokens)
      fail("--prompt-lens: every length must be at most {}, got {}", kMaxTokens, n);
    auto& p = prompts.emplace_back();
    for (std::int64_t i = 0; i < n; ++i) p.push_back(token(rng));
  }
  return prompts;
}

std::string join(const std::vector<std::int32_t>& tokens) {
  std::string out;
  for (std::int32_t t : tokens) out += (out.empty() ? "" : " ") + std::to_string(t);
  return out;
}

// The first step at which two generations chose differently for some request, if any.
std::optional<std::size_t> first_difference(const Generation& a, const Generation& b) {
  for (std::size_t s = 0; s < a.steps.size(); ++s) {
    if (a.steps[s].tokens != b.steps[s].tokens) return s;
  }
  return std::nullopt;
}

// Where two generations part at `step`: for each request that chose differently, both tokens and
// both top-two logit margins. A margin near rounding size marks a near-tie (the paths' results
// differ by rounding), not a wrong result.
struct Parting {
  std::size_t request;
  std::int32_t token_a, token_b;
  float margin_a, margin_b;
};

std::vector<Parting> partings_at(const Generation& a, const Generation& b, std::size_t step) {
  std::vector<Parting> out;
  const GenerationStep &sa = a.steps[step], &sb = b.steps[step];
  for (std::size_t r = 0; r < sa.tokens.size(); ++r) {
    if (sa.tokens[r] == sb.tokens[r]) continue;
    out.push_back({r, sa.tokens[r], sb.tokens[r], sa.margins[r], sb.margins[r]});
  }
  return out;
}

int generate(const GenerateOptions& o) {
  const Device dev = resolve_device(o.device);
  if (o.tokens < 1) fail("--tokens must be at least 1, got {}", o.tokens);
  if (o.tokens > kMaxTokens) fail("--tokens must be at most {}, got {}", kMaxTokens, o.tokens);
  if (o.prompt_lens.size() > 4096) {
    fail("--prompt-lens: at most 4096 prompts, got {}", o.prompt_lens.size());
  }
  const LatentFormat format = parse_latent_format(o.kv_cache);
  const Policy policy = Policy::parse(o.policy);
  if (!o.json_path.empty()) check_writable_path("--json", o.json_path);

  DecoderConfig config = DecoderConfig::tiny();
  DecoderWeights weights;
  std::string source;
  if (o.checkpoint_dir.empty()) {
    weights = DecoderWeights::synthetic(config, static_cast<std::uint64_t>(o.seed));
    source = fmt::format("synthetic tiny model (seed {})", o.seed);
  } else {
    const Checkpoint checkpoint = Checkpoint::open(o.checkpoint_dir);
    config = DecoderConfig::from_json_file(o.checkpoint_dir + "/config.json");
    weights = DecoderWeights::load(checkpoint, config);
    source = "checkpoint " + o.checkpoint_dir;
  }
  const auto prompts =
      seeded_prompts(o.prompt_lens, config.vocab_size, static_cast<std::uint64_t>(o.seed));
  if (!dev.is_cpu()) weights = weights.to(dev);

  std::int64_t tokens_needed = 0;
  for (const auto& p : prompts) tokens_needed += std::int64_t(p.size()) + o.tokens;
  auto run = [&](const Policy& p) {
    DecoderModel model(config, weights, p);
    PagedKvCache cache(config.attention,
                       {.num_pages = tokens_needed / kPageSize + 2 * std::int64_t(prompts.size()),
                        .num_layers = config.num_layers,
                        .latent_format = format,
                        .device = dev});
    return generate_greedy(model, prompts, o.tokens, cache);
  };

  std::printf(
      "dsattn generate: %s, %lld layers, vocabulary %lld, index_topk %lld, on %s, policy %s, "
      "%s latent cache\n",
      source.c_str(), static_cast<long long>(config.num_layers),
      static_cast<long long>(config.vocab_size),
      static_cast<long long>(config.attention.index_topk), device_label(dev).c_str(),
      policy.to_string().c_str(), std::string(latent_format_name(format)).c_str());
  std::string lens;
  for (const auto& p : prompts) lens += (lens.empty() ? "" : ", ") + std::to_string(p.size());
  std::printf("prompts: %zu seeded prompts of %s tokens; %lld new tokens each\n\n", prompts.size(),
              lens.c_str(), static_cast<long long>(o.tokens));

  const Generation g = run(policy);
  nlohmann::json steps = nlohmann::json::array();
  for (std::size_t s = 0; s < g.steps.size(); ++s) {
    const GenerationStep& step = g.steps[s];
    const char* mode = step.mode == ForwardMode::prefill ? "prefill" : "decode";
    if (!o.quiet || s == 0) {
      std::printf("step %4zu %-7s paths: %-40s tokens: %s\n", s, mode,
                  paths_summary(step.paths).c_str(), join(step.tokens).c_str());
    }
    std::vector<std::string> paths;
    for (Path p : step.paths) paths.emplace_back(path_name(p));
    steps.push_back(
        {{"mode", mode}, {"paths", paths}, {"tokens", step.tokens}, {"margins", step.margins}});
  }
  std::printf("\n");
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    std::printf("request %zu (%zu-token prompt): %s\n", r, prompts[r].size(),
                join(g.tokens[r]).c_str());
  }
  std::printf("smallest top-two logit margin: %.3g\n", g.min_margin());

  nlohmann::json comparisons = nlohmann::json::object();
  nlohmann::json partings_vs = nlohmann::json::object();  // where the policies part, if they do
  if (o.compare) {
    std::printf("\n");
    for (const char* other : {"mla", "threshold", "per-request"}) {
      const Policy p = Policy::parse(other);
      if (p.to_string() == policy.to_string()) continue;
      const Generation g_other = run(p);
      const std::optional<std::size_t> diff = first_difference(g, g_other);
      if (!diff) {
        std::printf("%-12s identical tokens at every step\n", other);
        comparisons[other] = "identical";
        continue;
      }
      std::printf("%-12s first different token at step %zu\n", other, *diff);
      nlohmann::json partings = nlohmann::json::array();
      for (const Parting& x : partings_at(g, g_other, *diff)) {
        std::printf(
            "             request %zu: %s chose %d (top-two margin %.3g), %s chose %d (top-two "
            "margin %.3g)\n",
            x.request, policy.to_string().c_str(), x.token_a, x.margin_a, other, x.token_b,
            x.margin_b);
        partings.push_back({{"request", x.request},
                            {"tokens", {{policy.to_string(), x.token_a}, {other, x.token_b}}},
                            {"margins", {{policy.to_string(), x.margin_a}, {other, x.margin_b}}}});
      }
      comparisons[other] = *diff;
      partings_vs[other] = partings;
    }
  }
  if (!o.json_path.empty()) {
    nlohmann::json j = {{"source", source},
                        {"device", device_label(dev)},
                        {"policy", policy.to_string()},
                        {"kv_cache", latent_format_name(format)},
                        {"index_topk", config.attention.index_topk},
                        {"prompt_lens", o.prompt_lens},
                        {"tokens", g.tokens},
                        {"steps", steps},
                        {"min_margin", g.min_margin()}};
    if (o.compare) {
      j["first_difference_vs"] = comparisons;
      j["partings_vs"] = partings_vs;
    }
    write_file_atomically(o.json_path, j.dump(1));
    std::printf("wrote %s\n", o.json_path.c_str());
  }
  return 0;
}

struct WriteCheckpointOptions {
  std::string dir;
  std::int64_t seed = 1;
  std::optional<std::int64_t> layers;  // default: the model's own (2, or 4 for glm5)
  bool fp8 = false;
  std::string model = "deepseek-v32";
};

int write_checkpoint(const WriteCheckpointOptions& o) {
  if (o.model != "deepseek-v32" && o.model != "glm5") {
    fail("--model must be deepseek-v32 or glm5, got '{}'", o.model);
  }
  DecoderConfig config = o.model == "glm5" ? DecoderConfig::tiny_glm5() : DecoderConfig::tiny();
  if (o.layers) config.num_layers = *o.layers;
  if (config.attention.shared_topk_layers.size() > static_cast<std::size_t>(config.num_layers)) {
    config.attention.shared_topk_layers.resize(static_cast<std::size_t>(config.num_layers));
  }
  write_synthetic_decoder_checkpoint(o.dir, config, static_cast<std::uint64_t>(o.seed), o.fp8);
  std::printf("wrote a synthetic tiny %s decoder (%lld layers, %s weights, seed %lld) to %s\n",
              o.model.c_str(), static_cast<long long>(config.num_layers),
              o.fp8 ? "fp8 block-scaled" : "bf16", static_cast<long long>(o.seed), o.dir.c_str());
  return 0;
}

}  // namespace

Command add_generate_command(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand(
      "generate", "Greedy generation with the tiny decoder, printing each step's paths");
  cmd->add_option("--checkpoint", o->checkpoint_dir,
                  "A tiny-decoder checkpoint folder (default: synthetic weights from --seed)");
  cmd->add_option("--prompt-lens", o->prompt_lens, "Lengths of the seeded prompts")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--tokens", o->tokens, "New tokens per prompt")->capture_default_str();
  cmd->add_option("--policy", o->policy, "auto | per-request | threshold[=N] | mha | mla | masked")
      ->capture_default_str();
  cmd->add_option("--kv-cache", o->kv_cache, "Latent cache format: bf16 | fp8")
      ->capture_default_str();
  cmd->add_option("--device", o->device, "auto | cpu | cuda")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the prompts (and of synthetic weights)")
      ->capture_default_str();
  cmd->add_flag("--compare", o->compare,
                "Also generate under the other policies and report where tokens first differ");
  cmd->add_flag("--quiet", o->quiet, "Print the prefill step and the tokens, not every step");
  cmd->add_option("--json", o->json_path, "Also write the tokens and paths as JSON");
  return [o] { return generate(*o); };
}

Command add_write_checkpoint_command(CLI::App& app) {
  auto o = std::make_shared<WriteCheckpointOptions>();
  CLI::App* cmd = app.add_subcommand(
      "write-checkpoint", "Write a synthetic tiny-decoder checkpoint (Hugging Face format)");
  cmd->add_option("dir", o->dir, "Folder to write (created if needed)")->required();
  cmd->add_option("--seed", o->seed, "Seed of the weights")->capture_default_str();
  cmd->add_option("--layers", o->layers, "Decoder layers (default: 2, or 4 for glm5)");
  cmd->add_option("--model", o->model,
                  "deepseek-v32 | glm5: the attention shapes (glm5: GLM-5's per head, interleaved "
                  "indexer RoPE, IndexShare on layers 1 and 3)")
      ->capture_default_str();
  cmd->add_flag("--fp8", o->fp8, "Store 2-D weights as fp8 e4m3 with 128x128 block scales");
  return [o] { return write_checkpoint(*o); };
}

}  // namespace dsattn::tools
