#include "dsattn/ops/cpu/blas_kernels.h"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace dsattn::ops::cpu {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

}  // namespace

std::string blas_kernel_family() {
  const char* name = openblas_get_corename();
  return name ? std::string(name) : std::string();
}

std::string best_blas_kernel_family() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the OS saves the registers (XGETBV).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    return "SkylakeX";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return "";
}

void reexec_with_best_blas_kernels(char** argv) noexcept {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;  // chosen by the user, or done
  try {
    // Only OpenBLAS's fallback is overridden: a family it detected stays, even where another
    // might be faster (its rounding is the one the user gets everywhere else).
    if (lower(blas_kernel_family()) != "prescott") return;
    const std::string best = best_blas_kernel_family();
    if (best.empty()) return;
    if (setenv("OPENBLAS_CORETYPE", best.c_str(), 1) != 0) return;
    if (setenv(kReexecMarker, best.c_str(), 1) != 0) {
      unsetenv("OPENBLAS_CORETYPE");
      return;
    }
  } catch (...) {
    return;
  }
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE");  // not executed again: go on as loaded
  unsetenv(kReexecMarker);
}

}  // namespace dsattn::ops::cpu
