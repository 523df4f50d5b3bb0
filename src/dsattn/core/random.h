// Seeded, counter-based random numbers: element i of a stream depends only on (seed, stream, i),
// so tensors come out identical whatever the thread count or the order of generation.
#pragma once

#include <cstdint>

#include "dsattn/core/tensor.h"

namespace dsattn {

inline std::uint64_t mix64(std::uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [-1, 1) for element i of stream (seed, stream).
inline float uniform_pm1(std::uint64_t seed, std::uint64_t stream, std::uint64_t i) {
  const std::uint64_t h = mix64(mix64(seed ^ mix64(stream)) + i);
  return static_cast<float>(static_cast<double>(h >> 40) * 0x1.0p-23 - 1.0);
}

// Fills a contiguous f32 or bf16 CPU tensor with uniform values of the given standard deviation
// (and mean): the values fill [mean - sqrt(3)·std, mean + sqrt(3)·std).
void fill_uniform(const TensorView& t, std::uint64_t seed, std::uint64_t stream, float std,
                  float mean = 0.0f);

}  // namespace dsattn
