// Which kernel each CUDA op launched last, and a one-line notice on stderr the first time an op
// falls back to a slower kernel than its Hopper one, with the reason: a shape outside the fast
// kernel's range is served, but never slowly without a word.
#pragma once

#include <string>
#include <string_view>

namespace dsattn::ops::cuda {

// Records that `op` launched `kernel`.
void record_kernel(std::string_view op, std::string_view kernel);

// Records a fallback: `op` launched `kernel` instead of `fast_kernel` because of `why`. The first
// fallback of each op in the process prints one line on stderr.
void record_fallback(std::string_view op, std::string_view kernel, std::string_view fast_kernel,
                     std::string_view why);

// The kernel `op` launched last in this process ("" if it has not run).
std::string last_kernel(std::string_view op);

}  // namespace dsattn::ops::cuda
