// Which kernel each CUDA op launched last, and a one-line notice on stderr the first time an op
// falls back to a slower kernel than its Hopper one, with the reason: a shape outside the fast
// kernel's range is served, but never slowly without a word.
#pragma once

#include <string>
#include <string_view>

namespace dsattn::ops::cuda {

// Records that `op` launched `kernel`.
void record_kernel(std::string_view op, std::string_view kernel);

// Whether this is the first fallback `op` records in the process (record_fallback's test).
bool first_fallback(std::string_view op);

// Prints record_fallback's line on stderr.
void print_fallback(std::string_view op, std::string_view kernel, std::string_view fast_kernel,
                    std::string_view why);

// Records a fallback: `op` launched `kernel` instead of `fast_kernel` because of `why()` (a
// callable returning the reason). The first fallback of each op in the process prints one line on
// stderr; `why` is called for that line only, so a fallback taken on every call formats nothing.
template <class Why>
void record_fallback(std::string_view op, std::string_view kernel, std::string_view fast_kernel,
                     Why&& why) {
  record_kernel(op, kernel);
  if (first_fallback(op)) print_fallback(op, kernel, fast_kernel, why());
}

// The kernel `op` launched last in this process ("" if it has not run).
std::string last_kernel(std::string_view op);

}  // namespace dsattn::ops::cuda
