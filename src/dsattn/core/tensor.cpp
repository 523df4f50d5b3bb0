#include "dsattn/core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <numeric>

#include "dsattn/core/checked_size.h"
#include "dsattn/core/cuda_runtime.h"

namespace dsattn {

std::string to_string(Device d) {
  return d.is_cpu() ? std::string("cpu") : fmt::format("cuda:{}", d.index);
}

std::string shape_string(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

namespace {
void check_rank(std::size_t rank) {
  if (rank > kMaxDims) fail("tensor rank must be at most {}, got {}", kMaxDims, rank);
}

// The element count of a valid shape; refuses one whose count does not fit int64.
void check_count(std::span<const std::int64_t> shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    n = checked_mul(
        n, d, [&] { return fmt::format("elements of a tensor of shape {}", shape_string(shape)); });
  }
}
}  // namespace

TensorView::TensorView(void* data, DType dtype, Device device, std::span<const std::int64_t> shape)
    : data_(data), dtype_(dtype), device_(device), ndim_(static_cast<int>(shape.size())) {
  check_rank(shape.size());
  check_count(shape);
  std::int64_t stride = 1;
  for (int i = ndim_ - 1; i >= 0; --i) {
    if (shape[i] < 0) fail("tensor shape {} has a negative dimension", shape_string(shape));
    shape_[i] = shape[i];
    strides_[i] = stride;
    stride *= shape[i];
  }
}

TensorView::TensorView(void* data, DType dtype, Device device, std::span<const std::int64_t> shape,
                       std::span<const std::int64_t> strides)
    : data_(data), dtype_(dtype), device_(device), ndim_(static_cast<int>(shape.size())) {
  check_rank(shape.size());
  if (strides.size() != shape.size()) {
    fail("tensor strides must have {} entries, got {}", shape.size(), strides.size());
  }
  for (int i = 0; i < ndim_; ++i) {
    if (shape[i] < 0) fail("tensor shape {} has a negative dimension", shape_string(shape));
    shape_[i] = shape[i];
    strides_[i] = strides[i];
  }
  check_count(shape);
}

int TensorView::dim_index(int dim) const {
  const int d = dim < 0 ? dim + ndim_ : dim;
  if (d < 0 || d >= ndim_) fail("dimension {} out of range for a tensor of rank {}", dim, ndim_);
  return d;
}

std::int64_t TensorView::numel() const {
  std::int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= shape_[i];
  return n;
}

bool TensorView::is_contiguous() const {
  std::int64_t stride = 1;
  for (int i = ndim_ - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != stride) return false;
    stride *= shape_[i];
  }
  return true;
}

TensorView TensorView::slice(int dim, std::int64_t begin, std::int64_t end) const {
  const int d = dim_index(dim);
  if (begin < 0 || end < begin || end > shape_[d]) {
    fail("slice [{}, {}) out of range for dimension {} of size {}", begin, end, d, shape_[d]);
  }
  TensorView v = *this;
  v.shape_[d] = end - begin;
  v.data_ = static_cast<char*>(data_) +
            begin * strides_[d] * static_cast<std::int64_t>(dtype_size(dtype_));
  return v;
}

TensorView TensorView::transpose(int d0, int d1) const {
  TensorView v = *this;
  const int a = dim_index(d0), b = dim_index(d1);
  std::swap(v.shape_[a], v.shape_[b]);
  std::swap(v.strides_[a], v.strides_[b]);
  return v;
}

TensorView TensorView::select(int dim, std::int64_t index) const {
  const int d = dim_index(dim);
  const TensorView narrowed = slice(d, index, index + 1);
  TensorView v = narrowed;
  v.ndim_ = ndim_ - 1;
  for (int i = d; i < v.ndim_; ++i) {
    v.shape_[i] = narrowed.shape_[i + 1];
    v.strides_[i] = narrowed.strides_[i + 1];
  }
  return v;
}

TensorView TensorView::reshape(std::span<const std::int64_t> shape) const {
  if (!is_contiguous())
    fail("reshape needs a contiguous tensor, got strides {}", shape_string(strides()));
  TensorView v(data_, dtype_, device_, shape);
  if (v.numel() != numel()) {
    fail("cannot reshape a tensor of shape {} to {}", shape_string(this->shape()),
         shape_string(shape));
  }
  return v;
}

TensorView TensorView::with_dtype(DType dtype) const {
  if (dtype_size(dtype) != dtype_size(dtype_)) {
    fail("cannot view a {} tensor as {}: element sizes differ", dtype_name(dtype_),
         dtype_name(dtype));
  }
  TensorView v = *this;
  v.dtype_ = dtype;
  return v;
}

Tensor Tensor::empty(std::span<const std::int64_t> shape, DType dtype, Device device) {
  Tensor t;
  TensorView probe(nullptr, dtype, device, shape);  // validates rank and sizes
  const std::size_t bytes = static_cast<std::size_t>(std::max<std::int64_t>(
      1, checked_mul(probe.numel(), dtype_size(dtype), [&] {
        return fmt::format("bytes of a tensor of shape {}", shape_string(shape));
      })));
  if (device.is_cpu()) {
    // 64-byte alignment keeps rows vector-friendly and matches what BLAS prefers.
    const std::size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p)
      fail<Error>("out of host memory allocating {} bytes for a tensor of shape {}", bytes,
                  shape_string(shape));
    t.storage_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  } else {
    void* p = cuda::device_malloc(bytes, device);
    t.storage_ = std::shared_ptr<void>(p, [device](void* q) { cuda::device_free(q, device); });
  }
  t.view_ = TensorView(t.storage_.get(), dtype, device, shape);
  return t;
}

Tensor Tensor::to(Device device) const {
  if (!defined()) return Tensor();  // nothing to copy: its default view has no memory
  Tensor out = empty(view_.shape(), view_.dtype(), device);
  copy(view_, out.view());
  return out;
}

void copy(const TensorView& src, const TensorView& dst) {
  if (src.dtype() != dst.dtype() || src.numel() != dst.numel()) {
    fail("copy needs equal dtype and size: source {} {}, destination {} {}",
         dtype_name(src.dtype()), shape_string(src.shape()), dtype_name(dst.dtype()),
         shape_string(dst.shape()));
  }
  if (!src.is_contiguous() || !dst.is_contiguous()) fail("copy needs contiguous tensors");
  const std::size_t bytes = std::size_t(src.numel()) * dtype_size(src.dtype());
  if (bytes && (src.empty() || dst.empty())) {
    fail("copy needs tensors with memory, got a null {}", src.empty() ? "source" : "destination");
  }
  if (src.device().is_cpu() && dst.device().is_cpu()) {
    if (bytes) std::memmove(dst.data(), src.data(), bytes);
  } else {
    cuda::memcpy(dst.data(), dst.device(), src.data(), src.device(), bytes);
  }
}

}  // namespace dsattn
