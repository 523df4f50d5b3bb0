// The layer check's own arithmetic: the difference between two paths' outputs treats a NaN or an
// Inf on either side as a disagreement, never as agreement.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "dsattn/reference/layer_check.h"

namespace dsattn {
namespace {

TEST(RelativeDifference, LargestDifferenceOverLargestMagnitude) {
  const std::vector<double> a = {1.0, -2.0, 3.5}, b = {1.5, -2.0, 4.0};
  EXPECT_DOUBLE_EQ(reference::relative_difference(a, b), 0.5 / 4.0);
  const std::vector<double> zeros = {0.0, 0.0}, small = {0.25, -0.5};
  EXPECT_DOUBLE_EQ(reference::relative_difference(small, zeros), 0.5);
}

TEST(RelativeDifference, NanOrInfOnEitherSideIsADisagreement) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<double> finite = {1.0, 2.0, 3.0};
  for (const double bad : {nan, inf, -inf}) {
    for (std::size_t at = 0; at < finite.size(); ++at) {
      std::vector<double> spoiled = finite;
      spoiled[at] = bad;
      EXPECT_EQ(reference::relative_difference(spoiled, finite), inf) << bad << " at " << at;
      EXPECT_EQ(reference::relative_difference(finite, spoiled), inf) << bad << " at " << at;
    }
  }
  const std::vector<double> all_nan = {nan, nan};
  EXPECT_EQ(reference::relative_difference(all_nan, all_nan), inf);
}

}  // namespace
}  // namespace dsattn
