// The attention cores on the GPU against float64 softmax attention, with the CPU backend's error
// as the yardstick (FlashAttention's rule): dense causal varlen attention (MHA form, bottom-right
// alignment over cached prefixes) and sparse attention over index lists (MLA form, bf16 and FP8
// latent caches, -1 holes).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/model/config.h"
#include "dsattn/ops/attention.h"
#include "dsattn/ops/latent_fp8.h"
#include "gpu_test_util.h"

namespace dsattn::gpu_test {
namespace {

// ---------------------------------------------------------------------------------------------
// mha_varlen_causal

struct MhaCase {
  const char* name;
  std::int64_t heads, d_qk, d_v;
  std::vector<std::pair<std::int64_t, std::int64_t>> requests;  // (query rows, key rows)
  bool strided;      // v is the second half of [k_nope, v] rows and out a window of a wider tensor
  bool lse = false;  // ask for the log-sum-exp too
};

void PrintTo(const MhaCase& c, std::ostream* os) { *os << c.name; }

class MhaGpu : public GpuParamTest<MhaCase> {};

TEST_P(MhaGpu, MatchesFloat64CausalAttention) {
  const MhaCase c = GetParam();
  const std::int64_t batch = static_cast<std::int64_t>(c.requests.size());
  const std::int64_t H = c.heads, dq = c.d_qk, dv = c.d_v;
  std::vector<std::int32_t> cq{0}, ck{0};
  std::int64_t max_q = 0;
  for (const auto& [nq, nk] : c.requests) {
    cq.push_back(cq.back() + static_cast<std::int32_t>(nq));
    ck.push_back(ck.back() + static_cast<std::int32_t>(nk));
    max_q = std::max(max_q, nq);
  }
  const std::int64_t total_q = cq.back(), total_k = ck.back();
  Tensor cu_q = i32_tensor(cq), cu_k = i32_tensor(ck);

  Tensor q = random_tensor({total_q, H, dq}, DType::bf16, 80, dq, 2.0);
  Tensor k = random_tensor({total_k, H, dq}, DType::bf16, 81, dq, 2.0);
  // As the layer passes it: v is the second half of the kv_b_proj output [k_nope, v] per head.
  const std::int64_t v_off = c.strided ? dq : 0;
  Tensor kv = random_tensor({total_k, H, v_off + dv}, DType::bf16, 82, dv, 1.0);
  const TensorView v = kv.view().slice(2, v_off, v_off + dv);
  const std::int64_t o_pad = c.strided ? 3 : 0;
  Tensor out_backing = poisoned({total_q, H, dv + o_pad}, DType::bf16);
  const TensorView out = out_backing.view().slice(2, o_pad, o_pad + dv);
  const Tensor original = clone(out_backing);
  const float scale = dq == 192
                          ? static_cast<float>(AttentionConfig::deepseek_v32().softmax_scale())
                          : 1.0f / std::sqrt(static_cast<float>(dq));

  // The log-sum-exp too, on the first half of the cases (both kernels' paths): the op must give
  // the same output with and without it.
  const bool with_lse = c.lse;
  Tensor lse_cpu = poisoned({total_q, H}, DType::f32),
         lse_backing = poisoned({total_q, H}, DType::f32);
  const Mirror q_dev(q), k_dev(k), kv_dev(kv), cu_q_dev(cu_q), cu_k_dev(cu_k), out_dev(out_backing),
      lse_dev(lse_backing);
  ops::mha_varlen_causal(q, k, v, cu_q, cu_k, max_q, scale, out,
                         with_lse ? lse_cpu.view() : TensorView{});
  ops::mha_varlen_causal(q_dev.on_gpu(), k_dev.on_gpu(), kv_dev.on_gpu(v), cu_q_dev.on_gpu(),
                         cu_k_dev.on_gpu(), max_q, scale, out_dev.on_gpu(out),
                         with_lse ? lse_dev.on_gpu() : TensorView{});
  const Tensor fetched = out_dev.fetch();
  const Tensor lse_gpu = lse_dev.fetch();

  const std::vector<double> qv = read_doubles(q), kd = read_doubles(k), vd = read_doubles(v);
  std::vector<std::int64_t> request_of(static_cast<std::size_t>(total_q));
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t r = cq[b]; r < cq[b + 1]; ++r) request_of[r] = b;
  }
  std::vector<double> ref(static_cast<std::size_t>(total_q * H * dv));
  std::vector<double> lse_ref(static_cast<std::size_t>(total_q * H));
#pragma omp parallel for schedule(dynamic, 4)
  for (std::int64_t w = 0; w < total_q * H; ++w) {
    const std::int64_t row = w / H, h = w % H, b = request_of[row];
    const std::int64_t nq = cq[b + 1] - cq[b], nk = ck[b + 1] - ck[b], k0 = ck[b];
    const std::int64_t visible = nk - nq + (row - cq[b]) + 1;  // bottom-right alignment
    std::vector<double> logits(static_cast<std::size_t>(visible));
    for (std::int64_t j = 0; j < visible; ++j) {
      double dot = 0;
      for (std::int64_t e = 0; e < dq; ++e) dot += qv[w * dq + e] * kd[((k0 + j) * H + h) * dq + e];
      logits[j] = dot * static_cast<double>(scale);
    }
    lse_ref[w] = softmax_row(
        logits, dv,
        [&](std::size_t j, std::int64_t col) {
          return vd[((k0 + static_cast<std::int64_t>(j)) * H + h) * dv + col];
        },
        &ref[w * dv]);
  }

  const std::vector<double> gpu_out = read_doubles(Mirror::same_view(out, out_backing, fetched));
  EXPECT_TRUE(within_tolerance(gpu_out, read_doubles(out), ref, relative_atol(ref), shape_of(out)));
  EXPECT_TRUE(only_view_written(original, out_backing, out, fetched));
  if (with_lse) {
    SCOPED_TRACE("lse");
    EXPECT_TRUE(within_tolerance(read_doubles(lse_gpu), read_doubles(lse_cpu), lse_ref,
                                 relative_atol(lse_ref), shape_of(lse_cpu.view())));
  } else {
    EXPECT_EQ(std::memcmp(lse_backing.view().data(), lse_gpu.view().data(), lse_gpu.nbytes()), 0)
        << "lse was written though not asked for";
  }
}

const MhaCase kMhaCases[] = {
    // DeepSeek-V3.2's MHA form: 128 heads, q/k 192, v 128. A decode row over a prefix, a fresh
    // prefill, a chunk over a prefix, a request whose keys are all prefix with no new query.
    {"Model_H128_Prefixes", 128, 192, 128, {{1, 257}, {33, 33}, {48, 130}, {0, 4}}, true, true},
    {"Model_H128_Prefill96", 128, 192, 128, {{96, 96}}, false},
    {"Model_H128_DecodeBatch", 128, 192, 128, {{1, 1}, {1, 64}, {1, 300}, {2, 129}}, true},
    // Query and key counts on both sides of 64- and 128-row tile edges, with and without a
    // prefix (fewer heads: the tiling is per head).
    {"Model_H16_TileEdges",
     16,
     192,
     128,
     {{130, 200}, {129, 129}, {65, 65}, {63, 127}, {64, 64}},
     true,
     true},
    // GLM-5's head sizes (q/k 256, v 256) on the wgmma kernel, with the log-sum-exp.
    {"Glm5_H8_Prefixes", 8, 256, 256, {{70, 70}, {5, 130}, {0, 9}, {129, 129}}, true, true},
    // Small odd shapes: head dims that fill no warp, an empty request in the middle.
    {"Odd_H3_13x7", 3, 13, 7, {{3, 9}, {1, 1}, {4, 4}, {6, 11}}, true, true},
    {"Odd_H5_40x24_EmptyRequest", 5, 40, 24, {{2, 2}, {0, 0}, {5, 8}, {7, 30}}, false},
    {"Odd_H2_100x72", 2, 100, 72, {{17, 17}, {9, 50}}, true},
};
INSTANTIATE_TEST_SUITE_P(Shapes, MhaGpu, ::testing::ValuesIn(kMhaCases),
                         [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------------------------
// sparse_mla

struct SparseCase {
  const char* name;
  std::int64_t n, heads, d_qk, d_v, slots, topk;
  bool fp8;              // the 656-byte FP8 latent rows (otherwise bf16 rows of d_qk)
  std::int64_t row_pad;  // extra bytes (FP8) or elements (bf16) per cache row
  std::int64_t out_pad;  // out is a window of a wider tensor
};

void PrintTo(const SparseCase& c, std::ostream* os) { *os << c.name; }

class SparseMlaGpu : public GpuParamTest<SparseCase> {};

// Row t's index list: distinct random slots, then holes by pattern t % 4:
//   0: every entry valid; 1: about a fifth of the entries -1, anywhere; 2: every entry -1 (the
//   output row must be zeros); 3: a valid prefix and a -1 tail (a context shorter than top-k).
std::vector<std::int32_t> index_row(std::int64_t t, std::int64_t topk, std::int64_t slots) {
  std::vector<std::int32_t> all(static_cast<std::size_t>(slots));
  std::iota(all.begin(), all.end(), 0);
  std::mt19937 rng(static_cast<unsigned>(90 + t));
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(static_cast<std::size_t>(topk));
  for (std::int64_t i = 0; i < topk; ++i) {
    const bool hole = (t % 4 == 1 && mix64(static_cast<std::uint64_t>(t * topk + i)) % 5 == 0) ||
                      t % 4 == 2 || (t % 4 == 3 && i >= topk / 3);
    if (hole) all[i] = -1;
  }
  return all;
}

TEST_P(SparseMlaGpu, MatchesFloat64SparseAttention) {
  const SparseCase c = GetParam();
  const std::int64_t H = c.heads, dq = c.d_qk, dv = c.d_v, rope = dq - dv;
  Tensor q = random_tensor({c.n, H, dq}, DType::bf16, 91, dq, 1.0);

  // The cache, and the values its rows hold as the kernels read them.
  Tensor cache_backing;
  TensorView cache;
  std::vector<double> kv;  // [slots, dq]
  if (c.fp8) {
    const std::int64_t bytes = latent_fp8_bytes(dv, rope);
    cache_backing = poisoned({c.slots, bytes + c.row_pad}, DType::u8);
    cache = cache_backing.view().slice(1, 0, bytes);
    Tensor latent = random_tensor({c.slots, dq}, DType::bf16, 92, dq, 1.0);
    ops::quantize_latent_fp8(latent, dv, cache);
    Tensor dequantised = Tensor::empty({c.slots, dq}, DType::bf16);
    ops::dequantize_latent_fp8(cache, dv, dequantised);
    kv = read_doubles(dequantised);
  } else {
    cache_backing = random_tensor({c.slots, dq + c.row_pad}, DType::bf16, 92, dq, 1.0);
    cache = cache_backing.view().slice(1, 0, dq);
    kv = read_doubles(cache);
  }
  Tensor indices = Tensor::empty({c.n, c.topk}, DType::i32);
  for (std::int64_t t = 0; t < c.n; ++t) {
    const std::vector<std::int32_t> row = index_row(t, c.topk, c.slots);
    std::copy(row.begin(), row.end(), indices.ptr<std::int32_t>() + t * c.topk);
  }
  Tensor out_backing = poisoned({c.n, H, dv + c.out_pad}, DType::bf16);
  const TensorView out = out_backing.view().slice(2, c.out_pad, c.out_pad + dv);
  const Tensor original = clone(out_backing);
  const float scale = dq == 576
                          ? static_cast<float>(AttentionConfig::deepseek_v32().softmax_scale())
                          : 1.0f / std::sqrt(static_cast<float>(dq));

  const Mirror q_dev(q), cache_dev(cache_backing), idx_dev(indices), out_dev(out_backing);
  ops::sparse_mla(q, cache, indices, scale, out);
  ops::sparse_mla(q_dev.on_gpu(), cache_dev.on_gpu(cache), idx_dev.on_gpu(), scale,
                  out_dev.on_gpu(out));
  const Tensor fetched = out_dev.fetch();

  const std::vector<double> qv = read_doubles(q);
  std::vector<double> ref(static_cast<std::size_t>(c.n * H * dv));
#pragma omp parallel for schedule(dynamic, 4)
  for (std::int64_t w = 0; w < c.n * H; ++w) {
    const std::int64_t t = w / H;
    std::vector<std::int32_t> slots;
    for (std::int64_t i = 0; i < c.topk; ++i) {
      const std::int32_t s = indices.ptr<std::int32_t>()[t * c.topk + i];
      if (s >= 0) slots.push_back(s);
    }
    std::vector<double> logits(slots.size());
    for (std::size_t j = 0; j < slots.size(); ++j) {
      double dot = 0;
      for (std::int64_t e = 0; e < dq; ++e) dot += qv[w * dq + e] * kv[slots[j] * dq + e];
      logits[j] = dot * static_cast<double>(scale);
    }
    softmax_row(
        logits, dv, [&](std::size_t j, std::int64_t col) { return kv[slots[j] * dq + col]; },
        &ref[w * dv]);
  }

  const std::vector<double> gpu_out = read_doubles(Mirror::same_view(out, out_backing, fetched));
  EXPECT_TRUE(within_tolerance(gpu_out, read_doubles(out), ref, relative_atol(ref), shape_of(out)));
  EXPECT_TRUE(only_view_written(original, out_backing, out, fetched));
  // A row without a valid index is exactly zero.
  for (std::int64_t t = 2; t < c.n; t += 4) {
    for (std::int64_t i = 0; i < H * dv; ++i) {
      ASSERT_EQ(gpu_out[t * H * dv + i], 0.0) << "row " << t << " has no valid index";
    }
  }
}

const SparseCase kSparseCases[] = {
    // DeepSeek-V3.2's MLA form: 128 heads, q 576 = [absorbed q_nope 512, q_pe 64], values 512.
    {"Model_H128_Bf16", 4, 128, 576, 512, 3000, 512, false, 0, 0},
    {"Model_H128_Fp8_StridedRows", 4, 128, 576, 512, 3000, 512, true, 16, 0},
    {"Model_H128_Topk2048_Bf16", 2, 128, 576, 512, 4096, 2048, false, 0, 0},
    {"Model_H128_Topk2048_Fp8", 4, 128, 576, 512, 4096, 2048, true, 0, 0},
    // One and three groups of 64 heads, index lists that end inside a 64-key tile, and an output
    // window whose strides keep 16-byte alignment.
    {"Model_H64_Topk100_Bf16", 6, 64, 576, 512, 500, 100, false, 0, 0},
    {"Model_H192_Topk64_Fp8_OutWindow", 3, 192, 576, 512, 300, 64, true, 0, 8},
    {"Model_H64_Topk2047_Fp8", 4, 64, 576, 512, 3000, 2047, true, 0, 0},
    // Model shapes with an output window of odd strides (no 16-byte alignment).
    {"Model_H128_OddOutWindow_Bf16", 3, 128, 576, 512, 400, 256, false, 8, 3},
    // Several times more items (row x 64 heads) than SMs, so each CTA walks several; the cases
    // above give every CTA one item and never reach the hand-over to the next one (its list,
    // first tile and Q loaded during the last tile, the bf16 tile parity carried across items).
    // The four row patterns make lists of 150, ~120, 0 and 50 keys: 3, 2, 0 and 1 tiles.
    {"Model_H128_ManyRows_Bf16", 272, 128, 576, 512, 3000, 150, false, 0, 0},
    {"Model_H128_ManyRows_Fp8", 272, 128, 576, 512, 3000, 150, true, 0, 0},
    // A tensor-parallel rank's heads (DeepSeek-V3.2's 128 over 4 and 8 GPUs) and a count between
    // groups of 64: the tensor-core kernel runs on queries padded with zero heads.
    {"Rank_H32_Topk512_Fp8", 6, 32, 576, 512, 3000, 512, true, 0, 0},
    {"Rank_H16_Topk2048_Bf16", 4, 16, 576, 512, 4096, 2048, false, 0, 0},
    {"Padded_H96_Topk150_Bf16_OddOutWindow", 9, 96, 576, 512, 400, 150, false, 8, 3},
    // Small odd shapes.
    {"Odd_H3_40x24_Bf16", 9, 3, 40, 24, 50, 13, false, 6, 5},
    {"Small_H2_136x128_Fp8", 5, 2, 136, 128, 40, 20, true, 4, 2},
};
INSTANTIATE_TEST_SUITE_P(Shapes, SparseMlaGpu, ::testing::ValuesIn(kSparseCases),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace dsattn::gpu_test
