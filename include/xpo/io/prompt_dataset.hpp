// xpo/io/prompt_dataset.hpp — prompt datasets from JSONL files (or a folder of them), as TRL's online trainers
// read them: one JSON object per line with a "prompt" column, either standard (a string) or conversational (a list
// of {"role", "content"} messages), detected per file from its first row. Other columns are kept (the trainer
// reads "chat_template_kwargs"; "tools" / "documents", when present, must be lists, which
// text::row_template_kwargs hands to the chat template; the rest is ignored). A bad line is an error naming the file and line, or, with
// skip_bad_rows, skipped and counted. Lines longer than a limit are refused before they are held in memory.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "xpo/core/errors.hpp"

namespace xpo::io {

using PromptRows = std::vector<nlohmann::ordered_json>;

enum class PromptFormat { standard, conversational };

struct PromptDatasetOptions {
  bool skip_bad_rows = false;                       // skip and count bad lines instead of failing
  std::size_t max_line_bytes = std::size_t{1} << 24;  // 16 MiB per line
};

struct LoadedPrompts {
  PromptRows rows;
  std::size_t skipped_rows = 0;
  std::vector<std::pair<std::filesystem::path, PromptFormat>> files;  // each file read, with its format
};

namespace detail {

// The next line of `in` without its '\n' (and a trailing '\r'); false at the end. A line longer than `limit`
// throws FileError at that line, after reading at most limit + 1 bytes of it.
inline bool read_bounded_line(std::istream& in, std::string& line, std::size_t limit, const std::string& where) {
  line.clear();
  std::streambuf* buf = in.rdbuf();
  bool any = false;
  for (int c = buf->sbumpc(); c != std::char_traits<char>::eof(); c = buf->sbumpc()) {
    any = true;
    if (c == '\n') break;
    if (line.size() >= limit) throw FileError(where, "the line is longer than the limit of " + std::to_string(limit) + " bytes");
    line.push_back(static_cast<char>(c));
  }
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return any;
}

// What is wrong with a row's "prompt" for `format`, or "" when it is fine.
inline std::string prompt_problem(const nlohmann::ordered_json& prompt, PromptFormat format) {
  if (format == PromptFormat::standard) {
    if (!prompt.is_string()) return "\"prompt\" must be a string like the file's first row";
    if (prompt.get_ref<const std::string&>().empty()) return "\"prompt\" is empty";
    return "";
  }
  if (!prompt.is_array()) return "\"prompt\" must be a list of messages like the file's first row";
  if (prompt.empty()) return "\"prompt\" has no messages";
  for (std::size_t i = 0; i < prompt.size(); ++i) {
    const auto& m = prompt[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !(m["content"].is_string() || m["content"].is_array())) {
      return "message " + std::to_string(i) + " of \"prompt\" must be {\"role\": string, \"content\": string}";
    }
  }
  return "";
}

}  // namespace detail

// Reads one JSONL file into `out`.
inline void read_prompt_file(const std::filesystem::path& path, const PromptDatasetOptions& options, LoadedPrompts& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError(path.string(), "cannot open the dataset file");
  std::string line;
  std::size_t number = 0;
  std::optional<PromptFormat> format;
  std::size_t kept = 0;
  while (true) {
    ++number;
    const std::string where = path.string() + ":" + std::to_string(number);
    if (!detail::read_bounded_line(in, line, options.max_line_bytes, where)) break;
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    std::string problem;
    nlohmann::ordered_json row;
    try {
      row = nlohmann::ordered_json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      problem = std::string("not valid JSON: ") + e.what();
    }
    if (problem.empty() && !row.is_object()) problem = "a row must be a JSON object";
    if (problem.empty() && !row.contains("prompt")) problem = "no \"prompt\" column";
    if (problem.empty()) {
      if (!format) format = row["prompt"].is_array() ? PromptFormat::conversational : PromptFormat::standard;
      problem = detail::prompt_problem(row["prompt"], *format);
    }
    if (problem.empty() && row.contains("chat_template_kwargs") && !row["chat_template_kwargs"].is_object()) {
      problem = "\"chat_template_kwargs\" must be an object";
    }
    for (const char* column : {"tools", "documents"}) {  // passed to the chat template (text::row_template_kwargs)
      if (problem.empty() && row.contains(column) && !row[column].is_array() && !row[column].is_null()) {
        problem = std::string("\"") + column + "\" must be a list (of tool schemas / documents) or null";
      }
    }
    if (!problem.empty()) {
      if (!options.skip_bad_rows) throw FileError(where, problem);
      ++out.skipped_rows;
      continue;
    }
    out.rows.push_back(std::move(row));
    ++kept;
  }
  if (kept == 0) throw FileError(path.string(), "no usable prompt rows");
  out.files.emplace_back(path, *format);
}

// A .jsonl file, or a folder whose *.jsonl files are read in name order.
inline LoadedPrompts load_prompt_dataset(const std::filesystem::path& path, const PromptDatasetOptions& options = {}) {
  LoadedPrompts out;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(path, ec)) {
      if (e.is_regular_file() && e.path().extension() == ".jsonl") files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) throw FileError(path.string(), "the folder has no .jsonl files");
    for (const auto& f : files) read_prompt_file(f, options, out);
  } else {
    read_prompt_file(path, options, out);
  }
  return out;
}

// A deterministic train/eval split: `eval_fraction` of the rows (at least one, at most all but one), chosen by
// a shuffle seeded with `seed`; both parts keep the file order.
inline std::pair<PromptRows, PromptRows> split_eval(const PromptRows& rows, double eval_fraction, std::uint64_t seed) {
  if (!(eval_fraction > 0.0 && eval_fraction < 1.0)) {
    throw ConfigError("eval_fraction = " + std::to_string(eval_fraction) + ": must be in (0, 1)");
  }
  if (rows.size() < 2) throw ConfigError("eval_fraction: a dataset of " + std::to_string(rows.size()) + " rows cannot be split");
  auto n_eval = static_cast<std::size_t>(eval_fraction * static_cast<double>(rows.size()) + 0.5);
  n_eval = std::clamp<std::size_t>(n_eval, 1, rows.size() - 1);
  std::vector<std::size_t> order(rows.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<bool> is_eval(rows.size(), false);
  for (std::size_t i = 0; i < n_eval; ++i) is_eval[order[i]] = true;
  std::pair<PromptRows, PromptRows> out;
  for (std::size_t i = 0; i < rows.size(); ++i) (is_eval[i] ? out.second : out.first).push_back(rows[i]);
  return out;
}

}  // namespace xpo::io
