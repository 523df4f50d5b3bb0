// The test binaries' main(): GoogleTest's, after moving OpenBLAS to the fastest kernels this CPU
// runs (ops/cpu/blas_kernels.h; OPENBLAS_CORETYPE, when set, wins, as .ci/run sets it to run the
// CPU suite on a second kernel family).
#include <gtest/gtest.h>

#include "dsattn/ops/cpu/blas_kernels.h"

int main(int argc, char** argv) {
  dsattn::ops::cpu::reexec_with_best_blas_kernels(argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
