// The tiny decoder on the GPU: the generation agreements of tests/decoder, with the model, its
// caches and every path on the device.
#include <gtest/gtest.h>

#include "decoder/decoder_test_util.h"
#include "gpu_test_util.h"

namespace dsattn::gpu_test {
namespace {

using namespace dsattn::testing;

using DecoderGpu = GpuParamTest<LatentFormat>;

TEST_P(DecoderGpu, IdenticalTokensWithOneLayer) {
  expect_identical_tokens_with_one_layer(gpu(), GetParam());
}

TEST_P(DecoderGpu, SameChoicesWithTwoLayers) {
  expect_same_choices_with_two_layers(gpu(), GetParam());
}

INSTANTIATE_TEST_SUITE_P(Caches, DecoderGpu,
                         ::testing::Values(LatentFormat::bf16, LatentFormat::fp8),
                         [](const auto& info) {
                           return std::string(latent_format_name(info.param));
                         });

}  // namespace
}  // namespace dsattn::gpu_test
