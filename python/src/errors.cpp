// Library exceptions as Python ones: bad arguments and configurations are ValueError, what this
// build cannot do is NotImplementedError, a full cache and a bad checkpoint have their own classes.
#include "dsattn/core/error.h"

#include "bindings.h"

namespace dsattn::python {

namespace {

PyObject* g_cache_full = nullptr;
PyObject* g_checkpoint_error = nullptr;

void translate(const std::exception_ptr& p, void*) {
  try {
    std::rethrow_exception(p);
  } catch (const CacheFull& e) {
    PyErr_SetString(g_cache_full, e.what());
  } catch (const CheckpointError& e) {
    PyErr_SetString(g_checkpoint_error, e.what());
  } catch (const InvalidArgument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const ConfigError& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const Unsupported& e) {
    PyErr_SetString(PyExc_NotImplementedError, e.what());
  } catch (const Error& e) {  // CudaError and anything else of the library
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
}

}  // namespace

void bind_errors(nb::module_& m) {
  g_cache_full = PyErr_NewExceptionWithDoc(
      "dsattn.CacheFull",
      "The paged cache has too few free pages for a request; nothing was allocated.",
      PyExc_RuntimeError, nullptr);
  g_checkpoint_error = PyErr_NewExceptionWithDoc(
      "dsattn.CheckpointError",
      "A checkpoint (safetensors shard, shard index or quantisation scales) is missing, malformed "
      "or does not match the configuration.",
      PyExc_ValueError, nullptr);
  if (!g_cache_full || !g_checkpoint_error) throw nb::python_error();
  m.attr("CacheFull") = nb::borrow(g_cache_full);
  m.attr("CheckpointError") = nb::borrow(g_checkpoint_error);
  nb::register_exception_translator(translate);
}

}  // namespace dsattn::python
