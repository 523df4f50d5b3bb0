// The tiny decoder end to end: greedy generation agrees whichever path computes each prompt
// (sparse MLA everywhere, SGLang's threshold rule, or dense MHA per request where exact), over
// 256 generated tokens, for prompts below, at and above index_topk, with bf16 and FP8 latent
// caches; and the tokens depend on the sparse selection, so the agreement is not vacuous.
//
// The paths round differently (bf16 K/V decompressed for MHA, absorbed queries for MLA), so the
// hidden states after a layer differ at the level of bf16 rounding between policies. With one
// attention layer that difference reaches only the prefill's logits: the cache is written from
// the embeddings and decode runs on sparse MLA under every policy, so every decode step is the
// same computation, and the prefill's choices can differ only at a near-tie (a top-two margin
// within twice the logits' difference). With more layers, a later layer's indexer sees those
// rounding differences, and where two of its keys score within rounding of each other at the top-k
// boundary, the two runs select different keys; the logits then differ by more than rounding at
// that step. So the deeper model is compared with teacher forcing (the other policies fed the MLA
// run's tokens): its choices must agree at nearly every step.
#include <gmock/gmock-matchers.h>
#include <gtest/gtest.h>

#include <random>

#include "core/error_message.h"
#include "decoder/decoder_test_util.h"

namespace dsattn {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace dsattn::testing;

class GreedyAcrossPaths : public ::testing::TestWithParam<LatentFormat> {};

TEST_P(GreedyAcrossPaths, IdenticalTokensWithOneLayer) {
  expect_identical_tokens_with_one_layer(Device::cpu(), GetParam());
}

TEST_P(GreedyAcrossPaths, SameChoicesWithTwoLayers) {
  expect_same_choices_with_two_layers(Device::cpu(), GetParam());
}

INSTANTIATE_TEST_SUITE_P(Caches, GreedyAcrossPaths,
                         ::testing::Values(LatentFormat::bf16, LatentFormat::fp8),
                         [](const auto& info) {
                           return std::string(latent_format_name(info.param));
                         });

// The same weights with index_topk raised past every context (dense attention over all keys)
// generate other tokens for the long prompts: generation depends on which keys top-k keeps.
TEST(GreedySensitivity, TokensDependOnTheSparseSelection) {
  const DecoderConfig config = DecoderConfig::tiny();
  const DecoderWeights weights = tiny_weights_from_checkpoint(config, false);
  DecoderConfig all_keys = config;
  all_keys.attention.index_topk = 4096;
  const auto prompts = random_prompts({65, 150}, config.vocab_size, 7);
  const Generation sparse =
      run_greedy(config, weights, prompts, 64, "mla", LatentFormat::bf16, Device::cpu());
  const Generation dense =
      run_greedy(all_keys, weights, prompts, 64, "mla", LatentFormat::bf16, Device::cpu());
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    EXPECT_NE(sparse.tokens[r], dense.tokens[r])
        << "request " << r << " generated the same tokens with and without top-k";
  }
}

TEST(GreedyGeneration, RecordsEachStepsPathsAndReleasesItsPages) {
  const DecoderConfig config = DecoderConfig::tiny();
  DecoderModel model(config, DecoderWeights::synthetic(config, 3), Policy::parse("per-request"));
  PagedKvCache cache(config.attention, {.num_pages = 16, .num_layers = config.num_layers});
  const auto prompts = random_prompts({10, 100}, config.vocab_size, 1);
  const Generation g = generate_greedy(model, prompts, 4, cache);
  ASSERT_EQ(g.steps.size(), 4u);
  EXPECT_EQ(g.steps[0].mode, ForwardMode::prefill);
  EXPECT_THAT(g.steps[0].paths, ElementsAre(Path::dense_mha, Path::sparse_mla));
  EXPECT_EQ(g.steps[3].mode, ForwardMode::decode);
  for (std::size_t r = 0; r < 2; ++r) {
    ASSERT_EQ(g.tokens[r].size(), 4u);
    for (std::size_t s = 0; s < 4; ++s) EXPECT_EQ(g.tokens[r][s], g.steps[s].tokens[r]);
  }
  EXPECT_GT(g.min_margin(), 0.0f);
  EXPECT_EQ(cache.free_pages(), 16);
}

TEST(GreedyGeneration, RefusesBadInputBeforeTouchingTheCache) {
  const DecoderConfig config = DecoderConfig::tiny();
  DecoderModel model(config, DecoderWeights::synthetic(config, 3));
  PagedKvCache cache(config.attention, {.num_pages = 4, .num_layers = config.num_layers});
  auto message = [&](std::vector<std::vector<std::int32_t>> prompts, std::int64_t n) {
    return thrown_message<InvalidArgument>([&] { generate_greedy(model, prompts, n, cache); });
  };
  EXPECT_THAT(message({}, 4), HasSubstr("prompts must not be empty"));
  EXPECT_THAT(message({{1, 2}, {}}, 4), HasSubstr("prompt 1 must not be empty"));
  EXPECT_THAT(message({{1, 2}}, 0), HasSubstr("new_tokens must be at least 1, got 0"));
  EXPECT_THAT(message({{1, 512}}, 4), HasSubstr("prompt 0 token 1 must be in [0, 512), got 512"));
  EXPECT_THAT(message({{1, -1}}, 4), HasSubstr("got -1"));
  // 4 pages hold 256 tokens: a second request's pages do not fit, and the first's come back.
  EXPECT_THROW(
      generate_greedy(model, {std::vector<std::int32_t>(200, 1), std::vector<std::int32_t>(100, 1)},
                      4, cache),
      CacheFull);
  EXPECT_EQ(cache.free_pages(), 4);

  PagedKvCache one_layer(config.attention, {.num_pages = 4, .num_layers = 1});
  EXPECT_THAT(thrown_message<InvalidArgument>([&] {
                generate_greedy(model, {{1, 2}}, 2, one_layer);
              }),
              HasSubstr("cache must hold at least 2 layers, got 1"));
  EXPECT_EQ(one_layer.free_pages(), 4);
}

}  // namespace
}  // namespace dsattn
