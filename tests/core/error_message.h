// Test helper: run a callable that must throw E and return the exception's message, so that tests
// can check that errors name the argument, the expectation and the actual value.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <utility>

namespace dsattn::testing {

template <typename E, typename Fn>
std::string thrown_message(Fn&& fn) {
  try {
    std::forward<Fn>(fn)();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an exception, none was thrown";
  return {};
}

}  // namespace dsattn::testing
