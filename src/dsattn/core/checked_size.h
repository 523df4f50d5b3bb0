// Size arithmetic on values that come from configs, files or the command line: a product or sum
// that would not fit int64 raises InvalidArgument naming what was being computed and the operands,
// instead of wrapping into a small (or negative) size that a later allocation or loop trusts.
// `what` is a string, or a callable returning one (formatted only when the check fails).
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include "dsattn/core/error.h"

namespace dsattn {

namespace detail {
template <class What>
std::string describe(const What& what) {
  if constexpr (std::is_invocable_v<const What&>) {
    return std::string(what());
  } else {
    return std::string(what);
  }
}
}  // namespace detail

template <class What>
std::int64_t checked_mul(std::int64_t a, std::int64_t b, const What& what) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) {
    fail("{}: {} x {} exceeds the largest size, 2^63 - 1", detail::describe(what), a, b);
  }
  return r;
}

template <class What>
std::int64_t checked_add(std::int64_t a, std::int64_t b, const What& what) {
  std::int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) {
    fail("{}: {} + {} exceeds the largest size, 2^63 - 1", detail::describe(what), a, b);
  }
  return r;
}

}  // namespace dsattn
