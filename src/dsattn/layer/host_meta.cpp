#include "dsattn/layer/host_meta.h"

namespace dsattn {

namespace {

Tensor upload(std::span<const std::int32_t> values, std::span<const std::int64_t> shape,
              Device device) {
  Tensor host = Tensor::empty(shape, DType::i32);
  std::copy(values.begin(), values.end(), host.ptr<std::int32_t>());
  return device.is_cpu() ? host : host.to(device);
}

}  // namespace

Tensor upload_i32(std::span<const std::int32_t> values, Device device) {
  const std::int64_t shape[] = {static_cast<std::int64_t>(values.size())};
  return upload(values, shape, device);
}

Tensor upload_i32(std::span<const std::int32_t> values, std::int64_t rows, std::int64_t cols,
                  Device device) {
  if (rows * cols != static_cast<std::int64_t>(values.size())) {
    fail("upload_i32: {} values do not fill [{}, {}]", values.size(), rows, cols);
  }
  const std::int64_t shape[] = {rows, cols};
  return upload(values, shape, device);
}

}  // namespace dsattn
