// xpo/io/safetensors.hpp — read and write the safetensors format (https://huggingface.co/docs/safetensors).
// Layout: 8-byte little-endian header length N, N bytes of JSON header, then the data section. The file is
// untrusted: the header length is bounded by the file, the JSON must be an object without duplicate names, each
// tensor's dtype must be known, its byte size must equal dtype size x shape product, and the tensors must tile
// the data section exactly (sorted by offset, no overlap, no hole). Every violation is an xpo::FileError naming
// the file and the tensor. Tensors are read one at a time straight into their own memory (no second copy of the
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

namespace xpo::io {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

// safetensors' own limit on the JSON header (the reference implementation refuses larger headers).
inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct SafetensorsDtype {
  const char* name;
  torch::ScalarType type;
  std::size_t bytes;
};

inline const std::vector<SafetensorsDtype>& safetensors_dtypes() {
  static const std::vector<SafetensorsDtype> table = {
      {"F64", torch::kDouble, 8}, {"F32", torch::kFloat, 4},  {"F16", torch::kHalf, 2},  {"BF16", torch::kBFloat16, 2},
      {"I64", torch::kLong, 8},   {"I32", torch::kInt, 4},    {"I16", torch::kShort, 2}, {"I8", torch::kChar, 1},
      {"U8", torch::kByte, 1},    {"BOOL", torch::kBool, 1},
  };
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
  SafetensorsFile f;
  f.path_ = path;
  std::error_code ec;
  const auto file_size = std::filesystem::file_size(path, ec);
  if (ec) f.fail("cannot read the file: " + ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) f.fail("cannot open the file");
  if (file_size < 8) f.fail("truncated: " + std::to_string(file_size) + " bytes, shorter than the 8-byte header length");
  unsigned char length_bytes[8];
  in.read(reinterpret_cast<char*>(length_bytes), 8);
  std::uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | length_bytes[i];
  if (header_length > file_size - 8) {
    f.fail("header length " + std::to_string(header_length) + " is larger than the rest of the file (" +
           std::to_string(file_size - 8) + " bytes): truncated or not a safetensors file");
  }
  if (header_length > kMaxSafetensorsHeaderBytes) {
    f.fail("header length " + std::to_string(header_length) + " exceeds the format's limit of " +
           std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  std::string text(header_length, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_length));
  if (!in) f.fail("could not read the " + std::to_string(header_length) + "-byte header");

  // Duplicate top-level names would silently shadow each other in a JSON object: refuse them.
  std::set<std::string> seen;
  std::string duplicate;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text, [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
      if (depth == 1 && event == nlohmann::json::parse_event_t::key) {
        const auto key = parsed.get<std::string>();
        if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
      }
      return true;
    });
  } catch (const nlohmann::json::exception& e) {
    f.fail(std::string("the header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) f.fail("tensor \"" + duplicate + "\" appears twice in the header");
  if (!header.is_object()) f.fail("the header is not a JSON object");

  const std::uint64_t data_size = file_size - 8 - header_length;
  f.data_start_ = 8 + header_length;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) f.fail("__metadata__ is not an object of strings");
      for (const auto& [key, v] : value.items()) {
        if (!v.is_string()) f.fail("__metadata__[\"" + key + "\"] is not a string");
        f.metadata_[key] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor \"" + name + "\": ";
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets"))
      f.fail(where + "needs dtype, shape and data_offsets");
    if (!value["dtype"].is_string()) f.fail(where + "dtype is not a string");
    const auto dtype = dtype_from_safetensors(value["dtype"].get<std::string>());
    if (!dtype) f.fail(where + "unsupported dtype \"" + value["dtype"].get<std::string>() + "\"");
    SafetensorsEntry entry{name, *dtype, {}, 0, 0};
    const auto& shape = value["shape"];
    if (!shape.is_array()) f.fail(where + "shape is not a list");
    std::uint64_t numel = 1;
    for (const auto& d : shape) {
      if (!d.is_number_unsigned()) f.fail(where + "shape holds " + d.dump() + ", not a non-negative integer");
      const auto dim = d.get<std::uint64_t>();
      if (dim > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) ||
          (dim != 0 && numel > std::numeric_limits<std::uint64_t>::max() / dim / dtype->bytes))
        f.fail(where + "shape " + shape.dump() + " overflows");
      numel *= dim;
      entry.shape.push_back(static_cast<std::int64_t>(dim));
    }
    const auto& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
      f.fail(where + "data_offsets must be two non-negative integers");
    entry.begin = offsets[0].get<std::uint64_t>();
    entry.end = offsets[1].get<std::uint64_t>();
    if (entry.begin > entry.end) f.fail(where + "data_offsets " + offsets.dump() + " end before they begin");
    if (entry.end > data_size)
      f.fail(where + "data_offsets " + offsets.dump() + " run past the data section (" + std::to_string(data_size) + " bytes)");
    if (entry.end - entry.begin != numel * dtype->bytes) {
      f.fail(where + "holds " + std::to_string(entry.end - entry.begin) + " bytes, but dtype " + dtype->name +
             " x shape " + shape.dump() + " needs " + std::to_string(numel * dtype->bytes));
    }
    f.entries_.push_back(std::move(entry));
  }
  // The tensors must tile the data section: sorted by offset, each starts where the previous one ended.
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : f.entries_) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  std::uint64_t cursor = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const auto* e : by_offset) {
    if (e->begin < cursor)
      f.fail("tensor \"" + e->name + "\" overlaps tensor \"" + previous->name + "\" in the data section");
    if (e->begin > cursor)
      f.fail("unused bytes " + std::to_string(cursor) + ".." + std::to_string(e->begin) + " before tensor \"" + e->name + "\"");
    cursor = e->end;
    previous = e;
  }
  if (cursor != data_size)
    f.fail("the data section has " + std::to_string(data_size - cursor) + " trailing bytes no tensor covers");
  for (std::size_t i = 0; i < f.entries_.size(); ++i) f.index_[f.entries_[i].name] = i;
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
