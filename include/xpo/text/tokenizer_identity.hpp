// xpo/text/tokenizer_identity.hpp — whether two tokenizer folders tokenise alike, decided by what the files say,
// not by their bytes: a re-saved tokenizer.json (other indentation, key order, version) is the same tokenizer.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>

#include "xpo/core/json_file.hpp"
#include "xpo/text/tokenizer.hpp"

namespace xpo::text {

// The parts of a parsed tokenizer.json that decide ids and text: the model (type, vocabulary, merges, unk,
// byte fallback, ...), the added tokens, normalizer, pre-tokenizer, post-processor and decoder. Left out:
// "version", "truncation" and "padding", which transformers' tokenizer call overrides anyway.
inline nlohmann::json tokenization_parts(const nlohmann::json& tokenizer_json) {
  nlohmann::json out = nlohmann::json::object();
  for (const char* key : {"model", "added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"}) {
    out[key] = tokenizer_json.contains(key) ? tokenizer_json[key] : nlohmann::json();
  }
  return out;
}

// True when the two folders' tokenizer.json files have the same tokenization_parts (compared as JSON values:
// object key order and formatting do not matter, array order — merge priority, token order — does), and the
// tokenizer_config.json settings that change encoding (add_bos_token, add_eos_token, bos/eos token) agree.
// Throws xpo::FileError when a tokenizer.json is missing, unreadable or larger than `max_file_bytes`.
inline bool same_tokenizer(const std::filesystem::path& folder_a, const std::filesystem::path& folder_b,
                           std::uintmax_t max_file_bytes = kMaxTokenizerFileBytes) {
  if (tokenization_parts(read_json_file(folder_a / "tokenizer.json", max_file_bytes)) !=
      tokenization_parts(read_json_file(folder_b / "tokenizer.json", max_file_bytes)))
    return false;
  const auto settings = [&](const std::filesystem::path& folder) {
    nlohmann::json out = nlohmann::json::object();
    const auto file = folder / "tokenizer_config.json";
    if (!std::filesystem::exists(file)) return out;
    const auto j = read_json_file(file, max_file_bytes);
    if (!j.is_object()) return out;
    for (const char* key : {"add_bos_token", "add_eos_token", "bos_token", "eos_token"})
      if (j.contains(key)) out[key] = j[key];
    return out;
  };
  return settings(folder_a) == settings(folder_b);
}

}  // namespace xpo::text
