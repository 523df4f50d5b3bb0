#include "dsattn/ops/cpu/blas_kernels.h"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <initializer_list>

namespace dsattn::ops::cpu {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool is_one_of(const std::string& name, std::initializer_list<const char*> names) {
  return std::any_of(names.begin(), names.end(), [&](const char* n) { return name == n; });
}

// Whether OpenBLAS's family `current` (lower case) is at least `best`'s.
bool covers(const std::string& current, const std::string& best) {
  if (best == "SkylakeX") return is_one_of(current, {"skylakex", "cooperlake", "sapphirerapids"});
  if (best == "Haswell") {
    return is_one_of(current,
                     {"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids", "excavator"});
  }
  return true;
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
    const std::string best = best_blas_kernel_family();
    if (best.empty() || covers(lower(blas_kernel_family()), best)) return;
    if (setenv("OPENBLAS_CORETYPE", best.c_str(), 1) != 0) return;
  } catch (...) {
    return;
  }
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE");  // not executed again: go on as loaded
}

}  // namespace dsattn::ops::cpu
