// The argument checks shared by every op: they pass what they should and their messages follow
// one format, "<name> must <expectation>, got <actual>".
#include "dsattn/core/checks.h"

#include <gmock/gmock-matchers.h>
#include <gtest/gtest.h>

#include <vector>

#include "core/error_message.h"

namespace dsattn {
namespace {

using ::dsattn::testing::thrown_message;
using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(Checks, ShapeAcceptsMatchingAndWildcardDimensions) {
  std::vector<float> data(4 * 3 * 192);
  const TensorView q(data.data(), DType::f32, Device::cpu(), {4, 3, 192});
  EXPECT_NO_THROW(check_shape(q, "q", {4, 3, 192}));
  EXPECT_NO_THROW(check_shape(q, "q", {4, kAny, 192}));
  EXPECT_NO_THROW(check_shape(q, "q", {kAny, kAny, kAny}));
}

TEST(Checks, ShapeMessageNamesArgumentExpectationAndActual) {
  std::vector<float> data(4 * 3 * 128);
  const TensorView q(data.data(), DType::f32, Device::cpu(), {4, 3, 128});
  EXPECT_EQ(thrown_message<InvalidArgument>([&] {
              check_shape(q, "q", {4, kAny, 192});
            }),
            "q must have shape [4, *, 192], got [4, 3, 128]");
  // A rank mismatch is reported the same way, even when the leading sizes agree.
  EXPECT_EQ(thrown_message<InvalidArgument>([&] {
              check_shape(q, "q", {4, 3});
            }),
            "q must have shape [4, 3], got [4, 3, 128]");
  EXPECT_EQ(thrown_message<InvalidArgument>([&] {
              check_shape(q, "kv", {4, 3, 128, 1});
            }),
            "kv must have shape [4, 3, 128, 1], got [4, 3, 128]");
}

TEST(Checks, ShapeOfAMissingTensorSaysSo) {
  EXPECT_EQ(thrown_message<InvalidArgument>([] { check_shape(TensorView(), "bias", {8}); }),
            "bias must have shape [8], got no tensor");
}

TEST(Checks, DtypeMessage) {
  std::vector<float> data(8);
  const TensorView t(data.data(), DType::f32, Device::cpu(), {8});
  EXPECT_NO_THROW(check_dtype(t, "k", DType::f32));
  EXPECT_EQ(thrown_message<InvalidArgument>([&] { check_dtype(t, "k", DType::bf16); }),
            "k must have dtype bf16, got f32");
}

TEST(Checks, DeviceMessage) {
  std::vector<float> data(8);
  const TensorView t(data.data(), DType::f32, Device::cpu(), {8});
  EXPECT_NO_THROW(check_device(t, "x", Device::cpu()));
  EXPECT_EQ(thrown_message<InvalidArgument>([&] { check_device(t, "x", Device::cuda(1)); }),
            "x must be on cuda:1, got cpu");
  // A view claiming another GPU is refused too; no memory is touched.
  const TensorView g(nullptr, DType::f32, Device::cuda(0), {8});
  EXPECT_EQ(thrown_message<InvalidArgument>([&] { check_device(g, "x", Device::cuda(1)); }),
            "x must be on cuda:1, got cuda:0");
}

TEST(Checks, InnerContiguityAllowsStridedRowsOnly) {
  std::vector<float> data(6 * 8);
  const TensorView m(data.data(), DType::f32, Device::cpu(), {6, 8});
  EXPECT_NO_THROW(check_inner_contiguous(m, "m"));
  EXPECT_NO_THROW(check_inner_contiguous(m.slice(1, 2, 5), "m"));  // strided rows
  // A last dimension of size one never steps, so its stride does not matter.
  const std::vector<std::int64_t> column_shape = {6, 1};
  const std::vector<std::int64_t> column_strides = {8, 8};
  EXPECT_NO_THROW(check_inner_contiguous(
      TensorView(data.data(), DType::f32, Device::cpu(), column_shape, column_strides), "m"));

  const std::vector<std::int64_t> shape = {8, 6};
  const std::vector<std::int64_t> strides = {1, 8};
  const TensorView transposed(data.data(), DType::f32, Device::cpu(), shape, strides);
  EXPECT_THAT(thrown_message<InvalidArgument>([&] { check_inner_contiguous(transposed, "w"); }),
              AllOf(HasSubstr("w must have a unit stride in its last dimension"),
                    HasSubstr("got strides [1, 8]")));
}

TEST(Checks, ContiguityMessageShowsShapeAndStrides) {
  std::vector<float> data(6 * 8);
  const TensorView m(data.data(), DType::f32, Device::cpu(), {6, 8});
  EXPECT_NO_THROW(check_contiguous(m, "m"));
  EXPECT_NO_THROW(check_contiguous(m.slice(0, 1, 4), "m"));
  EXPECT_EQ(thrown_message<InvalidArgument>([&] { check_contiguous(m.slice(1, 0, 4), "m"); }),
            "m must be contiguous, got shape [6, 4] with strides [8, 1]");
}

TEST(Checks, CheckMacroThrowsFormattedInvalidArgument) {
  const int value = 17;
  EXPECT_NO_THROW(DSATTN_CHECK(value > 0, "value must be positive, got {}", value));
  EXPECT_EQ(thrown_message<InvalidArgument>(
                [&] { DSATTN_CHECK(value % 2 == 0, "value must be even, got {}", value); }),
            "value must be even, got 17");
}

TEST(Checks, FailRaisesTheRequestedErrorType) {
  EXPECT_THROW(fail<CacheFull>("full"), CacheFull);
  EXPECT_THROW(fail<Unsupported>("no"), Unsupported);
  EXPECT_THROW(fail<ConfigError>("bad"), ConfigError);
  EXPECT_THROW(fail<CudaError>("bad"), CudaError);
  // Every library error derives from Error, so one catch clause serves the CLI.
  EXPECT_THROW(fail<CacheFull>("full"), Error);
  EXPECT_THROW(fail("invalid {}", 1), InvalidArgument);
  EXPECT_EQ(thrown_message<Error>([] { fail<ConfigError>("{} of {}", 3, "x"); }), "3 of x");
}

}  // namespace
}  // namespace dsattn
