// xpo/text/byte_tokenizer.hpp — a tokenizer.json (Hugging Face's format) for byte-level BPE without merges: ids
// 0..255 are the 256 bytes in GPT-2's printable alphabet, ids 256.. the given special tokens. Every byte string
// encodes (one token per byte) and decodes back. Used where no pretrained tokenizer exists: the embedded default
// of xpo-train, and the bandit verifier (bandit/), whose contexts and responses are single bytes.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>
#include <vector>

#include "xpo/text/unicode.hpp"

namespace xpo::text {

inline nlohmann::ordered_json byte_level_tokenizer_json(const std::vector<std::string>& specials) {
  using nlohmann::ordered_json;
  const auto& alphabet = ByteAlphabet::get();
  ordered_json vocab = ordered_json::object();
  for (int b = 0; b < 256; ++b) vocab[alphabet.utf8_of_byte[static_cast<std::size_t>(b)]] = b;
  ordered_json added = ordered_json::array();
  for (std::size_t i = 0; i < specials.size(); ++i) {
    const int id = 256 + static_cast<int>(i);
    vocab[specials[i]] = id;
    added.push_back({{"id", id}, {"content", specials[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  const ordered_json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  return {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added}, {"normalizer", nullptr},
          {"pre_tokenizer", byte_level}, {"post_processor", byte_level}, {"decoder", byte_level},
          {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                     {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                     {"vocab", vocab}, {"merges", ordered_json::array()}}}};
}

}  // namespace xpo::text
