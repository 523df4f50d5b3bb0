// Masked MHA on the GPU (mha_varlen_causal with a key mask): the wgmma kernel for the models'
// head sizes and the generic kernel, against float64 attention over each row's selected keys with
// the CPU backend's error as the yardstick; a hidden key's non-finite value; selection_mask
// against the CPU's words.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "dsattn/ops/attention.h"
#include "dsattn/ops/cuda/kernel_choice.h"
#include "dsattn/ops/cuda/params.h"
#include "gpu_test_util.h"
#include "ops/masked_attention_reference.h"

namespace dsattn::gpu_test {
namespace {

using test::MaskedAttentionInputs;

struct MaskedCase {
  const char* name;
  std::int64_t heads, d_qk, d_v;
  std::vector<std::pair<std::int64_t, std::int64_t>> requests;  // (query rows, key rows)
  std::int64_t words;  // of each row's mask; fewer than the keys need hides the rest
  double density;      // of set bits
};

void PrintTo(const MaskedCase& c, std::ostream* os) { *os << c.name; }

class MaskedMhaGpu : public GpuParamTest<MaskedCase> {};

TEST_P(MaskedMhaGpu, MatchesFloat64OverTheSelectedKeys) {
  const MaskedCase c = GetParam();
  const std::int64_t H = c.heads;
  std::vector<std::int32_t> cq{0}, ck{0};
  std::int64_t max_q = 0;
  for (const auto& [nq, nk] : c.requests) {
    cq.push_back(cq.back() + static_cast<std::int32_t>(nq));
    ck.push_back(ck.back() + static_cast<std::int32_t>(nk));
    max_q = std::max(max_q, nq);
  }
  const std::int64_t total_q = cq.back(), total_k = ck.back();
  const Tensor cu_q = i32_tensor(cq), cu_k = i32_tensor(ck);
  const Tensor q = random_tensor({total_q, H, c.d_qk}, DType::bf16, 70, 1, 2.0);
  const Tensor k = random_tensor({total_k, H, c.d_qk}, DType::bf16, 70, 2, 2.0);
  const Tensor v = random_tensor({total_k, H, c.d_v}, DType::bf16, 70, 3);
  const Tensor mask = test::random_key_mask(total_q, c.words, c.density, 71, 200);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.d_qk));

  Tensor cpu_out = poisoned({total_q, H, c.d_v}, DType::bf16);
  Tensor cpu_lse = poisoned({total_q, H}, DType::f32);
  ops::mha_varlen_causal(q, k, v, cu_q, cu_k, max_q, scale, cpu_out, cpu_lse, mask);

  const Mirror q_dev(q), k_dev(k), v_dev(v), cq_dev(cu_q), ck_dev(cu_k), mask_dev(mask);
  const Mirror out_dev(poisoned({total_q, H, c.d_v}, DType::bf16)),
      lse_dev(poisoned({total_q, H}, DType::f32)),
      generic_dev(poisoned({total_q, H, c.d_v}, DType::bf16));
  ops::mha_varlen_causal(q_dev.on_gpu(), k_dev.on_gpu(), v_dev.on_gpu(), cq_dev.on_gpu(),
                         ck_dev.on_gpu(), max_q, scale, out_dev.on_gpu(), lse_dev.on_gpu(),
                         mask_dev.on_gpu());
  EXPECT_EQ(ops::cuda::last_kernel("mha_varlen_causal"), "mha_wgmma_sm90");
  // The generic kernel on the same inputs: the GPU reference.
  ops::cuda::MhaParams p{};
  p.q = q_dev.on_gpu().data();
  p.k = k_dev.on_gpu().data();
  p.v = v_dev.on_gpu().data();
  p.out = generic_dev.on_gpu().data();
  p.cu_q = static_cast<const std::int32_t*>(cq_dev.on_gpu().data());
  p.cu_k = static_cast<const std::int32_t*>(ck_dev.on_gpu().data());
  p.key_mask = static_cast<const std::uint32_t*>(mask_dev.on_gpu().data());
  p.total_q = total_q;
  p.max_q = max_q;
  p.sq0 = H * c.d_qk, p.sq1 = c.d_qk, p.sk0 = H * c.d_qk, p.sk1 = c.d_qk;
  p.sv0 = H * c.d_v, p.sv1 = c.d_v, p.so0 = H * c.d_v, p.so1 = c.d_v;
  p.s_mask = c.words;
  p.mask_words = c.words;
  p.batch = static_cast<int>(c.requests.size());
  p.heads = static_cast<int>(H);
  p.d_qk = static_cast<int>(c.d_qk);
  p.d_v = static_cast<int>(c.d_v);
  p.scale = scale;
  ASSERT_TRUE(ops::cuda::mha_wgmma_sm90_supports(p));
  ASSERT_FALSE(ops::cuda::mha_sm90_supports(p));  // the mma.sync kernel takes no mask
  ASSERT_EQ(ops::cuda::launch_mha_generic(p, nullptr), cudaSuccess);
  dsattn::cuda::synchronize();

  const MaskedAttentionInputs in = test::masked_attention_inputs(q, k, v, cq, ck, mask, scale);
  std::vector<double> ref, ref_lse;
  test::masked_attention<double>(in, ref, ref_lse, false);
  const std::vector<double> cpu = read_doubles(cpu_out);
  const std::vector<std::int64_t> shape = shape_of(cpu_out.view());
  for (const auto& [kernel, result] :
       {std::pair{"mha_wgmma_sm90", &out_dev}, std::pair{"mha_generic", &generic_dev}}) {
    SCOPED_TRACE(kernel);
    EXPECT_TRUE(
        within_tolerance(read_doubles(result->fetch()), cpu, ref, relative_atol(ref), shape));
  }
  EXPECT_TRUE(within_tolerance(read_doubles(lse_dev.fetch()), read_doubles(cpu_lse), ref_lse, 1e-4,
                               shape_of(cpu_lse.view())));
}

const MaskedCase kMaskedCases[] = {
    // Tile edges of the 128-row query blocks and 128-key tiles, prefixes, single rows, a request
    // with no new query; 32 words (1,024 keys) against requests of up to 1,000 keys.
    {"DeepSeek_H4_Varlen",
     4,
     192,
     128,
     {{1, 300}, {130, 130}, {65, 1000}, {0, 40}, {200, 200}, {7, 7}},
     32,
     0.3},
    // Sparse selections (a few keys a tile) and a mask narrower than the keys: keys past 512
    // hidden.
    {"DeepSeek_H2_NarrowMask", 2, 192, 128, {{300, 900}, {129, 129}}, 16, 0.05},
    // Dense selections: most bits set, as for a context just past index_topk.
    {"DeepSeek_H2_Dense", 2, 192, 128, {{256, 640}}, 20, 0.9},
    // GLM-5's head sizes (64-key tiles), the mask ending inside a tile (keys past 352 hidden).
    {"Glm5_H2_Varlen", 2, 256, 256, {{1, 200}, {100, 333}, {70, 400}}, 11, 0.3},
};
INSTANTIATE_TEST_SUITE_P(Shapes, MaskedMhaGpu, ::testing::ValuesIn(kMaskedCases),
                         [](const auto& info) { return std::string(info.param.name); });

// A non-finite value of a key that some rows do not select reaches exactly the rows that do:
// the others give the same bits as with a finite value there.
TEST(MaskedMhaGpuNonFinite, AHiddenValueNeverReachesARow) {
  if (dsattn::cuda::device_count() == 0) GTEST_SKIP() << "needs a CUDA GPU (sm_90)";
  const std::int64_t H = 2, n = 300, bad = 150, words = 12;
  const std::vector<std::int32_t> cu{0, static_cast<std::int32_t>(n)};
  const Tensor cu_t = i32_tensor(cu);
  const Tensor q = random_tensor({n, H, 192}, DType::bf16, 72, 1, 2.0);
  const Tensor k = random_tensor({n, H, 192}, DType::bf16, 72, 2, 2.0);
  Tensor v = random_tensor({n, H, 128}, DType::bf16, 72, 3);
  const Tensor mask = test::random_key_mask(n, words, 0.5, 73);
  const Mirror q_dev(q), k_dev(k), cu_dev(cu_t), mask_dev(mask);
  const auto run = [&] {
    const Mirror v_dev(v), out_dev(poisoned({n, H, 128}, DType::bf16));
    ops::mha_varlen_causal(q_dev.on_gpu(), k_dev.on_gpu(), v_dev.on_gpu(), cu_dev.on_gpu(),
                           cu_dev.on_gpu(), n, 0.1f, out_dev.on_gpu(), {}, mask_dev.on_gpu());
    return out_dev.fetch();
  };
  const Tensor clean = run();
  for (std::int64_t h = 0; h < H; ++h) {
    v.ptr<bf16>()[(bad * H + h) * 128 + 9] = bf16::from_float(std::nanf(""));
  }
  const Tensor dirty = run();
  int selecting = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto word = static_cast<std::uint32_t>(mask.ptr<std::int32_t>()[i * words + bad / 32]);
    const bool sees = i >= bad && ((word >> (bad % 32)) & 1u) != 0;
    selecting += sees;
    if (sees) {
      EXPECT_TRUE(std::isnan(dirty.ptr<bf16>()[i * H * 128 + 9].to_float())) << "row " << i;
    } else {
      EXPECT_EQ(std::memcmp(dirty.ptr<bf16>() + i * H * 128, clean.ptr<bf16>() + i * H * 128,
                            H * 128 * sizeof(bf16)),
                0)
          << "row " << i << " does not select key " << bad << " but changed";
    }
  }
  EXPECT_GT(selecting, 0);
}

// selection_mask on the GPU gives the CPU's words: positions in any order, repeated, -1.
TEST(SelectionMaskGpu, SameWordsAsCpu) {
  if (dsattn::cuda::device_count() == 0) GTEST_SKIP() << "needs a CUDA GPU (sm_90)";
  const std::int64_t n = 37, k = 300, words = 40;
  Tensor selected = Tensor::empty({n, k}, DType::i32);
  std::mt19937 rng(74);
  for (std::int64_t i = 0; i < n * k; ++i) {
    selected.ptr<std::int32_t>()[i] = rng() % 4 == 0 ? -1 : static_cast<std::int32_t>(rng() % 1280);
  }
  Tensor cpu = poisoned({n, words}, DType::i32);
  ops::selection_mask(selected, cpu);
  const Mirror sel_dev(selected), mask_dev(poisoned({n, words}, DType::i32));
  ops::selection_mask(sel_dev.on_gpu(), mask_dev.on_gpu());
  const Tensor gpu_words = mask_dev.fetch();
  EXPECT_EQ(std::memcmp(gpu_words.ptr<std::int32_t>(), cpu.ptr<std::int32_t>(), cpu.nbytes()), 0);
}

}  // namespace
}  // namespace dsattn::gpu_test
