// Exceptions of dsattn. Every message names what is wrong: the argument, what was expected and
// what was given. The library never exits; the CLI turns these into one line on stderr.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace dsattn {

// Base class of every error the library raises.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A caller passed a tensor, shape, value or option that is not valid.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// A configuration file or field is malformed or impossible.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A checkpoint (safetensors shard, shard index or quantisation scales) is missing, malformed or
// does not match the configuration.
class CheckpointError : public Error {
 public:
  using Error::Error;
};

// The request is valid but this build or backend cannot serve it.
class Unsupported : public Error {
 public:
  using Error::Error;
};

// The paged cache has too few free pages for a request.
class CacheFull : public Error {
 public:
  using Error::Error;
};

// A CUDA runtime or library call failed.
class CudaError : public Error {
 public:
  using Error::Error;
};

template <typename E = InvalidArgument, typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw E(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace dsattn

// Throws InvalidArgument with the formatted message when `cond` is false.
#define DSATTN_CHECK(cond, ...)               \
  do {                                        \
    if (!(cond)) ::dsattn::fail(__VA_ARGS__); \
  } while (0)
