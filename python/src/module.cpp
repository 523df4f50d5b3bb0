// dsattn._core: the extension module behind the dsattn package (python/dsattn/).
#include "bindings.h"
#include "dsattn/core/cuda_runtime.h"

NB_MODULE(_core, m) {
  using namespace dsattn::python;
  m.doc() = "DeepSeek Sparse Attention: the compiled core of the dsattn package.";
  bind_errors(m);
  bind_dtypes(m);
  bind_config(m);
  bind_weights(m);
  bind_layer(m);
  bind_kernels(m);
  m.def("built_with_cuda", &dsattn::cuda::built_with_cuda,
        "True when this module was built with the CUDA backend.");
  m.def("cuda_device_count", &dsattn::cuda::device_count,
        "Usable CUDA devices (0 without the CUDA backend or a driver).");
}
