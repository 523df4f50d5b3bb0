#include "dsattn/ops/cuda/kernel_choice.h"

#include <fmt/format.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <set>

namespace dsattn::ops::cuda {

namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, std::string, std::less<>> last;
  std::set<std::string, std::less<>> noticed;
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void record_kernel(std::string_view op, std::string_view kernel) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.last.find(op);
  if (it == r.last.end()) {
    r.last.emplace(std::string(op), std::string(kernel));
  } else {
    it->second = kernel;
  }
}

bool first_fallback(std::string_view op) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (r.noticed.find(op) != r.noticed.end()) return false;
  r.noticed.emplace(op);
  return true;
}

void print_fallback(std::string_view op, std::string_view kernel, std::string_view fast_kernel,
                    std::string_view why) {
  std::fputs(fmt::format("dsattn: {} runs the slower {} kernel instead of {}: {}\n", op, kernel,
                         fast_kernel, why)
                 .c_str(),
             stderr);
}

std::string last_kernel(std::string_view op) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.last.find(op);
  return it == r.last.end() ? std::string() : it->second;
}

}  // namespace dsattn::ops::cuda
