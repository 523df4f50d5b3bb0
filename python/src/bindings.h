// The parts of the extension module dsattn._core, one binding file each.
#pragma once

#include <nanobind/nanobind.h>

namespace dsattn::python {

namespace nb = nanobind;

// dsattn.CacheFull and dsattn.CheckpointError, and the translation of every library exception.
void bind_errors(nb::module_& m);
// bf16 and fp8 e4m3 conversions of NumPy arrays.
void bind_dtypes(nb::module_& m);
void bind_config(nb::module_& m);
void bind_weights(nb::module_& m);
void bind_layer(nb::module_& m);
void bind_kernels(nb::module_& m);

}  // namespace dsattn::python
