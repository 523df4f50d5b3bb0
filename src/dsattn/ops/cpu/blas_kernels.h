// Which OpenBLAS kernels the CPU backend's products run on. OpenBLAS picks its kernel family when
// it is loaded, from the CPU's model number; on a CPU whose model it does not know (virtual
// machines often report a generic one) it falls back to its SSE3 kernels ("Prescott"), which run
// the backend's products 3 to 5 times slower than the AVX2 or AVX-512 kernels the CPU can run.
// The family cannot change once OpenBLAS is loaded, only through OPENBLAS_CORETYPE before.
#pragma once

#include <string>

namespace dsattn::ops::cpu {

// The family OpenBLAS runs ("Prescott", "Haswell", "SkylakeX", ...).
std::string blas_kernel_family();

// The newest family whose instructions this CPU and OS support among those a DYNAMIC_ARCH OpenBLAS
// of this architecture carries: "SkylakeX" (AVX-512 F/BW/DQ/VL), "Haswell" (AVX2 and FMA), or ""
// (nothing better than what OpenBLAS detects by itself).
std::string best_blas_kernel_family();

// For a program's main(), before anything else: when OPENBLAS_CORETYPE is unset and OpenBLAS
// fell back to its SSE3 kernels ("Prescott") on a CPU that runs newer ones, sets
// OPENBLAS_CORETYPE (and kReexecMarker) to best_blas_kernel_family() and executes the program
// again with the same arguments, so that OpenBLAS loads with it (the second run finds the
// variable set and goes on). Returns when there is nothing to do, or when the program cannot be
// executed again (then it runs on the kernels it has). Programs that embed dsattn (Python among
// them) can set OPENBLAS_CORETYPE themselves before OpenBLAS loads.
void reexec_with_best_blas_kernels(char** argv) noexcept;

// Set, to the family chosen, in a program that reexec_with_best_blas_kernels ran again.
inline constexpr const char* kReexecMarker = "DSATTN_BLAS_REEXEC";

}  // namespace dsattn::ops::cpu
