// TensorView geometry (shapes, strides, views into views), Tensor ownership and copies, and the
// errors raised for impossible requests.
#include "dsattn/core/tensor.h"

#include <gmock/gmock-matchers.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "core/error_message.h"
#include "dsattn/core/checked_size.h"
#include "dsattn/core/cuda_runtime.h"

namespace dsattn {
namespace {

using ::dsattn::testing::thrown_message;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::vector<float> random_floats(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<std::int64_t> to_vector(std::span<const std::int64_t> s) {
  return {s.begin(), s.end()};
}

TEST(Device, NamesAndEquality) {
  EXPECT_EQ(to_string(Device::cpu()), "cpu");
  EXPECT_EQ(to_string(Device::cuda()), "cuda:0");
  EXPECT_EQ(to_string(Device::cuda(3)), "cuda:3");
  EXPECT_TRUE(Device::cpu().is_cpu());
  EXPECT_TRUE(Device::cuda(1).is_cuda());
  EXPECT_EQ(Device::cuda(1), Device::cuda(1));
  EXPECT_NE(Device::cuda(0), Device::cuda(1));
  EXPECT_NE(Device::cpu(), Device::cuda(0));
}

TEST(ShapeString, FormatsLikeAList) {
  const std::vector<std::int64_t> shape = {4, 3, 128};
  EXPECT_EQ(shape_string(shape), "[4, 3, 128]");
  EXPECT_EQ(shape_string(std::vector<std::int64_t>{}), "[]");
  EXPECT_EQ(shape_string(std::vector<std::int64_t>{7}), "[7]");
}

TEST(TensorView, ContiguousViewHasRowMajorStrides) {
  std::vector<float> data(2 * 3 * 5);
  const TensorView v(data.data(), DType::f32, Device::cpu(), {2, 3, 5});
  EXPECT_EQ(v.ndim(), 3);
  EXPECT_EQ(to_vector(v.shape()), (std::vector<std::int64_t>{2, 3, 5}));
  EXPECT_EQ(to_vector(v.strides()), (std::vector<std::int64_t>{15, 5, 1}));
  EXPECT_EQ(v.numel(), 30);
  EXPECT_EQ(v.size(-1), 5);
  EXPECT_EQ(v.size(-3), 2);
  EXPECT_EQ(v.stride(-2), 5);
  EXPECT_EQ(v.data(), data.data());
  EXPECT_EQ(v.dtype(), DType::f32);
  EXPECT_EQ(v.device(), Device::cpu());
  EXPECT_TRUE(v.is_contiguous());
  EXPECT_FALSE(v.empty());
  EXPECT_EQ(v.row<float>(1), data.data() + 15);
}

// Shapes whose element or byte count does not fit int64 are refused by name, not wrapped into a
// small size that an allocation or a loop would trust.
TEST(TensorView, CountsThatOverflowAreRefused) {
  const std::int64_t big = std::int64_t(1) << 40;
  EXPECT_THAT(thrown_message<InvalidArgument>([&] {
                Tensor::empty({big, big}, DType::f32);
              }),
              AllOf(HasSubstr("elements of a tensor of shape [1099511627776, 1099511627776]"),
                    HasSubstr("exceeds the largest size")));
  EXPECT_THAT(thrown_message<InvalidArgument>([&] {
                TensorView(nullptr, DType::bf16, Device::cpu(), {big, big, 4});
              }),
              HasSubstr("elements of a tensor of shape"));
  const std::int64_t strides[] = {1, 1};
  const std::int64_t shape[] = {big, big};
  EXPECT_THAT(thrown_message<InvalidArgument>(
                  [&] { TensorView(nullptr, DType::bf16, Device::cpu(), shape, strides); }),
              HasSubstr("elements of a tensor of shape"));
  EXPECT_THAT(
      thrown_message<InvalidArgument>([&] { Tensor::empty({std::int64_t(1) << 62}, DType::f32); }),
      AllOf(HasSubstr("bytes of a tensor of shape [4611686018427387904]"),
            HasSubstr("4611686018427387904 x 4")));
}

TEST(CheckedSize, SumsAndProductsThatFitPassThrough) {
  EXPECT_EQ(checked_mul(std::int64_t(1) << 31, std::int64_t(1) << 31, "x"), std::int64_t(1) << 62);
  EXPECT_EQ(checked_add(std::numeric_limits<std::int64_t>::max() - 1, 1, "x"),
            std::numeric_limits<std::int64_t>::max());
  EXPECT_THAT(thrown_message<InvalidArgument>(
                  [] { checked_add(std::numeric_limits<std::int64_t>::max(), 1, "positions"); }),
              HasSubstr("positions: 9223372036854775807 + 1 exceeds"));
}

TEST(TensorView, DefaultViewIsEmptyScalar) {
  const TensorView v;
  EXPECT_TRUE(v.empty());
  EXPECT_EQ(v.ndim(), 0);
  EXPECT_EQ(v.numel(), 1);
  EXPECT_TRUE(v.is_contiguous());
}

TEST(TensorView, ExplicitStridesDescribeATranspose) {
  std::vector<float> data = random_floats(12, 1);
  const std::vector<std::int64_t> shape = {4, 3};
  const std::vector<std::int64_t> strides = {1, 4};  // column-major 3x4 seen as its transpose
  const TensorView t(data.data(), DType::f32, Device::cpu(), shape, strides);
  EXPECT_FALSE(t.is_contiguous());
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 3; ++j)
      EXPECT_EQ(t.ptr<float>()[i * t.stride(0) + j * t.stride(1)], data[j * 4 + i]);
  }
}

TEST(TensorView, SizeOneDimensionsDoNotBreakContiguity) {
  std::vector<float> data(6);
  const std::vector<std::int64_t> shape = {1, 6, 1};
  const std::vector<std::int64_t> strides = {999, 1, 12345};
  EXPECT_TRUE(TensorView(data.data(), DType::f32, Device::cpu(), shape, strides).is_contiguous());
}

TEST(TensorView, RejectsTooManyDimensions) {
  std::vector<float> data(32);
  const std::string msg = thrown_message<InvalidArgument>([&] {
    TensorView(data.data(), DType::f32, Device::cpu(), {2, 2, 2, 2, 2});
  });
  EXPECT_THAT(msg, AllOf(HasSubstr("rank"), HasSubstr("at most 4"), HasSubstr("got 5")));
}

TEST(TensorView, RejectsNegativeDimensions) {
  const std::string msg = thrown_message<InvalidArgument>([] {
    TensorView(nullptr, DType::f32, Device::cpu(), {3, -2});
  });
  EXPECT_THAT(msg, AllOf(HasSubstr("[3, -2]"), HasSubstr("negative")));
  // With explicit strides too: a negative size would make numel() and byte counts negative.
  const std::vector<std::int64_t> shape = {2, -3};
  const std::vector<std::int64_t> strides = {3, 1};
  EXPECT_THAT(thrown_message<InvalidArgument>(
                  [&] { TensorView(nullptr, DType::f32, Device::cpu(), shape, strides); }),
              AllOf(HasSubstr("[2, -3]"), HasSubstr("negative")));
}

TEST(TensorView, RejectsStridesOfTheWrongLength) {
  const std::vector<std::int64_t> shape = {2, 3};
  const std::vector<std::int64_t> strides = {3};
  const std::string msg = thrown_message<InvalidArgument>(
      [&] { TensorView(nullptr, DType::f32, Device::cpu(), shape, strides); });
  EXPECT_THAT(msg, AllOf(HasSubstr("strides"), HasSubstr("2 entries"), HasSubstr("got 1")));
}

TEST(TensorView, DimensionOutOfRangeNamesTheDimensionAndRank) {
  std::vector<float> data(6);
  const TensorView v(data.data(), DType::f32, Device::cpu(), {2, 3});
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { (void)v.size(2); }),
              AllOf(HasSubstr("dimension 2"), HasSubstr("rank 2")));
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { (void)v.stride(-3); }),
              AllOf(HasSubstr("dimension -3"), HasSubstr("rank 2")));
}

TEST(TensorView, TypedAccessChecksTheDtype) {
  std::vector<std::uint16_t> data(4);
  const TensorView v(data.data(), DType::bf16, Device::cpu(), {4});
  EXPECT_EQ(v.ptr<bf16>(), reinterpret_cast<bf16*>(data.data()));
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { (void)v.ptr<float>(); }),
              AllOf(HasSubstr("bf16"), HasSubstr("accessed as f32")));
  EXPECT_THROW((void)v.ptr<std::int32_t>(), InvalidArgument);

  // fp8 and u8 are both plain bytes and may be read as each other.
  std::vector<std::uint8_t> bytes(4);
  const TensorView b(bytes.data(), DType::u8, Device::cpu(), {4});
  EXPECT_EQ(static_cast<void*>(b.ptr<fp8_e4m3>()), static_cast<void*>(bytes.data()));
  const TensorView f8(bytes.data(), DType::fp8_e4m3, Device::cpu(), {4});
  EXPECT_EQ(f8.ptr<std::uint8_t>(), bytes.data());
  EXPECT_THROW((void)f8.ptr<bf16>(), InvalidArgument);
}

TEST(TensorView, SliceNarrowsOneDimensionAndKeepsStrides) {
  std::vector<float> data = random_floats(4 * 6, 2);
  const TensorView v(data.data(), DType::f32, Device::cpu(), {4, 6});

  const TensorView rows = v.slice(0, 1, 3);
  EXPECT_EQ(to_vector(rows.shape()), (std::vector<std::int64_t>{2, 6}));
  EXPECT_EQ(to_vector(rows.strides()), (std::vector<std::int64_t>{6, 1}));
  EXPECT_EQ(rows.data(), data.data() + 6);
  EXPECT_TRUE(rows.is_contiguous());

  const TensorView cols = v.slice(-1, 2, 5);
  EXPECT_EQ(to_vector(cols.shape()), (std::vector<std::int64_t>{4, 3}));
  EXPECT_EQ(to_vector(cols.strides()), (std::vector<std::int64_t>{6, 1}));
  EXPECT_FALSE(cols.is_contiguous());
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 3; ++j) EXPECT_EQ(cols.row<float>(i)[j], data[i * 6 + 2 + j]);
  }

  // A slice of a slice composes offsets; byte offsets follow the element size.
  const TensorView inner = cols.slice(0, 2, 4).slice(1, 1, 2);
  EXPECT_EQ(inner.ptr<float>(), data.data() + 2 * 6 + 3);
  std::vector<std::uint16_t> halves(10);
  const TensorView h(halves.data(), DType::bf16, Device::cpu(), {10});
  EXPECT_EQ(h.slice(0, 3, 10).data(), static_cast<void*>(halves.data() + 3));
  EXPECT_EQ(v.slice(0, 4, 4).numel(), 0);  // an empty slice at the end is allowed
}

TEST(TensorView, SliceOutOfRangeNamesTheRangeAndSize) {
  std::vector<float> data(12);
  const TensorView v(data.data(), DType::f32, Device::cpu(), {4, 3});
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { (void)v.slice(1, 2, 5); }),
              AllOf(HasSubstr("[2, 5)"), HasSubstr("dimension 1"), HasSubstr("size 3")));
  EXPECT_THROW((void)v.slice(0, -1, 2), InvalidArgument);
  EXPECT_THROW((void)v.slice(0, 3, 2), InvalidArgument);
  EXPECT_THROW((void)v.slice(2, 0, 1), InvalidArgument);
}

TEST(TensorView, SelectDropsTheDimension) {
  std::vector<float> data = random_floats(2 * 3 * 4, 3);
  const TensorView v(data.data(), DType::f32, Device::cpu(), {2, 3, 4});

  const TensorView mid = v.select(1, 2);  // [2, 4] with strides [12, 1]
  EXPECT_EQ(mid.ndim(), 2);
  EXPECT_EQ(to_vector(mid.shape()), (std::vector<std::int64_t>{2, 4}));
  EXPECT_EQ(to_vector(mid.strides()), (std::vector<std::int64_t>{12, 1}));
  EXPECT_FALSE(mid.is_contiguous());
  for (int i = 0; i < 2; ++i) {
    for (int k = 0; k < 4; ++k) EXPECT_EQ(mid.row<float>(i)[k], data[i * 12 + 2 * 4 + k]);
  }

  const TensorView last = v.select(-1, 3);  // [2, 3] with strides [12, 4]
  EXPECT_EQ(to_vector(last.shape()), (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(to_vector(last.strides()), (std::vector<std::int64_t>{12, 4}));
  EXPECT_EQ(last.ptr<float>()[1 * 12 + 2 * 4], data[1 * 12 + 2 * 4 + 3]);

  const TensorView first = v.select(0, 1);
  EXPECT_TRUE(first.is_contiguous());
  EXPECT_EQ(first.ptr<float>(), data.data() + 12);
  EXPECT_EQ(first.select(0, 0).select(0, 1).ndim(), 0);

  EXPECT_THAT(thrown_message<InvalidArgument>([&] { (void)v.select(1, 3); }),
              AllOf(HasSubstr("[3, 4)"), HasSubstr("size 3")));
  EXPECT_THROW((void)v.select(0, -1), InvalidArgument);
}

TEST(TensorView, ReshapeKeepsTheMemory) {
  std::vector<float> data = random_floats(24, 4);
  const TensorView v(data.data(), DType::f32, Device::cpu(), {2, 3, 4});
  const TensorView r = v.reshape({6, 4});
  EXPECT_EQ(r.data(), v.data());
  EXPECT_EQ(to_vector(r.shape()), (std::vector<std::int64_t>{6, 4}));
  EXPECT_EQ(to_vector(r.strides()), (std::vector<std::int64_t>{4, 1}));
  EXPECT_EQ(r.row<float>(5)[3], data[23]);
  // A contiguous slice of rows may be reshaped too.
  EXPECT_EQ(v.slice(0, 1, 2).reshape({12}).ptr<float>(), data.data() + 12);
}

TEST(TensorView, ReshapeErrorsNameShapes) {
  std::vector<float> data(24);
  const TensorView v(data.data(), DType::f32, Device::cpu(), {2, 3, 4});
  EXPECT_THAT(thrown_message<InvalidArgument>([&] {
                (void)v.reshape({5, 5});
              }),
              AllOf(HasSubstr("[2, 3, 4]"), HasSubstr("[5, 5]")));
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { (void)v.slice(2, 0, 2).reshape({12}); }),
              AllOf(HasSubstr("contiguous"), HasSubstr("[12, 4, 1]")));
  EXPECT_THROW((void)v.reshape({-4, -6}), InvalidArgument);
}

TEST(TensorView, WithDtypeNeedsEqualElementSizes) {
  std::vector<float> data(8);
  const TensorView v(data.data(), DType::f32, Device::cpu(), {2, 4});
  const TensorView as_int = v.with_dtype(DType::i32);
  EXPECT_EQ(as_int.dtype(), DType::i32);
  EXPECT_EQ(as_int.data(), v.data());
  EXPECT_EQ(to_vector(as_int.shape()), to_vector(v.shape()));
  EXPECT_EQ(v.with_dtype(DType::i32).with_dtype(DType::f32).dtype(), DType::f32);
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { (void)v.with_dtype(DType::bf16); }),
              AllOf(HasSubstr("f32"), HasSubstr("bf16"), HasSubstr("sizes differ")));

  std::vector<std::uint8_t> bytes(4);
  const TensorView b(bytes.data(), DType::u8, Device::cpu(), {4});
  EXPECT_EQ(b.with_dtype(DType::fp8_e4m3).dtype(), DType::fp8_e4m3);
  EXPECT_THROW((void)b.with_dtype(DType::f32), InvalidArgument);
}

TEST(Tensor, EmptyIsAlignedContiguousAndSized) {
  const std::vector<std::vector<std::int64_t>> shapes = {{1}, {3}, {7, 5}, {2, 3, 5, 7}, {0, 9}};
  for (DType dtype : {DType::f32, DType::bf16, DType::fp8_e4m3, DType::i32, DType::u8}) {
    for (const auto& shape : shapes) {
      const Tensor t = Tensor::empty(shape, dtype);
      ASSERT_TRUE(t.defined());
      ASSERT_NE(t.view().data(), nullptr);
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.view().data()) % 64, 0u);
      EXPECT_EQ(to_vector(t.view().shape()), shape);
      EXPECT_TRUE(t.view().is_contiguous());
      EXPECT_EQ(t.dtype(), dtype);
      EXPECT_EQ(t.device(), Device::cpu());
      std::int64_t n = 1;
      for (std::int64_t d : shape) n *= d;
      EXPECT_EQ(t.numel(), n);
      EXPECT_EQ(t.nbytes(), static_cast<std::size_t>(n) * dtype_size(dtype));
    }
  }
  EXPECT_FALSE(Tensor().defined());
  EXPECT_THROW(Tensor::empty({2, -1}, DType::f32), InvalidArgument);
  EXPECT_THROW(Tensor::empty({1, 1, 1, 1, 1}, DType::f32), InvalidArgument);
}

TEST(Tensor, CopiesShareStorageButToMakesADeepCopy) {
  const Tensor a = Tensor::empty({16, 8}, DType::f32);
  const std::vector<float> values = random_floats(128, 5);
  std::copy(values.begin(), values.end(), a.ptr<float>());

  const Tensor alias = a;  // a handle copy: same storage
  EXPECT_EQ(alias.ptr<float>(), a.ptr<float>());

  const Tensor deep = a.to(Device::cpu());
  EXPECT_NE(deep.ptr<float>(), a.ptr<float>());
  EXPECT_EQ(to_vector(deep.view().shape()), to_vector(a.view().shape()));
  for (int i = 0; i < 128; ++i) ASSERT_EQ(deep.ptr<float>()[i], values[i]);
  a.ptr<float>()[0] += 1.0f;
  EXPECT_EQ(deep.ptr<float>()[0], values[0]);
}

TEST(Copy, CopiesEveryElement) {
  const std::vector<float> values = random_floats(60, 6);
  const Tensor src = Tensor::empty({6, 10}, DType::f32);
  std::copy(values.begin(), values.end(), src.ptr<float>());
  const Tensor dst = Tensor::empty({6, 10}, DType::f32);
  std::fill(dst.ptr<float>(), dst.ptr<float>() + 60, std::nanf(""));  // poison
  copy(src, dst);
  for (int i = 0; i < 60; ++i) ASSERT_EQ(dst.ptr<float>()[i], values[i]) << "element " << i;

  // Row slices are contiguous and may be copied on their own.
  const Tensor part = Tensor::empty({2, 10}, DType::f32);
  copy(src.view().slice(0, 3, 5), part);
  for (int i = 0; i < 20; ++i) ASSERT_EQ(part.ptr<float>()[i], values[30 + i]);
}

TEST(Copy, RefusesMismatchedOrStridedTensors) {
  const Tensor a = Tensor::empty({4, 6}, DType::f32);
  const Tensor b = Tensor::empty({4, 5}, DType::f32);
  const Tensor c = Tensor::empty({4, 6}, DType::i32);
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { copy(a, b); }),
              AllOf(HasSubstr("f32 [4, 6]"), HasSubstr("f32 [4, 5]")));
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { copy(a, c); }),
              AllOf(HasSubstr("f32"), HasSubstr("i32")));
  const Tensor d = Tensor::empty({4, 3}, DType::f32);
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { copy(a.view().slice(1, 0, 3), d); }),
              HasSubstr("contiguous"));
}

TEST(Copy, RefusesViewsWithoutMemory) {
  const Tensor a = Tensor::empty({4}, DType::f32);
  const TensorView none(nullptr, DType::f32, Device::cpu(), {4});
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { copy(none, a); }), HasSubstr("source"));
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { copy(a, none); }), HasSubstr("destination"));
  // Zero elements need no memory.
  const TensorView zero(nullptr, DType::f32, Device::cpu(), {0});
  const Tensor z = Tensor::empty({0}, DType::f32);
  EXPECT_NO_THROW(copy(zero, z));
}

TEST(Tensor, ToOfAnUndefinedTensorIsUndefined) {
  EXPECT_FALSE(Tensor().to(Device::cpu()).defined());
  EXPECT_FALSE(Tensor().to(Device::cuda()).defined());
}

// Without a usable GPU, CUDA allocations and copies must fail with a dsattn error, not crash.
// With one, a round trip through device memory must preserve the data.
TEST(Tensor, CudaAllocationFailsCleanlyOrRoundTrips) {
  const std::vector<float> values = random_floats(256, 8);
  const Tensor host = Tensor::empty({16, 16}, DType::f32);
  std::copy(values.begin(), values.end(), host.ptr<float>());
  if (cuda::device_count() == 0) {
    EXPECT_THROW(Tensor::empty({16, 16}, DType::f32, Device::cuda()), Error);
    EXPECT_THROW((void)host.to(Device::cuda()), Error);
    EXPECT_THROW((void)cuda::device_name(0), Error);
    return;
  }
  const Tensor device = host.to(Device::cuda());
  EXPECT_EQ(device.device(), Device::cuda());
  const Tensor back = device.to(Device::cpu());
  for (int i = 0; i < 256; ++i) ASSERT_EQ(back.ptr<float>()[i], values[i]);
  EXPECT_FALSE(cuda::device_name(0).empty());
}

TEST(Tensor, CudaAllocationOnAMissingDeviceIndexThrows) {
  const int n = cuda::device_count();
  EXPECT_THROW(Tensor::empty({4}, DType::f32, Device::cuda(n + 7)), Error);
}

}  // namespace
}  // namespace dsattn
