// Decode and speculative verify: one new token (or a few) per request against the cache, on
// sparse MLA, with contexts on both sides of index_topk.
#include <gtest/gtest.h>

#include "layer_test_util.h"

namespace dsattn {
namespace {

constexpr std::int64_t kTopk = 32;

class Decode : public ::testing::Test {
 protected:
  AttentionConfig config = testing::small_config(kTopk);
  AttentionLayer layer{config, LayerWeights::synthetic(config, 21), Policy::parse("per-request")};
  std::int64_t D = config.hidden_size;

  // Runs rows [begin, end) of `hidden` as one request's forward and returns the output rows.
  Tensor step(PagedKvCache& cache, const BlockTable& table, const Tensor& hidden,
              std::int64_t begin, std::int64_t end, ForwardMode mode) {
    Batch b;
    b.mode = mode;
    b.requests.push_back({begin, end - begin, table});
    Tensor out = Tensor::empty({end - begin, D}, DType::bf16);
    layer.forward(b, hidden.view().slice(0, begin, end), cache.layer(0), out);
    return out;
  }
};

// Decoding token n after a prefill of n tokens gives the last row of a prefill of all n + 1,
// for contexts below, at and past index_topk.
TEST_F(Decode, DecodeAfterPrefillEqualsLastRowOfFreshPrefill) {
  for (std::int64_t n : {std::int64_t{5}, kTopk - 1, kTopk, std::int64_t{50}}) {
    const Tensor hidden = testing::random_hidden(n + 1, D, 300 + n);
    CacheOptions opts;
    opts.num_pages = 4;
    PagedKvCache a(config, opts), b(config, opts);
    BlockTable ta, tb;
    a.reserve(ta, n + 1);
    b.reserve(tb, n + 1);
    step(a, ta, hidden, 0, n, ForwardMode::prefill);
    const Tensor decoded = step(a, ta, hidden, n, n + 1, ForwardMode::decode);
    layer.set_policy(Policy::parse("mla"));  // the decode path, for the whole sequence at once
    const Tensor fresh = step(b, tb, hidden, 0, n + 1, ForwardMode::prefill);
    layer.set_policy(Policy::parse("per-request"));
    EXPECT_LE(testing::relative_difference(decoded, fresh.view().slice(0, n, n + 1)), 1e-2)
        << "context " << n + 1;
  }
}

// Verifying 3 draft tokens in one forward equals decoding them one at a time.
TEST_F(Decode, VerifyWithThreeTokensEqualsThreeDecodeSteps) {
  for (std::int64_t n : {std::int64_t{10}, kTopk - 1,
                         std::int64_t{45}}) {  // the draft crosses index_topk in the middle case
    const Tensor hidden = testing::random_hidden(n + 3, D, 500 + n);
    CacheOptions opts;
    opts.num_pages = 4;
    PagedKvCache a(config, opts), b(config, opts);
    BlockTable ta, tb;
    a.reserve(ta, n + 3);
    b.reserve(tb, n + 3);
    step(a, ta, hidden, 0, n, ForwardMode::prefill);
    step(b, tb, hidden, 0, n, ForwardMode::prefill);
    const Tensor verified = step(a, ta, hidden, n, n + 3, ForwardMode::decode);
    for (std::int64_t i = 0; i < 3; ++i) {
      const Tensor one = step(b, tb, hidden, n + i, n + i + 1, ForwardMode::decode);
      EXPECT_LE(testing::relative_difference(verified.view().slice(0, i, i + 1), one), 1e-2)
          << "prefix " << n << " draft token " << i;
    }
  }
}

// The dense path still writes the indexer's keys, so that decode past index_topk selects the
// same keys after an MHA prefill as after an MLA prefill.
TEST_F(Decode, DecodeAfterMhaPrefillEqualsDecodeAfterMlaPrefill) {
  const std::int64_t prompt = kTopk, steps = 6;  // decode contexts 33..38 exceed index_topk
  const Tensor hidden = testing::random_hidden(prompt + steps, D, 77);
  CacheOptions opts;
  opts.num_pages = 4;
  PagedKvCache mha_cache(config, opts), mla_cache(config, opts);
  BlockTable t_mha, t_mla;
  mha_cache.reserve(t_mha, prompt + steps);
  mla_cache.reserve(t_mla, prompt + steps);

  layer.set_policy(Policy::parse("mha"));
  step(mha_cache, t_mha, hidden, 0, prompt, ForwardMode::prefill);
  layer.set_policy(Policy::parse("mla"));
  step(mla_cache, t_mla, hidden, 0, prompt, ForwardMode::prefill);
  // Both paths cache identical latents and indexer keys for the prompt.
  EXPECT_EQ(testing::cached_rows(mha_cache.layer(0), t_mha, prompt),
            testing::cached_rows(mla_cache.layer(0), t_mla, prompt));

  layer.set_policy(Policy::parse("per-request"));
  for (std::int64_t s = 0; s < steps; ++s) {
    const std::int64_t at = prompt + s;
    const Tensor a = step(mha_cache, t_mha, hidden, at, at + 1, ForwardMode::decode);
    const Tensor b = step(mla_cache, t_mla, hidden, at, at + 1, ForwardMode::decode);
    EXPECT_EQ(std::memcmp(a.ptr<bf16>(), b.ptr<bf16>(), a.nbytes()), 0) << "decode step " << s;
  }
}

}  // namespace
}  // namespace dsattn
