// RMSNorm and LayerNorm (float64 rule: the GPU reduces in another order) and RoPE/YaRN (at most
// one bf16 ulp from the CPU: the angle is formed in double on both, but the GPU may fuse the
// rotation's multiply-adds).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <vector>

#include "dsattn/model/config.h"
#include "dsattn/ops/norm.h"
#include "dsattn/ops/rope.h"
#include "gpu_test_util.h"

namespace dsattn::gpu_test {
namespace {

// ---------------------------------------------------------------------------------------------
// rms_norm, layer_norm

struct NormCase {
  const char* name;
  std::int64_t rows, n;
  std::int64_t pad;  // > 0: x and out are column windows of wider tensors (strided rows)
  bool in_place;     // out aliases x
  float mean;        // of x, to exercise LayerNorm's centring
};

void PrintTo(const NormCase& c, std::ostream* os) { *os << c.name; }

class NormGpu : public GpuParamTest<NormCase> {
 protected:
  // Runs `op(x, out)` on the CPU and on the GPU over the same inputs (out aliasing x for the in
  // place cases) and checks the output against `reference(x row, out row, n)` in float64.
  template <typename Op, typename Reference>
  void check(Op op, Reference reference) {
    const NormCase c = GetParam();
    Tensor x_backing = Tensor::empty({c.rows, c.n + c.pad}, DType::bf16);
    fill_uniform(x_backing, 20, static_cast<std::uint64_t>(c.n), 1.5f, c.mean);
    const TensorView x = x_backing.view().slice(1, c.pad, c.pad + c.n);
    Tensor out_backing = poisoned({c.rows, c.n + 2 * c.pad}, DType::bf16);
    const Tensor& out_owner = c.in_place ? x_backing : out_backing;
    const TensorView out = c.in_place ? x : out_backing.view().slice(1, 2 * c.pad, 2 * c.pad + c.n);
    const std::vector<double> xv = read_doubles(x);
    const Tensor original = clone(out_owner);

    const Mirror x_dev(x_backing), out_dev(out_backing);
    const TensorView x_gpu = x_dev.on_gpu(x);
    const TensorView out_gpu = c.in_place ? x_gpu : out_dev.on_gpu(out);
    op(x, out);
    op(x_gpu, out_gpu);
    const Tensor fetched = c.in_place ? x_dev.fetch() : out_dev.fetch();

    std::vector<double> ref(xv.size());
    for (std::int64_t r = 0; r < c.rows; ++r) reference(&xv[r * c.n], &ref[r * c.n], c.n);
    const std::vector<double> gpu_out = read_doubles(Mirror::same_view(out, out_owner, fetched));
    EXPECT_TRUE(
        within_tolerance(gpu_out, read_doubles(out), ref, relative_atol(ref), shape_of(out)));
    EXPECT_TRUE(only_view_written(original, out_owner, out, fetched));
  }
};

TEST_P(NormGpu, RmsNormMatchesFloat64) {
  const std::int64_t n = GetParam().n;
  Tensor w = Tensor::empty({n}, DType::bf16);
  fill_uniform(w, 21, n, 0.2f, 1.0f);
  const Mirror w_dev(w);
  const float eps = 1e-6f;
  check(
      [&](const TensorView& x, const TensorView& out) {
        ops::rms_norm(x, x.device().is_cuda() ? w_dev.on_gpu() : w.view(), eps, out);
      },
      [&](const double* x, double* out, std::int64_t len) {
        double ss = 0;
        for (std::int64_t j = 0; j < len; ++j) ss += x[j] * x[j];
        const double inv = 1.0 / std::sqrt(ss / static_cast<double>(len) + eps);
        for (std::int64_t j = 0; j < len; ++j) {
          out[j] = x[j] * inv * static_cast<double>(w.ptr<bf16>()[j].to_float());
        }
      });
}

TEST_P(NormGpu, LayerNormMatchesFloat64) {
  const std::int64_t n = GetParam().n;
  Tensor w = Tensor::empty({n}, DType::bf16), b = Tensor::empty({n}, DType::bf16);
  fill_uniform(w, 22, n, 0.2f, 1.0f);
  fill_uniform(b, 23, n, 0.1f);
  const Mirror w_dev(w), b_dev(b);
  const float eps = 1e-6f;
  check(
      [&](const TensorView& x, const TensorView& out) {
        const bool g = x.device().is_cuda();
        ops::layer_norm(x, g ? w_dev.on_gpu() : w.view(), g ? b_dev.on_gpu() : b.view(), eps, out);
      },
      [&](const double* x, double* out, std::int64_t len) {
        double mean = 0;
        for (std::int64_t j = 0; j < len; ++j) mean += x[j];
        mean /= static_cast<double>(len);
        double var = 0;
        for (std::int64_t j = 0; j < len; ++j) var += (x[j] - mean) * (x[j] - mean);
        const double inv = 1.0 / std::sqrt(var / static_cast<double>(len) + eps);
        for (std::int64_t j = 0; j < len; ++j) {
          out[j] = (x[j] - mean) * inv * static_cast<double>(w.ptr<bf16>()[j].to_float()) +
                   static_cast<double>(b.ptr<bf16>()[j].to_float());
        }
      });
}

const NormCase kNormCases[] = {
    {"Hidden7168", 48, 7168, 0, false, 0.0f},
    {"KvLora512_StridedRows", 300, 512, 64, false, 0.0f},
    {"QLora1536_InPlace", 257, 1536, 0, true, 0.0f},
    {"Index128_Offset", 500, 128, 0, false, 0.75f},
    {"Odd100_StridedInPlace", 33, 100, 5, true, -0.5f},
};
INSTANTIATE_TEST_SUITE_P(Shapes, NormGpu, ::testing::ValuesIn(kNormCases),
                         [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------------------------
// apply_rope

struct RopeCase {
  const char* name;
  std::int64_t tokens, heads, head_dim, rotary_offset;  // x = [.., rotary_offset, +rotary_dim)
  std::int64_t rotary_dim;
  ops::RopeLayout layout;
  bool custom_table;  // hand-made frequencies with mscale != 1 (otherwise DeepSeek-V3.2's YaRN)
};

void PrintTo(const RopeCase& c, std::ostream* os) { *os << c.name; }

class RopeGpu : public GpuParamTest<RopeCase> {};

// Positions from 0 to beyond YaRN's original 4096 up to the model's 163840, in random order.
std::vector<std::int32_t> rope_positions(std::int64_t tokens) {
  std::vector<std::int32_t> p(static_cast<std::size_t>(tokens));
  for (std::int64_t t = 0; t < tokens; ++t) {
    const std::uint64_t h = mix64(static_cast<std::uint64_t>(t) + 977);
    p[t] = t < 4 ? static_cast<std::int32_t>(t * 4095) : static_cast<std::int32_t>(h % 163840);
  }
  return p;
}

TEST_P(RopeGpu, WithinOneBf16UlpOfCpu) {
  const RopeCase c = GetParam();
  ops::RopeTable table;
  if (c.custom_table) {
    table.inv_freq.resize(static_cast<std::size_t>(c.rotary_dim / 2));
    for (std::size_t i = 0; i < table.inv_freq.size(); ++i) {
      table.inv_freq[i] = std::pow(5000.0, -2.0 * static_cast<double>(i) / c.rotary_dim);
    }
    table.mscale = 1.25;
  } else {
    table = ops::RopeTable::from_config(AttentionConfig::deepseek_v32(), c.rotary_dim);
  }
  Tensor x_backing = random_tensor({c.tokens, c.heads, c.head_dim}, DType::bf16, 30, c.heads, 2.0);
  const TensorView x = x_backing.view().slice(2, c.rotary_offset, c.rotary_offset + c.rotary_dim);
  Tensor positions = i32_tensor(rope_positions(c.tokens));
  const Mirror x_dev(x_backing), pos_dev(positions);  // copied before the CPU rotates x

  ops::apply_rope(x, positions, table, c.layout);
  ops::apply_rope(x_dev.on_gpu(x), pos_dev.on_gpu(), table, c.layout);
  const Tensor fetched = x_dev.fetch();

  // Element by element over the whole tensor: the dims outside the rotary window must be equal,
  // the rotated ones at most one bf16 ulp apart. The one exception is a near-total cancellation
  // (x0·cos ≈ x1·sin): there the f32 rounding of the products, which the GPU may fuse into an
  // FMA, is ~2^-24·|x| absolute and can span several ulps of the tiny result; such elements may
  // differ by up to 2^-22·max|x|.
  const double max_x = max_abs(read_doubles(x_backing)) * table.mscale;
  const auto* cpu = static_cast<const std::uint16_t*>(x_backing.view().data());
  const auto* gpu_bits = static_cast<const std::uint16_t*>(fetched.view().data());
  std::int64_t differing = 0, worst = 0, worst_distance = 0;
  for (std::int64_t i = 0; i < x_backing.numel(); ++i) {
    const float cv = bf16::from_bits(cpu[i]).to_float(),
                gv = bf16::from_bits(gpu_bits[i]).to_float();
    std::int64_t d =
        std::abs(static_cast<std::int64_t>(bf16_ordinal(cpu[i])) - bf16_ordinal(gpu_bits[i]));
    if (!std::isfinite(gv)) {
      d = std::int64_t{1} << 20;
    } else if (d > 1 && std::fabs(static_cast<double>(gv) - cv) <= std::ldexp(max_x, -22)) {
      d = 1;  // the cancellation case above
    }
    if (d != 0) ++differing;
    if (d > worst_distance) {
      worst_distance = d;
      worst = i;
    }
  }
  const auto shape = shape_of(x_backing.view());
  EXPECT_LE(worst_distance, 1) << "the GPU is " << worst_distance << " bf16 ulps from the CPU at "
                               << index_string(worst, shape) << " (cpu "
                               << bf16::from_bits(cpu[worst]).to_float() << ", gpu "
                               << bf16::from_bits(gpu_bits[worst]).to_float() << "); " << differing
                               << " of " << x_backing.numel() << " elements differ";
  // The same formula runs on both backends: differences must stay rare.
  EXPECT_LE(differing, x.numel() / 100) << differing << " elements differ by one ulp";
}

const RopeCase kRopeCases[] = {
    // MLA: q_pe is the last 64 of 192 dims per head, pairs interleaved.
    {"Mla_QPe_Interleaved", 96, 128, 192, 128, 64, ops::RopeLayout::interleaved, false},
    // The shared k_pe: one head of 64 at the end of the 576-wide latent.
    {"Mla_KPe_Interleaved", 300, 1, 576, 512, 64, ops::RopeLayout::interleaved, false},
    // Indexer: the first 64 of 128 dims per head, halves.
    {"Indexer_Halves", 80, 64, 128, 0, 64, ops::RopeLayout::halves, false},
    // The largest table the kernel takes (64 pairs), mscale != 1, both layouts.
    {"Custom128_Halves", 40, 3, 130, 1, 128, ops::RopeLayout::halves, true},
    {"Custom128_Interleaved", 40, 3, 128, 0, 128, ops::RopeLayout::interleaved, true},
};
INSTANTIATE_TEST_SUITE_P(Shapes, RopeGpu, ::testing::ValuesIn(kRopeCases),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace dsattn::gpu_test
