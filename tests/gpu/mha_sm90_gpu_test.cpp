// The sm_90 tensor-core MHA kernels (DeepSeek-V3.2's q/k 192, v 128) against float64 causal
// attention with the CPU backend's error as the yardstick: the op's wgmma kernel and the
// mma.sync kernel kept as its GPU reference, each on the same inputs. The shapes probe both
// tilings: query blocks of 128 rows (two warpgroups of 64 in the wgmma kernel) and key tiles of
// 128 (wgmma) and 32 (mma.sync), so lengths one either side of those, cached prefixes (n_q < n_k,
// bottom-right alignment) that make whole key tiles visible to every row, long requests whose
// softmax runs over many tiles (the wgmma kernel's two-stage ring wraps many times), and strided
// rows as the layer passes them (v a slice of [k_nope, v], q a slice of a wider row, out a window
// at any offset).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "dsattn/core/cuda_runtime.h"
#include "dsattn/model/config.h"
#include "dsattn/ops/attention.h"
#include "dsattn/ops/cuda/kernel_choice.h"
#include "dsattn/ops/cuda/params.h"
#include "gpu_test_util.h"

namespace dsattn::gpu_test {
namespace {

struct Sm90Case {
  const char* name;
  std::int64_t heads;
  std::vector<std::pair<std::int64_t, std::int64_t>> requests;  // (query rows, key rows)
  std::int64_t q_pad, v_off, o_pad;    // q rows [q_pad, q_pad + d_qk) of wider rows, and so on
  std::int64_t d_qk = 192, d_v = 128;  // DeepSeek-V3.2's; GLM-5's are 256 and 256
};

void PrintTo(const Sm90Case& c, std::ostream* os) { *os << c.name; }

class MhaSm90Gpu : public GpuParamTest<Sm90Case> {};

TEST_P(MhaSm90Gpu, MatchesFloat64CausalAttention) {
  const Sm90Case c = GetParam();
  const std::int64_t H = c.heads, d_qk = c.d_qk, d_v = c.d_v;
  // The mma.sync reference kernel has DeepSeek-V3.2's head sizes only.
  const bool with_reference = d_qk == 192 && d_v == 128;
  std::vector<std::int32_t> cq{0}, ck{0};
  std::int64_t max_q = 0;
  for (const auto& [nq, nk] : c.requests) {
    cq.push_back(cq.back() + static_cast<std::int32_t>(nq));
    ck.push_back(ck.back() + static_cast<std::int32_t>(nk));
    max_q = std::max(max_q, nq);
  }
  const std::int64_t total_q = cq.back(), total_k = ck.back();
  Tensor cu_q = i32_tensor(cq), cu_k = i32_tensor(ck);

  Tensor q_backing = random_tensor({total_q, H, c.q_pad + d_qk}, DType::bf16, 60, total_q, 2.0);
  const TensorView q = q_backing.view().slice(2, c.q_pad, c.q_pad + d_qk);
  Tensor k = random_tensor({total_k, H, d_qk}, DType::bf16, 61, total_k, 2.0);
  Tensor kv = random_tensor({total_k, H, c.v_off + d_v}, DType::bf16, 62, total_k, 1.0);
  const TensorView v = kv.view().slice(2, c.v_off, c.v_off + d_v);
  Tensor out_backing = poisoned({total_q, H, c.o_pad + d_v}, DType::bf16);
  const TensorView out = out_backing.view().slice(2, c.o_pad, c.o_pad + d_v);
  const Tensor original = clone(out_backing);
  const float scale = static_cast<float>(
      (d_qk == 192 ? AttentionConfig::deepseek_v32() : AttentionConfig::glm5()).softmax_scale());

  const Mirror q_dev(q_backing), k_dev(k), kv_dev(kv), cu_q_dev(cu_q), cu_k_dev(cu_k),
      out_dev(out_backing), ref_out_dev(out_backing);
  // The shapes must reach the tensor-core kernels, not the generic fallback.
  ops::cuda::MhaParams p{};
  p.q = q_dev.on_gpu(q).data();
  p.k = k_dev.on_gpu().data();
  p.v = kv_dev.on_gpu(v).data();
  p.out = ref_out_dev.on_gpu(out).data();
  p.cu_q = static_cast<const std::int32_t*>(cu_q_dev.on_gpu().data());
  p.cu_k = static_cast<const std::int32_t*>(cu_k_dev.on_gpu().data());
  p.total_q = total_q;
  p.sq0 = q.stride(0), p.sq1 = q.stride(1), p.sk0 = k.view().stride(0), p.sk1 = k.view().stride(1);
  p.sv0 = v.stride(0), p.sv1 = v.stride(1), p.so0 = out.stride(0), p.so1 = out.stride(1);
  p.max_q = max_q;
  p.batch = static_cast<int>(c.requests.size());
  p.heads = static_cast<int>(H);
  p.d_qk = static_cast<int>(d_qk);
  p.d_v = static_cast<int>(d_v);
  p.scale = scale;
  ASSERT_TRUE(ops::cuda::mha_wgmma_sm90_supports(p));
  ASSERT_EQ(ops::cuda::mha_sm90_supports(p), with_reference);

  ops::mha_varlen_causal(q, k, v, cu_q, cu_k, max_q, scale, out);
  ops::mha_varlen_causal(q_dev.on_gpu(q), k_dev.on_gpu(), kv_dev.on_gpu(v), cu_q_dev.on_gpu(),
                         cu_k_dev.on_gpu(), max_q, scale, out_dev.on_gpu(out));
  EXPECT_EQ(ops::cuda::last_kernel("mha_varlen_causal"), "mha_wgmma_sm90");
  const Tensor fetched = out_dev.fetch();
  if (with_reference) {
    ASSERT_EQ(ops::cuda::launch_mha_sm90(p, nullptr), cudaSuccess);
  }
  dsattn::cuda::synchronize();
  const Tensor fetched_ref = ref_out_dev.fetch();

  const std::vector<double> qd = read_doubles(q), kd = read_doubles(k), vd = read_doubles(v);
  std::vector<std::int64_t> request_of(static_cast<std::size_t>(total_q));
  for (std::size_t b = 0; b + 1 < cq.size(); ++b) {
    for (std::int64_t r = cq[b]; r < cq[b + 1]; ++r) request_of[r] = static_cast<std::int64_t>(b);
  }
  std::vector<double> ref(static_cast<std::size_t>(total_q * H * d_v));
#pragma omp parallel for schedule(dynamic, 4)
  for (std::int64_t w = 0; w < total_q * H; ++w) {
    const std::int64_t row = w / H, h = w % H, b = request_of[row];
    const std::int64_t nq = cq[b + 1] - cq[b], nk = ck[b + 1] - ck[b], k0 = ck[b];
    const std::int64_t visible = nk - nq + (row - cq[b]) + 1;
    std::vector<double> logits(static_cast<std::size_t>(visible));
    double mx = -INFINITY;
    for (std::int64_t j = 0; j < visible; ++j) {
      double dot = 0;
      for (std::int64_t e = 0; e < d_qk; ++e) {
        dot += qd[w * d_qk + e] * kd[((k0 + j) * H + h) * d_qk + e];
      }
      logits[j] = dot * static_cast<double>(scale);
      mx = std::max(mx, logits[j]);
    }
    double sum = 0;
    for (double& l : logits) sum += l = std::exp(l - mx);
    for (std::int64_t col = 0; col < d_v; ++col) {
      double acc = 0;
      for (std::int64_t j = 0; j < visible; ++j)
        acc += logits[j] * vd[((k0 + j) * H + h) * d_v + col];
      ref[w * d_v + col] = acc / sum;
    }
  }

  for (const auto& [kernel, result] :
       {std::pair<const char*, const Tensor*>{"mha_wgmma_sm90", &fetched},
        {"mha_sm90 (mma.sync)", &fetched_ref}}) {
    if (result == &fetched_ref && !with_reference) continue;
    SCOPED_TRACE(kernel);
    const std::vector<double> gpu_out = read_doubles(Mirror::same_view(out, out_backing, *result));
    EXPECT_TRUE(
        within_tolerance(gpu_out, read_doubles(out), ref, relative_atol(ref), shape_of(out)));
    EXPECT_TRUE(only_view_written(original, out_backing, out, *result));
  }
}

const Sm90Case kSm90Cases[] = {
    // Lengths either side of the 64-row warpgroup halves, the 128-row query blocks and the 128-
    // and 32-key tiles, prefixes of whole and partial tiles, a request with a prefix but no new
    // query, single rows.
    {"Varlen_H8_TileEdges",
     8,
     {{1, 1},
      {63, 63},
      {24, 64},
      {65, 65},
      {30, 130},
      {200, 200},
      {128, 1000},
      {129, 129},
      {7, 7},
      {1, 300},
      {0, 50},
      {127, 191},
      {256, 256},
      {257, 385},
      {64, 128},
      {100, 383}},
     0,
     0,
     0},
    {"Prefill_H8_1000", 8, {{1000, 1000}}, 0, 0, 0},
    // Many key tiles per row: the online softmax rescales across ~36 tiles.
    {"LongPrefix_H2_700over1600", 2, {{700, 2300}, {5, 2000}}, 0, 0, 0},
    // The layer's layout at full head count: v the second half of [k_nope, v], q inside a wider
    // row, out a 16-byte aligned window and a window at an odd offset.
    {"Model_H128_StridedAligned", 128, {{130, 200}, {64, 64}, {3, 67}}, 64, 128, 8},
    {"Model_H128_OutOddOffset", 128, {{77, 77}, {40, 300}}, 0, 128, 3},
    // GLM-5's head sizes (q/k 256, v 256; 64-key tiles): tile edges, prefixes, many tiles, and
    // the layer's layout at its 64 heads (v the second half of [k_nope 192, v 256] rows).
    {"Glm5_H4_TileEdges",
     4,
     {{1, 1}, {63, 63}, {64, 64}, {65, 65}, {129, 200}, {30, 94}, {0, 20}, {127, 127}, {256, 320}},
     0,
     0,
     0,
     256,
     256},
    {"Glm5_H2_LongPrefix", 2, {{300, 1500}}, 0, 0, 0, 256, 256},
    {"Glm5_H64_Strided", 64, {{100, 164}, {3, 3}}, 64, 192, 8, 256, 256},
};
INSTANTIATE_TEST_SUITE_P(Shapes, MhaSm90Gpu, ::testing::ValuesIn(kSm90Cases),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace dsattn::gpu_test

namespace dsattn::gpu_test {
namespace {

// A NaN or Inf in a value (or a NaN in a key) reaches exactly the rows that see its key: every
// other row equals, bit for bit, its output with a finite number in its place. The bad keys sit
// inside masked (diagonal) tiles of the first and second 128-row blocks and in a tile every row
// of the third block sees whole; on the wgmma kernel (192 / 128 and 256 / 256) and the generic
// one.
class MhaNonFiniteGpu : public GpuTest {};

TEST_F(MhaNonFiniteGpu, NeverReachesRowsThatCannotSeeTheKey) {
  const std::int64_t H = 2, n = 300;
  const std::int32_t bad_keys[] = {70, 131, 150};
  const float bad_values[] = {std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::infinity()};
  for (const auto& [dq, dv] :
       {std::pair<std::int64_t, std::int64_t>{192, 128}, {256, 256}, {48, 32}}) {
    const Tensor q = random_tensor({n, H, dq}, DType::bf16, 211, 1);
    const Tensor cu = i32_tensor({0, static_cast<std::int32_t>(n)});
    const Tensor q_d = q.to(gpu()), cu_d = cu.to(gpu());
    for (const std::int32_t bad : bad_keys) {
      for (int kind = 0; kind < 3; ++kind) {  // NaN value, Inf value, NaN key
        const bool in_value = kind < 2;
        SCOPED_TRACE(fmt::format("d {}/{}, key {}, {}", dq, dv, bad,
                                 kind == 0   ? "NaN value"
                                 : kind == 1 ? "Inf value"
                                             : "NaN key"));
        Tensor k = random_tensor({n, H, dq}, DType::bf16, 211, 2);
        Tensor v = random_tensor({n, H, dv}, DType::bf16, 211, 3);
        Tensor clean = Tensor::empty({n, H, dv}, DType::bf16, gpu());
        Tensor dirty = Tensor::empty({n, H, dv}, DType::bf16, gpu());
        ops::mha_varlen_causal(q_d, k.to(gpu()), v.to(gpu()), cu_d, cu_d, n, 0.1f, clean);
        Tensor& target = in_value ? v : k;
        const std::int64_t width = target.size(2);
        for (std::int64_t h = 0; h < H; ++h) {
          target.ptr<bf16>()[(bad * H + h) * width + 3] = bf16::from_float(bad_values[kind % 2]);
        }
        ops::mha_varlen_causal(q_d, k.to(gpu()), v.to(gpu()), cu_d, cu_d, n, 0.1f, dirty);
        EXPECT_EQ(ops::cuda::last_kernel("mha_varlen_causal"),
                  dq == 48 ? "mha_generic" : "mha_wgmma_sm90");
        const Tensor c = clean.to(Device::cpu()), d = dirty.to(Device::cpu());
        for (std::int64_t i = 0; i < n; ++i) {
          for (std::int64_t e = 0; e < H * dv; ++e) {
            const std::int64_t at = i * H * dv + e;
            const float x = d.ptr<bf16>()[at].to_float();
            if (i < bad) {
              ASSERT_EQ(d.ptr<bf16>()[at].bits, c.ptr<bf16>()[at].bits)
                  << "row " << i << " element " << e << " cannot see key " << bad;
            } else if (!in_value || e % dv == 3) {
              // NaN spoils the sum (a NaN key, the softmax of its head); +Inf times a positive
              // probability stays +Inf.
              if (kind == 1) {
                ASSERT_TRUE(std::isinf(x) && x > 0) << "row " << i << " element " << e << " " << x;
              } else {
                ASSERT_TRUE(std::isnan(x)) << "row " << i << " element " << e << " " << x;
              }
            } else {
              ASSERT_EQ(d.ptr<bf16>()[at].bits, c.ptr<bf16>()[at].bits)
                  << "row " << i << " element " << e << " (other column)";
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace dsattn::gpu_test
