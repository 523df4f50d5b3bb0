// Bad input on the GPU path is refused before any launch: tensors on different devices
// (InvalidArgument naming both), and valid requests the CUDA backend does not serve (Unsupported).
// Every output, on the host or the GPU, must come back untouched.
#include <gtest/gtest.h>

#include "dsattn/cache/cache_format.h"
#include "dsattn/model/config.h"
#include "dsattn/ops/attention.h"
#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/gemm.h"
#include "dsattn/ops/indexer.h"
#include "dsattn/ops/quantize.h"
#include "dsattn/ops/rope.h"
#include "dsattn/ops/topk.h"
#include "gpu_test_util.h"

namespace dsattn::gpu_test {
namespace {

using RefusalsGpu = GpuTest;

// A poisoned output on the GPU and its host original, to check that it is left alone.
struct WatchedOutput {
  Tensor original;
  Mirror dev;
  explicit WatchedOutput(Tensor t) : original(clone(t)), dev(std::move(t)) {}
  ::testing::AssertionResult untouched() const {
    return same_bytes(original, dev.fetch(), "output after the refused call");
  }
};

TEST_F(RefusalsGpu, MhaWithOutOnTheHost) {
  const std::int64_t H = 2, dq = 16, dv = 8;
  const Mirror q(random_tensor({5, H, dq}, DType::bf16, 120, 1)),
      k(random_tensor({6, H, dq}, DType::bf16, 120, 2)),
      v(random_tensor({6, H, dv}, DType::bf16, 120, 3)), cu_q(i32_tensor({0, 2, 5})),
      cu_k(i32_tensor({0, 3, 6}));
  Tensor out = poisoned({5, H, dv}, DType::bf16);
  const Tensor original = clone(out);
  EXPECT_TRUE(throws_naming<InvalidArgument>(
      [&] {
        ops::mha_varlen_causal(q.on_gpu(), k.on_gpu(), v.on_gpu(), cu_q.on_gpu(), cu_k.on_gpu(), 3,
                               0.25f, out);
      },
      {"out is on cpu", "q is on cuda:0"}));
  EXPECT_TRUE(same_bytes(original, out, "host out"));
}

TEST_F(RefusalsGpu, MhaWithOffsetsOnTheHost) {
  const std::int64_t H = 2, dq = 16, dv = 8;
  const Mirror q(random_tensor({5, H, dq}, DType::bf16, 121, 1)),
      k(random_tensor({6, H, dq}, DType::bf16, 121, 2)),
      v(random_tensor({6, H, dv}, DType::bf16, 121, 3));
  Tensor cu_q = i32_tensor({0, 2, 5}), cu_k = i32_tensor({0, 3, 6});
  const WatchedOutput out(poisoned({5, H, dv}, DType::bf16));
  EXPECT_TRUE(throws_naming<InvalidArgument>(
      [&] {
        ops::mha_varlen_causal(q.on_gpu(), k.on_gpu(), v.on_gpu(), cu_q, cu_k, 3, 0.25f,
                               out.dev.on_gpu());
      },
      {"cu_q is on cpu", "q is on cuda:0"}));
  EXPECT_TRUE(out.untouched());
}

TEST_F(RefusalsGpu, SparseMlaWithIndicesOnTheHost) {
  const Mirror q(random_tensor({2, 4, 576}, DType::bf16, 122, 1)),
      cache(random_tensor({100, 576}, DType::bf16, 122, 2));
  Tensor indices = i32_tensor({0, 1, 2, -1, 5, 6, 7, 8});
  const WatchedOutput out(poisoned({2, 4, 512}, DType::bf16));
  EXPECT_TRUE(throws_naming<InvalidArgument>(
      [&] {
        ops::sparse_mla(q.on_gpu(), cache.on_gpu(), indices.view().reshape({2, 4}), 0.1f,
                        out.dev.on_gpu());
      },
      {"indices is on cpu", "q is on cuda:0"}));
  EXPECT_TRUE(out.untouched());
}

TEST_F(RefusalsGpu, TopkWithLengthsOnTheHost) {
  const Mirror scores(random_tensor({3, 100}, DType::f32, 123, 1));
  Tensor lengths = i32_tensor({100, 50, 10});
  const WatchedOutput out(poisoned({3, 20}, DType::i32));
  EXPECT_TRUE(
      throws_naming<InvalidArgument>([&] { ops::topk(scores.on_gpu(), lengths, out.dev.on_gpu()); },
                                     {"lengths is on cpu", "scores is on cuda:0"}));
  EXPECT_TRUE(out.untouched());
}

TEST_F(RefusalsGpu, GatherIntoHostRows) {
  const Mirror src(random_tensor({10, 64}, DType::bf16, 124, 1)), index(i32_tensor({3, 1, 4}));
  Tensor out = poisoned({3, 64}, DType::bf16);
  const Tensor original = clone(out);
  EXPECT_TRUE(
      throws_naming<InvalidArgument>([&] { ops::gather_rows(src.on_gpu(), index.on_gpu(), out); },
                                     {"out is on cpu", "src is on cuda:0"}));
  EXPECT_TRUE(same_bytes(original, out, "host out"));
}

TEST_F(RefusalsGpu, GemmWithF32BIsUnsupportedOnCuda) {
  const Mirror a(random_tensor({8, 32}, DType::bf16, 125, 1)),
      b(random_tensor({16, 32}, DType::f32, 125, 2));
  const WatchedOutput c(poisoned({8, 16}, DType::f32));
  EXPECT_TRUE(throws_naming<Unsupported>(
      [&] { ops::gemm(a.on_gpu(), b.on_gpu(), c.dev.on_gpu(), ops::BLayout::nt); },
      {"b must have dtype bf16 on CUDA", "f32"}));
  EXPECT_TRUE(c.untouched());
}

TEST_F(RefusalsGpu, GemmWithHostCIsRefused) {
  const Mirror a(random_tensor({8, 32}, DType::bf16, 126, 1)),
      b(random_tensor({16, 32}, DType::bf16, 126, 2));
  Tensor c = poisoned({8, 16}, DType::bf16);
  const Tensor original = clone(c);
  EXPECT_TRUE(throws_naming<InvalidArgument>(
      [&] { ops::gemm(a.on_gpu(), b.on_gpu(), c, ops::BLayout::nt); },
      {"c is on cpu", "a is on cuda:0"}));
  EXPECT_TRUE(same_bytes(original, c, "host c"));
}

// An index head dim of 256 is valid (a multiple of 128) and served by the CPU, but the CUDA
// kernel is built for DeepSeek-V3.2's 128.
TEST_F(RefusalsGpu, IndexerHeadDim256IsUnsupportedOnCuda) {
  const std::int64_t d = 256, H = 2, n_q = 3, n_k = 5;
  Tensor q = Tensor::empty({n_q, H, d}, DType::fp8_e4m3);
  fill_random_bytes(q, 127);
  Tensor q_scale = random_tensor({n_q, H, d / 128}, DType::f32, 127, 1);
  Tensor weights = random_tensor({n_q, H}, DType::f32, 127, 2);
  Tensor keys = Tensor::empty({kPageSize, index_key_bytes(d)}, DType::u8);
  fill_random_bytes(keys, 128);
  const Mirror q_dev(q), qs_dev(q_scale), w_dev(weights), keys_dev(keys), tables(i32_tensor({0})),
      cu_q(i32_tensor({0, static_cast<std::int32_t>(n_q)})),
      lens(i32_tensor({static_cast<std::int32_t>(n_k)}));
  const WatchedOutput scores(poisoned({n_q, n_k}, DType::f32));
  EXPECT_TRUE(throws_naming<Unsupported>(
      [&] {
        ops::indexer_scores(q_dev.on_gpu(), qs_dev.on_gpu(), w_dev.on_gpu(), keys_dev.on_gpu(),
                            tables.on_gpu().reshape({1, 1}), kPageSize, cu_q.on_gpu(),
                            lens.on_gpu(), 0, scores.dev.on_gpu());
      },
      {"head dim of 128", "256"}));
  EXPECT_TRUE(scores.untouched());
}

TEST_F(RefusalsGpu, RopeWiderThan128IsUnsupportedOnCuda) {
  const ops::RopeTable table = ops::RopeTable::from_config(AttentionConfig::deepseek_v32(), 256);
  const WatchedOutput x(random_tensor({4, 2, 256}, DType::bf16, 129, 1));
  const Mirror positions(i32_tensor({0, 1, 2, 3}));
  EXPECT_TRUE(throws_naming<Unsupported>(
      [&] { ops::apply_rope(x.dev.on_gpu(), positions.on_gpu(), table, ops::RopeLayout::halves); },
      {"apply_rope on CUDA", "256"}));
  EXPECT_TRUE(x.untouched());
}

TEST_F(RefusalsGpu, HadamardRowsOtherThan128AreRefusedOnCuda) {
  const WatchedOutput x(random_tensor({4, 64}, DType::bf16, 130, 1));
  EXPECT_TRUE(throws_naming<InvalidArgument>([&] { ops::hadamard_rotate(x.dev.on_gpu()); },
                                             {"rows of 128 on CUDA", "64"}));
  EXPECT_TRUE(x.untouched());
}

}  // namespace
}  // namespace dsattn::gpu_test
