// Reading and writing the safetensors format: an 8-byte little-endian header length, a JSON
// header {name: {"dtype", "shape", "data_offsets": [begin, end]}, optional "__metadata__"} and the
// tensors' bytes. Files are memory-mapped read-only; every header field is checked against the
// file before any tensor is handed out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dsattn/core/dtype.h"
#include "dsattn/core/tensor.h"

namespace dsattn {

// The safetensors name of a dtype ("BF16", "F32", "F8_E4M3"); throws InvalidArgument for dtypes
// the format support here does not cover.
std::string_view safetensors_dtype_name(DType dtype);
// The dtype of a safetensors name, or nothing for names other than BF16, F32 and F8_E4M3.
std::optional<DType> safetensors_dtype(std::string_view name);

// One tensor of an open file: where its bytes lie in the data section.
struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  std::size_t offset = 0;  // from the start of the data section
  std::size_t nbytes = 0;
  std::int64_t numel() const;
};

// A memory-mapped safetensors file. Movable, not copyable; the mapping lives as long as the object.
class SafetensorsFile {
 public:
  // Throws CheckpointError naming the file (and the tensor, for per-tensor faults) when the file
  // cannot be read, is truncated, its header is not valid JSON, a dtype is unsupported, or a
  // tensor's offsets are out of range or do not match its shape and dtype.
  static SafetensorsFile open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  std::size_t file_size() const { return size_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::map<std::string, SafetensorsTensor>& tensors() const { return tensors_; }

  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  // nullptr when absent.
  const SafetensorsTensor* find(const std::string& name) const;
  // Throws CheckpointError naming the file and the tensor when absent.
  const SafetensorsTensor& tensor(const std::string& name) const;
  // The tensor's bytes, inside the mapping (no alignment guarantee beyond one byte).
  std::span<const std::byte> data(const SafetensorsTensor& t) const;
  // A host copy of a tensor of at most kMaxDims dimensions.
  Tensor load(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  void unmap();

  std::string path_;
  const std::byte* base_ = nullptr;  // the whole mapped file
  std::size_t size_ = 0;
  std::size_t data_start_ = 0;  // 8 + header length
  std::map<std::string, std::string> metadata_;
  std::map<std::string, SafetensorsTensor> tensors_;
};

// One tensor to write: the bytes are row-major and must hold exactly numel(shape) elements.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  std::span<const std::byte> bytes;
};

// Bytes of a contiguous host tensor, for SafetensorsEntry.
std::span<const std::byte> tensor_bytes(const Tensor& t);

// Writes `tensors`, in order, with the header padded to a multiple of 8 bytes. Throws
// CheckpointError naming the file for I/O failures and InvalidArgument for an entry whose byte
// count does not match its shape, an unsupported dtype or a repeated name.
void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace dsattn
