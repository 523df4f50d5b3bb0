// GPU tests: every CUDA op against the CPU backend (the oracle), on the same seeded inputs.
//
// How to run (a build with the CUDA backend, on a machine with an sm_90 GPU):
//   cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
//   cmake --build build --target gpu_tests
//   ctest --test-dir build -L gpu --output-on-failure
// (or build/tests/gpu_tests --gtest_filter=... for one test). Without a usable GPU every test
// skips and the binary still exits 0.
//
// The pattern of each test: random inputs on the host, the CPU op, the same inputs copied to the
// GPU, GPU outputs poisoned first (a poisoned host tensor copied over), the CUDA op, the result
// copied back and compared. Ops that are exact by construction (copies, gathers, the Hadamard
// butterflies, FP8 quantisation, top-k) must match the CPU bit for bit, including the bytes
// around a strided output window. Floating-point ops use FlashAttention's rule against a float64
// reference: max|gpu - ref| <= 2 · max|cpu - ref| + atol, NaN and Inf never pass.
#pragma once

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dsattn/core/cuda_runtime.h"
#include "dsattn/core/dtype.h"
#include "dsattn/core/error.h"
#include "dsattn/core/random.h"
#include "dsattn/core/tensor.h"
#include "ops/op_test_util.h"

namespace dsattn::gpu_test {

// Host-side helpers shared with the CPU op tests.
using ::dsattn::test::decode_e4m3;
using ::dsattn::test::element_offsets;
using ::dsattn::test::i32_tensor;
using ::dsattn::test::index_string;
using ::dsattn::test::page_major_copy;
using ::dsattn::test::read_doubles;
using ::dsattn::test::read_i32;
using ::dsattn::test::strided_view;

// Every GPU test derives from this: it skips when no GPU can be used (CI, a build machine) and
// checks after each test that no asynchronous CUDA error is pending.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (dsattn::cuda::device_count() == 0) GTEST_SKIP() << "needs a CUDA GPU (sm_90)";
  }
  void TearDown() override {
    if (dsattn::cuda::device_count() > 0) dsattn::cuda::synchronize();
  }
};

template <typename Param>
class GpuParamTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    if (dsattn::cuda::device_count() == 0) GTEST_SKIP() << "needs a CUDA GPU (sm_90)";
  }
  void TearDown() override {
    if (dsattn::cuda::device_count() > 0) dsattn::cuda::synchronize();
  }
};

inline Device gpu() { return Device::cuda(0); }

// ---------------------------------------------------------------------------------------------
// Host tensors

inline constexpr std::uint16_t kBf16Poison = 0x7fc0;     // a quiet bf16 NaN
inline constexpr std::uint32_t kF32Poison = 0x7fc00bad;  // a quiet f32 NaN with a payload
inline constexpr std::int32_t kI32Poison = 0x7f7f7f7f;   // no valid index or slot
inline constexpr std::uint8_t kBytePoison = 0x7f;        // e4m3 NaN

// Overwrites every byte of a host tensor with its dtype's poison: a value no op may leave behind.
inline void poison(const Tensor& t) {
  const TensorView& v = t.view();
  const std::int64_t n = v.numel();
  switch (v.dtype()) {
    case DType::f32: {
      auto* p = static_cast<std::uint32_t*>(v.data());
      std::fill(p, p + n, kF32Poison);
      break;
    }
    case DType::bf16: {
      auto* p = static_cast<std::uint16_t*>(v.data());
      std::fill(p, p + n, kBf16Poison);
      break;
    }
    case DType::i32: {
      auto* p = static_cast<std::int32_t*>(v.data());
      std::fill(p, p + n, kI32Poison);
      break;
    }
    case DType::u8:
    case DType::fp8_e4m3: {
      auto* p = static_cast<std::uint8_t*>(v.data());
      std::fill(p, p + n, kBytePoison);
      break;
    }
  }
}

inline Tensor poisoned(std::initializer_list<std::int64_t> shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  poison(t);
  return t;
}

// A host tensor of the given shape filled with uniform values in [-range, range) (bf16 or f32).
inline Tensor random_tensor(std::initializer_list<std::int64_t> shape, DType dtype,
                            std::uint64_t seed, std::uint64_t stream, double range = 1.0) {
  Tensor t = Tensor::empty(shape, dtype);
  fill_uniform(t, seed, stream, static_cast<float>(range / std::sqrt(3.0)));
  return t;
}

// Every byte of a host tensor drawn at random (any dtype; f32 may hold NaN payloads, which copies
// must carry unchanged).
inline void fill_random_bytes(const Tensor& t, std::uint64_t seed) {
  auto* p = static_cast<std::uint8_t*>(t.view().data());
  for (std::size_t i = 0; i < t.nbytes(); ++i) {
    p[i] = static_cast<std::uint8_t>(mix64(seed * 0x9e3779b97f4a7c15ull + i) >> 32);
  }
}

// t's memory from `byte_offset` on, read as `dtype` with the given shape and strides (in elements
// of `dtype`): the f32 scales inside a byte row of a cache, say.
inline TensorView reinterpret_view(const TensorView& t, DType dtype, std::int64_t byte_offset,
                                   std::initializer_list<std::int64_t> shape,
                                   std::initializer_list<std::int64_t> strides) {
  return TensorView(static_cast<char*>(t.data()) + byte_offset, dtype, t.device(),
                    std::span<const std::int64_t>(shape.begin(), shape.size()),
                    std::span<const std::int64_t>(strides.begin(), strides.size()));
}

// ---------------------------------------------------------------------------------------------
// Host <-> GPU

// A host tensor and a copy of it on the GPU. Views of the host tensor (slices, transposes,
// reinterpretations) are carried over to the copy by byte offset, so the same strided windows
// can be handed to the CPU and the CUDA op.
struct Mirror {
  Tensor host, dev;

  explicit Mirror(Tensor h) : host(std::move(h)), dev(host.to(gpu())) {}

  // `v`, a view into host memory, re-based onto the GPU copy.
  TensorView on_gpu(const TensorView& v) const {
    const std::ptrdiff_t offset =
        static_cast<const char*>(v.data()) - static_cast<const char*>(host.view().data());
    if (offset < 0 || static_cast<std::size_t>(offset) >= std::max<std::size_t>(host.nbytes(), 1)) {
      fail("Mirror::on_gpu: the view does not point into the host tensor");
    }
    return TensorView(static_cast<char*>(dev.view().data()) + offset, v.dtype(), gpu(), v.shape(),
                      v.strides());
  }
  const TensorView& on_gpu() const { return dev.view(); }

  // The GPU copy brought back to the host (waits for the GPU).
  Tensor fetch() const { return dev.to(Device::cpu()); }
  // `v` (a view into host) read out of a fetched copy of the GPU memory.
  static TensorView same_view(const TensorView& v, const Tensor& host, const Tensor& fetched) {
    const std::ptrdiff_t offset =
        static_cast<const char*>(v.data()) - static_cast<const char*>(host.view().data());
    return TensorView(static_cast<char*>(fetched.view().data()) + offset, v.dtype(), Device::cpu(),
                      v.shape(), v.strides());
  }
};

// ---------------------------------------------------------------------------------------------
// Comparisons

inline std::vector<std::int64_t> shape_of(const TensorView& v) {
  return {v.shape().begin(), v.shape().end()};
}

// Two host tensors of equal size hold the same bytes; on failure names the first differing
// element (in elements of `a`'s dtype) and how many differ.
inline ::testing::AssertionResult same_bytes(const Tensor& a, const Tensor& b,
                                             std::string_view what) {
  if (a.nbytes() != b.nbytes()) {
    return ::testing::AssertionFailure()
           << what << ": sizes differ, " << a.nbytes() << " and " << b.nbytes() << " bytes";
  }
  const auto* pa = static_cast<const std::uint8_t*>(a.view().data());
  const auto* pb = static_cast<const std::uint8_t*>(b.view().data());
  const std::size_t es = dtype_size(a.dtype());
  std::size_t first = a.nbytes(), count = 0;
  for (std::size_t i = 0; i < a.nbytes(); i += es) {
    if (std::memcmp(pa + i, pb + i, es) != 0) {
      if (first == a.nbytes()) first = i;
      ++count;
    }
  }
  if (count == 0) return ::testing::AssertionSuccess();
  const auto shape = shape_of(a.view());
  auto value = [&](const std::uint8_t* p) -> std::string {
    switch (a.dtype()) {
      case DType::f32: {
        float f;
        std::memcpy(&f, p, 4);
        return fmt::format("{}", f);
      }
      case DType::bf16: {
        std::uint16_t u;
        std::memcpy(&u, p, 2);
        return fmt::format("{} (0x{:04x})", bf16::from_bits(u).to_float(), u);
      }
      case DType::i32: {
        std::int32_t i;
        std::memcpy(&i, p, 4);
        return fmt::format("{}", i);
      }
      default:
        return fmt::format("0x{:02x}", *p);
    }
  };
  return ::testing::AssertionFailure()
         << what << ": " << count << " of " << a.nbytes() / es << " elements differ; first at "
         << index_string(static_cast<std::int64_t>(first / es), shape) << ": cpu "
         << value(pa + first) << ", gpu " << value(pb + first);
}

// FlashAttention's rule: max|gpu - ref| <= 2 · max|cpu - ref| + atol, where cpu is the CPU
// backend's result on the same inputs. A non-finite reference (masked -inf) must be reproduced
// exactly by both; anywhere else NaN or Inf fails. Reports the worst index.
inline ::testing::AssertionResult within_tolerance(std::span<const double> gpu_out,
                                                   std::span<const double> cpu_out,
                                                   std::span<const double> ref, double atol,
                                                   std::span<const std::int64_t> shape = {}) {
  if (gpu_out.size() != ref.size() || cpu_out.size() != ref.size()) {
    return ::testing::AssertionFailure() << "size mismatch: gpu " << gpu_out.size() << ", cpu "
                                         << cpu_out.size() << ", ref " << ref.size();
  }
  double gpu_err = 0, cpu_err = 0, max_ref = 0;
  std::size_t worst = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const std::string at = index_string(static_cast<std::int64_t>(i), shape);
    if (!std::isfinite(ref[i])) {
      if (!(gpu_out[i] == ref[i]) || !(cpu_out[i] == ref[i])) {
        return ::testing::AssertionFailure()
               << "at " << at << " the reference is " << ref[i] << " but gpu gives " << gpu_out[i]
               << " and cpu " << cpu_out[i];
      }
      continue;
    }
    max_ref = std::max(max_ref, std::fabs(ref[i]));
    if (!std::isfinite(gpu_out[i])) {
      return ::testing::AssertionFailure()
             << "gpu" << at << " = " << gpu_out[i] << " is not finite (reference " << ref[i]
             << "): unwritten or overflowed";
    }
    if (!std::isfinite(cpu_out[i])) {
      return ::testing::AssertionFailure() << "cpu" << at << " = " << cpu_out[i]
                                           << " is not finite: the test's inputs are broken";
    }
    const double e = std::fabs(gpu_out[i] - ref[i]);
    if (e > gpu_err) {
      gpu_err = e;
      worst = i;
    }
    cpu_err = std::max(cpu_err, std::fabs(cpu_out[i] - ref[i]));
  }
  const double bound = 2.0 * cpu_err + atol;
  std::ostringstream msg;
  msg << "max|gpu - ref| = " << gpu_err << " at "
      << index_string(static_cast<std::int64_t>(worst), shape) << " (gpu "
      << (ref.empty() ? 0.0 : gpu_out[worst]) << ", cpu " << (ref.empty() ? 0.0 : cpu_out[worst])
      << ", ref " << (ref.empty() ? 0.0 : ref[worst]) << "); max|cpu - ref| = " << cpu_err
      << ", atol " << atol << ", bound " << bound << ", max|ref| = " << max_ref;
  if (gpu_err <= bound) return ::testing::AssertionSuccess() << msg.str();
  return ::testing::AssertionFailure() << msg.str();
}

// softmax(logits) · values in float64 for one query row; `values(j, c)` is value column c of key
// j. No key: zeros. Returns the row's log-sum-exp (-inf without a key).
template <typename Values>
inline double softmax_row(const std::vector<double>& logits, std::int64_t d_v, Values values,
                          double* out) {
  if (logits.empty()) {
    std::fill_n(out, d_v, 0.0);
    return -INFINITY;
  }
  const double mx = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double sum = 0;
  for (std::size_t j = 0; j < logits.size(); ++j) sum += p[j] = std::exp(logits[j] - mx);
  for (std::int64_t c = 0; c < d_v; ++c) {
    double acc = 0;
    for (std::size_t j = 0; j < logits.size(); ++j) acc += p[j] * values(j, c);
    out[c] = acc / sum;
  }
  return mx + std::log(sum);
}

inline double max_abs(std::span<const double> v) {
  double m = 0;
  for (double x : v) {
    if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  }
  return m;
}

// The default atol of the tolerance rule: a thousandth of the reference's magnitude.
inline double relative_atol(std::span<const double> ref, double fraction = 1e-3) {
  return fraction * max_abs(ref);
}

// Every byte of `fetched` outside the view `v` (a view into `host`, the tensor `fetched` was
// copied from after poisoning) still holds `original`'s bytes: the op wrote nothing around its
// output window.
inline ::testing::AssertionResult only_view_written(const Tensor& original, const Tensor& host,
                                                    const TensorView& v, const Tensor& fetched) {
  const std::size_t es = dtype_size(v.dtype());
  std::vector<bool> inside(host.nbytes(), false);
  const std::ptrdiff_t base =
      static_cast<const char*>(v.data()) - static_cast<const char*>(host.view().data());
  for (std::int64_t off : element_offsets(v)) {
    for (std::size_t b = 0; b < es; ++b) {
      inside[static_cast<std::size_t>(base + off * static_cast<std::int64_t>(es)) + b] = true;
    }
  }
  const auto* now = static_cast<const std::uint8_t*>(fetched.view().data());
  const auto* before = static_cast<const std::uint8_t*>(original.view().data());
  for (std::size_t i = 0; i < host.nbytes(); ++i) {
    if (!inside[i] && now[i] != before[i]) {
      return ::testing::AssertionFailure()
             << "byte " << i << " of the output's backing tensor lies outside the output view but "
             << "the GPU changed it";
    }
  }
  return ::testing::AssertionSuccess();
}

inline Tensor clone(const Tensor& t) { return t.to(Device::cpu()); }

// The call throws exception type E whose message contains every needle.
template <typename E, typename Call>
::testing::AssertionResult throws_naming(Call&& call,
                                         std::initializer_list<std::string_view> needles) {
  try {
    call();
  } catch (const E& e) {
    const std::string_view what = e.what();
    for (std::string_view needle : needles) {
      if (what.find(needle) == std::string_view::npos) {
        return ::testing::AssertionFailure()
               << "the message \"" << what << "\" does not contain \"" << needle << "\"";
      }
    }
    return ::testing::AssertionSuccess() << what;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw another exception type: \"" << e.what() << "\"";
  }
  return ::testing::AssertionFailure() << "did not throw";
}

// ---------------------------------------------------------------------------------------------
// Number formats

// bf16 bits as an integer on a line where adjacent values differ by one (±0 both map to 0).
inline std::int32_t bf16_ordinal(std::uint16_t bits) {
  const std::int32_t magnitude = bits & 0x7fff;
  return (bits & 0x8000) ? -magnitude : magnitude;
}

}  // namespace dsattn::gpu_test
