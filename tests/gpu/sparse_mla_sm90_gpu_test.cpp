// The sm_90 tensor-core sparse MLA kernels (DeepSeek-V3.2's absorbed shapes, bf16 and FP8 caches)
// against float64 attention over each row's valid index entries, with the CPU backend's error as
// the yardstick: the op's wgmma kernel (output and log-sum-exp) and, where it takes the shape, the
// mma.sync kernel kept as its GPU reference, on the same inputs. The index lists probe what the
// wgmma kernel does per block of 64 entries and per pair of blocks: lists of whole pairs, of an
// odd block count and ending inside a block; -1 holes anywhere, a -1 tail (a short context: its
// blocks are not visited), leading holes, lists with no valid entry, and entries that name no
// cached row (past the cache or negative other than -1), which count as unused. Head counts: the
// model's 128, one group of 64, and a tensor-parallel rank's 32 and 16 and a 96 with a partial
// last group, which the wgmma kernel runs without padded copies.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/core/cuda_runtime.h"
#include "dsattn/model/config.h"
#include "dsattn/ops/attention.h"
#include "dsattn/ops/cuda/kernel_choice.h"
#include "dsattn/ops/cuda/params.h"
#include "dsattn/ops/latent_fp8.h"
#include "gpu_test_util.h"

namespace dsattn::gpu_test {
namespace {

constexpr std::int64_t kDqk = 576, kDv = 512;

struct SparseSm90Case {
  const char* name;
  std::int64_t n, heads, slots, topk;
  std::int64_t q_pad;    // q rows are windows of wider rows
  std::int64_t out_pad;  // out is a window of a wider tensor (odd: no 16-byte alignment)
  bool fp8 = false;      // the 656-byte FP8 latent rows (otherwise bf16 rows of 576)
};

void PrintTo(const SparseSm90Case& c, std::ostream* os) { *os << c.name; }

class SparseMlaSm90Gpu : public GpuParamTest<SparseSm90Case> {};

// Row t's index list: distinct random slots, then by pattern t % 6:
//   0: every entry valid; 1: about a fifth -1, anywhere; 2: every entry -1; 3: a valid prefix of
//   a third and a -1 tail; 4: about a fifth of the entries name no cached row (slots + 7, a huge
//   slot, -5); 5: one valid entry, the last, after -1s.
std::vector<std::int32_t> index_row(std::int64_t t, std::int64_t topk, std::int64_t slots) {
  std::vector<std::int32_t> all(static_cast<std::size_t>(slots));
  std::iota(all.begin(), all.end(), 0);
  std::mt19937 rng(static_cast<unsigned>(700 + t));
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(static_cast<std::size_t>(topk));
  for (std::int64_t i = 0; i < topk; ++i) {
    const std::uint64_t h = mix64(static_cast<std::uint64_t>(t * topk + i));
    switch (t % 6) {
      case 1:
        if (h % 5 == 0) all[i] = -1;
        break;
      case 2:
        all[i] = -1;
        break;
      case 3:
        if (i >= topk / 3) all[i] = -1;
        break;
      case 4:
        if (h % 5 == 0) {
          const std::int32_t bad[3] = {static_cast<std::int32_t>(slots + 7), 0x7ffffff0, -5};
          all[i] = bad[(h / 5) % 3];
        }
        break;
      case 5:
        if (i + 1 < topk) all[i] = -1;
        break;
      default:
        break;
    }
  }
  return all;
}

TEST_P(SparseMlaSm90Gpu, MatchesFloat64SparseAttention) {
  const SparseSm90Case c = GetParam();
  const std::int64_t H = c.heads;
  Tensor q_backing = random_tensor({c.n, H, c.q_pad + kDqk}, DType::bf16, 701, kDqk, 1.0);
  const TensorView q = q_backing.view().slice(2, c.q_pad, c.q_pad + kDqk);
  // The cache, and the values its rows hold as the kernels read them (FP8: dequantised to bf16).
  Tensor latent = random_tensor({c.slots, kDqk}, DType::bf16, 702, kDqk, 1.0);
  Tensor cache = latent;
  if (c.fp8) {
    cache = Tensor::empty({c.slots, latent_fp8_bytes(kDv, kDqk - kDv)}, DType::u8);
    ops::quantize_latent_fp8(latent, kDv, cache);
    ops::dequantize_latent_fp8(cache, kDv, latent);
  }
  Tensor indices = Tensor::empty({c.n, c.topk}, DType::i32);
  // The CPU backend refuses entries outside [-1, slots); for it they become -1, their meaning.
  Tensor cpu_indices = Tensor::empty({c.n, c.topk}, DType::i32);
  for (std::int64_t t = 0; t < c.n; ++t) {
    const std::vector<std::int32_t> row = index_row(t, c.topk, c.slots);
    std::copy(row.begin(), row.end(), indices.ptr<std::int32_t>() + t * c.topk);
    for (std::int64_t i = 0; i < c.topk; ++i) {
      cpu_indices.ptr<std::int32_t>()[t * c.topk + i] =
          row[i] >= 0 && row[i] < c.slots ? row[i] : -1;
    }
  }
  Tensor out_backing = poisoned({c.n, H, c.out_pad + kDv}, DType::bf16);
  const TensorView out = out_backing.view().slice(2, c.out_pad, c.out_pad + kDv);
  const Tensor original = clone(out_backing);
  Tensor lse = poisoned({c.n, H}, DType::f32);
  const float scale = static_cast<float>(AttentionConfig::deepseek_v32().softmax_scale());

  const Mirror q_dev(q_backing), cache_dev(cache), idx_dev(indices), out_dev(out_backing),
      ref_out_dev(out_backing), lse_dev(lse), whole_out_dev(out_backing), whole_lse_dev(lse);
  ops::sparse_mla(q, cache, cpu_indices, scale, out, lse);
  ops::sparse_mla(q_dev.on_gpu(q), cache_dev.on_gpu(), idx_dev.on_gpu(), scale, out_dev.on_gpu(out),
                  lse_dev.on_gpu());
  EXPECT_EQ(ops::cuda::last_kernel("sparse_mla"), "sparse_mla_wgmma_sm90");
  const Tensor fetched = out_dev.fetch(), fetched_lse = lse_dev.fetch();

  // The mma.sync kernel, launched directly on the same inputs (it takes whole groups of 64 heads).
  ops::cuda::SparseMlaParams p{};
  p.q = q_dev.on_gpu(q).data();
  p.kv = cache_dev.on_gpu().data();
  p.indices = static_cast<const std::int32_t*>(idx_dev.on_gpu().data());
  p.out = ref_out_dev.on_gpu(out).data();
  p.n = c.n;
  p.slots = c.slots;
  p.sq0 = q.stride(0), p.sq1 = q.stride(1);
  p.kv_row_bytes = c.fp8 ? latent_fp8_bytes(kDv, kDqk - kDv) : kDqk * 2;
  p.fp8 = c.fp8;
  p.stride_indices = c.topk;
  p.so0 = out.stride(0), p.so1 = out.stride(1);
  p.heads = static_cast<int>(H);
  p.d_qk = static_cast<int>(kDqk);
  p.d_v = static_cast<int>(kDv);
  p.topk = static_cast<int>(c.topk);
  p.scale = scale;
  ASSERT_TRUE(ops::cuda::sparse_mla_wgmma_sm90_supports(p));
  // The op splits the entries of a small batch (split-K and the combine kernel); the wgmma kernel
  // launched whole is checked as well, so that both forms are covered on every shape.
  const int splits = ops::cuda::sparse_mla_wgmma_splits(p);
  {
    ops::cuda::SparseMlaParams w = p;
    w.out = whole_out_dev.on_gpu(out).data();
    w.lse = static_cast<float*>(whole_lse_dev.on_gpu().data());
    w.s_lse = H;
    ASSERT_EQ(ops::cuda::launch_sparse_mla_wgmma_sm90(w, nullptr), cudaSuccess);
  }
  const bool with_reference = ops::cuda::sparse_mla_sm90_supports(p);
  if (with_reference) {
    ASSERT_EQ(ops::cuda::launch_sparse_mla_sm90(p, nullptr), cudaSuccess);
  }
  dsattn::cuda::synchronize();
  const Tensor fetched_ref = ref_out_dev.fetch();
  const Tensor fetched_whole = whole_out_dev.fetch(), fetched_whole_lse = whole_lse_dev.fetch();

  const std::vector<double> qv = read_doubles(q), kv = read_doubles(latent);
  std::vector<double> ref(static_cast<std::size_t>(c.n * H * kDv)),
      lse_ref(static_cast<std::size_t>(c.n * H));
#pragma omp parallel for schedule(dynamic, 4)
  for (std::int64_t w = 0; w < c.n * H; ++w) {
    const std::int64_t t = w / H;
    std::vector<std::int32_t> slots;
    for (std::int64_t i = 0; i < c.topk; ++i) {
      const std::int32_t s = cpu_indices.ptr<std::int32_t>()[t * c.topk + i];
      if (s >= 0) slots.push_back(s);
    }
    std::vector<double> logits(slots.size());
    for (std::size_t j = 0; j < slots.size(); ++j) {
      double dot = 0;
      for (std::int64_t e = 0; e < kDqk; ++e) dot += qv[w * kDqk + e] * kv[slots[j] * kDqk + e];
      logits[j] = dot * static_cast<double>(scale);
    }
    lse_ref[w] = softmax_row(
        logits, kDv, [&](std::size_t j, std::int64_t col) { return kv[slots[j] * kDqk + col]; },
        &ref[w * kDv]);
  }

  const std::string op_form =
      splits > 1 ? fmt::format("sparse_mla_wgmma_sm90 in {} splits", splits) : "the op's";
  for (const auto& [kernel, result] :
       {std::pair<const char*, const Tensor*>{op_form.c_str(), &fetched},
        {"sparse_mla_wgmma_sm90 whole", &fetched_whole},
        {"sparse_mla_sm90 (mma.sync)", &fetched_ref}}) {
    if (result == &fetched_ref && !with_reference) continue;
    SCOPED_TRACE(kernel);
    const std::vector<double> gpu_out = read_doubles(Mirror::same_view(out, out_backing, *result));
    EXPECT_TRUE(
        within_tolerance(gpu_out, read_doubles(out), ref, relative_atol(ref), shape_of(out)));
    EXPECT_TRUE(only_view_written(original, out_backing, out, *result));
    // A row without a valid entry is exactly zero.
    for (std::int64_t t = 2; t < c.n; t += 6) {
      for (std::int64_t i = 0; i < H * kDv; ++i) {
        ASSERT_EQ(gpu_out[t * H * kDv + i], 0.0) << "row " << t << " has no valid index";
      }
    }
  }
  // The log-sum-exp: -inf exactly where a row has no valid entry, else within the rule with a
  // small absolute floor (it is a sum of f32 exponentials, not rounded to bf16).
  for (const Tensor* l : {&fetched_lse, &fetched_whole_lse}) {
    EXPECT_TRUE(within_tolerance(read_doubles(*l), read_doubles(lse), lse_ref, 1e-4, shape_of(lse)))
        << (l == &fetched_lse ? op_form : std::string("whole"));
  }

  // topk_length: row t reads its first lengths[t] entries, exactly as the same lists cut there
  // with -1 (bit for bit: the same blocks, the same products). Lengths span 0 ... top-k, some
  // past top-k (clamped on the GPU).
  std::vector<std::int32_t> lengths(static_cast<std::size_t>(c.n));
  Tensor cut = clone(indices);
  for (std::int64_t t = 0; t < c.n; ++t) {
    lengths[t] = static_cast<std::int32_t>((t * 7919) % (c.topk + 1) + (t % 5 == 4 ? c.topk : 0));
    for (std::int64_t i = std::min<std::int64_t>(lengths[t], c.topk); i < c.topk; ++i) {
      cut.ptr<std::int32_t>()[t * c.topk + i] = -1;
    }
  }
  const Mirror len_dev(i32_tensor(lengths)), cut_dev(cut), cut_out_dev(out_backing),
      len_out_dev(out_backing), cut_lse_dev(lse), len_lse_dev(lse);
  ops::sparse_mla(q_dev.on_gpu(q), cache_dev.on_gpu(), idx_dev.on_gpu(), scale,
                  len_out_dev.on_gpu(out), len_lse_dev.on_gpu(), len_dev.on_gpu());
  EXPECT_EQ(ops::cuda::last_kernel("sparse_mla"), "sparse_mla_wgmma_sm90");
  ops::sparse_mla(q_dev.on_gpu(q), cache_dev.on_gpu(), cut_dev.on_gpu(), scale,
                  cut_out_dev.on_gpu(out), cut_lse_dev.on_gpu());
  EXPECT_TRUE(same_bytes(cut_out_dev.fetch(), len_out_dev.fetch(), "out"));
  EXPECT_TRUE(same_bytes(cut_lse_dev.fetch(), len_lse_dev.fetch(), "lse"));
}

const SparseSm90Case kCases[] = {
    // name, rows, heads, cache slots, top-k, q pad, out pad
    // The model's shape: whole pairs of blocks, every pattern.
    {"Model_H128_Topk2048", 6, 128, 5000, 2048, 0, 0},
    // An odd block count (3) and a list ending inside a block; q inside wider rows, an aligned
    // output window.
    {"Model_H128_Topk150_Windows", 12, 128, 3000, 150, 64, 8},
    {"Group_H64_Topk100", 6, 64, 500, 100, 0, 0},
    // Fewer heads than a group, and a partial last group; an output window at an odd offset.
    {"Rank_H32_Topk512", 6, 32, 3000, 512, 0, 0},
    {"Rank_H16_Topk2048", 6, 16, 4096, 2048, 0, 0},
    {"Partial_H96_Topk200_OddOutWindow", 12, 96, 400, 200, 0, 3},
    // More CTAs than the GPU runs at once.
    {"Model_H128_ManyRows", 300, 128, 3000, 128, 0, 0},
    // The FP8 cache (dequantised on the way into shared memory): the model's shape, an odd block
    // count with windows, a rank's heads and a partial group.
    {"Fp8_H128_Topk2048", 6, 128, 5000, 2048, 0, 0, true},
    {"Fp8_H128_Topk150_Windows", 12, 128, 3000, 150, 64, 8, true},
    {"Fp8_Rank_H16_Topk512", 6, 16, 3000, 512, 0, 0, true},
    {"Fp8_Partial_H96_Topk200_OddOutWindow", 12, 96, 400, 200, 0, 3, true},
    {"Fp8_H128_ManyRows", 300, 128, 3000, 128, 0, 0, true},
};
INSTANTIATE_TEST_SUITE_P(Shapes, SparseMlaSm90Gpu, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace dsattn::gpu_test

namespace dsattn::gpu_test {
namespace {

// A NaN or Inf in a cached row reaches exactly the query rows that select that row: every other
// row equals, bit for bit, its output with finite values in its place. Bad values in a value
// column (c_kv, read by both products) and in the rope part (keys only); bf16 and FP8 caches; a
// batch the op splits (split-K and its combine) and one it runs whole, on the wgmma kernel.
class SparseMlaNonFiniteGpu : public GpuTest {};

TEST_F(SparseMlaNonFiniteGpu, NeverReachesRowsThatDoNotSelectTheRow) {
  const std::int64_t H = 64, slots = 600, topk = 512, bad = 333;
  const float scale = static_cast<float>(AttentionConfig::deepseek_v32().softmax_scale());
  for (const bool fp8 : {false, true}) {
    for (const std::int64_t n : {std::int64_t{6}, std::int64_t{300}}) {
      for (int kind = 0; kind < 3; ++kind) {  // NaN in c_kv, Inf in c_kv, NaN in k_pe
        SCOPED_TRACE(fmt::format("{} cache, {} rows, {}", fp8 ? "fp8" : "bf16", n,
                                 kind == 0   ? "NaN value"
                                 : kind == 1 ? "Inf value"
                                             : "NaN rope"));
        const Tensor q = random_tensor({n, H, kDqk}, DType::bf16, 731, 1, 1.0);
        Tensor latent = random_tensor({slots, kDqk}, DType::bf16, 731, 2, 1.0);
        // Rows select every other row of the cache from an offset, so that half of them see the
        // bad row (sorted lists, as the top-k gives them).
        Tensor indices = Tensor::empty({n, topk}, DType::i32);
        std::vector<bool> sees(static_cast<std::size_t>(n));
        for (std::int64_t t = 0; t < n; ++t) {
          const std::int64_t first = t % 2 + (t % 7) * 10;
          for (std::int64_t i = 0; i < topk; ++i) {
            const std::int64_t s = first + 2 * i;
            indices.ptr<std::int32_t>()[t * topk + i] =
                s < slots ? static_cast<std::int32_t>(s) : -1;
            if (s == bad) sees[t] = true;
          }
        }
        const auto run = [&](const Tensor& rows) {
          Tensor cache = rows;
          if (fp8) {
            cache = Tensor::empty({slots, latent_fp8_bytes(kDv, kDqk - kDv)}, DType::u8);
            ops::quantize_latent_fp8(rows, kDv, cache);
          }
          Tensor out = poisoned({n, H, kDv}, DType::bf16).to(gpu());
          ops::sparse_mla(q.to(gpu()), cache.to(gpu()), indices.to(gpu()), scale, out);
          EXPECT_EQ(ops::cuda::last_kernel("sparse_mla"), "sparse_mla_wgmma_sm90");
          return out.to(Device::cpu());
        };
        const Tensor clean = run(latent);
        const float x = kind == 1 ? std::numeric_limits<float>::infinity()
                                  : std::numeric_limits<float>::quiet_NaN();
        const std::int64_t column = kind == 2 ? kDv + 5 : 3;
        latent.ptr<bf16>()[bad * kDqk + column] = bf16::from_float(x);
        const Tensor dirty = run(latent);
        std::int64_t seen = 0;
        for (std::int64_t t = 0; t < n; ++t) {
          seen += sees[t];
          for (std::int64_t e = 0; e < H * kDv; ++e) {
            const std::int64_t at = t * H * kDv + e;
            const float y = dirty.ptr<bf16>()[at].to_float();
            if (!sees[t]) {
              ASSERT_EQ(dirty.ptr<bf16>()[at].bits, clean.ptr<bf16>()[at].bits)
                  << "row " << t << " element " << e << " does not select cache row " << bad;
            } else if (kind != 1 || e % kDv == column) {
              // c_kv is part of the key as well as the value, so a NaN there (or in k_pe) spoils
              // every head's scores: the whole row. An Inf key entry gives each head a score of
              // +/-Inf: NaN after the max subtraction, or probability 0 times the Inf value;
              // either way its value column is not finite.
              ASSERT_TRUE(!std::isfinite(y)) << "row " << t << " element " << e << " " << y;
            }
          }
        }
        ASSERT_GT(seen, 0);
        ASSERT_LT(seen, n);
      }
    }
  }
}

}  // namespace
}  // namespace dsattn::gpu_test
