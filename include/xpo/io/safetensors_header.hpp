// xpo/io/safetensors_header.hpp — the untrusted part of reading a safetensors file, without LibTorch (so that it
// can be fuzzed with clang; see fuzz/). Layout: 8-byte little-endian header length N, N bytes of JSON header, then
// the data section. The header length is bounded by the file and by the format's limit, the JSON must be an
// object without duplicate names, each tensor's dtype must be known, its byte size must equal dtype size x shape
// product, and the tensors must tile the data section exactly (sorted by offset, no overlap, no hole). Every
// violation is an xpo::FileError naming the file and the tensor. io/safetensors.hpp maps the dtypes to LibTorch's
// and reads the tensors.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "xpo/core/errors.hpp"

namespace xpo::io {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

// safetensors' own limit on the JSON header (the reference implementation refuses larger headers).
inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// The dtypes xpo reads and writes, by their safetensors code, with their element size.
inline constexpr std::pair<std::string_view, std::size_t> kSafetensorsDtypeSizes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1}, {"U8", 1}, {"BOOL", 1},
};

inline std::optional<std::size_t> safetensors_dtype_size(std::string_view code) {
  for (const auto& [name, bytes] : kSafetensorsDtypeSizes)
    if (name == code) return bytes;
  return std::nullopt;
}

namespace detail {
[[noreturn]] inline void safetensors_fail(const std::filesystem::path& path, const std::string& what) {
  throw FileError(path.string(), what);
}
}  // namespace detail

struct SafetensorsHeaderEntry {
  std::string name;
  std::string dtype;  // a code of kSafetensorsDtypeSizes
  std::size_t element_bytes = 0;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  // byte offsets inside the data section
  std::uint64_t end = 0;
};

// A validated header: the tensors in the header's order, the metadata, and where the data section starts.
struct SafetensorsHeader {
  std::uint64_t data_start = 0;
  std::vector<SafetensorsHeaderEntry> entries;
  std::map<std::string, std::string> metadata;

  static SafetensorsHeader read(const std::filesystem::path& path);
};

inline SafetensorsHeader SafetensorsHeader::read(const std::filesystem::path& path) {
  SafetensorsHeader h;
  std::error_code ec;
  const auto file_size = std::filesystem::file_size(path, ec);
  if (ec) detail::safetensors_fail(path, "cannot read the file: " + ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::safetensors_fail(path, "cannot open the file");
  if (file_size < 8) detail::safetensors_fail(path, "truncated: " + std::to_string(file_size) + " bytes, shorter than the 8-byte header length");
  unsigned char length_bytes[8];
  in.read(reinterpret_cast<char*>(length_bytes), 8);
  std::uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | length_bytes[i];
  if (header_length > file_size - 8) {
    detail::safetensors_fail(path, "header length " + std::to_string(header_length) + " is larger than the rest of the file (" +
           std::to_string(file_size - 8) + " bytes): truncated or not a safetensors file");
  }
  if (header_length > kMaxSafetensorsHeaderBytes) {
    detail::safetensors_fail(path, "header length " + std::to_string(header_length) + " exceeds the format's limit of " +
           std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  std::string text(header_length, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_length));
  if (!in) detail::safetensors_fail(path, "could not read the " + std::to_string(header_length) + "-byte header");

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
    detail::safetensors_fail(path, std::string("the header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) detail::safetensors_fail(path, "tensor \"" + duplicate + "\" appears twice in the header");
  if (!header.is_object()) detail::safetensors_fail(path, "the header is not a JSON object");

  const std::uint64_t data_size = file_size - 8 - header_length;
  h.data_start = 8 + header_length;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) detail::safetensors_fail(path, "__metadata__ is not an object of strings");
      for (const auto& [key, v] : value.items()) {
        if (!v.is_string()) detail::safetensors_fail(path, "__metadata__[\"" + key + "\"] is not a string");
        h.metadata[key] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor \"" + name + "\": ";
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets"))
      detail::safetensors_fail(path, where + "needs dtype, shape and data_offsets");
    if (!value["dtype"].is_string()) detail::safetensors_fail(path, where + "dtype is not a string");
    const auto code = value["dtype"].get<std::string>();
    const auto element_bytes = safetensors_dtype_size(code);
    if (!element_bytes) detail::safetensors_fail(path, where + "unsupported dtype \"" + code + "\"");
    SafetensorsHeaderEntry entry{name, code, *element_bytes, {}, 0, 0};
    const auto& shape = value["shape"];
    if (!shape.is_array()) detail::safetensors_fail(path, where + "shape is not a list");
    std::uint64_t numel = 1;
    for (const auto& d : shape) {
      if (!d.is_number_unsigned()) detail::safetensors_fail(path, where + "shape holds " + d.dump() + ", not a non-negative integer");
      const auto dim = d.get<std::uint64_t>();
      if (dim > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) ||
          (dim != 0 && numel > std::numeric_limits<std::uint64_t>::max() / dim / *element_bytes))
        detail::safetensors_fail(path, where + "shape " + shape.dump() + " overflows");
      numel *= dim;
      entry.shape.push_back(static_cast<std::int64_t>(dim));
    }
    const auto& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
      detail::safetensors_fail(path, where + "data_offsets must be two non-negative integers");
    entry.begin = offsets[0].get<std::uint64_t>();
    entry.end = offsets[1].get<std::uint64_t>();
    if (entry.begin > entry.end) detail::safetensors_fail(path, where + "data_offsets " + offsets.dump() + " end before they begin");
    if (entry.end > data_size)
      detail::safetensors_fail(path, where + "data_offsets " + offsets.dump() + " run past the data section (" + std::to_string(data_size) + " bytes)");
    if (entry.end - entry.begin != numel * *element_bytes) {
      detail::safetensors_fail(path, where + "holds " + std::to_string(entry.end - entry.begin) + " bytes, but dtype " + code +
             " x shape " + shape.dump() + " needs " + std::to_string(numel * *element_bytes));
    }
    h.entries.push_back(std::move(entry));
  }
  // The tensors must tile the data section: sorted by offset, each starts where the previous one ended.
  std::vector<const SafetensorsHeaderEntry*> by_offset;
  for (const auto& e : h.entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  std::uint64_t cursor = 0;
  const SafetensorsHeaderEntry* previous = nullptr;
  for (const auto* e : by_offset) {
    if (e->begin < cursor)
      detail::safetensors_fail(path, "tensor \"" + e->name + "\" overlaps tensor \"" + previous->name + "\" in the data section");
    if (e->begin > cursor)
      detail::safetensors_fail(path, "unused bytes " + std::to_string(cursor) + ".." + std::to_string(e->begin) + " before tensor \"" + e->name + "\"");
    cursor = e->end;
    previous = e;
  }
  if (cursor != data_size)
    detail::safetensors_fail(path, "the data section has " + std::to_string(data_size - cursor) + " trailing bytes no tensor covers");
  return h;
}

}  // namespace xpo::io
