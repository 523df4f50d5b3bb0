// Non-owning tensor views and owning tensors.
//
// A TensorView is a pointer, a dtype, a device and up to four dimensions with element strides.
// Ops take views; Tensor owns the memory behind one (host memory, or CUDA device memory when the
// build has CUDA). Shapes are int64 throughout.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dsattn/core/dtype.h"
#include "dsattn/core/error.h"

namespace dsattn {

enum class DeviceType : std::uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return {DeviceType::cpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::cuda, index}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  bool operator==(const Device&) const = default;
};

std::string to_string(Device d);

inline constexpr int kMaxDims = 4;
using Shape = std::vector<std::int64_t>;

std::string shape_string(std::span<const std::int64_t> shape);

class TensorView {
 public:
  TensorView() = default;
  // A contiguous (row-major) view.
  TensorView(void* data, DType dtype, Device device, std::span<const std::int64_t> shape);
  TensorView(void* data, DType dtype, Device device, std::initializer_list<std::int64_t> shape)
      : TensorView(data, dtype, device,
                   std::span<const std::int64_t>(shape.begin(), shape.size())) {}
  // A view with explicit element strides.
  TensorView(void* data, DType dtype, Device device, std::span<const std::int64_t> shape,
             std::span<const std::int64_t> strides);

  void* data() const { return data_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  int ndim() const { return ndim_; }
  std::int64_t size(int dim) const { return shape_[dim_index(dim)]; }
  std::int64_t stride(int dim) const { return strides_[dim_index(dim)]; }
  std::span<const std::int64_t> shape() const { return {shape_.data(), std::size_t(ndim_)}; }
  std::span<const std::int64_t> strides() const { return {strides_.data(), std::size_t(ndim_)}; }
  std::int64_t numel() const;
  bool empty() const { return data_ == nullptr; }
  bool is_contiguous() const;

  // Typed pointer; throws when T does not match the dtype (fp8 and u8 are interchangeable bytes).
  template <typename T>
  T* ptr() const {
    check_element<T>();
    return static_cast<T*>(data_);
  }
  template <typename T>
  T* row(std::int64_t i) const {  // start of index i along dim 0
    return ptr<T>() + i * strides_[0];
  }

  // Narrows `dim` to [begin, end).
  TensorView slice(int dim, std::int64_t begin, std::int64_t end) const;
  // The same memory with dimensions d0 and d1 swapped (strides follow).
  TensorView transpose(int d0, int d1) const;
  // Index `index` of `dim`, with that dimension removed (rank drops by one).
  TensorView select(int dim, std::int64_t index) const;
  // Reinterprets a contiguous view with a new shape of the same element count.
  TensorView reshape(std::span<const std::int64_t> shape) const;
  TensorView reshape(std::initializer_list<std::int64_t> shape) const {
    return reshape(std::span<const std::int64_t>(shape.begin(), shape.size()));
  }
  // The same memory as another dtype of the same element size (bf16 <-> u16 style reuse).
  TensorView with_dtype(DType dtype) const;

 private:
  int dim_index(int dim) const;
  template <typename T>
  void check_element() const {
    const DType want = dtype_of<T>::value;
    const bool bytes = (want == DType::u8 || want == DType::fp8_e4m3) &&
                       (dtype_ == DType::u8 || dtype_ == DType::fp8_e4m3);
    if (want != dtype_ && !bytes) {
      fail("tensor of dtype {} accessed as {}", dtype_name(dtype_), dtype_name(want));
    }
  }

  void* data_ = nullptr;
  DType dtype_ = DType::f32;
  Device device_{};
  int ndim_ = 0;
  std::array<std::int64_t, kMaxDims> shape_{};
  std::array<std::int64_t, kMaxDims> strides_{};
};

// An owning tensor: contiguous memory on one device.
class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(std::span<const std::int64_t> shape, DType dtype,
                      Device device = Device::cpu());
  static Tensor empty(std::initializer_list<std::int64_t> shape, DType dtype,
                      Device device = Device::cpu()) {
    return empty(std::span<const std::int64_t>(shape.begin(), shape.size()), dtype, device);
  }

  const TensorView& view() const { return view_; }
  operator const TensorView&() const { return view_; }  // NOLINT: views are what ops take
  template <typename T>
  T* ptr() const {
    return view_.ptr<T>();
  }
  std::int64_t numel() const { return view_.numel(); }
  std::int64_t size(int dim) const { return view_.size(dim); }
  std::size_t nbytes() const { return std::size_t(view_.numel()) * dtype_size(view_.dtype()); }
  Device device() const { return view_.device(); }
  DType dtype() const { return view_.dtype(); }
  bool defined() const { return storage_ != nullptr; }

  // A copy of this tensor on `device` (host <-> CUDA copies need a CUDA build).
  Tensor to(Device device) const;

 private:
  std::shared_ptr<void> storage_;
  TensorView view_;
};

// Copies between contiguous views of the same shape and dtype, on any devices.
void copy(const TensorView& src, const TensorView& dst);

}  // namespace dsattn
