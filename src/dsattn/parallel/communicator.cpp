#include "dsattn/parallel/communicator.h"

#include "dsattn/core/checks.h"

namespace dsattn::parallel {

void check_all_reduce_tensor(const TensorView& t, const char* name) {
  check_dtype(t, name, DType::bf16);
  check_contiguous(t, name);
}

}  // namespace dsattn::parallel
