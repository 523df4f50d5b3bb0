// Shared pieces of the decoder tests (CPU and GPU): the tiny model's weights read back from a
// synthetic checkpoint, seeded prompts, one greedy run under a policy, and comparisons that
// explain a divergence.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/temp_dir.h"
#include "dsattn/decoder/decoder_model.h"
#include "dsattn/decoder/greedy_generation.h"

namespace dsattn::testing {

// DecoderWeights::synthetic(config, 1), written as a checkpoint and loaded back: the weights the
// generation tests use come through the checkpoint reader (FP8-dequantised with `fp8`).
inline DecoderWeights tiny_weights_from_checkpoint(const DecoderConfig& config, bool fp8) {
  TempDir dir;
  write_synthetic_decoder_checkpoint(dir.path().string(), config, 1, fp8);
  const Checkpoint checkpoint = Checkpoint::open(dir.path().string());
  return DecoderWeights::load(checkpoint, DecoderConfig::from_json_file(dir.file("config.json")));
}

inline std::vector<std::vector<std::int32_t>> random_prompts(
    const std::vector<std::int64_t>& lengths, std::int64_t vocab, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(vocab - 1));
  std::vector<std::vector<std::int32_t>> prompts;
  for (std::int64_t n : lengths) {
    auto& p = prompts.emplace_back();
    for (std::int64_t i = 0; i < n; ++i) p.push_back(token(rng));
  }
  return prompts;
}

// One greedy generation from fresh caches, the model on `device` (fed `feed` when given).
inline Generation run_greedy(const DecoderConfig& config, const DecoderWeights& weights,
                             const std::vector<std::vector<std::int32_t>>& prompts,
                             std::int64_t new_tokens, const std::string& policy,
                             LatentFormat format, Device device,
                             const std::vector<std::vector<std::int32_t>>& feed = {}) {
  DecoderModel model(config, device.is_cpu() ? weights : weights.to(device), Policy::parse(policy));
  PagedKvCache cache(config.attention, {.num_pages = 64,
                                        .num_layers = config.num_layers,
                                        .latent_format = format,
                                        .device = device});
  return generate_greedy(model, prompts, new_tokens, cache, feed);
}

// `fed` was fed `free`'s tokens: each request chose the same token at nearly every step. A
// different choice is allowed at 5% of the steps at most (about 2% are measured on the tiny
// model): the steps where a later layer's top-k boundary fell differently. A path computing
// anything but the same attention changes most choices (see GreedySensitivity).
inline void expect_same_choices(const Generation& free, const Generation& fed) {
  ASSERT_EQ(free.steps.size(), fed.steps.size());
  std::size_t choices = 0, differing = 0;
  std::string where;
  for (std::size_t s = 0; s < free.steps.size(); ++s) {
    const GenerationStep &a = free.steps[s], &b = fed.steps[s];
    for (std::size_t r = 0; r < a.tokens.size(); ++r) {
      ++choices;
      if (a.tokens[r] == b.tokens[r]) continue;
      ++differing;
      where += " (step " + std::to_string(s) + ", request " + std::to_string(r) + ")";
    }
  }
  EXPECT_LE(differing * 20, choices)
      << differing << " of " << choices << " choices differed:" << where;
  ::testing::Test::RecordProperty("choices_differing",
                                  std::to_string(differing) + " of " + std::to_string(choices));
}

inline void expect_decode_on_sparse_mla(const Generation& g) {
  for (std::size_t s = 1; s < g.steps.size(); ++s) {
    for (Path p : g.steps[s].paths) ASSERT_EQ(p, Path::sparse_mla) << "step " << s;
  }
}

// The prefill's paths follow the policy's rule: per-request takes dense MHA exactly for prompts
// of at most index_topk tokens, threshold takes it for the whole batch iff every prompt fits,
// mla never.
inline void expect_prefill_paths(const Generation& g,
                                 const std::vector<std::vector<std::int32_t>>& prompts,
                                 const DecoderConfig& config, const Policy& policy) {
  const std::int64_t K = config.attention.index_topk;
  bool all_fit = true;
  for (const auto& p : prompts) all_fit = all_fit && std::int64_t(p.size()) <= K;
  ASSERT_FALSE(g.steps.empty());
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    const bool fits = std::int64_t(prompts[r].size()) <= K;
    Path want = Path::sparse_mla;
    if (policy.kind == Policy::Kind::per_request && fits) want = Path::dense_mha;
    if (policy.kind == Policy::Kind::threshold && all_fit) want = Path::dense_mha;
    EXPECT_EQ(g.steps[0].paths[r], want)
        << "request " << r << " of " << prompts[r].size() << " tokens under " << policy.to_string();
  }
}

// Prompt sets: mixed lengths around index_topk = 64 (threshold then takes MLA for the whole
// batch), and short ones only (threshold takes dense MHA for all of them).
inline const std::vector<std::vector<std::int64_t>> kPromptSets = {{23, 64, 65, 150}, {5, 40, 64}};
inline constexpr std::int64_t kNewTokens = 256;

// The prefill logits of `prompts` under `policy` ([requests, vocab] f32, from a fresh cache).
inline Tensor prefill_logits(const DecoderConfig& config, const DecoderWeights& weights,
                             const std::vector<std::vector<std::int32_t>>& prompts,
                             const std::string& policy, LatentFormat format, Device device) {
  DecoderModel model(config, device.is_cpu() ? weights : weights.to(device), Policy::parse(policy));
  PagedKvCache cache(config.attention, {.num_pages = 64,
                                        .num_layers = config.num_layers,
                                        .latent_format = format,
                                        .device = device});
  std::vector<BlockTable> tables(prompts.size());
  Batch batch;
  std::vector<std::int32_t> tokens;
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    cache.reserve(tables[r], static_cast<std::int64_t>(prompts[r].size()));
    batch.requests.push_back({0, static_cast<std::int64_t>(prompts[r].size()), tables[r]});
    tokens.insert(tokens.end(), prompts[r].begin(), prompts[r].end());
  }
  return model.forward(batch, tokens, cache).logits;
}

inline float max_abs_difference(const Tensor& a, const Tensor& b) {
  float m = 0.0f;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const float d = std::fabs(a.ptr<float>()[i] - b.ptr<float>()[i]);
    m = std::isnan(d) ? INFINITY : std::max(m, d);
  }
  return m;
}

// One attention layer: the policies' prefills differ by rounding, and nothing after the prefill
// depends on its attention output (the cache is written from the embeddings; every policy decodes
// on sparse MLA). So with the other policies fed the MLA run's tokens, every decode step is the
// same computation: the same choices with the same margins, bit for bit. The prefill's choice
// must agree wherever MLA's top-two margin exceeds twice the largest logit difference between
// the two prefills (only there can rounding not flip an argmax), and that difference must be of
// rounding size. Free-running generations then agree unless the prefill met such a near-tie.
inline void expect_identical_tokens_with_one_layer(Device device, LatentFormat format) {
  DecoderConfig config = DecoderConfig::tiny();
  config.num_layers = 1;
  const DecoderWeights weights = tiny_weights_from_checkpoint(config, /*fp8=*/false);
  for (const std::vector<std::int64_t>& lengths : kPromptSets) {
    SCOPED_TRACE(::testing::Message() << "prompt lengths " << ::testing::PrintToString(lengths));
    const auto prompts = random_prompts(lengths, config.vocab_size, 7);
    const Generation mla = run_greedy(config, weights, prompts, kNewTokens, "mla", format, device);
    expect_prefill_paths(mla, prompts, config, Policy::parse("mla"));
    const Tensor mla_logits = prefill_logits(config, weights, prompts, "mla", format, device);
    float largest = 0.0f;
    for (std::int64_t i = 0; i < mla_logits.numel(); ++i) {
      largest = std::max(largest, std::fabs(mla_logits.ptr<float>()[i]));
    }
    for (const char* policy : {"threshold", "per-request"}) {
      SCOPED_TRACE(policy);
      const Generation other =
          run_greedy(config, weights, prompts, kNewTokens, policy, format, device, mla.tokens);
      expect_prefill_paths(other, prompts, config, Policy::parse(policy));
      expect_decode_on_sparse_mla(other);
      const float delta = max_abs_difference(
          mla_logits, prefill_logits(config, weights, prompts, policy, format, device));
      EXPECT_LE(delta, 2e-2f * largest) << "prefill logits differ by more than rounding";
      for (std::size_t r = 0; r < prompts.size(); ++r) {
        if (mla.steps[0].margins[r] > 2 * delta) {
          EXPECT_EQ(other.steps[0].tokens[r], mla.steps[0].tokens[r])
              << "request " << r << ": prefill margin " << mla.steps[0].margins[r]
              << ", logits differ by at most " << delta;
        }
        for (std::size_t s = 1; s < mla.steps.size(); ++s) {
          ASSERT_EQ(other.steps[s].tokens[r], mla.steps[s].tokens[r])
              << "request " << r << " step " << s;
          ASSERT_EQ(other.steps[s].margins[r], mla.steps[s].margins[r])
              << "request " << r << " step " << s;
        }
      }
    }
  }
}

// Two layers (FP8 checkpoint weights): with the MLA run's tokens fed to every policy, the same
// greedy choice at nearly every step.
inline void expect_same_choices_with_two_layers(Device device, LatentFormat format) {
  const DecoderConfig config = DecoderConfig::tiny();
  const DecoderWeights weights = tiny_weights_from_checkpoint(config, /*fp8=*/true);
  for (const std::vector<std::int64_t>& lengths : kPromptSets) {
    SCOPED_TRACE(::testing::Message() << "prompt lengths " << ::testing::PrintToString(lengths));
    const auto prompts = random_prompts(lengths, config.vocab_size, 7);
    const Generation mla = run_greedy(config, weights, prompts, kNewTokens, "mla", format, device);
    for (const char* policy : {"threshold", "per-request"}) {
      SCOPED_TRACE(policy);
      const Generation other =
          run_greedy(config, weights, prompts, kNewTokens, policy, format, device, mla.tokens);
      expect_prefill_paths(other, prompts, config, Policy::parse(policy));
      expect_decode_on_sparse_mla(other);
      expect_same_choices(mla, other);
    }
  }
}

}  // namespace dsattn::testing
