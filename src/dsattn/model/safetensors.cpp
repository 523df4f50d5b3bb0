#include "dsattn/model/safetensors.h"

#include <algorithm>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "dsattn/core/error.h"

namespace dsattn {

namespace {

using nlohmann::json;

constexpr std::uint64_t kMaxElements = std::uint64_t(1) << 48;

bool is_nonnegative_integer(const json& j) {
  return j.is_number_unsigned() || (j.is_number_integer() && j.get<std::int64_t>() >= 0);
}

}  // namespace

std::string_view safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::bf16:
      return "BF16";
    case DType::f32:
      return "F32";
    case DType::fp8_e4m3:
      return "F8_E4M3";
    default:
      break;
  }
  fail("safetensors: dtype {} is not supported (supported: bf16, f32, fp8_e4m3)",
       dtype_name(dtype));
}

std::optional<DType> safetensors_dtype(std::string_view name) {
  if (name == "BF16") return DType::bf16;
  if (name == "F32") return DType::f32;
  if (name == "F8_E4M3") return DType::fp8_e4m3;
  return std::nullopt;
}

std::int64_t SafetensorsTensor::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  // Only a regular file: opening a FIFO would wait for a writer forever, a device is no file.
  struct stat kind {};
  if (::stat(path.c_str(), &kind) == 0 && !S_ISREG(kind.st_mode)) {
    fail<CheckpointError>("safetensors file {} is not a regular file", path);
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    fail<CheckpointError>("cannot open safetensors file {}: {}", path, std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail<CheckpointError>("cannot stat safetensors file {}: {}", path, std::strerror(err));
  }
  f.size_ = static_cast<std::size_t>(st.st_size);
  if (f.size_ < 8) {
    ::close(fd);
    fail<CheckpointError>(
        "safetensors file {} is truncated: {} bytes, shorter than the 8-byte header length", path,
        f.size_);
  }
  void* base = ::mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (base == MAP_FAILED) {
    fail<CheckpointError>("cannot memory-map safetensors file {}: {}", path,
                          std::strerror(map_err));
  }
  f.base_ = static_cast<const std::byte*>(base);

  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) {
    header_len = (header_len << 8) | std::to_integer<std::uint64_t>(f.base_[i]);
  }
  if (header_len > f.size_ - 8) {
    fail<CheckpointError>(
        "safetensors file {}: header length {} runs past the end of the file ({} bytes; the file "
        "may be truncated)",
        path, header_len, f.size_);
  }
  f.data_start_ = 8 + static_cast<std::size_t>(header_len);
  const std::size_t data_size = f.size_ - f.data_start_;
  const char* text = reinterpret_cast<const char*>(f.base_ + 8);

  json header;
  // The JSON library keeps the last of two equal keys; a file naming a tensor twice is refused.
  std::set<std::string> names;
  std::string duplicate;
  const json::parser_callback_t note_names = [&](int depth, json::parse_event_t event,
                                                 json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && duplicate.empty() &&
        !names.insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  try {
    header = json::parse(text, text + header_len, note_names);
  } catch (const json::exception& e) {  // syntax, and numbers out of range (1e400)
    fail<CheckpointError>("safetensors file {}: header is not valid JSON: {}", path, e.what());
  }
  if (!duplicate.empty()) {
    fail<CheckpointError>("safetensors file {}: header names {} twice", path, duplicate);
  }
  if (!header.is_object()) {
    fail<CheckpointError>("safetensors file {}: header must be a JSON object, got {}", path,
                          header.type_name());
  }
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        fail<CheckpointError>("safetensors file {}: __metadata__ must be an object, got {}", path,
                              entry.type_name());
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          fail<CheckpointError>("safetensors file {}: __metadata__.{} must be a string, got {}",
                                path, key, value.dump());
        }
        f.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) {
      fail<CheckpointError>("safetensors file {}: tensor {}: entry must be an object, got {}", path,
                            name, entry.dump());
    }
    SafetensorsTensor t;
    t.name = name;
    const auto dt = entry.find("dtype");
    if (dt == entry.end() || !dt->is_string()) {
      fail<CheckpointError>("safetensors file {}: tensor {}: field dtype must be a string", path,
                            name);
    }
    const auto dtype = safetensors_dtype(dt->get<std::string>());
    if (!dtype) {
      fail<CheckpointError>(
          "safetensors file {}: tensor {} has unsupported dtype {} (supported: BF16, F32, "
          "F8_E4M3)",
          path, name, dt->get<std::string>());
    }
    t.dtype = *dtype;
    const auto sh = entry.find("shape");
    if (sh == entry.end() || !sh->is_array()) {
      fail<CheckpointError>("safetensors file {}: tensor {}: field shape must be an array", path,
                            name);
    }
    std::uint64_t numel = 1;
    for (const json& d : *sh) {
      if (!is_nonnegative_integer(d)) {
        fail<CheckpointError>(
            "safetensors file {}: tensor {}: shape must hold non-negative integers, got {}", path,
            name, sh->dump());
      }
      const std::uint64_t v = d.get<std::uint64_t>();
      if (v > kMaxElements || (v != 0 && numel > kMaxElements / v)) {
        fail<CheckpointError>("safetensors file {}: tensor {}: shape {} is too large", path, name,
                              sh->dump());
      }
      numel *= v;
      t.shape.push_back(static_cast<std::int64_t>(v));
    }
    const auto off = entry.find("data_offsets");
    if (off == entry.end() || !off->is_array() || off->size() != 2 ||
        !is_nonnegative_integer((*off)[0]) || !is_nonnegative_integer((*off)[1])) {
      fail<CheckpointError>(
          "safetensors file {}: tensor {}: field data_offsets must be [begin, end] with "
          "non-negative integers, got {}",
          path, name, off == entry.end() ? std::string("nothing") : off->dump());
    }
    const std::uint64_t begin = (*off)[0].get<std::uint64_t>();
    const std::uint64_t end = (*off)[1].get<std::uint64_t>();
    if (begin > end) {
      fail<CheckpointError>(
          "safetensors file {}: tensor {}: data_offsets [{}, {}] end before they begin", path, name,
          begin, end);
    }
    if (end > data_size) {
      fail<CheckpointError>(
          "safetensors file {}: tensor {}: data_offsets [{}, {}] run past the end of the data "
          "section ({} bytes; the file may be truncated)",
          path, name, begin, end, data_size);
    }
    const std::uint64_t want = numel * dtype_size(t.dtype);
    if (end - begin != want) {
      fail<CheckpointError>(
          "safetensors file {}: tensor {}: data_offsets [{}, {}] hold {} bytes, but shape {} of "
          "{} needs {}",
          path, name, begin, end, end - begin, shape_string(t.shape), dt->get<std::string>(), want);
    }
    t.offset = static_cast<std::size_t>(begin);
    t.nbytes = static_cast<std::size_t>(want);
    f.tensors_.emplace(name, std::move(t));
  }
  // As the format requires, the tensors tile the data section exactly: no two share bytes (one
  // tensor's bytes read as another's), no holes, nothing after the last.
  std::vector<const SafetensorsTensor*> by_offset;
  for (const auto& [name, t] : f.tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return a->offset != b->offset ? a->offset < b->offset : a->nbytes < b->nbytes;
  });
  std::size_t covered = 0;
  const SafetensorsTensor* previous = nullptr;
  for (const SafetensorsTensor* t : by_offset) {
    if (t->offset < covered) {
      fail<CheckpointError>("safetensors file {}: tensors {} and {} overlap (bytes {} to {})", path,
                            previous->name, t->name, t->offset, covered);
    }
    if (t->offset > covered) {
      fail<CheckpointError>(
          "safetensors file {}: bytes {} to {} of the data section belong to no tensor (before {})",
          path, covered, t->offset, t->name);
    }
    covered = t->offset + t->nbytes;
    previous = t;
  }
  if (covered != data_size) {
    fail<CheckpointError>(
        "safetensors file {}: {} bytes after the last tensor's data belong to no tensor", path,
        data_size - covered);
  }
  return f;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      data_start_(other.data_start_),
      metadata_(std::move(other.metadata_)),
      tensors_(std::move(other.tensors_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    data_start_ = other.data_start_;
    metadata_ = std::move(other.metadata_);
    tensors_ = std::move(other.tensors_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { unmap(); }

void SafetensorsFile::unmap() {
  if (base_ != nullptr) {
    ::munmap(const_cast<std::byte*>(base_), size_);
    base_ = nullptr;
  }
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const SafetensorsTensor& SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsTensor* t = find(name);
  if (t == nullptr) fail<CheckpointError>("safetensors file {} has no tensor {}", path_, name);
  return *t;
}

std::span<const std::byte> SafetensorsFile::data(const SafetensorsTensor& t) const {
  return {base_ + data_start_ + t.offset, t.nbytes};
}

Tensor SafetensorsFile::load(const std::string& name) const {
  const SafetensorsTensor& t = tensor(name);
  if (t.shape.size() > std::size_t(kMaxDims)) {
    fail<CheckpointError>(
        "safetensors file {}: tensor {} has {} dimensions, at most {} are supported", path_, name,
        t.shape.size(), kMaxDims);
  }
  Tensor out = Tensor::empty(t.shape, t.dtype);
  if (t.nbytes != 0) std::memcpy(out.view().data(), data(t).data(), t.nbytes);
  return out;
}

std::span<const std::byte> tensor_bytes(const Tensor& t) {
  DSATTN_CHECK(t.device().is_cpu(), "tensor_bytes: tensor must be on the host, got {}",
               to_string(t.device()));
  DSATTN_CHECK(t.view().is_contiguous(), "tensor_bytes: tensor must be contiguous");
  return {static_cast<const std::byte*>(t.view().data()), t.nbytes()};
}

void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  std::uint64_t offset = 0;
  for (const SafetensorsEntry& e : tensors) {
    DSATTN_CHECK(e.name != "__metadata__" && !e.name.empty(),
                 "write_safetensors {}: invalid tensor name \"{}\"", path, e.name);
    DSATTN_CHECK(names.insert(e.name).second, "write_safetensors {}: tensor {} appears twice", path,
                 e.name);
    std::uint64_t numel = 1;
    for (std::int64_t d : e.shape) {
      DSATTN_CHECK(d >= 0, "write_safetensors {}: tensor {} has negative shape {}", path, e.name,
                   shape_string(e.shape));
      numel *= static_cast<std::uint64_t>(d);
    }
    const std::uint64_t want = numel * dtype_size(e.dtype);
    const std::string_view dtype = safetensors_dtype_name(e.dtype);
    DSATTN_CHECK(e.bytes.size() == want,
                 "write_safetensors {}: tensor {} of shape {} and dtype {} needs {} bytes, got {}",
                 path, e.name, shape_string(e.shape), dtype, want, e.bytes.size());
    header[e.name] = {{"dtype", std::string(dtype)},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + want}}};
    offset += want;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail<CheckpointError>("cannot create safetensors file {}", path);
  unsigned char len[8];
  std::uint64_t n = text.size();
  for (unsigned char& b : len) {
    b = static_cast<unsigned char>(n & 0xff);
    n >>= 8;
  }
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const SafetensorsEntry& e : tensors) {
    out.write(reinterpret_cast<const char*>(e.bytes.data()),
              static_cast<std::streamsize>(e.bytes.size()));
  }
  out.close();
  if (!out) fail<CheckpointError>("cannot write safetensors file {}", path);
}

}  // namespace dsattn
