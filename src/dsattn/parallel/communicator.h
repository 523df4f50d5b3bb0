// What a tensor-parallel layer needs from its group: its place in it, and a sum across it.
#pragma once

#include "dsattn/core/tensor.h"

namespace dsattn::parallel {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Replaces `t` on every rank by the sum over the ranks of their `t`, in place. `t` is a
  // contiguous bf16 tensor of the same shape on every rank, on the rank's device; on a GPU the sum
  // is ordered on the calling thread's current stream (core/cuda_runtime.h) and may still be
  // running when the call returns. Every rank receives identical bits.
  virtual void all_reduce_sum(const TensorView& t) = 0;
};

// Checks that `t` can be all-reduced: contiguous bf16. Throws InvalidArgument naming `name`.
void check_all_reduce_tensor(const TensorView& t, const char* name);

}  // namespace dsattn::parallel
