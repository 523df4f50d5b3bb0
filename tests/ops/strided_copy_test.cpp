// strided_copy against an element-by-element copy through both views' strides: every dtype
// width, ranks 1 to 4, transposed and windowed views on either side, and stride-0 broadcasts.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "dsattn/ops/elementwise.h"
#include "op_test_util.h"

namespace dsattn::test {
namespace {

// How one side of a copy lies in memory: its dimensions in memory order (outermost first), the
// padding added to every dimension (the view is a window starting at index 1 of each padded
// dimension), and which dimensions have stride 0.
struct Layout {
  std::vector<int> order;
  std::int64_t pad = 0;
  std::vector<bool> broadcast;
};

struct Placed {
  Tensor backing;
  TensorView view;
};

// A view of `shape` laid out as `layout` describes, over random bytes.
Placed place(const std::vector<std::int64_t>& shape, DType dtype, const Layout& layout,
             std::mt19937& rng) {
  const int rank = static_cast<int>(shape.size());
  std::vector<std::int64_t> extent(rank), strides(rank);
  const auto is_broadcast = [&](int d) {
    return !layout.broadcast.empty() && layout.broadcast[static_cast<std::size_t>(d)];
  };
  for (int d = 0; d < rank; ++d) extent[d] = is_broadcast(d) ? 1 : shape[d] + layout.pad;
  std::int64_t total = 1;
  for (int i = rank - 1; i >= 0; --i) {
    const int d = layout.order[static_cast<std::size_t>(i)];
    strides[d] = is_broadcast(d) ? 0 : total;
    total *= extent[d];
  }
  std::int64_t offset = 0;
  for (int d = 0; d < rank; ++d) {
    if (!is_broadcast(d) && layout.pad > 0) offset += strides[d];
  }
  Placed p;
  p.backing = Tensor::empty({total}, dtype);
  auto* bytes = static_cast<std::uint8_t*>(p.backing.view().data());
  for (std::size_t i = 0; i < p.backing.nbytes(); ++i) bytes[i] = static_cast<std::uint8_t>(rng());
  void* data = bytes + offset * static_cast<std::int64_t>(dtype_size(dtype));
  p.view = TensorView(data, dtype, Device::cpu(), shape, strides);
  return p;
}

Layout row_major(int rank, std::int64_t pad = 0) {
  Layout l;
  l.order.resize(static_cast<std::size_t>(rank));
  std::iota(l.order.begin(), l.order.end(), 0);
  l.pad = pad;
  return l;
}

struct CopyCase {
  const char* name;
  DType dtype;
  std::vector<std::int64_t> shape;
  Layout src, dst;
};

void PrintTo(const CopyCase& c, std::ostream* os) { *os << c.name; }

class StridedCopyTest : public ::testing::TestWithParam<CopyCase> {};

TEST_P(StridedCopyTest, CopiesEveryElementThroughBothStrides) {
  const CopyCase& c = GetParam();
  std::mt19937 rng(static_cast<unsigned>(c.shape.size() * 1000 + c.shape.back()));
  const Placed src = place(c.shape, c.dtype, c.src, rng);
  const Placed dst = place(c.shape, c.dtype, c.dst, rng);
  poison(dst.view);
  const std::vector<std::uint8_t> src_before = snapshot(src.backing);
  const std::vector<std::uint8_t> dst_before = snapshot(dst.backing);

  ops::strided_copy(src.view, dst.view);

  // Element e of dst (row-major over the shape) holds the bytes of element e of src.
  const std::size_t esize = dtype_size(c.dtype);
  const std::vector<std::int64_t> from = element_offsets(src.view), to = element_offsets(dst.view);
  const auto* s = static_cast<const std::uint8_t*>(src.view.data());
  const auto* d = static_cast<const std::uint8_t*>(dst.view.data());
  for (std::size_t e = 0; e < from.size(); ++e) {
    ASSERT_EQ(std::memcmp(d + to[e] * static_cast<std::int64_t>(esize),
                          s + from[e] * static_cast<std::int64_t>(esize), esize),
              0)
        << "dst" << index_string(static_cast<std::int64_t>(e), c.shape) << " differs from src";
  }
  EXPECT_TRUE(only_view_written(dst.backing, dst_before, dst.view));
  EXPECT_EQ(snapshot(src.backing), src_before) << "src is read only";
}

Layout with_order(std::vector<int> order, std::int64_t pad) {
  Layout l;
  l.order = std::move(order);
  l.pad = pad;
  return l;
}

Layout broadcasting(Layout l, std::vector<bool> broadcast) {
  l.broadcast = std::move(broadcast);
  return l;
}

const CopyCase kCopyCases[] = {
    {"Bf16Rank1Contiguous", DType::bf16, {37}, row_major(1), row_major(1)},
    {"I32Rank1Windows", DType::i32, {19}, row_major(1, 3), row_major(1, 2)},
    {"U8Rank2TransposedSrc", DType::u8, {13, 29}, with_order({1, 0}, 2), row_major(2)},
    {"Bf16Rank2TransposedDst", DType::bf16, {17, 8}, row_major(2, 1), with_order({1, 0}, 0)},
    {"F32Rank2TransposedBoth", DType::f32, {6, 11}, with_order({1, 0}, 1), with_order({1, 0}, 3)},
    {"I32Rank3PermutedBoth",
     DType::i32,
     {5, 6, 7},
     with_order({2, 0, 1}, 1),
     with_order({1, 2, 0}, 3)},
    {"Bf16Rank3HeadMajorToTokenMajor",
     DType::bf16,
     {9, 4, 24},
     with_order({1, 0, 2}, 0),
     row_major(3, 2)},
    {"Bf16Rank4Windows", DType::bf16, {3, 4, 5, 6}, row_major(4, 2), row_major(4, 1)},
    {"U8Rank4Permuted",
     DType::u8,
     {2, 3, 5, 7},
     with_order({3, 1, 0, 2}, 1),
     with_order({2, 3, 1, 0}, 0)},
    // One rope key per token copied into every head: [tokens, 1 -> heads, 64].
    {"Bf16BroadcastRopeKeyOverHeads",
     DType::bf16,
     {9, 16, 64},
     broadcasting(row_major(3, 4), {false, true, false}),
     row_major(3, 2)},
    // A stride of 0 in the innermost dimension: one value per row, repeated.
    {"U8BroadcastInnermost",
     DType::u8,
     {4, 33},
     broadcasting(row_major(2, 1), {false, true}),
     with_order({1, 0}, 0)},
    {"I32Rank4BroadcastTwoDims",
     DType::i32,
     {2, 3, 4, 5},
     broadcasting(row_major(4, 1), {true, false, true, false}),
     with_order({3, 1, 0, 2}, 1)},
    {"Bf16Rank2BroadcastEverything",
     DType::bf16,
     {3, 5},
     broadcasting(row_major(2), {true, true}),
     row_major(2, 1)},
};
INSTANTIATE_TEST_SUITE_P(Layouts, StridedCopyTest, ::testing::ValuesIn(kCopyCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(StridedCopyTest, EmptyShapeWritesNothing) {
  std::mt19937 rng(7);
  const Placed src = place({3, 0, 4}, DType::bf16, row_major(3, 1), rng);
  const Placed dst = place({3, 0, 4}, DType::bf16, row_major(3, 1), rng);
  const std::vector<std::uint8_t> before = snapshot(dst.backing);
  ops::strided_copy(src.view, dst.view);
  EXPECT_EQ(snapshot(dst.backing), before);
}

TEST(StridedCopyTest, RejectsMismatchedViews) {
  Tensor src = random_tensor({3, 4}, DType::bf16, 140, 1);
  Tensor dst = random_tensor({3, 4}, DType::bf16, 140, 2);
  Tensor dst_t = random_tensor({4, 3}, DType::bf16, 140, 3);
  Tensor dst_flat = random_tensor({12}, DType::bf16, 140, 4);
  Tensor dst_3d = random_tensor({3, 4, 1}, DType::bf16, 140, 5);
  Tensor dst_f32 = random_tensor({3, 4}, DType::f32, 140, 6);
  Tensor dst_i32 = Tensor::empty({3, 4}, DType::i32);
  poison(dst_i32);
  Tensor src_u8 = Tensor::empty({3, 4}, DType::u8);
  std::memset(src_u8.ptr<std::uint8_t>(), 0x5a, 12);
  Tensor dst_u8 = Tensor::empty({3, 4}, DType::u8);
  poison(dst_u8);

  EXPECT_TRUE(rejects([&] { ops::strided_copy(src, dst_t); },
                      "dst must have the shape of src, [3, 4], got [4, 3]", {watch(dst_t)}));
  EXPECT_TRUE(rejects([&] { ops::strided_copy(src, dst_flat); },
                      "dst must have the shape of src, [3, 4], got [12]", {watch(dst_flat)}));
  EXPECT_TRUE(rejects([&] { ops::strided_copy(src, dst_3d); }, "dst must have the shape of src",
                      {watch(dst_3d)}));
  // A transposed view has the transposed shape: the copy is by index, not by memory.
  EXPECT_TRUE(rejects([&] { ops::strided_copy(src, dst.view().transpose(0, 1)); },
                      "dst must have the shape of src, [3, 4], got [4, 3]", {watch(dst)}));
  EXPECT_TRUE(rejects([&] { ops::strided_copy(src, dst_f32); },
                      "dst must have the dtype of src, bf16, got f32", {watch(dst_f32)}));
  // Same element size, different dtype: no reinterpreting copy.
  EXPECT_TRUE(rejects([&] { ops::strided_copy(dst_f32, dst_i32); },
                      "dst must have the dtype of src, f32, got i32", {watch(dst_i32)}));
  EXPECT_TRUE(rejects([&] { ops::strided_copy(src_u8, dst); },
                      "dst must have the dtype of src, u8, got bf16", {watch(dst)}));
  EXPECT_TRUE(rejects([&] { ops::strided_copy(src_u8, on_cuda(dst_u8)); }, "dst is on cuda:0",
                      {watch(dst_u8)}));
  EXPECT_TRUE(
      rejects([&] { ops::strided_copy(on_cuda(src), dst); }, "src is on cuda:0", {watch(dst)}));
}

}  // namespace
}  // namespace dsattn::test
