// The test binaries start through reexec_with_best_blas_kernels (tests/test_main.cpp): OpenBLAS
// then runs the family OPENBLAS_CORETYPE names, or one at least as new as the best this CPU
// supports.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>

#include "dsattn/ops/cpu/blas_kernels.h"

namespace dsattn::ops::cpu {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

TEST(BlasKernels, TheChosenOrANewerThanFallbackFamilyRuns) {
  const std::string family = lower(blas_kernel_family());
  const std::string best = best_blas_kernel_family();
  EXPECT_TRUE(best.empty() || best == "SkylakeX" || best == "Haswell") << best;
  ASSERT_FALSE(family.empty());
  if (std::getenv(kReexecMarker) != nullptr) {
    // main() ran the binary again with the best family: OpenBLAS left its fallback.
    EXPECT_NE(family, "prescott") << "best family " << best;
  } else if (const char* chosen = std::getenv("OPENBLAS_CORETYPE")) {
    EXPECT_EQ(family, lower(chosen));  // the user's choice (.ci/run's second pass) holds
  } else if (!best.empty()) {
    // Nothing chosen and no second run: OpenBLAS detected a family of its own.
    EXPECT_NE(family, "prescott") << "best family " << best;
  }
}

}  // namespace
}  // namespace dsattn::ops::cpu
