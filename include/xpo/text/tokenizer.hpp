// xpo/text/tokenizer.hpp — byte-level BPE from a Hugging Face tokenizer.json, id-exact with HF `tokenizers`.
//
// The pipeline is HF's, step for step:
//   1. added tokens that are not `normalized` are split out of the raw text (leftmost-longest, honouring
//      single_word / lstrip / rstrip);
//   2. each remaining piece is normalized (NFC, ... or a Sequence), then `normalized` added tokens are split out;
//   3. the pre-tokenizer (Split with a regex, ByteLevel, Digits, or a Sequence of them) cuts the rest into words;
//   4. each word's UTF-8 bytes start as one symbol per byte and are merged by BPE rank (cached per word);
//   5. the post-processor (TemplateProcessing, e.g. Llama-3's BOS) adds special tokens when asked.
// Decoding maps tokens back to bytes (ByteLevel decoder) and decodes the bytes lossily (one U+FFFD per maximal
// invalid subsequence). Ids that have no token (models often have more embedding rows than the tokenizer has
// tokens) are skipped, as the reference decoder does.
//
// Special tokens (bos/eos/pad/unk), the chat template and the model's generation stop ids are read from the
// checkpoint folder's tokenizer_config.json, special_tokens_map.json, chat_template.jinja and
// generation_config.json, the way transformers resolves them.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "xpo/core/errors.hpp"
#include "xpo/core/json_file.hpp"
#include "xpo/core/padding.hpp"
#include "xpo/text/regex.hpp"
#include "xpo/text/unicode.hpp"

namespace xpo::text {

using TokenId = std::int64_t;

// The largest tokenizer file accepted by default (the biggest public tokenizer.json files are ~30 MB).
inline constexpr std::uintmax_t kMaxTokenizerFileBytes = std::uintmax_t{256} << 20;

// Bounds on what loading a tokenizer folder may read: a file or a chat template beyond them is refused with a
// message naming it and the limit, instead of exhausting memory.
struct TokenizerLimits {
  std::uintmax_t max_file_bytes = kMaxTokenizerFileBytes;  // tokenizer.json and its companion files
  std::size_t max_chat_template_bytes = std::size_t{1} << 20;  // the chat template, from either file it may be in
};

// An entry of tokenizer.json's "added_tokens".
struct AddedToken {
  TokenId id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// The special tokens as transformers resolves them. Strings are the tokens' text (what chat templates see).
struct SpecialTokens {
  std::optional<std::string> bos_token, eos_token, pad_token, unk_token;
  std::optional<TokenId> bos_id, eos_id, pad_id, unk_id;
  std::vector<std::string> additional;  // additional_special_tokens
  std::vector<TokenId> generation_eos_ids;  // generation_config.json eos_token_id, else {eos_id}
};

// Options of a batch encode. max_length 0 = no truncation; pad_to 0 = pad to the longest row.
struct BatchEncodeOptions {
  bool add_special_tokens = false;
  std::size_t max_length = 0;
  PaddingSide truncation_side = PaddingSide::right;
  bool pad = true;
  PaddingSide padding_side = PaddingSide::left;
  std::size_t pad_to = 0;
  unsigned threads = 0;  // 0 = one per hardware thread
};

// ids and attention masks of a batch; all rows have the same length when padding was asked for.
struct BatchEncoding {
  std::vector<std::vector<TokenId>> ids;
  std::vector<std::vector<TokenId>> attention_mask;
};

namespace detail {

inline const nlohmann::json* find_member(const nlohmann::json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  const auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

inline bool json_flag(const nlohmann::json& j, const char* key, bool fallback) {
  const auto* v = find_member(j, key);
  return v != nullptr && v->is_boolean() ? v->get<bool>() : fallback;
}

inline std::string json_type(const nlohmann::json& j) {
  const auto* t = find_member(j, "type");
  return t != nullptr && t->is_string() ? t->get<std::string>() : std::string();
}

// Unicode alphanumeric or '_' (HF's word character for single_word added tokens).
inline bool is_word_char(char32_t c) {
  if (c == '_') return true;
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

// The code point that ends at byte `end` (exclusive) of valid UTF-8 text.
inline char32_t last_char_before(std::string_view s, std::size_t end) {
  std::size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return decode_utf8_at(s, start, end - start);
}

inline std::string regex_escape(std::string_view literal) {
  std::string out;
  for (const char c : literal) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u)) out += '\\';
    out += c;
  }
  return out;
}

// GPT-2's pre-tokenization regex, which ByteLevel(use_regex = true) applies (it is not written in the file).
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace detail

class Tokenizer {
 public:
  // ---- loading --------------------------------------------------------------------------------------------
  // A checkpoint folder: tokenizer.json plus (when present) tokenizer_config.json, special_tokens_map.json,
  // chat_template.jinja and generation_config.json.
  static Tokenizer from_pretrained(const std::filesystem::path& folder, const TokenizerLimits& limits = {}) {
    const auto file = folder / "tokenizer.json";
    if (!std::filesystem::exists(file)) {
      throw FileError(file.string(), "no tokenizer.json in the checkpoint folder (only fast, byte-level BPE "
                                     "tokenizers are supported)");
    }
    Tokenizer t = from_file(file, limits.max_file_bytes);
    t.source_folder_ = folder;
    nlohmann::json config = nlohmann::json::object();
    if (std::filesystem::exists(folder / "tokenizer_config.json"))
      config = read_json_file(folder / "tokenizer_config.json", limits.max_file_bytes);
    nlohmann::json special_map = nlohmann::json::object();
    if (std::filesystem::exists(folder / "special_tokens_map.json"))
      special_map = read_json_file(folder / "special_tokens_map.json", limits.max_file_bytes);
    t.configure_special_tokens(config, special_map, (folder / "tokenizer_config.json").string());
    std::filesystem::path template_file;
    if (const auto jinja = folder / "chat_template.jinja"; std::filesystem::exists(jinja)) {
      template_file = jinja;
      t.chat_template_ = read_text_file(jinja, limits.max_file_bytes);
    } else if (const auto* tmpl = detail::find_member(config, "chat_template")) {
      template_file = folder / "tokenizer_config.json";
      t.chat_template_ = parse_chat_template_field(*tmpl, template_file.string());
    }
    if (t.chat_template_ && t.chat_template_->size() > limits.max_chat_template_bytes) {
      throw FileError(template_file.string(), "the chat template has " + std::to_string(t.chat_template_->size()) +
                                                  " bytes, more than the limit of " +
                                                  std::to_string(limits.max_chat_template_bytes));
    }
    if (std::filesystem::exists(folder / "generation_config.json")) {
      const auto gen = read_json_file(folder / "generation_config.json", limits.max_file_bytes);
      if (const auto* eos = detail::find_member(gen, "eos_token_id")) {
        t.special_.generation_eos_ids.clear();
        const auto add = [&](const nlohmann::json& v) {
          if (!v.is_number_integer()) {
            throw FileError((folder / "generation_config.json").string(), "eos_token_id must be an integer or a list of integers");
          }
          t.special_.generation_eos_ids.push_back(v.get<TokenId>());
        };
        if (eos->is_array()) {
          for (const auto& v : *eos) add(v);
        } else {
          add(*eos);
        }
      }
    }
    return t;
  }

  // tokenizer.json alone (no special-token roles except what its added tokens say).
  static Tokenizer from_file(const std::filesystem::path& path, std::uintmax_t max_file_bytes = kMaxTokenizerFileBytes) {
    return from_json(read_json_file(path, max_file_bytes), path.string());
  }

  // A parsed tokenizer.json; `source` names it in error messages.
  static Tokenizer from_json(const nlohmann::json& j, const std::string& source = "tokenizer.json") {
    Tokenizer t;
    t.load(j, source);
    return t;
  }

  // ---- encoding -------------------------------------------------------------------------------------------
  // Token ids of `text` (valid UTF-8). add_special_tokens applies the post-processor (e.g. a BOS), as in HF.
  [[nodiscard]] std::vector<TokenId> encode(std::string_view text, bool add_special_tokens = true) const {
    std::vector<TokenId> ids;
    encode_into(text, ids);
    if (add_special_tokens) return apply_post_processor(std::move(ids));
    return ids;
  }

  // Encodes many texts (in parallel over `options.threads`), truncates and pads them.
  [[nodiscard]] BatchEncoding encode_batch(const std::vector<std::string>& texts,
                                           const BatchEncodeOptions& options = {}) const {
    BatchEncoding out;
    out.ids.resize(texts.size());
    unsigned threads = options.threads != 0 ? options.threads : std::max(1U, std::thread::hardware_concurrency());
    threads = static_cast<unsigned>(std::min<std::size_t>(threads, std::max<std::size_t>(texts.size(), 1)));
    std::vector<std::exception_ptr> errors(threads);
    const auto work = [&](unsigned worker) {
      try {
        for (std::size_t i = worker; i < texts.size(); i += threads) out.ids[i] = encode(texts[i], options.add_special_tokens);
      } catch (...) {
        errors[worker] = std::current_exception();
      }
    };
    if (threads <= 1) {
      work(0);
    } else {
      std::vector<std::thread> pool;
      for (unsigned w = 0; w < threads; ++w) pool.emplace_back(work, w);
      for (auto& th : pool) th.join();
    }
    for (auto& e : errors) {
      if (e) std::rethrow_exception(e);
    }
    std::size_t width = options.pad_to;
    for (auto& row : out.ids) {
      if (options.max_length > 0 && row.size() > options.max_length) {
        if (options.truncation_side == PaddingSide::right) {
          row.resize(options.max_length);
        } else {
          row.erase(row.begin(), row.end() - static_cast<std::ptrdiff_t>(options.max_length));
        }
      }
      width = std::max(width, row.size());
    }
    out.attention_mask.resize(out.ids.size());
    for (std::size_t r = 0; r < out.ids.size(); ++r) {
      auto& row = out.ids[r];
      auto& mask = out.attention_mask[r];
      mask.assign(row.size(), 1);
      if (!options.pad || row.size() == width) continue;
      const TokenId pad = special_.pad_id.value_or(special_.eos_id.value_or(0));
      const std::size_t missing = width - row.size();
      if (options.padding_side == PaddingSide::left) {
        row.insert(row.begin(), missing, pad);
        mask.insert(mask.begin(), missing, 0);
      } else {
        row.insert(row.end(), missing, pad);
        mask.insert(mask.end(), missing, 0);
      }
    }
    return out;
  }

  // ---- decoding -------------------------------------------------------------------------------------------
  // Text of `ids`. skip_special_tokens drops the tokens marked "special" (before the bytes are decoded, so the
  // two halves of a character around a dropped token join again). Unknown ids are skipped.
  [[nodiscard]] std::string decode(std::span<const TokenId> ids, bool skip_special_tokens = false) const {
    std::string bytes;
    bytes.reserve(ids.size() * 4);
    for (const TokenId id : ids) {
      if (id < 0 || static_cast<std::size_t>(id) >= token_bytes_.size() || !has_token_[static_cast<std::size_t>(id)]) continue;
      if (skip_special_tokens && is_special_[static_cast<std::size_t>(id)]) continue;
      bytes += token_bytes_[static_cast<std::size_t>(id)];
    }
    return utf8_lossy(bytes);
  }
  [[nodiscard]] std::string decode(const std::vector<TokenId>& ids, bool skip_special_tokens = false) const {
    return decode(std::span<const TokenId>(ids), skip_special_tokens);
  }

  // ---- vocabulary -----------------------------------------------------------------------------------------
  // The token string of an id (byte-level alphabet for BPE tokens, the content for added tokens).
  [[nodiscard]] std::optional<std::string> id_to_token(TokenId id) const {
    if (id < 0 || static_cast<std::size_t>(id) >= tokens_.size() || !has_token_[static_cast<std::size_t>(id)]) return std::nullopt;
    return tokens_[static_cast<std::size_t>(id)];
  }
  [[nodiscard]] std::optional<TokenId> token_to_id(std::string_view token) const {
    if (const auto it = added_ids_.find(std::string(token)); it != added_ids_.end()) return it->second;
    if (const auto it = vocab_.find(std::string(token)); it != vocab_.end()) return it->second;
    return std::nullopt;
  }
  // One more than the largest id (model vocabulary and added tokens).
  [[nodiscard]] std::size_t vocab_size() const noexcept { return tokens_.size(); }
  [[nodiscard]] bool is_special(TokenId id) const {
    return id >= 0 && static_cast<std::size_t>(id) < is_special_.size() && is_special_[static_cast<std::size_t>(id)];
  }
  [[nodiscard]] const std::vector<AddedToken>& added_tokens() const noexcept { return added_; }
  [[nodiscard]] const SpecialTokens& special_tokens() const noexcept { return special_; }
  [[nodiscard]] const std::optional<std::string>& chat_template() const noexcept { return chat_template_; }
  [[nodiscard]] std::size_t model_max_length() const noexcept { return model_max_length_; }
  // The checkpoint folder this tokenizer was read from (from_pretrained), so its files can be copied next to a
  // trained model; empty otherwise.
  [[nodiscard]] const std::filesystem::path& source_folder() const noexcept { return source_folder_; }
  // The files of a checkpoint folder that make up the tokenizer (those that exist in source_folder()).
  [[nodiscard]] std::vector<std::filesystem::path> source_files() const {
    std::vector<std::filesystem::path> files;
    if (source_folder_.empty()) return files;
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}) {
      if (std::filesystem::exists(source_folder_ / name)) files.push_back(source_folder_ / name);
    }
    return files;
  }

  // Sets a chat template given directly (e.g. TRL's SIMPLE_CHAT_TEMPLATE for a base model).
  void set_chat_template(std::string source) { chat_template_ = std::move(source); }
  // Sets the EOS token, which also becomes the only generation stop id (as tokenizer_config.json's eos_token
  // does when there is no generation_config.json).
  void set_eos_token(const std::string& token) {
    const auto id = token_to_id(token);
    if (!id) throw Error("set_eos_token: \"" + token + "\" is not a token of this tokenizer");
    special_.eos_token = token;
    special_.eos_id = *id;
    special_.generation_eos_ids = {*id};
  }
  // Sets the pad token (TRL's fallback when a tokenizer has none: the EOS token).
  void set_pad_token(const std::string& token) {
    const auto id = token_to_id(token);
    if (!id) throw Error("set_pad_token: \"" + token + "\" is not a token of this tokenizer");
    special_.pad_token = token;
    special_.pad_id = *id;
  }

 private:
  // ---- components -----------------------------------------------------------------------------------------
  enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };
  struct SplitStep {
    std::shared_ptr<const Regex> regex;
    SplitBehavior behavior = SplitBehavior::isolated;
    bool invert = false;
  };
  struct ByteLevelStep {
    bool add_prefix_space = false;
    std::shared_ptr<const Regex> regex;  // GPT-2's when use_regex
  };
  using PreTokenizerStep = std::variant<SplitStep, ByteLevelStep>;
  enum class NormalizerStep { nfc, nfd, nfkc, nfkd, lowercase };

  struct TemplatePiece {
    bool is_sequence = false;
    std::vector<TokenId> ids;  // the special token's ids
  };

  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  struct MergeCache {
    static constexpr std::size_t kShards = 16;
    static constexpr std::size_t kCapacityPerShard = 4096;
    struct Shard {
      std::mutex mutex;
      std::unordered_map<std::string, std::vector<TokenId>, StringHash, std::equal_to<>> map;
    };
    std::array<Shard, kShards> shards;
  };

  static std::string parse_chat_template_field(const nlohmann::json& field, const std::string& source) {
    if (field.is_string()) return field.get<std::string>();
    if (field.is_array()) {  // named templates: [{"name": "default", "template": "..."}, ...]
      for (const auto& entry : field) {
        if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
            entry["template"].is_string()) {
          return entry["template"].get<std::string>();
        }
      }
      throw FileError(source, "chat_template is a list of named templates without one named \"default\"");
    }
    throw FileError(source, "chat_template must be a string or a list of {name, template}");
  }

  void load(const nlohmann::json& j, const std::string& source) {
    const auto fail = [&](const std::string& what) { throw FileError(source, what); };
    if (!j.is_object()) fail("not a tokenizer.json: the top level is not a JSON object");
    const auto* model = detail::find_member(j, "model");
    if (model == nullptr || !model->is_object()) fail("no \"model\" object");
    const std::string type = model->value("type", std::string("BPE"));
    if (type != "BPE") fail("model.type \"" + type + "\" is not supported (only byte-level \"BPE\")");
    if (detail::json_flag(*model, "byte_fallback", false)) fail("model.byte_fallback is not supported (byte-level BPE only)");
    if (const auto* d = detail::find_member(*model, "dropout"); d != nullptr && d->is_number() && d->get<double>() > 0) {
      fail("model.dropout is not supported (BPE dropout is for training tokenizers)");
    }
    for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (const auto* v = detail::find_member(*model, affix); v != nullptr && !(v->is_string() && v->get<std::string>().empty())) {
        fail(std::string("model.") + affix + " is not supported");
      }
    }
    ignore_merges_ = detail::json_flag(*model, "ignore_merges", false);

    // Vocabulary.
    const auto* vocab = detail::find_member(*model, "vocab");
    if (vocab == nullptr || !vocab->is_object() || vocab->empty()) fail("model.vocab is missing or not an object");
    TokenId max_id = -1;
    for (const auto& [token, id] : vocab->items()) {
      if (!id.is_number_integer() || id.get<TokenId>() < 0) fail("model.vocab[\"" + token + "\"] is not a non-negative integer id");
      max_id = std::max(max_id, id.get<TokenId>());
    }
    const auto* added = detail::find_member(j, "added_tokens");
    if (added != nullptr && !added->is_array()) fail("added_tokens must be a list");
    if (added != nullptr) {
      for (std::size_t i = 0; i < added->size(); ++i) {
        const auto& a = (*added)[i];
        if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || a["id"].get<TokenId>() < 0 ||
            !a.contains("content") || !a["content"].is_string() || a["content"].get<std::string>().empty()) {
          fail("added_tokens[" + std::to_string(i) + "] needs a non-negative integer \"id\" and a non-empty string \"content\"");
        }
        max_id = std::max(max_id, a["id"].get<TokenId>());
      }
    }
    if (max_id > 50'000'000) fail("token ids up to " + std::to_string(max_id) + " are implausible");
    const auto n = static_cast<std::size_t>(max_id + 1);
    tokens_.assign(n, {});
    token_bytes_.assign(n, {});
    has_token_.assign(n, false);
    is_special_.assign(n, false);
    vocab_.reserve(vocab->size());
    for (const auto& [token, id_json] : vocab->items()) {
      const auto id = static_cast<std::size_t>(id_json.get<TokenId>());
      tokens_[id] = token;
      has_token_[id] = true;
      vocab_.emplace(token, static_cast<TokenId>(id));
      if (!byte_level_to_bytes(token, token_bytes_[id])) token_bytes_[id] = token;
      if (ignore_merges_) bytes_to_id_.emplace(token_bytes_[id], static_cast<TokenId>(id));
    }
    const auto& alphabet = ByteAlphabet::get();
    for (std::size_t b = 0; b < 256; ++b) {
      const auto it = vocab_.find(alphabet.utf8_of_byte[b]);
      byte_id_[b] = it == vocab_.end() ? -1 : it->second;
    }

    // Merges: "a b" strings or ["a", "b"] pairs; rank = position.
    const auto* merges = detail::find_member(*model, "merges");
    if (merges == nullptr) merges = &kEmptyArray();
    if (!merges->is_array()) fail("model.merges must be a list");
    merges_.reserve(merges->size());
    for (std::size_t rank = 0; rank < merges->size(); ++rank) {
      const auto& m = (*merges)[rank];
      std::string left, right;
      const auto where = "model.merges[" + std::to_string(rank) + "]";
      if (m.is_string()) {
        const auto s = m.get<std::string>();
        const auto space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          fail(where + " = \"" + s + "\" is not two tokens separated by one space");
        }
        left = s.substr(0, space);
        right = s.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      } else {
        fail(where + " is neither \"a b\" nor [\"a\", \"b\"]");
      }
      const auto l = vocab_.find(left), r = vocab_.find(right), merged = vocab_.find(left + right);
      if (l == vocab_.end() || r == vocab_.end()) fail(where + ": \"" + (l == vocab_.end() ? left : right) + "\" is not in model.vocab");
      if (merged == vocab_.end()) fail(where + ": the merged token \"" + left + right + "\" is not in model.vocab");
      merges_.try_emplace(pair_key(l->second, r->second), MergeTarget{static_cast<std::uint32_t>(rank), merged->second});
    }

    // Added tokens (they may lie outside model.vocab).
    if (added != nullptr) {
      for (const auto& a : *added) {
        AddedToken t;
        t.id = a["id"].get<TokenId>();
        t.content = a["content"].get<std::string>();
        if (!is_valid_utf8(t.content)) fail("added token " + std::to_string(t.id) + " is not valid UTF-8");
        t.single_word = detail::json_flag(a, "single_word", false);
        t.lstrip = detail::json_flag(a, "lstrip", false);
        t.rstrip = detail::json_flag(a, "rstrip", false);
        t.normalized = detail::json_flag(a, "normalized", !detail::json_flag(a, "special", false));
        t.special = detail::json_flag(a, "special", false);
        const auto id = static_cast<std::size_t>(t.id);
        tokens_[id] = t.content;
        has_token_[id] = true;
        is_special_[id] = t.special;
        token_bytes_[id].clear();
        if (!byte_level_to_bytes(t.content, token_bytes_[id])) token_bytes_[id] = t.content;
        added_ids_[t.content] = t.id;
        added_.push_back(std::move(t));
      }
    }
    for (std::size_t i = 0; i < added_.size(); ++i) {
      auto& table = added_[i].normalized ? normalized_added_ : raw_added_;
      table.by_first_byte[static_cast<unsigned char>(added_[i].content[0])].push_back(i);
      table.any = true;
    }
    for (auto* table : {&raw_added_, &normalized_added_}) {
      for (auto& bucket : table->by_first_byte) {
        std::stable_sort(bucket.begin(), bucket.end(),
                         [&](std::size_t a, std::size_t b) { return added_[a].content.size() > added_[b].content.size(); });
      }
    }

    if (const auto* norm = detail::find_member(j, "normalizer")) load_normalizer(*norm, "normalizer", source);
    bool byte_level = false;
    if (const auto* pre = detail::find_member(j, "pre_tokenizer")) load_pre_tokenizer(*pre, "pre_tokenizer", source, byte_level);
    if (!byte_level) fail("pre_tokenizer has no ByteLevel step: only byte-level BPE tokenizers are supported");
    if (const auto* dec = detail::find_member(j, "decoder")) load_decoder(*dec, "decoder", source);
    if (const auto* post = detail::find_member(j, "post_processor")) load_post_processor(*post, "post_processor", source);
    if (const auto* trunc = detail::find_member(j, "truncation"); trunc != nullptr && trunc->contains("max_length") &&
                                                                   (*trunc)["max_length"].is_number_unsigned()) {
      model_max_length_ = (*trunc)["max_length"].get<std::size_t>();
    }
  }

  static const nlohmann::json& kEmptyArray() {
    static const nlohmann::json empty = nlohmann::json::array();
    return empty;
  }

  void load_normalizer(const nlohmann::json& n, const std::string& where, const std::string& source) {
    const auto type = detail::json_type(n);
    if (type == "Sequence") {
      const auto* list = detail::find_member(n, "normalizers");
      if (list == nullptr || !list->is_array()) throw FileError(source, where + ".normalizers must be a list");
      for (std::size_t i = 0; i < list->size(); ++i) load_normalizer((*list)[i], where + ".normalizers[" + std::to_string(i) + "]", source);
    } else if (type == "NFC") {
      normalizers_.push_back(NormalizerStep::nfc);
    } else if (type == "NFD") {
      normalizers_.push_back(NormalizerStep::nfd);
    } else if (type == "NFKC") {
      normalizers_.push_back(NormalizerStep::nfkc);
    } else if (type == "NFKD") {
      normalizers_.push_back(NormalizerStep::nfkd);
    } else if (type == "Lowercase") {
      normalizers_.push_back(NormalizerStep::lowercase);
    } else {
      throw FileError(source, where + ".type \"" + type + "\" is not supported (supported: NFC, NFD, NFKC, NFKD, "
                                      "Lowercase, Sequence)");
    }
  }

  void load_pre_tokenizer(const nlohmann::json& p, const std::string& where, const std::string& source, bool& byte_level) {
    const auto type = detail::json_type(p);
    if (type == "Sequence") {
      const auto* list = detail::find_member(p, "pretokenizers");
      if (list == nullptr || !list->is_array()) throw FileError(source, where + ".pretokenizers must be a list");
      for (std::size_t i = 0; i < list->size(); ++i) {
        load_pre_tokenizer((*list)[i], where + ".pretokenizers[" + std::to_string(i) + "]", source, byte_level);
      }
    } else if (type == "Split") {
      SplitStep step;
      const auto* pattern = detail::find_member(p, "pattern");
      std::string regex;
      if (pattern != nullptr && pattern->contains("Regex") && (*pattern)["Regex"].is_string()) {
        regex = (*pattern)["Regex"].get<std::string>();
      } else if (pattern != nullptr && pattern->contains("String") && (*pattern)["String"].is_string()) {
        regex = detail::regex_escape((*pattern)["String"].get<std::string>());
      } else {
        throw FileError(source, where + ".pattern must be {\"Regex\": ...} or {\"String\": ...}");
      }
      try {
        step.regex = std::make_shared<const Regex>(regex);
      } catch (const Error& e) {
        throw FileError(source, where + ".pattern: " + e.what());
      }
      const auto behavior = p.value("behavior", std::string("Isolated"));
      static const std::pair<const char*, SplitBehavior> kBehaviors[] = {
          {"Removed", SplitBehavior::removed}, {"Isolated", SplitBehavior::isolated},
          {"MergedWithPrevious", SplitBehavior::merged_with_previous}, {"MergedWithNext", SplitBehavior::merged_with_next},
          {"Contiguous", SplitBehavior::contiguous}};
      bool known = false;
      for (const auto& [name, b] : kBehaviors) {
        if (behavior == name) {
          step.behavior = b;
          known = true;
        }
      }
      if (!known) throw FileError(source, where + ".behavior \"" + behavior + "\" is not a Split behavior");
      step.invert = detail::json_flag(p, "invert", false);
      pre_tokenizers_.emplace_back(std::move(step));
    } else if (type == "ByteLevel") {
      ByteLevelStep step;
      step.add_prefix_space = detail::json_flag(p, "add_prefix_space", true);
      if (detail::json_flag(p, "use_regex", true)) step.regex = std::make_shared<const Regex>(detail::kGpt2Pattern);
      pre_tokenizers_.emplace_back(std::move(step));
      byte_level = true;
    } else if (type == "Digits") {
      SplitStep step;
      step.regex = std::make_shared<const Regex>(detail::json_flag(p, "individual_digits", false) ? "\\p{N}" : "\\p{N}+");
      pre_tokenizers_.emplace_back(std::move(step));
    } else {
      throw FileError(source, where + ".type \"" + type + "\" is not supported (supported: Sequence, Split, ByteLevel, Digits)");
    }
  }

  static void load_decoder(const nlohmann::json& d, const std::string& where, const std::string& source) {
    const auto type = detail::json_type(d);
    if (type == "ByteLevel") return;
    if (type == "Sequence") {
      const auto* list = detail::find_member(d, "decoders");
      if (list == nullptr || !list->is_array()) throw FileError(source, where + ".decoders must be a list");
      for (std::size_t i = 0; i < list->size(); ++i) load_decoder((*list)[i], where + ".decoders[" + std::to_string(i) + "]", source);
      return;
    }
    throw FileError(source, where + ".type \"" + type + "\" is not supported (byte-level BPE needs the ByteLevel decoder)");
  }

  void load_post_processor(const nlohmann::json& p, const std::string& where, const std::string& source) {
    const auto type = detail::json_type(p);
    if (type == "ByteLevel") return;  // offsets only
    if (type == "Sequence") {
      const auto* list = detail::find_member(p, "processors");
      if (list == nullptr || !list->is_array()) throw FileError(source, where + ".processors must be a list");
      for (std::size_t i = 0; i < list->size(); ++i) load_post_processor((*list)[i], where + ".processors[" + std::to_string(i) + "]", source);
      return;
    }
    if (type != "TemplateProcessing") {
      throw FileError(source, where + ".type \"" + type + "\" is not supported (supported: ByteLevel, TemplateProcessing, Sequence)");
    }
    const auto* single = detail::find_member(p, "single");
    const auto* specials = detail::find_member(p, "special_tokens");
    if (single == nullptr || !single->is_array()) throw FileError(source, where + ".single must be a list");
    template_.clear();
    for (const auto& item : *single) {
      TemplatePiece piece;
      if (item.contains("Sequence")) {
        piece.is_sequence = true;
      } else if (item.contains("SpecialToken") && item["SpecialToken"].contains("id")) {
        const auto name = item["SpecialToken"]["id"].get<std::string>();
        if (specials == nullptr || !specials->contains(name) || !(*specials)[name].contains("ids")) {
          throw FileError(source, where + ".special_tokens has no entry \"" + name + "\"");
        }
        piece.ids = (*specials)[name]["ids"].get<std::vector<TokenId>>();
      } else {
        throw FileError(source, where + ".single has an item that is neither Sequence nor SpecialToken");
      }
      template_.push_back(std::move(piece));
    }
  }

  void configure_special_tokens(const nlohmann::json& config, const nlohmann::json& special_map, const std::string& source) {
    const auto resolve = [&](const char* key, std::optional<std::string>& text, std::optional<TokenId>& id) {
      const nlohmann::json* v = detail::find_member(config, key);
      if (v == nullptr) v = detail::find_member(special_map, key);
      if (v == nullptr) return;
      std::string content;
      if (v->is_string()) {
        content = v->get<std::string>();
      } else if (v->is_object() && v->contains("content") && (*v)["content"].is_string()) {
        content = (*v)["content"].get<std::string>();
      } else {
        throw FileError(source, std::string(key) + " must be a string or {\"content\": ...}");
      }
      const auto found = token_to_id(content);
      if (!found) throw FileError(source, std::string(key) + " \"" + content + "\" is not a token of tokenizer.json");
      text = content;
      id = *found;
    };
    resolve("bos_token", special_.bos_token, special_.bos_id);
    resolve("eos_token", special_.eos_token, special_.eos_id);
    resolve("pad_token", special_.pad_token, special_.pad_id);
    resolve("unk_token", special_.unk_token, special_.unk_id);
    const nlohmann::json* extra = detail::find_member(config, "additional_special_tokens");
    if (extra == nullptr) extra = detail::find_member(special_map, "additional_special_tokens");
    if (extra != nullptr && extra->is_array()) {
      for (const auto& e : *extra) {
        if (e.is_string()) special_.additional.push_back(e.get<std::string>());
        else if (e.is_object() && e.contains("content")) special_.additional.push_back(e["content"].get<std::string>());
      }
    }
    if (special_.eos_id) special_.generation_eos_ids = {*special_.eos_id};
    if (const auto* m = detail::find_member(config, "model_max_length"); m != nullptr && m->is_number()) {
      const double v = m->get<double>();
      model_max_length_ = v > 0 && v < 1e15 ? static_cast<std::size_t>(v) : model_max_length_;
    }
  }

  // ---- the encode pipeline --------------------------------------------------------------------------------
  struct AddedTable {
    bool any = false;
    std::array<std::vector<std::size_t>, 256> by_first_byte{};
  };
  struct Segment {
    std::size_t begin, end;
    TokenId token;  // -1 for text
  };

  // Splits `text` around the added tokens of `table` (leftmost-longest, with single_word/lstrip/rstrip).
  std::vector<Segment> split_added(std::string_view text, const AddedTable& table) const {
    std::vector<Segment> out;
    std::size_t start_offset = 0;
    std::size_t i = 0;
    while (i < text.size()) {
      const auto& bucket = table.by_first_byte[static_cast<unsigned char>(text[i])];
      const AddedToken* hit = nullptr;
      for (const std::size_t k : bucket) {
        const auto& content = added_[k].content;
        if (text.compare(i, content.size(), content) == 0) {
          hit = &added_[k];
          break;
        }
      }
      if (hit == nullptr) {
        ++i;
        continue;
      }
      std::size_t start = i, stop = i + hit->content.size();
      i = stop;
      if (hit->single_word) {
        const bool start_ok = start == 0 || !detail::is_word_char(detail::last_char_before(text, start));
        bool stop_ok = stop == text.size();
        if (!stop_ok) {
          const std::size_t len = utf8_sequence_length(text, stop);
          stop_ok = !detail::is_word_char(decode_utf8_at(text, stop, len));
        }
        if (!start_ok || !stop_ok) continue;
      }
      if (hit->lstrip) {
        std::size_t s = start;
        while (s > start_offset) {
          std::size_t p = s - 1;
          while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
          if (!is_unicode_whitespace(decode_utf8_at(text, p, s - p))) break;
          s = p;
        }
        start = s;
      }
      if (hit->rstrip) {
        while (stop < text.size()) {
          const std::size_t len = utf8_sequence_length(text, stop);
          if (!is_unicode_whitespace(decode_utf8_at(text, stop, len))) break;
          stop += len;
        }
        i = stop;
      }
      if (start_offset < start) out.push_back({start_offset, start, -1});
      out.push_back({start, stop, hit->id});
      start_offset = stop;
    }
    if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
    return out;
  }

  std::string normalize_text(std::string_view text) const {
    std::string s(text);
    for (const auto step : normalizers_) {
      switch (step) {
        case NormalizerStep::nfc: s = normalize(s, NormalizationForm::NFC); break;
        case NormalizerStep::nfd: s = normalize(s, NormalizationForm::NFD); break;
        case NormalizerStep::nfkc: s = normalize(s, NormalizationForm::NFKC); break;
        case NormalizerStep::nfkd: s = normalize(s, NormalizationForm::NFKD); break;
        case NormalizerStep::lowercase: {
          std::string lower;
          for (std::size_t i = 0; i < s.size();) {
            const std::size_t len = utf8_sequence_length(s, i);
            append_utf8(lower, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(decode_utf8_at(s, i, len)))));
            i += len;
          }
          s = std::move(lower);
          break;
        }
      }
    }
    return s;
  }

  // Applies one Split to every piece (HF's SplitDelimiterBehavior semantics). Pieces are views into the
  // normalized text or into `storage`.
  static void split_pieces(std::vector<std::string_view>& pieces, const Regex& regex, SplitBehavior behavior, bool invert) {
    std::vector<std::string_view> out;
    out.reserve(pieces.size() * 2);
    for (const auto& piece : pieces) {
      struct Part {
        std::size_t begin, end;
        bool is_match;
      };
      std::vector<Part> parts;
      std::size_t last = 0;
      for (const auto& m : regex.find_all(piece)) {
        if (m.begin == m.end) continue;
        if (last < m.begin) parts.push_back({last, m.begin, invert});
        parts.push_back({m.begin, m.end, !invert});
        last = m.end;
      }
      if (last < piece.size()) parts.push_back({last, piece.size(), invert});
      std::vector<Part> kept;
      switch (behavior) {
        case SplitBehavior::isolated: kept.swap(parts); break;
        case SplitBehavior::removed:
          for (const auto& p : parts) {
            if (!p.is_match) kept.push_back(p);
          }
          break;
        case SplitBehavior::merged_with_previous: {
          bool previous_match = false;
          for (const auto& p : parts) {
            if (p.is_match && !previous_match && !kept.empty()) kept.back().end = p.end;
            else kept.push_back(p);
            previous_match = p.is_match;
          }
          break;
        }
        case SplitBehavior::merged_with_next: {
          bool previous_match = false;
          for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
            if (it->is_match && !previous_match && !kept.empty()) kept.back().begin = it->begin;
            else kept.push_back(*it);
            previous_match = it->is_match;
          }
          std::reverse(kept.begin(), kept.end());
          break;
        }
        case SplitBehavior::contiguous: {
          bool previous_match = false;
          for (const auto& p : parts) {
            if (!kept.empty() && p.is_match == previous_match) kept.back().end = p.end;
            else kept.push_back(p);
            previous_match = p.is_match;
          }
          break;
        }
      }
      for (const auto& p : kept) {
        if (p.end > p.begin) out.push_back(piece.substr(p.begin, p.end - p.begin));
      }
    }
    pieces = std::move(out);
  }

  void encode_into(std::string_view text, std::vector<TokenId>& ids) const {
    if (!is_valid_utf8(text)) {
      std::size_t at = 0;
      while (at < text.size()) {
        const std::size_t len = utf8_sequence_length(text, at);
        if (len == 0) break;
        at += len;
      }
      throw Error("tokenizer: the text is not valid UTF-8 (byte offset " + std::to_string(at) + ")");
    }
    for (const auto& seg : raw_added_.any ? split_added(text, raw_added_) : std::vector<Segment>{{0, text.size(), -1}}) {
      if (seg.token >= 0) {
        ids.push_back(seg.token);
        continue;
      }
      const std::string normalized = normalize_text(text.substr(seg.begin, seg.end - seg.begin));
      const auto subs = normalized_added_.any ? split_added(normalized, normalized_added_)
                                              : std::vector<Segment>{{0, normalized.size(), -1}};
      for (const auto& sub : subs) {
        if (sub.token >= 0) {
          ids.push_back(sub.token);
          continue;
        }
        std::vector<std::string_view> pieces{std::string_view(normalized).substr(sub.begin, sub.end - sub.begin)};
        std::deque<std::string> storage;  // pieces that add_prefix_space rewrote
        for (const auto& step : pre_tokenizers_) {
          if (const auto* split = std::get_if<SplitStep>(&step)) {
            split_pieces(pieces, *split->regex, split->behavior, split->invert);
          } else {
            const auto& bl = std::get<ByteLevelStep>(step);
            if (bl.add_prefix_space) {
              for (auto& p : pieces) {
                if (!p.empty() && p.front() == ' ') continue;
                std::string& spaced = storage.emplace_back(1, ' ');
                spaced.append(p.data(), p.size());
                p = spaced;
              }
            }
            if (bl.regex) split_pieces(pieces, *bl.regex, SplitBehavior::isolated, false);
          }
        }
        for (const auto& piece : pieces) bpe(piece, ids);
      }
    }
  }

  std::vector<TokenId> apply_post_processor(std::vector<TokenId> ids) const {
    if (template_.empty()) return ids;
    std::vector<TokenId> out;
    out.reserve(ids.size() + 4);
    for (const auto& piece : template_) {
      if (piece.is_sequence) out.insert(out.end(), ids.begin(), ids.end());
      else out.insert(out.end(), piece.ids.begin(), piece.ids.end());
    }
    return out;
  }

  static std::uint64_t pair_key(TokenId a, TokenId b) {
    return (static_cast<std::uint64_t>(a) << 32) | static_cast<std::uint64_t>(static_cast<std::uint32_t>(b));
  }

  // BPE of one pre-token (raw bytes): one symbol per byte, then merges lowest rank first (leftmost on ties).
  void bpe(std::string_view word, std::vector<TokenId>& ids) const {
    if (ignore_merges_) {
      if (const auto it = bytes_to_id_.find(std::string(word)); it != bytes_to_id_.end()) {
        ids.push_back(it->second);
        return;
      }
    }
    const bool cacheable = word.size() <= 256;
    MergeCache::Shard* shard = nullptr;
    if (cacheable) {
      shard = &cache_->shards[StringHash{}(word) % MergeCache::kShards];
      std::lock_guard lock(shard->mutex);
      if (const auto it = shard->map.find(word); it != shard->map.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    struct Symbol {
      TokenId id;
      int prev, next;
      bool alive;
    };
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    for (const char ch : word) {
      const TokenId id = byte_id_[static_cast<unsigned char>(ch)];
      if (id < 0) continue;  // a byte without a token (no unk token): dropped, as HF does
      const int k = static_cast<int>(symbols.size());
      symbols.push_back({id, k - 1, k + 1, true});
    }
    if (!symbols.empty()) symbols.back().next = -1;
    struct Candidate {
      std::uint32_t rank;
      int pos;
      TokenId new_id;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::vector<Candidate> heap;
    const auto push = [&](int pos) {
      const int next = symbols[static_cast<std::size_t>(pos)].next;
      if (next < 0) return;
      const auto it = merges_.find(pair_key(symbols[static_cast<std::size_t>(pos)].id, symbols[static_cast<std::size_t>(next)].id));
      if (it == merges_.end()) return;
      heap.push_back({it->second.rank, pos, it->second.new_id});
      std::push_heap(heap.begin(), heap.end(), std::greater<>{});
    };
    for (int k = 0; k + 1 < static_cast<int>(symbols.size()); ++k) push(k);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
      const Candidate c = heap.back();
      heap.pop_back();
      auto& left = symbols[static_cast<std::size_t>(c.pos)];
      if (!left.alive || left.next < 0) continue;
      auto& right = symbols[static_cast<std::size_t>(left.next)];
      const auto it = merges_.find(pair_key(left.id, right.id));
      if (it == merges_.end() || it->second.new_id != c.new_id || it->second.rank != c.rank) continue;  // stale
      left.id = c.new_id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = c.pos;
      if (left.prev >= 0) push(left.prev);
      push(c.pos);
    }
    const std::size_t first = ids.size();
    for (const auto& s : symbols) {
      if (s.alive) ids.push_back(s.id);
    }
    if (cacheable) {
      std::lock_guard lock(shard->mutex);
      if (shard->map.size() < MergeCache::kCapacityPerShard) {
        shard->map.try_emplace(std::string(word), ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end());
      }
    }
  }

  struct MergeTarget {
    std::uint32_t rank;
    TokenId new_id;
  };

  std::vector<std::string> tokens_;       // id -> token string (byte-level alphabet, or added content)
  std::vector<std::string> token_bytes_;  // id -> the bytes it decodes to
  std::vector<bool> has_token_, is_special_;
  std::unordered_map<std::string, TokenId> vocab_, added_ids_, bytes_to_id_;
  std::array<TokenId, 256> byte_id_{};
  std::unordered_map<std::uint64_t, MergeTarget> merges_;
  bool ignore_merges_ = false;
  std::vector<AddedToken> added_;
  AddedTable raw_added_, normalized_added_;
  std::vector<NormalizerStep> normalizers_;
  std::vector<PreTokenizerStep> pre_tokenizers_;
  std::vector<TemplatePiece> template_;
  SpecialTokens special_;
  std::optional<std::string> chat_template_;
  std::filesystem::path source_folder_;
  std::size_t model_max_length_ = static_cast<std::size_t>(1) << 40;
  std::shared_ptr<MergeCache> cache_ = std::make_shared<MergeCache>();
};

}  // namespace xpo::text
