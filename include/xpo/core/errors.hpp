// xpo/core/errors.hpp — the exception types xpo throws. Every message names what was wrong (file, field, line)
// and what was expected, so a user can act on it without reading xpo's source.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace xpo {

// Base of everything xpo throws on bad input or a failed operation.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A configuration value (from code, a JSON file or the command line) is invalid. Carries one message per bad
// field so that a user fixes all of them in one go.
class ConfigError : public Error {
 public:
  explicit ConfigError(std::vector<std::string> problems)
      : Error(join(problems)), problems_(std::move(problems)) {}
  explicit ConfigError(std::string problem) : ConfigError(std::vector<std::string>{std::move(problem)}) {}

  // One line per bad field: "<field>: <value> — <what is allowed>".
  [[nodiscard]] const std::vector<std::string>& problems() const noexcept { return problems_; }

 private:
  static std::string join(const std::vector<std::string>& problems) {
    if (problems.size() == 1) return problems.front();
    std::string out = std::to_string(problems.size()) + " invalid configuration values:";
    for (const auto& p : problems) out += "\n  - " + p;
    return out;
  }
  std::vector<std::string> problems_;
};

// A file could not be read or written, or its contents are malformed. The message starts with the path.
class FileError : public Error {
 public:
  FileError(const std::string& path, const std::string& what) : Error(path + ": " + what), path_(path) {}
  [[nodiscard]] const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
};

}  // namespace xpo
