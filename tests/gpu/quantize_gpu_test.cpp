// The Hadamard rotation and the FP8 quantisers, bit for bit against the CPU backend: the kernels
// evaluate the same f32 expressions in the same order (the butterflies of the Sylvester-order
// transform; amax, max(amax, 1e-4) / 448, x / scale with IEEE division) and convert with the
// same rounding (round to nearest even, saturating to ±448), so every byte must agree.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/ops/latent_fp8.h"
#include "dsattn/ops/quantize.h"
#include "gpu_test_util.h"

namespace dsattn::gpu_test {
namespace {

using QuantizeGpu = GpuTest;

// Writes `values` over row `row`, columns [col, col + values.size()) of a bf16 host tensor.
void set_row(const Tensor& t, std::int64_t row, std::int64_t col,
             const std::vector<float>& values) {
  bf16* p = t.ptr<bf16>() + row * t.size(1) + col;
  for (std::size_t i = 0; i < values.size(); ++i) p[i] = bf16::from_float(values[i]);
}

// Blocks of 128 that probe the quantiser's corners, written into consecutive rows from `row`
// (each row at least 128 wide, from column `col`):
//   a block of zeros (scale floor 1e-4), tiny values below the floor, a block whose amax is 448
//   (scale exactly 1) holding exact e4m3 rounding midpoints in the normal and subnormal ranges,
//   signed zeros, and a block with a huge outlier.
// Returns the number of rows written.
std::int64_t write_corner_blocks(const Tensor& x, std::int64_t row, std::int64_t col) {
  std::vector<float> zeros(128, 0.0f);
  set_row(x, row, col, zeros);
  std::vector<float> tiny(128);
  for (int i = 0; i < 128; ++i)
    tiny[i] = (i % 2 ? -1.0f : 1.0f) * 5e-7f * static_cast<float>(i);  // amax < 1e-4
  set_row(x, row + 1, col, tiny);
  // amax 448 -> scale 1, so x / scale = x and each midpoint is exactly representable in bf16.
  std::vector<float> midpoints = {448.0f,   -448.0f,  1.0625f,  1.1875f,   -1.0625f,
                                  -1.1875f, 0x1p-10f, 0x3p-10f, -0x1p-10f, -0x3p-10f,
                                  0x5p-10f, 0x7p-11f, 240.0f,   232.0f,    248.0f,
                                  17.0f,    19.0f,    0.0f,     -0.0f};
  midpoints.resize(128, 3.0f);
  for (int i = 19; i < 128; ++i) midpoints[i] = static_cast<float>(i - 60) * 0.3125f;
  set_row(x, row + 2, col, midpoints);
  std::vector<float> outlier(128);
  for (int i = 0; i < 128; ++i)
    outlier[i] = (i == 77) ? -30000.0f : 0.01f * static_cast<float>(i - 64);
  set_row(x, row + 3, col, outlier);
  return 4;
}

// ---------------------------------------------------------------------------------------------
// hadamard_rotate

TEST_F(QuantizeGpu, HadamardMatchesCpuBitForBit) {
  // Rows of 128 inside wider rows (strided), more rows than one launch block holds, and row
  // counts that leave a block partly empty.
  for (const std::int64_t rows : {std::int64_t{1}, std::int64_t{9}, std::int64_t{1000}}) {
    SCOPED_TRACE(fmt::format("{} rows", rows));
    Tensor x_backing = random_tensor({rows, 160}, DType::bf16, 40, rows, 3.0);
    const TensorView x = x_backing.view().slice(1, 16, 144);
    const Mirror x_dev(x_backing);
    ops::hadamard_rotate(x);
    ops::hadamard_rotate(x_dev.on_gpu(x));
    EXPECT_TRUE(same_bytes(x_backing, x_dev.fetch(), "hadamard_rotate x"));
  }
}

// The indexer's layout: q_I [tokens, 64 heads, 128] rotated as [tokens · 64, 128].
TEST_F(QuantizeGpu, HadamardOverHeadsMatchesCpu) {
  Tensor q = random_tensor({50, 64, 128}, DType::bf16, 41, 1, 1.0);
  const TensorView rows = q.view().reshape({50 * 64, 128});
  const Mirror q_dev(q);
  ops::hadamard_rotate(rows);
  ops::hadamard_rotate(q_dev.on_gpu(rows));
  EXPECT_TRUE(same_bytes(q, q_dev.fetch(), "hadamard_rotate q"));
}

// ---------------------------------------------------------------------------------------------
// quantize_fp8_block128

TEST_F(QuantizeGpu, QuantizeBlock128MatchesCpuBitForBit) {
  const std::int64_t rows = 200, n = 512;
  Tensor x = random_tensor({rows, n}, DType::bf16, 42, 1, 5.0);
  // Corner blocks in the first rows, at different block positions.
  write_corner_blocks(x, 0, 0);
  write_corner_blocks(x, 4, 384);
  Tensor q = poisoned({rows, n}, DType::fp8_e4m3);
  Tensor scale = poisoned({rows, n / 128}, DType::f32);
  const Mirror x_dev(x), q_dev(q), scale_dev(scale);
  ops::quantize_fp8_block128(x, q, scale);
  ops::quantize_fp8_block128(x_dev.on_gpu(), q_dev.on_gpu(), scale_dev.on_gpu());
  EXPECT_TRUE(same_bytes(scale, scale_dev.fetch(), "scale"));
  EXPECT_TRUE(same_bytes(q, q_dev.fetch(), "q"));
}

// The indexer-key cache's use: q and scale written straight into 132-byte rows (128 e4m3 codes,
// then the f32 scale), q as u8.
TEST_F(QuantizeGpu, QuantizeBlock128IntoCacheRowsMatchesCpu) {
  const std::int64_t rows = 77, row_bytes = index_key_bytes(128);
  Tensor x = random_tensor({rows, 128}, DType::bf16, 43, 1, 0.05);
  write_corner_blocks(x, 10, 0);
  Tensor cache = poisoned({rows + 3, row_bytes}, DType::u8);
  // Skip the first 3 cache rows, as a scatter into later slots would.
  const TensorView q =
      reinterpret_view(cache, DType::u8, 3 * row_bytes, {rows, 128}, {row_bytes, 1});
  const TensorView s =
      reinterpret_view(cache, DType::f32, 3 * row_bytes + 128, {rows, 1}, {row_bytes / 4, 1});
  const Mirror x_dev(x), cache_dev(cache);
  ops::quantize_fp8_block128(x, q, s);
  ops::quantize_fp8_block128(x_dev.on_gpu(), cache_dev.on_gpu(q), cache_dev.on_gpu(s));
  EXPECT_TRUE(same_bytes(cache, cache_dev.fetch(), "key cache rows"));
}

// Non-finite inputs: NaN is ignored by amax and becomes the e4m3 NaN code; an infinity makes the
// scale infinite. Whatever the contract leaves open, both backends must agree.
TEST_F(QuantizeGpu, QuantizeBlock128NonFiniteInputsMatchCpu) {
  Tensor x = random_tensor({4, 256}, DType::bf16, 44, 1, 2.0);
  x.ptr<bf16>()[5] = bf16::from_float(std::numeric_limits<float>::quiet_NaN());
  x.ptr<bf16>()[256 + 130] = bf16::from_float(std::numeric_limits<float>::infinity());
  x.ptr<bf16>()[512 + 7] = bf16::from_float(-std::numeric_limits<float>::infinity());
  x.ptr<bf16>()[768 + 200] = bf16::from_float(std::numeric_limits<float>::quiet_NaN());
  Tensor q = poisoned({4, 256}, DType::u8);
  Tensor scale = poisoned({4, 2}, DType::f32);
  const Mirror x_dev(x), q_dev(q), scale_dev(scale);
  ops::quantize_fp8_block128(x, q, scale);
  ops::quantize_fp8_block128(x_dev.on_gpu(), q_dev.on_gpu(), scale_dev.on_gpu());
  EXPECT_TRUE(same_bytes(scale, scale_dev.fetch(), "scale"));
  EXPECT_TRUE(same_bytes(q, q_dev.fetch(), "q"));
}

// ---------------------------------------------------------------------------------------------
// quantize_latent_fp8 / dequantize_latent_fp8

struct LatentCase {
  const char* name;
  std::int64_t tokens, kv_lora_rank, rope_dim;
  std::int64_t latent_pad, row_pad;  // strided rows: extra elements / bytes per row
};

void PrintTo(const LatentCase& c, std::ostream* os) { *os << c.name; }

class LatentFp8Gpu : public GpuParamTest<LatentCase> {};

TEST_P(LatentFp8Gpu, QuantizeMatchesCpuBitForBit) {
  const LatentCase c = GetParam();
  const std::int64_t width = c.kv_lora_rank + c.rope_dim;
  const std::int64_t bytes = latent_fp8_bytes(c.kv_lora_rank, c.rope_dim);
  Tensor latent_backing =
      random_tensor({c.tokens, width + c.latent_pad}, DType::bf16, 45, width, 4.0);
  write_corner_blocks(latent_backing, 0, 0);
  const TensorView latent = latent_backing.view().slice(1, 0, width);
  Tensor rows_backing = poisoned({c.tokens, bytes + c.row_pad}, DType::u8);
  const TensorView rows = rows_backing.view().slice(1, 0, bytes);
  const Mirror latent_dev(latent_backing), rows_dev(rows_backing);
  ops::quantize_latent_fp8(latent, c.kv_lora_rank, rows);
  ops::quantize_latent_fp8(latent_dev.on_gpu(latent), c.kv_lora_rank, rows_dev.on_gpu(rows));
  EXPECT_TRUE(same_bytes(rows_backing, rows_dev.fetch(), "latent FP8 rows"));
}

TEST_P(LatentFp8Gpu, DequantizeMatchesCpuBitForBit) {
  const LatentCase c = GetParam();
  const std::int64_t width = c.kv_lora_rank + c.rope_dim;
  const std::int64_t bytes = latent_fp8_bytes(c.kv_lora_rank, c.rope_dim);
  // Rows as the cache holds them (quantised on the CPU), then every e4m3 code replaced by a
  // random non-NaN code so that the whole code range is read.
  Tensor src = random_tensor({c.tokens, width}, DType::bf16, 46, width, 4.0);
  Tensor rows_backing = poisoned({c.tokens, bytes + c.row_pad}, DType::u8);
  const TensorView rows = rows_backing.view().slice(1, 0, bytes);
  ops::quantize_latent_fp8(src, c.kv_lora_rank, rows);
  for (std::int64_t t = 0; t < c.tokens; ++t) {
    std::uint8_t* r = rows.row<std::uint8_t>(t);
    for (std::int64_t j = 0; j < c.kv_lora_rank; ++j) {
      const auto code = static_cast<std::uint8_t>(mix64(static_cast<std::uint64_t>(t * 4096 + j)));
      r[j] = (code & 0x7f) == 0x7f ? std::uint8_t{0x7e} : code;
    }
  }
  Tensor latent_backing = poisoned({c.tokens, width + c.latent_pad}, DType::bf16);
  const TensorView latent = latent_backing.view().slice(1, c.latent_pad, c.latent_pad + width);
  const Mirror rows_dev(rows_backing), latent_dev(latent_backing);
  ops::dequantize_latent_fp8(rows, c.kv_lora_rank, latent);
  ops::dequantize_latent_fp8(rows_dev.on_gpu(rows), c.kv_lora_rank, latent_dev.on_gpu(latent));
  EXPECT_TRUE(same_bytes(latent_backing, latent_dev.fetch(), "dequantised latent"));
}

const LatentCase kLatentCases[] = {
    {"Model512x64", 100, 512, 64, 0, 0},
    {"Model512x64_StridedRows", 37, 512, 64, 24, 16},
    {"Small128x8_StridedRows", 9, 128, 8, 3, 4},
};
INSTANTIATE_TEST_SUITE_P(Shapes, LatentFp8Gpu, ::testing::ValuesIn(kLatentCases),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace dsattn::gpu_test
