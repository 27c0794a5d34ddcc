// xpo/io/safetensors.hpp — read and write the safetensors format (https://huggingface.co/docs/safetensors).
// The untrusted header is parsed and checked by io/safetensors_header.hpp (no LibTorch); every violation is an
// xpo::FileError naming the file and the tensor. Tensors are read one at a time straight into their own memory (no second copy of the
// file); writing goes to a temporary name and is renamed into place.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "xpo/core/errors.hpp"
#include "xpo/io/safetensors_header.hpp"

namespace xpo::io {

struct SafetensorsDtype {
  const char* name;
  torch::ScalarType type;
  std::size_t bytes;
};

// LibTorch's type for each code the header parser admits (kSafetensorsDtypeSizes; a test checks they agree).
inline const std::vector<SafetensorsDtype>& safetensors_dtypes() {
  static const std::vector<SafetensorsDtype> table = [] {
    const std::pair<const char*, torch::ScalarType> types[] = {
        {"F64", torch::kDouble}, {"F32", torch::kFloat}, {"F16", torch::kHalf}, {"BF16", torch::kBFloat16},
        {"I64", torch::kLong},   {"I32", torch::kInt},   {"I16", torch::kShort}, {"I8", torch::kChar},
        {"U8", torch::kByte},    {"BOOL", torch::kBool},
    };
    std::vector<SafetensorsDtype> out;
    for (const auto& [name, type] : types) out.push_back({name, type, c10::elementSize(type)});
    return out;
  }();
  return table;
}

inline std::optional<SafetensorsDtype> dtype_from_safetensors(const std::string& name) {
  for (const auto& d : safetensors_dtypes())
    if (name == d.name) return d;
  return std::nullopt;
}

inline std::optional<SafetensorsDtype> dtype_to_safetensors(torch::ScalarType type) {
  for (const auto& d : safetensors_dtypes())
    if (type == d.type) return d;
  return std::nullopt;
}

struct SafetensorsEntry {
  std::string name;
  SafetensorsDtype dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  // byte offsets inside the data section
  std::uint64_t end = 0;
};

// An opened, validated safetensors file. Only the header is read on open; tensors are read on demand.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::filesystem::path& path);

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const { return metadata_; }
  [[nodiscard]] bool contains(const std::string& name) const { return index_.count(name) != 0; }
  [[nodiscard]] const SafetensorsEntry& entry(const std::string& name) const;

  // Read the tensor's bytes straight into `dst` (a contiguous CPU tensor of the stored dtype and shape): the
  // one-pass path for loading weights. Other destinations go through load() + copy_().
  void read_into(const std::string& name, torch::Tensor& dst) const;

  // The tensor as stored, then converted to `dtype` (if given) and moved to `device`. Widening BF16/F16 to F32
  // is exact.
  [[nodiscard]] torch::Tensor load(const std::string& name, std::optional<torch::ScalarType> dtype = std::nullopt,
                                   torch::Device device = torch::kCPU) const;

 private:
  [[noreturn]] void fail(const std::string& what) const { throw FileError(path_.string(), what); }
  std::filesystem::path path_;
  std::uint64_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

inline SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  auto header = SafetensorsHeader::read(path);
  SafetensorsFile f;
  f.path_ = path;
  f.data_start_ = header.data_start;
  f.metadata_ = std::move(header.metadata);
  for (auto& e : header.entries) {
    const auto dtype = dtype_from_safetensors(e.dtype);
    if (!dtype) f.fail("tensor \"" + e.name + "\": dtype " + e.dtype + " has no LibTorch type here");
    f.index_[e.name] = f.entries_.size();
    f.entries_.push_back(SafetensorsEntry{std::move(e.name), *dtype, std::move(e.shape), e.begin, e.end});
  }
  return f;
}

inline const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) fail("no tensor named \"" + name + "\"");
  return entries_[it->second];
}

inline torch::Tensor SafetensorsFile::load(const std::string& name, std::optional<torch::ScalarType> dtype,
                                           torch::Device device) const {
  const auto& e = entry(name);
  auto tensor = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype.type));
  read_into(name, tensor);
  return tensor.to(device, dtype.value_or(e.dtype.type));
}

inline void SafetensorsFile::read_into(const std::string& name, torch::Tensor& tensor) const {
  const auto& e = entry(name);
  TORCH_CHECK(tensor.device().is_cpu() && tensor.is_contiguous() && tensor.scalar_type() == e.dtype.type &&
                  tensor.sizes().vec() == e.shape,
              "read_into: the destination of \"", name, "\" must be a contiguous CPU tensor of its stored dtype and shape");
  std::ifstream in(path_, std::ios::binary);
  if (!in) fail("cannot open the file to read tensor \"" + name + "\"");
  in.seekg(static_cast<std::streamoff>(data_start_ + e.begin));
  in.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(e.end - e.begin));
  if (!in) fail("tensor \"" + name + "\": the file ended while reading its bytes (changed since it was opened?)");
  if (e.dtype.type == torch::kBool && tensor.view(torch::kByte).gt(1).any().item<bool>())
    fail("tensor \"" + name + "\": BOOL data holds bytes other than 0 and 1");
  // Written through its pointer, not by an in-place op: count it as one, so that whatever keys on the version
  // counter (autograd's saved-tensor checks, the models' low-precision weight copies) sees the change.
  torch::autograd::impl::bump_version(tensor);
}

// Write `tensors` (any device, any supported dtype; stored as they are) to `path` with HF's metadata
// {"format": "pt"} plus `metadata`. Written to "<path>.tmp" and renamed, so a crash never leaves half a file.
inline void save_safetensors(const std::filesystem::path& path,
                             const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                             std::map<std::string, std::string> metadata = {}) {
  metadata.try_emplace("format", "pt");
  nlohmann::ordered_json header;
  header["__metadata__"] = metadata;
  std::vector<torch::Tensor> host;
  std::uint64_t offset = 0;
  std::set<std::string> names;
  for (const auto& [name, tensor] : tensors) {
    if (!names.insert(name).second) throw FileError(path.string(), "tensor \"" + name + "\" given twice");
    const auto dtype = dtype_to_safetensors(tensor.scalar_type());
    if (!dtype) {
      throw FileError(path.string(), "tensor \"" + name + "\": dtype " + std::string(c10::toString(tensor.scalar_type())) +
                                         " has no safetensors code");
    }
    auto cpu = tensor.detach().to(torch::kCPU).contiguous();
    const auto bytes = static_cast<std::uint64_t>(cpu.numel()) * dtype->bytes;
    header[name] = {{"dtype", dtype->name}, {"shape", cpu.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    host.push_back(std::move(cpu));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // HF pads the header with spaces to a multiple of 8
  const auto tmp = std::filesystem::path(path.string() + ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw FileError(tmp.string(), "cannot create the file");
    std::uint64_t n = text.size();
    unsigned char length_bytes[8];
    for (auto& b : length_bytes) {
      b = static_cast<unsigned char>(n & 0xff);
      n >>= 8;
    }
    out.write(reinterpret_cast<const char*>(length_bytes), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& t : host) out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
    out.flush();
    if (!out) {
      out.close();
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      throw FileError(tmp.string(), "write failed (disk full?)");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    throw FileError(path.string(), "cannot move the written file into place: " + ec.message());
  }
}

}  // namespace xpo::io
