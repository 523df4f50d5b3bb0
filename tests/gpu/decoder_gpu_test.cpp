// The tiny decoder on the GPU: the generation agreements of tests/decoder, with the model, its
// caches and every path on the device.
#include <gtest/gtest.h>

#include "decoder/decoder_test_util.h"
#include "gpu_test_util.h"

namespace dsattn::gpu_test {
namespace {

using namespace dsattn::testing;

using DecoderGpu = GpuParamTest<LatentFormat>;

const std::vector<std::vector<std::int64_t>> kPromptSets = {{23, 64, 65, 150}, {5, 40, 64}};

TEST_P(DecoderGpu, IdenticalTokensWithOneLayer) {
  DecoderConfig config = DecoderConfig::tiny();
  config.num_layers = 1;
  const DecoderWeights weights = tiny_weights_from_checkpoint(config, /*fp8=*/false);
  for (const std::vector<std::int64_t>& lengths : kPromptSets) {
    SCOPED_TRACE(::testing::Message() << "prompt lengths " << ::testing::PrintToString(lengths));
    const auto prompts = random_prompts(lengths, config.vocab_size, 7);
    const Generation mla = run_greedy(config, weights, prompts, 256, "mla", GetParam(), gpu());
    for (const char* policy : {"threshold", "per-request"}) {
      SCOPED_TRACE(policy);
      const Generation other = run_greedy(config, weights, prompts, 256, policy, GetParam(), gpu());
      expect_prefill_paths(other, prompts, config, Policy::parse(policy));
      expect_decode_on_sparse_mla(other);
      for (std::size_t r = 0; r < prompts.size(); ++r) {
        EXPECT_EQ(other.tokens[r], mla.tokens[r]) << "request " << r;
      }
    }
  }
}

TEST_P(DecoderGpu, SameChoicesWithTwoLayers) {
  const DecoderConfig config = DecoderConfig::tiny();
  const DecoderWeights weights = tiny_weights_from_checkpoint(config, /*fp8=*/true);
  for (const std::vector<std::int64_t>& lengths : kPromptSets) {
    SCOPED_TRACE(::testing::Message() << "prompt lengths " << ::testing::PrintToString(lengths));
    const auto prompts = random_prompts(lengths, config.vocab_size, 7);
    const Generation mla = run_greedy(config, weights, prompts, 256, "mla", GetParam(), gpu());
    for (const char* policy : {"threshold", "per-request"}) {
      SCOPED_TRACE(policy);
      const Generation other =
          run_greedy(config, weights, prompts, 256, policy, GetParam(), gpu(), mla.tokens);
      expect_prefill_paths(other, prompts, config, Policy::parse(policy));
      expect_same_choices(mla, other);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Caches, DecoderGpu,
                         ::testing::Values(LatentFormat::bf16, LatentFormat::fp8),
                         [](const auto& info) {
                           return std::string(latent_format_name(info.param));
                         });

}  // namespace
}  // namespace dsattn::gpu_test
