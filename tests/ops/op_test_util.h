// Shared pieces of the op tests: reading and poisoning (possibly strided) views, the
// FlashAttention-style tolerance check against a float64 reference, checks that a rejected call
// names the bad argument and leaves its outputs alone, and memory that faults when read (for
// inputs an op must not touch).
#pragma once

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dsattn/core/dtype.h"
#include "dsattn/core/error.h"
#include "dsattn/core/random.h"
#include "dsattn/core/tensor.h"

namespace dsattn::test {

// Element offsets (in elements, relative to v.data()) of every element of v, row-major.
inline std::vector<std::int64_t> element_offsets(const TensorView& v) {
  const int nd = v.ndim();
  const std::int64_t n = v.numel();
  std::vector<std::int64_t> offsets;
  offsets.reserve(static_cast<std::size_t>(n));
  std::vector<std::int64_t> idx(static_cast<std::size_t>(nd), 0);
  for (std::int64_t e = 0; e < n; ++e) {
    std::int64_t off = 0;
    for (int d = 0; d < nd; ++d) off += idx[d] * v.stride(d);
    offsets.push_back(off);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < v.size(d)) break;
      idx[d] = 0;
    }
  }
  return offsets;
}

// Every element of a CPU view as a double, row-major (fp8 through the library's conversion).
inline std::vector<double> read_doubles(const TensorView& v) {
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(v.numel()));
  for (std::int64_t off : element_offsets(v)) {
    switch (v.dtype()) {
      case DType::f32:
        out.push_back(v.ptr<float>()[off]);
        break;
      case DType::bf16:
        out.push_back(v.ptr<bf16>()[off].to_float());
        break;
      case DType::i32:
        out.push_back(v.ptr<std::int32_t>()[off]);
        break;
      case DType::u8:
        out.push_back(v.ptr<std::uint8_t>()[off]);
        break;
      case DType::fp8_e4m3:
        out.push_back(v.ptr<fp8_e4m3>()[off].to_float());
        break;
    }
  }
  return out;
}

inline std::vector<std::int32_t> read_i32(const TensorView& v) {
  std::vector<std::int32_t> out;
  for (std::int64_t off : element_offsets(v)) out.push_back(v.ptr<std::int32_t>()[off]);
  return out;
}

inline constexpr std::uint16_t kBf16Poison = 0x7fc0;    // a quiet bf16 NaN
inline constexpr std::int32_t kI32Poison = 0x7f7f7f7f;  // no valid index or slot
inline constexpr std::uint8_t kFp8Poison = 0x7f;        // e4m3 NaN

// Overwrites every element of v with a value no op may leave behind: NaN for floating types,
// 0x7f7f7f7f for i32, 0x7f (an e4m3 NaN) for bytes.
inline void poison(const TensorView& v) {
  for (std::int64_t off : element_offsets(v)) {
    switch (v.dtype()) {
      case DType::f32:
        v.ptr<float>()[off] = std::numeric_limits<float>::quiet_NaN();
        break;
      case DType::bf16:
        v.ptr<bf16>()[off] = bf16::from_bits(kBf16Poison);
        break;
      case DType::i32:
        v.ptr<std::int32_t>()[off] = kI32Poison;
        break;
      case DType::u8:
      case DType::fp8_e4m3:
        v.ptr<std::uint8_t>()[off] = kFp8Poison;
        break;
    }
  }
}

// A tensor of the given shape filled with uniform values in [-range, range) (bf16 or f32).
inline Tensor random_tensor(std::initializer_list<std::int64_t> shape, DType dtype,
                            std::uint64_t seed, std::uint64_t stream, double range = 1.0) {
  Tensor t = Tensor::empty(shape, dtype);
  fill_uniform(t, seed, stream, static_cast<float>(range / std::sqrt(3.0)));
  return t;
}

// A u8 tensor of the given shape filled with random bytes.
inline Tensor random_bytes(std::initializer_list<std::int64_t> shape, unsigned seed) {
  Tensor t = Tensor::empty(shape, DType::u8);
  std::mt19937 rng(seed);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.ptr<std::uint8_t>()[i] = rng() & 0xff;
  return t;
}

// A 1-D i32 tensor holding `values`.
inline Tensor i32_tensor(const std::vector<std::int32_t>& values) {
  Tensor t = Tensor::empty({static_cast<std::int64_t>(values.size())}, DType::i32);
  std::copy(values.begin(), values.end(), t.ptr<std::int32_t>());
  return t;
}

// A view of t's memory with explicit shape and strides (for non-unit inner strides and odd
// layouts that slice() cannot express).
inline TensorView strided_view(const TensorView& t, std::initializer_list<std::int64_t> shape,
                               std::initializer_list<std::int64_t> strides) {
  return TensorView(t.data(), t.dtype(), t.device(),
                    std::span<const std::int64_t>(shape.begin(), shape.size()),
                    std::span<const std::int64_t>(strides.begin(), strides.size()));
}

// The same view claimed to live on a CUDA device. Validation rejects the device mismatch before
// any element is touched, so host memory behind it is safe.
inline TensorView on_cuda(const TensorView& v) {
  return TensorView(v.data(), v.dtype(), Device::cuda(), v.shape(), v.strides());
}

// Host memory in whole pages, any of which can be made to fault on every access: an op that must
// not read part of its input is handed that part on protected pages.
class GuardedPages {
 public:
  explicit GuardedPages(std::int64_t pages)
      : page_bytes_(static_cast<std::size_t>(sysconf(_SC_PAGESIZE))),
        pages_(static_cast<std::size_t>(pages)) {
    base_ = mmap(nullptr, page_bytes_ * pages_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
    if (base_ == MAP_FAILED) throw std::runtime_error("mmap of guarded test pages failed");
  }
  ~GuardedPages() { munmap(base_, page_bytes_ * pages_); }
  GuardedPages(const GuardedPages&) = delete;
  GuardedPages& operator=(const GuardedPages&) = delete;

  std::int64_t page_bytes() const { return static_cast<std::int64_t>(page_bytes_); }
  void* page(std::int64_t i) const { return static_cast<char*>(base_) + i * page_bytes(); }
  // From now on any read or write of page i kills the process.
  void protect(std::int64_t i) const {
    if (mprotect(page(i), page_bytes_, PROT_NONE) != 0) {
      throw std::runtime_error("mprotect of a guarded test page failed");
    }
  }

 private:
  std::size_t page_bytes_, pages_;
  void* base_ = nullptr;
};

// Runs `call` in a child process (a fresh one, not a fork of this multi-threaded one) and expects
// it to exit normally: a fault there, such as a read of a protected page, fails the test instead
// of killing the whole run. Returns false when the child failed, so the caller can skip the same
// call in this process.
template <typename Call>
bool runs_without_fault(Call&& call) {
  const ::testing::TestResult& result =
      *::testing::UnitTest::GetInstance()->current_test_info()->result();
  const int parts = result.total_part_count();
  const std::string style = GTEST_FLAG_GET(death_test_style);
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        call();
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(0), "")
      << "the call faulted: it touched memory it must not read";
  GTEST_FLAG_SET(death_test_style, style);
  for (int i = parts; i < result.total_part_count(); ++i) {
    if (result.GetTestPartResult(i).failed()) return false;
  }
  return true;
}

// e4m3 ("fn": bias 7, no infinities, S.1111.111 is NaN) decoded from its bit fields, without
// the library's conversion.
inline double decode_e4m3(std::uint8_t bits) {
  const int exponent = (bits >> 3) & 0xf, mantissa = bits & 0x7;
  if (exponent == 0xf && mantissa == 0x7) return std::nan("");
  const double magnitude = exponent == 0 ? std::ldexp(mantissa / 8.0, -6)
                                         : std::ldexp(1.0 + mantissa / 8.0, exponent - 7);
  return (bits & 0x80) ? -magnitude : magnitude;
}

// f32 -> bf16 -> double, as a plain bf16 implementation stores its result.
inline double round_bf16(float x) { return bf16::from_float(x).to_float(); }

// "[i, j, k]" for a flat row-major index into `shape` (the flat index when shape is empty).
inline std::string index_string(std::int64_t flat, std::span<const std::int64_t> shape) {
  if (shape.empty()) return fmt::format("[{}]", flat);
  std::vector<std::int64_t> idx(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    idx[d] = shape[d] > 0 ? flat % shape[d] : 0;
    flat = shape[d] > 0 ? flat / shape[d] : 0;
  }
  return fmt::format("[{}]", fmt::join(idx, ", "));
}

inline double max_abs(std::span<const double> v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// FlashAttention's rule: max|out - ref| <= 2 · max|plain - ref| + atol, where `plain` is the
// obvious same-precision implementation. Non-finite reference entries (masked -inf) must be
// reproduced exactly; anywhere else NaN or Inf fails.
inline ::testing::AssertionResult within_tolerance(std::span<const double> out,
                                                   std::span<const double> ref,
                                                   std::span<const double> plain, double atol,
                                                   std::span<const std::int64_t> shape = {}) {
  if (out.size() != ref.size() || plain.size() != ref.size()) {
    return ::testing::AssertionFailure() << "size mismatch: out " << out.size() << ", ref "
                                         << ref.size() << ", plain " << plain.size();
  }
  double out_err = 0, plain_err = 0;
  std::size_t worst = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(ref[i])) {
      if (!(out[i] == ref[i])) {
        return ::testing::AssertionFailure()
               << "out" << index_string(static_cast<std::int64_t>(i), shape) << " = " << out[i]
               << " but the reference is " << ref[i];
      }
      continue;
    }
    if (!std::isfinite(out[i])) {
      return ::testing::AssertionFailure()
             << "out" << index_string(static_cast<std::int64_t>(i), shape) << " = " << out[i]
             << " is not finite (reference " << ref[i] << "): unwritten or overflowed";
    }
    if (!std::isfinite(plain[i])) {
      return ::testing::AssertionFailure()
             << "the plain result at " << index_string(static_cast<std::int64_t>(i), shape)
             << " is not finite: the test's inputs are broken";
    }
    const double e = std::fabs(out[i] - ref[i]);
    if (e > out_err) {
      out_err = e;
      worst = i;
    }
    plain_err = std::max(plain_err, std::fabs(plain[i] - ref[i]));
  }
  const double bound = 2.0 * plain_err + atol;
  std::ostringstream msg;
  msg << "max|out - ref| = " << out_err << " at "
      << index_string(static_cast<std::int64_t>(worst), shape) << " (out " << out[worst] << ", ref "
      << ref[worst] << "); max|plain - ref| = " << plain_err << ", atol " << atol << ", bound "
      << bound << ", max|ref| = " << max_abs(ref);
  if (out_err <= bound) return ::testing::AssertionSuccess() << msg.str();
  return ::testing::AssertionFailure() << msg.str();
}

// Memory that a rejected call must leave untouched.
struct Watched {
  const void* data;
  std::size_t bytes;
};
inline Watched watch(const Tensor& t) { return {t.view().data(), t.nbytes()}; }
template <typename T>
Watched watch(const std::vector<T>& v) {
  return {v.data(), v.size() * sizeof(T)};
}

// The call throws InvalidArgument whose message contains `needle`, and writes nothing to the
// watched buffers.
template <typename Call>
::testing::AssertionResult rejects(Call&& call, std::string_view needle,
                                   std::initializer_list<Watched> outputs = {}) {
  std::vector<std::vector<std::uint8_t>> before;
  for (const Watched& w : outputs) {
    const auto* p = static_cast<const std::uint8_t*>(w.data);
    before.emplace_back(p, p + w.bytes);
  }
  try {
    call();
  } catch (const InvalidArgument& e) {
    const std::string_view what = e.what();
    if (what.find(needle) == std::string_view::npos) {
      return ::testing::AssertionFailure()
             << "the message \"" << what << "\" does not contain \"" << needle << "\"";
    }
    std::size_t k = 0;
    for (const Watched& w : outputs) {
      if (std::memcmp(before[k].data(), w.data, w.bytes) != 0) {
        return ::testing::AssertionFailure()
               << "threw \"" << what << "\" but wrote into output #" << k << " first";
      }
      ++k;
    }
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure()
           << "threw something other than InvalidArgument: \"" << e.what() << "\"";
  }
  return ::testing::AssertionFailure()
         << "did not throw (expected a message naming \"" << needle << "\")";
}

// Every element of the backing tensor outside `view` is bit-identical to `before`.
inline ::testing::AssertionResult only_view_written(const Tensor& backing,
                                                    const std::vector<std::uint8_t>& before,
                                                    const TensorView& view) {
  const std::size_t esize = dtype_size(view.dtype());
  std::vector<bool> inside(backing.nbytes(), false);
  const std::int64_t base = (static_cast<const std::uint8_t*>(view.data()) -
                             static_cast<const std::uint8_t*>(backing.view().data()));
  for (std::int64_t off : element_offsets(view)) {
    for (std::size_t b = 0; b < esize; ++b) {
      inside[static_cast<std::size_t>(base + off * static_cast<std::int64_t>(esize)) + b] = true;
    }
  }
  const auto* now = static_cast<const std::uint8_t*>(backing.view().data());
  for (std::size_t i = 0; i < backing.nbytes(); ++i) {
    if (!inside[i] && now[i] != before[i]) {
      return ::testing::AssertionFailure()
             << "byte " << i << " of the backing tensor lies outside the view but changed";
    }
  }
  return ::testing::AssertionSuccess();
}

inline std::vector<std::uint8_t> snapshot(const Tensor& t) {
  const auto* p = static_cast<const std::uint8_t*>(t.view().data());
  return {p, p + t.nbytes()};
}

// A block table per request, each a shuffled set of distinct physical pages, as columns
// [1, 1 + max_pages) of a wider i32 tensor (so its rows are strided).
struct BlockTables {
  Tensor backing;
  TensorView view;
};

inline BlockTables random_block_tables(std::int64_t requests, std::int64_t max_pages,
                                       std::mt19937& rng) {
  std::vector<std::int32_t> pool(static_cast<std::size_t>(requests * max_pages + 7));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  BlockTables t;
  t.backing = Tensor::empty({requests, max_pages + 3}, DType::i32);
  poison(t.backing);
  t.view = t.backing.view().slice(1, 1, 1 + max_pages);
  for (std::int64_t r = 0; r < requests; ++r) {
    std::copy_n(pool.begin() + r * max_pages, max_pages, t.view.row<std::int32_t>(r));
  }
  return t;
}

// An index-key cache in the row layout ([slots, d + 4 · d / 128] u8, contiguous: each row its d
// values, then its scales) rewritten page-major: each page of `page_size` slots holds its slots'
// values one after the other, then their scales (cache/cache_format.h). Written out by hand here,
// so that the ops' own addressing is checked against it.
inline Tensor page_major_copy(const Tensor& rows, std::int64_t page_size) {
  const std::int64_t slots = rows.size(0), bytes = rows.size(1), d = bytes * 32 / 33;
  Tensor out = Tensor::empty({slots, bytes}, DType::u8);
  const std::uint8_t* src = rows.ptr<std::uint8_t>();
  std::uint8_t* dst = out.ptr<std::uint8_t>();
  for (std::int64_t page = 0; page < slots / page_size; ++page) {
    std::uint8_t* values = dst + page * page_size * bytes;
    std::uint8_t* scales = values + page_size * d;
    for (std::int64_t i = 0; i < page_size; ++i) {
      const std::uint8_t* row = src + (page * page_size + i) * bytes;
      std::memcpy(values + i * d, row, d);
      std::memcpy(scales + i * (bytes - d), row + d, bytes - d);
    }
  }
  return out;
}

}  // namespace dsattn::test
