// xpo/core/json_file.hpp — reading and writing the small JSON and text files of checkpoints and configs. Writes
// are atomic (a temporary file renamed into place), so an existing file is never left half-written; reads are
// bounded, so a huge or hostile file is refused instead of exhausting memory.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>

#include "xpo/core/errors.hpp"

namespace xpo {

// Largest file read_text_file / read_json_file accept by default (tokenizer.json of large vocabularies is ~20 MB).
inline constexpr std::uintmax_t kDefaultMaxFileBytes = std::uintmax_t{1} << 30;

inline std::string read_text_file(const std::filesystem::path& path, std::uintmax_t max_bytes = kDefaultMaxFileBytes) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw FileError(path.string(), "cannot open the file: " + ec.message());
  if (size > max_bytes) {
    throw FileError(path.string(), "the file has " + std::to_string(size) + " bytes, more than the limit of " +
                                       std::to_string(max_bytes));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError(path.string(), "cannot open the file");
  std::string text(static_cast<std::size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (static_cast<std::uintmax_t>(in.gcount()) != size) throw FileError(path.string(), "read failed");
  return text;
}

inline nlohmann::json read_json_file(const std::filesystem::path& path, std::uintmax_t max_bytes = kDefaultMaxFileBytes) {
  const std::string text = read_text_file(path, max_bytes);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FileError(path.string(), std::string("not valid JSON: ") + e.what());
  }
}

// Writes `text` to "<path>.tmp" and renames it into place; on failure the temporary file is removed and the
// previous file (if any) is untouched.
inline void write_text_file_atomic(const std::filesystem::path& path, const std::string& text) {
  const auto tmp = std::filesystem::path(path.string() + ".tmp");
  std::error_code ec;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw FileError(tmp.string(), "cannot create the file");
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.flush();
    if (!out) {
      out.close();
      std::filesystem::remove(tmp, ec);
      throw FileError(tmp.string(), "write failed (disk full?)");
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    std::filesystem::remove(tmp, ec);
    throw FileError(path.string(), "cannot move the written file into place: " + why);
  }
}

inline void write_json_file(const std::filesystem::path& path, const nlohmann::json& j) {
  write_text_file_atomic(path, j.dump(2) + "\n");
}

}  // namespace xpo
