// xpo/text/tokenizer.hpp — a Hugging Face tokenizer.json (byte-level BPE, SentencePiece-style BPE or Unigram),
// id-exact with HF `tokenizers`, plus the checkpoint folder's tokenizer_config.json as transformers applies it.
//
// The pipeline is HF's, step for step:
//   1. added tokens that are not `normalized` are split out of the raw text (leftmost-longest, honouring
//      single_word / lstrip / rstrip);
//   2. each remaining piece is normalized (NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents, Prepend, Replace,
//      Precompiled, BertNormalizer, or a Sequence), then `normalized` added tokens (in normalized form) are split out;
//   3. the pre-tokenizer (ByteLevel, Split, Metaspace, Digits, Whitespace, WhitespaceSplit, Punctuation,
//      BertPreTokenizer, CharDelimiterSplit, or a Sequence) cuts the rest into words;
//   4. the model encodes each word: BPE (byte-level: one symbol per byte; otherwise one per character, with
//      byte_fallback to <0xNN> pieces or the unk_token) merged by rank, Unigram (Viterbi over scored pieces),
//      WordPiece (greedy longest match, "##" continuations) or WordLevel (whole words);
//   5. the post-processor (TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence) adds special
//      tokens when asked.
// Decoding runs the decoder chain (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, WordPiece, BPEDecoder,
// Sequence) over the tokens of the ids, as HF does (all tokens, added ones included, go through it); ids that have no
// token (models often have more embedding rows than the tokenizer has tokens) are skipped. Any component outside
// these lists is refused when the file is loaded, with one error that names every unsupported part.
//
// Special tokens (bos/eos/pad/unk), add_bos_token / add_eos_token, clean_up_tokenization_spaces, the chat template
// and the model's generation stop ids are read from the checkpoint folder's tokenizer_config.json,
// special_tokens_map.json, chat_template.jinja and generation_config.json, the way transformers resolves them.
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
#include "xpo/text/tokenizer_components.hpp"
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
  // chat_template.jinja and generation_config.json. From tokenizer_config.json, as transformers' fast tokenizers
  // apply it: the special tokens, added_tokens_decoder entries tokenizer.json lacks, add_bos_token/add_eos_token
  // (Llama, CodeLlama, Gemma, Cohere and GPT-NeoX classes rebuild the post-processor from them; other tokenizers
  // get them only when tokenizer.json's post-processor adds no token), clean_up_tokenization_spaces (decode()) and
  // legacy (read only). Works the same for SentencePiece-style and Unigram folders (e.g. PairRM's DeBERTa-v3:
  // spm.model is not needed). Throws xpo::FileError naming the file and field on a missing or malformed file, or
  // on components xpo does not implement (all of them in one message).
  static Tokenizer from_pretrained(const std::filesystem::path& folder, const TokenizerLimits& limits = {}) {
    const auto file = folder / "tokenizer.json";
    if (!std::filesystem::exists(file)) {
      throw FileError(file.string(), "no tokenizer.json in the checkpoint folder (xpo reads the fast tokenizer's "
                                     "tokenizer.json; save one with transformers' save_pretrained)");
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
  // Text of `ids`, as transformers' decode: the tokenizer.json decoder over the tokens (skip_special_tokens drops
  // the added tokens marked "special" first, so the two halves of a character around a dropped token join again),
  // then clean_up_tokenization when tokenizer_config.json's clean_up_tokenization_spaces asks for it. Unknown ids
  // are skipped.
  [[nodiscard]] std::string decode(std::span<const TokenId> ids, bool skip_special_tokens = false) const {
    std::string text = decode_tokens(ids, skip_special_tokens);
    if (clean_up_tokenization_spaces_) text = detail::clean_up_tokenization(std::move(text));
    return text;
  }
  [[nodiscard]] std::string decode(const std::vector<TokenId>& ids, bool skip_special_tokens = false) const {
    return decode(std::span<const TokenId>(ids), skip_special_tokens);
  }

  // ---- vocabulary -----------------------------------------------------------------------------------------
  // The token string of an id (the vocabulary piece, e.g. in the byte-level alphabet; the content for added tokens).
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

  // The decoder's text of `ids` without transformers' clean-up (what HF `tokenizers` itself returns).
  [[nodiscard]] std::string decode_tokens(std::span<const TokenId> ids, bool skip_special_tokens = false) const {
    const auto usable = [&](TokenId id) {
      return id >= 0 && static_cast<std::size_t>(id) < tokens_.size() && has_token_[static_cast<std::size_t>(id)] &&
             !(skip_special_tokens && is_special_[static_cast<std::size_t>(id)]);
    };
    if (byte_level_decode_) {
      std::string bytes;
      bytes.reserve(ids.size() * 4);
      for (const TokenId id : ids) {
        if (usable(id)) bytes += token_bytes_[static_cast<std::size_t>(id)];
      }
      return utf8_lossy(bytes);
    }
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (const TokenId id : ids) {
      if (usable(id)) tokens.push_back(tokens_[static_cast<std::size_t>(id)]);
    }
    std::string out;
    if (!has_decoder_) {  // HF joins the tokens with spaces when there is no decoder
      for (std::size_t i = 0; i < tokens.size(); ++i) out += (i == 0 ? "" : " ") + tokens[i];
      return out;
    }
    for (const auto& step : decoders_) detail::apply_decoder(step, tokens);
    for (const auto& t : tokens) out += t;
    return out;
  }

  // tokenizer_config.json's clean_up_tokenization_spaces (false when absent, as in transformers >= 4.45).
  [[nodiscard]] bool clean_up_tokenization_spaces() const noexcept { return clean_up_tokenization_spaces_; }
  void set_clean_up_tokenization_spaces(bool on) noexcept { clean_up_tokenization_spaces_ = on; }
  // tokenizer_config.json's `legacy` (absent: nullopt). It changes nothing for a tokenizer served from
  // tokenizer.json: transformers reads it only when it converts a slow SentencePiece tokenizer.
  [[nodiscard]] std::optional<bool> legacy() const noexcept { return legacy_; }

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
  using SplitBehavior = detail::SplitBehavior;
  using PrependScheme = detail::PrependScheme;
  struct SplitStep {
    detail::TextPattern pattern;
    SplitBehavior behavior = SplitBehavior::isolated;
    bool invert = false;
  };
  struct ByteLevelStep {
    bool add_prefix_space = false;
    detail::TextPattern regex;  // GPT-2's when use_regex
    bool use_regex = false;
  };
  struct MetaspaceStep {
    std::string replacement = "\xE2\x96\x81";
    PrependScheme scheme = PrependScheme::always;
    bool split = true;
  };
  using PreTokenizerStep = std::variant<SplitStep, ByteLevelStep, MetaspaceStep>;
  enum class ModelKind { bpe, unigram, word_piece, word_level };

  struct TemplatePiece {
    bool is_sequence = false;
    std::vector<TokenId> ids;  // the special token's ids
  };
  using Template = std::vector<TemplatePiece>;

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

  // Collects what a tokenizer.json uses that xpo does not implement, so that one error names all of it.
  struct Unsupported {
    std::vector<std::string> parts;
    void add(std::string what) { parts.push_back(std::move(what)); }
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

  static detail::TextPattern load_pattern(const nlohmann::json& p, const std::string& where, const std::string& source) {
    detail::TextPattern out;
    const auto* pattern = detail::find_member(p, "pattern");
    if (pattern != nullptr && pattern->is_object() && pattern->contains("Regex") && (*pattern)["Regex"].is_string()) {
      try {
        out.regex = std::make_shared<const Regex>((*pattern)["Regex"].get<std::string>());
      } catch (const Error& e) {
        throw FileError(source, where + ".pattern: " + e.what());
      }
    } else if (pattern != nullptr && pattern->is_object() && pattern->contains("String") && (*pattern)["String"].is_string()) {
      out.literal = (*pattern)["String"].get<std::string>();
    } else {
      throw FileError(source, where + ".pattern must be {\"Regex\": ...} or {\"String\": ...}");
    }
    return out;
  }

  static std::string string_field(const nlohmann::json& j, const char* key, const std::string& fallback,
                                  const std::string& where, const std::string& source) {
    const auto* v = detail::find_member(j, key);
    if (v == nullptr) return fallback;
    if (!v->is_string()) throw FileError(source, where + "." + key + " must be a string");
    return v->get<std::string>();
  }

  static std::size_t count_field(const nlohmann::json& j, const char* key, const std::string& where, const std::string& source) {
    const auto* v = detail::find_member(j, key);
    if (v == nullptr) return 0;
    if (!v->is_number_integer() || v->get<std::int64_t>() < 0) throw FileError(source, where + "." + key + " must be a non-negative integer");
    return static_cast<std::size_t>(v->get<std::int64_t>());
  }

  static PrependScheme load_prepend_scheme(const nlohmann::json& p, const std::string& where, const std::string& source) {
    if (const auto* s = detail::find_member(p, "prepend_scheme")) {
      const auto v = s->is_string() ? s->get<std::string>() : std::string();
      if (v == "always") return PrependScheme::always;
      if (v == "first") return PrependScheme::first;
      if (v == "never") return PrependScheme::never;
      throw FileError(source, where + ".prepend_scheme must be \"always\", \"first\" or \"never\"");
    }
    // The older spelling: add_prefix_space true = always, false = never.
    return detail::json_flag(p, "add_prefix_space", true) ? PrependScheme::always : PrependScheme::never;
  }

  void load(const nlohmann::json& j, const std::string& source) {
    const auto fail = [&](const std::string& what) { throw FileError(source, what); };
    Unsupported unsupported;
    if (!j.is_object()) fail("not a tokenizer.json: the top level is not a JSON object");
    const auto* model = detail::find_member(j, "model");
    if (model == nullptr || !model->is_object()) fail("no \"model\" object");
    std::string type = string_field(*model, "type", "", "model", source);
    if (type.empty()) type = model->contains("merges") ? "BPE" : model->contains("vocab") && (*model)["vocab"].is_array() ? "Unigram" : "BPE";
    if (type != "BPE" && type != "Unigram" && type != "WordPiece" && type != "WordLevel") {
      unsupported.add("model.type \"" + type + "\" (supported: BPE, Unigram, WordPiece, WordLevel)");
    }

    // Pre-tokenizer first: whether it is byte-level decides how BPE reads its words.
    if (const auto* pre = detail::find_member(j, "pre_tokenizer")) load_pre_tokenizer(*pre, "pre_tokenizer", source, unsupported);
    byte_level_ = std::any_of(pre_tokenizers_.begin(), pre_tokenizers_.end(),
                              [](const PreTokenizerStep& s) { return std::holds_alternative<ByteLevelStep>(s); });

    // Vocabulary (BPE: token -> id; Unigram: [[piece, score], ...] with id = position).
    const auto* vocab = detail::find_member(*model, "vocab");
    TokenId max_id = -1;
    std::vector<std::pair<std::string, TokenId>> entries;
    std::vector<double> scores;
    if (type == "Unigram") {
      model_kind_ = ModelKind::unigram;
      if (vocab == nullptr || !vocab->is_array() || vocab->empty()) fail("model.vocab of a Unigram model must be a non-empty list of [piece, score]");
      entries.reserve(vocab->size());
      for (std::size_t i = 0; i < vocab->size(); ++i) {
        const auto& e = (*vocab)[i];
        if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number()) {
          fail("model.vocab[" + std::to_string(i) + "] is not [piece, score]");
        }
        entries.emplace_back(e[0].get<std::string>(), static_cast<TokenId>(i));
        scores.push_back(e[1].get<double>());
      }
      max_id = static_cast<TokenId>(vocab->size()) - 1;
    } else {
      if (vocab == nullptr || !vocab->is_object() || vocab->empty()) fail("model.vocab is missing or not an object");
      entries.reserve(vocab->size());
      for (const auto& [token, id] : vocab->items()) {
        if (!id.is_number_integer() || id.get<TokenId>() < 0) fail("model.vocab[\"" + token + "\"] is not a non-negative integer id");
        entries.emplace_back(token, id.get<TokenId>());
        max_id = std::max(max_id, id.get<TokenId>());
      }
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
    vocab_.reserve(entries.size());
    for (const auto& [token, tid] : entries) {
      const auto id = static_cast<std::size_t>(tid);
      tokens_[id] = token;
      has_token_[id] = true;
      vocab_.emplace(token, tid);  // the first id of a repeated piece wins
      if (!byte_level_to_bytes(token, token_bytes_[id])) token_bytes_[id] = token;
    }
    std::array<TokenId, 256> byte_piece{};
    for (std::size_t b = 0; b < 256; ++b) {
      static constexpr char kHex[] = "0123456789ABCDEF";
      const std::string name = std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">";
      const auto it = vocab_.find(name);
      byte_piece[b] = it == vocab_.end() ? -1 : it->second;
    }

    if (model_kind_ == ModelKind::unigram) {
      auto uni = std::make_shared<detail::UnigramModel>();
      uni->scores = scores;
      uni->min_score = scores.empty() ? 0.0 : *std::min_element(scores.begin(), scores.end());
      for (const auto& [token, tid] : entries) {
        if (!token.empty()) uni->trie.insert(token, tid);
      }
      if (const auto* unk = detail::find_member(*model, "unk_id")) {
        if (!unk->is_number_integer() || unk->get<TokenId>() < 0 || unk->get<TokenId>() >= static_cast<TokenId>(entries.size())) {
          fail("model.unk_id must be the index of a piece of model.vocab");
        }
        uni->unk_id = unk->get<TokenId>();
      }
      uni->byte_fallback = detail::json_flag(*model, "byte_fallback", false);
      uni->byte_ids = byte_piece;
      unigram_ = std::move(uni);
    } else if (type == "WordPiece" || type == "WordLevel") {
      model_kind_ = type == "WordPiece" ? ModelKind::word_piece : ModelKind::word_level;
      if (const auto* unk = detail::find_member(*model, "unk_token")) {
        if (!unk->is_string()) fail("model.unk_token must be a string");
        unk_token_ = unk->get<std::string>();
      }
      if (model_kind_ == ModelKind::word_piece) {
        prefix_ = string_field(*model, "continuing_subword_prefix", "##", "model", source);
        if (const auto* m = detail::find_member(*model, "max_input_chars_per_word")) {
          if (!m->is_number_integer() || m->get<std::int64_t>() < 0) fail("model.max_input_chars_per_word must be a non-negative integer");
          max_input_chars_per_word_ = static_cast<std::size_t>(m->get<std::int64_t>());
        }
      }
    } else if (type == "BPE") {
      load_bpe(*model, source, unsupported, byte_piece);
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
        t.special = detail::json_flag(a, "special", false);
        t.normalized = detail::json_flag(a, "normalized", !t.special);
        register_added(std::move(t));
      }
    }

    if (const auto* norm = detail::find_member(j, "normalizer")) load_normalizer(*norm, "normalizer", source, unsupported);
    if (const auto* dec = detail::find_member(j, "decoder")) {
      has_decoder_ = true;
      load_decoder(*dec, "decoder", source, unsupported);
    }
    if (const auto* post = detail::find_member(j, "post_processor")) load_post_processor(*post, "post_processor", source, unsupported);
    if (!unsupported.parts.empty()) {
      std::string message = "unsupported tokenizer components (" + std::to_string(unsupported.parts.size()) + "):";
      for (const auto& p : unsupported.parts) message += "\n  - " + p;
      fail(message);
    }
    for (const auto& t : templates_) {
      for (const auto& piece : t) {
        for (const TokenId id : piece.ids) {
          if (id < 0 || static_cast<std::size_t>(id) >= tokens_.size() || !has_token_[static_cast<std::size_t>(id)]) {
            fail("post_processor adds the id " + std::to_string(id) + ", which is no token of this tokenizer");
          }
        }
      }
    }
    byte_level_decode_ = decoders_.size() == 1 && decoders_[0].kind == detail::DecoderStep::Kind::byte_level;
    build_added_tables();
    if (const auto* trunc = detail::find_member(j, "truncation"); trunc != nullptr && trunc->contains("max_length") &&
                                                                   (*trunc)["max_length"].is_number_unsigned()) {
      model_max_length_ = (*trunc)["max_length"].get<std::size_t>();
    }
  }

  void load_bpe(const nlohmann::json& model, const std::string& source, Unsupported& unsupported,
                const std::array<TokenId, 256>& byte_piece) {
    const auto fail = [&](const std::string& what) { throw FileError(source, what); };
    if (const auto* d = detail::find_member(model, "dropout"); d != nullptr && d->is_number() && d->get<double>() > 0) {
      unsupported.add("model.dropout (BPE dropout is for training tokenizers)");
    }
    prefix_ = string_field(model, "continuing_subword_prefix", "", "model", source);
    suffix_ = string_field(model, "end_of_word_suffix", "", "model", source);
    if (byte_level_ && (!prefix_.empty() || !suffix_.empty())) {
      unsupported.add("model.continuing_subword_prefix / end_of_word_suffix together with a ByteLevel pre-tokenizer");
    }
    ignore_merges_ = detail::json_flag(model, "ignore_merges", false);
    byte_fallback_ = detail::json_flag(model, "byte_fallback", false);
    fuse_unk_ = detail::json_flag(model, "fuse_unk", false);
    byte_piece_ = byte_piece;
    if (const auto* unk = detail::find_member(model, "unk_token")) {
      if (!unk->is_string()) fail("model.unk_token must be a string");
      unk_token_ = unk->get<std::string>();
    }
    if (ignore_merges_ && byte_level_) {
      for (std::size_t id = 0; id < tokens_.size(); ++id) {
        if (has_token_[id]) bytes_to_id_.emplace(token_bytes_[id], static_cast<TokenId>(id));
      }
    }
    const auto& alphabet = ByteAlphabet::get();
    for (std::size_t b = 0; b < 256; ++b) {
      const auto it = vocab_.find(alphabet.utf8_of_byte[b]);
      byte_id_[b] = it == vocab_.end() ? -1 : it->second;
    }

    // Merges: "a b" strings or ["a", "b"] pairs; rank = position.
    const auto* merges = detail::find_member(model, "merges");
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
      const std::size_t cut = !prefix_.empty() && right.compare(0, prefix_.size(), prefix_) == 0 ? prefix_.size() : 0;
      const auto l = vocab_.find(left), r = vocab_.find(right), merged = vocab_.find(left + right.substr(cut));
      if (l == vocab_.end() || r == vocab_.end()) fail(where + ": \"" + (l == vocab_.end() ? left : right) + "\" is not in model.vocab");
      if (merged == vocab_.end()) fail(where + ": the merged token \"" + left + right.substr(cut) + "\" is not in model.vocab");
      merges_.try_emplace(pair_key(l->second, r->second), MergeTarget{static_cast<std::uint32_t>(rank), merged->second});
    }
  }

  static const nlohmann::json& kEmptyArray() {
    static const nlohmann::json empty = nlohmann::json::array();
    return empty;
  }

  // Sequences nest; a bound keeps a hostile file from recursing without end.
  static void check_nesting(const std::string& where, const std::string& source) {
    if (std::count(where.begin(), where.end(), '[') > 16) throw FileError(source, where + ": Sequences nested deeper than 16");
  }

  // Adds (or, for an id already added, replaces) an added token.
  void register_added(AddedToken t) {
    const auto id = static_cast<std::size_t>(t.id);
    if (id >= tokens_.size()) {
      tokens_.resize(id + 1);
      token_bytes_.resize(id + 1);
      has_token_.resize(id + 1, false);
      is_special_.resize(id + 1, false);
    }
    tokens_[id] = t.content;
    has_token_[id] = true;
    is_special_[id] = t.special;
    token_bytes_[id].clear();
    if (!byte_level_to_bytes(t.content, token_bytes_[id])) token_bytes_[id] = t.content;
    added_ids_[t.content] = t.id;
    for (auto& existing : added_) {
      if (existing.id == t.id) {
        existing = std::move(t);
        return;
      }
    }
    added_.push_back(std::move(t));
  }

  // The lookup tables of added tokens: raw ones match the input text, `normalized` ones match the normalized text
  // in their normalized form (HF normalizes their content with the tokenizer's normalizer).
  void build_added_tables() {
    raw_added_ = {};
    normalized_added_ = {};
    added_match_.assign(added_.size(), {});
    for (std::size_t i = 0; i < added_.size(); ++i) {
      added_match_[i] = added_[i].normalized ? normalize_text(added_[i].content) : added_[i].content;
      if (added_match_[i].empty()) continue;
      auto& table = added_[i].normalized ? normalized_added_ : raw_added_;
      table.by_first_byte[static_cast<unsigned char>(added_match_[i][0])].push_back(i);
      table.any = true;
    }
    for (auto* table : {&raw_added_, &normalized_added_}) {
      for (auto& bucket : table->by_first_byte) {
        std::stable_sort(bucket.begin(), bucket.end(),
                         [&](std::size_t a, std::size_t b) { return added_match_[a].size() > added_match_[b].size(); });
      }
    }
  }

  void load_normalizer(const nlohmann::json& n, const std::string& where, const std::string& source, Unsupported& unsupported) {
    check_nesting(where, source);
    using K = detail::NormalizerStep::Kind;
    const auto type = detail::json_type(n);
    detail::NormalizerStep step;
    if (type == "Sequence") {
      const auto* list = detail::find_member(n, "normalizers");
      if (list == nullptr || !list->is_array()) throw FileError(source, where + ".normalizers must be a list");
      for (std::size_t i = 0; i < list->size(); ++i) {
        load_normalizer((*list)[i], where + ".normalizers[" + std::to_string(i) + "]", source, unsupported);
      }
      return;
    } else if (type == "NFC") {
      step.kind = K::nfc;
    } else if (type == "NFD") {
      step.kind = K::nfd;
    } else if (type == "NFKC") {
      step.kind = K::nfkc;
    } else if (type == "NFKD") {
      step.kind = K::nfkd;
    } else if (type == "Lowercase") {
      step.kind = K::lowercase;
    } else if (type == "StripAccents") {
      step.kind = K::strip_accents;
    } else if (type == "Strip") {
      step.kind = K::strip;
      step.left = detail::json_flag(n, "strip_left", true);
      step.right = detail::json_flag(n, "strip_right", true);
    } else if (type == "Prepend") {
      step.kind = K::prepend;
      step.text = string_field(n, "prepend", "", where, source);
    } else if (type == "Replace") {
      step.kind = K::replace;
      step.pattern = load_pattern(n, where, source);
      step.text = string_field(n, "content", "", where, source);
    } else if (type == "Precompiled") {
      step.kind = K::precompiled;
      const auto* map = detail::find_member(n, "precompiled_charsmap");
      if (map != nullptr && !map->is_string()) throw FileError(source, where + ".precompiled_charsmap must be a base64 string");
      try {
        step.charsmap = std::make_shared<const detail::PrecompiledCharsmap>(
            map == nullptr ? std::string() : detail::base64_decode(map->get<std::string>(), where + ".precompiled_charsmap"),
            where + ".precompiled_charsmap");
      } catch (const FileError&) {
        throw;
      } catch (const Error& e) {
        throw FileError(source, e.what());
      }
    } else if (type == "BertNormalizer") {
      step.kind = K::bert;
      step.clean_text = detail::json_flag(n, "clean_text", true);
      step.handle_chinese_chars = detail::json_flag(n, "handle_chinese_chars", true);
      step.lowercase = detail::json_flag(n, "lowercase", true);
      if (const auto* s = detail::find_member(n, "strip_accents"); s != nullptr && s->is_boolean()) step.strip_accents = s->get<bool>();
    } else {
      unsupported.add(where + ".type \"" + type + "\" (supported normalizers: NFC, NFD, NFKC, NFKD, Lowercase, Strip, "
                      "StripAccents, Prepend, Replace, Precompiled, BertNormalizer, Sequence)");
      return;
    }
    normalizers_.push_back(std::move(step));
  }

  void load_pre_tokenizer(const nlohmann::json& p, const std::string& where, const std::string& source, Unsupported& unsupported) {
    check_nesting(where, source);
    const auto type = detail::json_type(p);
    const auto split_on = [&](std::string regex, SplitBehavior behavior, bool invert) {
      SplitStep step;
      step.pattern.regex = std::make_shared<const Regex>(regex);
      step.behavior = behavior;
      step.invert = invert;
      pre_tokenizers_.emplace_back(std::move(step));
    };
    const auto behavior_of = [&](const char* fallback) {
      const auto behavior = string_field(p, "behavior", fallback, where, source);
      static const std::pair<const char*, SplitBehavior> kBehaviors[] = {
          {"Removed", SplitBehavior::removed}, {"Isolated", SplitBehavior::isolated},
          {"MergedWithPrevious", SplitBehavior::merged_with_previous}, {"MergedWithNext", SplitBehavior::merged_with_next},
          {"Contiguous", SplitBehavior::contiguous}};
      for (const auto& [name, b] : kBehaviors) {
        if (behavior == name) return b;
      }
      throw FileError(source, where + ".behavior \"" + behavior + "\" is not a Split behavior");
    };
    if (type == "Sequence") {
      const auto* list = detail::find_member(p, "pretokenizers");
      if (list == nullptr || !list->is_array()) throw FileError(source, where + ".pretokenizers must be a list");
      for (std::size_t i = 0; i < list->size(); ++i) {
        load_pre_tokenizer((*list)[i], where + ".pretokenizers[" + std::to_string(i) + "]", source, unsupported);
      }
    } else if (type == "Split") {
      SplitStep step;
      step.pattern = load_pattern(p, where, source);
      step.behavior = behavior_of("Isolated");
      step.invert = detail::json_flag(p, "invert", false);
      pre_tokenizers_.emplace_back(std::move(step));
    } else if (type == "ByteLevel") {
      ByteLevelStep step;
      step.add_prefix_space = detail::json_flag(p, "add_prefix_space", true);
      step.use_regex = detail::json_flag(p, "use_regex", true);
      if (step.use_regex) step.regex.regex = std::make_shared<const Regex>(detail::kGpt2Pattern);
      pre_tokenizers_.emplace_back(std::move(step));
    } else if (type == "Metaspace") {
      MetaspaceStep step;
      step.replacement = string_field(p, "replacement", "\xE2\x96\x81", where, source);
      if (step.replacement.empty() || utf8_sequence_length(step.replacement, 0) != step.replacement.size()) {
        throw FileError(source, where + ".replacement must be one character");
      }
      step.scheme = load_prepend_scheme(p, where, source);
      step.split = detail::json_flag(p, "split", true);
      pre_tokenizers_.emplace_back(std::move(step));
    } else if (type == "Digits") {
      split_on(detail::json_flag(p, "individual_digits", false) ? "\\p{N}" : "\\p{N}+", SplitBehavior::isolated, false);
    } else if (type == "Whitespace") {
      split_on("\\w+|[^\\w\\s]+", SplitBehavior::removed, true);  // keep the matches, drop the rest
    } else if (type == "WhitespaceSplit") {
      split_on("\\s+", SplitBehavior::removed, false);
    } else if (type == "Punctuation") {
      split_on(detail::kPunctuationClass, behavior_of("Isolated"), false);
    } else if (type == "BertPreTokenizer") {
      split_on("\\s+", SplitBehavior::removed, false);
      split_on(detail::kPunctuationClass, SplitBehavior::isolated, false);
    } else if (type == "CharDelimiterSplit") {
      const auto delimiter = string_field(p, "delimiter", "", where, source);
      if (delimiter.empty() || utf8_sequence_length(delimiter, 0) != delimiter.size()) {
        throw FileError(source, where + ".delimiter must be one character");
      }
      SplitStep step;
      step.pattern.literal = delimiter;
      step.behavior = SplitBehavior::removed;
      pre_tokenizers_.emplace_back(std::move(step));
    } else {
      unsupported.add(where + ".type \"" + type + "\" (supported pre-tokenizers: ByteLevel, Split, Metaspace, Digits, "
                      "Whitespace, WhitespaceSplit, Punctuation, BertPreTokenizer, CharDelimiterSplit, Sequence)");
    }
  }

  void load_decoder(const nlohmann::json& d, const std::string& where, const std::string& source, Unsupported& unsupported) {
    check_nesting(where, source);
    using K = detail::DecoderStep::Kind;
    const auto type = detail::json_type(d);
    detail::DecoderStep step;
    if (type == "Sequence") {
      const auto* list = detail::find_member(d, "decoders");
      if (list == nullptr || !list->is_array()) throw FileError(source, where + ".decoders must be a list");
      for (std::size_t i = 0; i < list->size(); ++i) {
        load_decoder((*list)[i], where + ".decoders[" + std::to_string(i) + "]", source, unsupported);
      }
      return;
    } else if (type == "ByteLevel") {
      step.kind = K::byte_level;
    } else if (type == "Replace") {
      step.kind = K::replace;
      step.pattern = load_pattern(d, where, source);
      step.text = string_field(d, "content", "", where, source);
    } else if (type == "ByteFallback") {
      step.kind = K::byte_fallback;
    } else if (type == "Fuse") {
      step.kind = K::fuse;
    } else if (type == "Strip") {
      step.kind = K::strip;
      const auto content = string_field(d, "content", " ", where, source);
      if (content.empty() || utf8_sequence_length(content, 0) != content.size()) {
        throw FileError(source, where + ".content must be one character");
      }
      step.strip_char = decode_utf8_at(content, 0, content.size());
      step.start = count_field(d, "start", where, source);
      step.stop = count_field(d, "stop", where, source);
    } else if (type == "Metaspace") {
      step.kind = K::metaspace;
      step.text = string_field(d, "replacement", "\xE2\x96\x81", where, source);
      step.scheme = load_prepend_scheme(d, where, source);
    } else if (type == "WordPiece") {
      step.kind = K::word_piece;
      step.text = string_field(d, "prefix", "##", where, source);
      step.cleanup = detail::json_flag(d, "cleanup", true);
    } else if (type == "BPEDecoder") {
      step.kind = K::bpe_suffix;
      step.text = string_field(d, "suffix", "</w>", where, source);
    } else {
      unsupported.add(where + ".type \"" + type + "\" (supported decoders: ByteLevel, Replace, ByteFallback, Fuse, Strip, "
                      "Metaspace, WordPiece, BPEDecoder, Sequence)");
      return;
    }
    decoders_.push_back(std::move(step));
  }

  // A [token, id] pair of RobertaProcessing / BertProcessing.
  static TokenId processing_token(const nlohmann::json& p, const char* key, const std::string& where, const std::string& source) {
    const auto* v = detail::find_member(p, key);
    if (v == nullptr || !v->is_array() || v->size() != 2 || !(*v)[1].is_number_integer()) {
      throw FileError(source, where + "." + key + " must be [token, id]");
    }
    return (*v)[1].get<TokenId>();
  }

  void load_post_processor(const nlohmann::json& p, const std::string& where, const std::string& source, Unsupported& unsupported) {
    check_nesting(where, source);
    const auto type = detail::json_type(p);
    if (type == "ByteLevel") return;  // offsets only
    if (type == "Sequence") {
      const auto* list = detail::find_member(p, "processors");
      if (list == nullptr || !list->is_array()) throw FileError(source, where + ".processors must be a list");
      for (std::size_t i = 0; i < list->size(); ++i) {
        load_post_processor((*list)[i], where + ".processors[" + std::to_string(i) + "]", source, unsupported);
      }
      return;
    }
    if (type == "RobertaProcessing" || type == "BertProcessing") {
      Template t;
      t.push_back({false, {processing_token(p, "cls", where, source)}});
      t.push_back({true, {}});
      t.push_back({false, {processing_token(p, "sep", where, source)}});
      templates_.push_back(std::move(t));
      return;
    }
    if (type != "TemplateProcessing") {
      unsupported.add(where + ".type \"" + type + "\" (supported post-processors: TemplateProcessing, ByteLevel, "
                      "RobertaProcessing, BertProcessing, Sequence)");
      return;
    }
    const auto* single = detail::find_member(p, "single");
    const auto* specials = detail::find_member(p, "special_tokens");
    if (single == nullptr || !single->is_array()) throw FileError(source, where + ".single must be a list");
    Template t;
    for (const auto& item : *single) {
      TemplatePiece piece;
      if (item.is_object() && item.contains("Sequence")) {
        piece.is_sequence = true;
      } else if (item.is_object() && item.contains("SpecialToken") && item["SpecialToken"].is_object() &&
                 item["SpecialToken"].contains("id") && item["SpecialToken"]["id"].is_string()) {
        const auto name = item["SpecialToken"]["id"].get<std::string>();
        if (specials == nullptr || !specials->is_object() || !specials->contains(name) || !(*specials)[name].is_object() ||
            !(*specials)[name].contains("ids") || !(*specials)[name]["ids"].is_array()) {
          throw FileError(source, where + ".special_tokens has no entry \"" + name + "\"");
        }
        for (const auto& v : (*specials)[name]["ids"]) {
          if (!v.is_number_integer() || v.get<TokenId>() < 0) throw FileError(source, where + ".special_tokens[\"" + name + "\"].ids must be ids");
          piece.ids.push_back(v.get<TokenId>());
        }
      } else {
        throw FileError(source, where + ".single has an item that is neither Sequence nor SpecialToken");
      }
      t.push_back(std::move(piece));
    }
    templates_.push_back(std::move(t));
  }

  // Reads the special tokens and the settings of tokenizer_config.json (with special_tokens_map.json as fallback)
  // the way transformers' fast tokenizers apply them.
  void configure_special_tokens(const nlohmann::json& config, const nlohmann::json& special_map, const std::string& source) {
    if (!config.is_object()) throw FileError(source, "not a JSON object");
    // added_tokens_decoder: tokens that tokenizer.json does not have yet are added with their flags.
    if (const auto* decoder = detail::find_member(config, "added_tokens_decoder")) {
      if (!decoder->is_object()) throw FileError(source, "added_tokens_decoder must be an object of id -> token");
      std::vector<AddedToken> extra;
      for (const auto& [key, v] : decoder->items()) {
        TokenId id = -1;
        try {
          std::size_t used = 0;
          id = std::stoll(key, &used);
          if (used != key.size()) id = -1;
        } catch (const std::exception&) {
          id = -1;
        }
        if (id < 0 || id > 50'000'000) throw FileError(source, "added_tokens_decoder key \"" + key + "\" is not a token id");
        if (!v.is_object() || !v.contains("content") || !v["content"].is_string() || v["content"].get<std::string>().empty() ||
            !is_valid_utf8(v["content"].get<std::string>())) {
          throw FileError(source, "added_tokens_decoder[\"" + key + "\"] needs a non-empty string \"content\"");
        }
        const bool known = std::any_of(added_.begin(), added_.end(), [&](const AddedToken& a) { return a.id == id; });
        if (known) continue;
        AddedToken t;
        t.id = id;
        t.content = v["content"].get<std::string>();
        t.special = detail::json_flag(v, "special", false);
        t.single_word = detail::json_flag(v, "single_word", false);
        t.lstrip = detail::json_flag(v, "lstrip", false);
        t.rstrip = detail::json_flag(v, "rstrip", false);
        t.normalized = detail::json_flag(v, "normalized", !t.special);
        extra.push_back(std::move(t));
      }
      std::sort(extra.begin(), extra.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
      for (auto& t : extra) register_added(std::move(t));
    }
    // Special tokens that are only in the model's vocabulary become special added tokens, as transformers makes
    // them (so they are split out of text and skipped by skip_special_tokens).
    const auto resolve = [&](const char* key, std::optional<std::string>* text, std::optional<TokenId>* id) {
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
      if (added_ids_.find(content) == added_ids_.end()) {
        AddedToken t;
        t.id = *found;
        t.content = content;
        t.special = true;
        if (v->is_object()) {
          t.single_word = detail::json_flag(*v, "single_word", false);
          t.lstrip = detail::json_flag(*v, "lstrip", false);
          t.rstrip = detail::json_flag(*v, "rstrip", false);
          t.normalized = detail::json_flag(*v, "normalized", false);
        }
        register_added(std::move(t));
      }
      if (text != nullptr) *text = content;
      if (id != nullptr) *id = *found;
    };
    resolve("bos_token", &special_.bos_token, &special_.bos_id);
    resolve("eos_token", &special_.eos_token, &special_.eos_id);
    resolve("pad_token", &special_.pad_token, &special_.pad_id);
    resolve("unk_token", &special_.unk_token, &special_.unk_id);
    for (const char* key : {"cls_token", "sep_token", "mask_token"}) resolve(key, nullptr, nullptr);
    const nlohmann::json* extra = detail::find_member(config, "additional_special_tokens");
    if (extra == nullptr) extra = detail::find_member(special_map, "additional_special_tokens");
    if (extra != nullptr && extra->is_array()) {
      for (const auto& e : *extra) {
        if (e.is_string()) special_.additional.push_back(e.get<std::string>());
        else if (e.is_object() && e.contains("content") && e["content"].is_string()) special_.additional.push_back(e["content"].get<std::string>());
      }
    }
    build_added_tables();
    if (special_.eos_id) special_.generation_eos_ids = {*special_.eos_id};
    if (const auto* m = detail::find_member(config, "model_max_length"); m != nullptr && m->is_number()) {
      const double v = m->get<double>();
      model_max_length_ = v > 0 && v < 1e15 ? static_cast<std::size_t>(v) : model_max_length_;
    }
    const auto flag = [&](const char* key) -> std::optional<bool> {
      const auto* v = detail::find_member(config, key);
      if (v == nullptr) return std::nullopt;
      if (!v->is_boolean()) throw FileError(source, std::string(key) + " must be true or false");
      return v->get<bool>();
    };
    clean_up_tokenization_spaces_ = flag("clean_up_tokenization_spaces").value_or(false);
    legacy_ = flag("legacy");
    const auto add_bos = flag("add_bos_token"), add_eos = flag("add_eos_token");
    // transformers' fast tokenizer classes that rebuild the post-processor from these two flags (update_post_processor
    // in their __init__), with their default for add_bos_token; any other tokenizer gets them only where
    // tokenizer.json's post-processor adds nothing itself.
    const auto* class_field = detail::find_member(config, "tokenizer_class");
    std::string cls = class_field != nullptr && class_field->is_string() ? class_field->get<std::string>() : std::string();
    if (cls.size() > 4 && cls.compare(cls.size() - 4, 4, "Fast") == 0) cls.resize(cls.size() - 4);  // AutoTokenizer's fast class
    static constexpr std::pair<std::string_view, bool> kRebuilding[] = {
        {"LlamaTokenizer", true}, {"CodeLlamaTokenizer", true}, {"GemmaTokenizer", true}, {"CohereTokenizer", true},
        {"GPTNeoXTokenizer", false}};
    const auto* rebuild = std::find_if(std::begin(kRebuilding), std::end(kRebuilding), [&](const auto& e) { return e.first == cls; });
    const bool rebuilds = rebuild != std::end(kRebuilding);
    const bool adds_nothing = std::all_of(templates_.begin(), templates_.end(), [](const Template& t) {
      return std::all_of(t.begin(), t.end(), [](const TemplatePiece& p) { return p.is_sequence; });
    });
    if (rebuilds || (adds_nothing && (add_bos.value_or(false) || add_eos.value_or(false)))) {
      const bool bos = add_bos.value_or(rebuilds && rebuild->second), eos = add_eos.value_or(false);
      if (bos && !special_.bos_id) throw FileError(source, "add_bos_token is true but there is no bos_token");
      if (eos && !special_.eos_id) throw FileError(source, "add_eos_token is true but there is no eos_token");
      Template t;
      if (bos) t.push_back({false, {*special_.bos_id}});
      t.push_back({true, {}});
      if (eos) t.push_back({false, {*special_.eos_id}});
      templates_.assign(1, std::move(t));
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
      std::size_t hit_size = 0;
      for (const std::size_t k : bucket) {
        const auto& content = added_match_[k];
        if (text.compare(i, content.size(), content) == 0) {
          hit = &added_[k];
          hit_size = content.size();
          break;
        }
      }
      if (hit == nullptr) {
        ++i;
        continue;
      }
      std::size_t start = i, stop = i + hit_size;
      i = stop;
      if (hit->single_word) {
        const bool start_ok = start == 0 || !detail::is_word_char(detail::last_char_before(text, start));
        bool stop_ok = stop == text.size();
        if (!stop_ok) {
          const std::size_t len = utf8_sequence_length(text, stop);
          stop_ok = len == 0 || !detail::is_word_char(decode_utf8_at(text, stop, len));
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
          if (len == 0 || !is_unicode_whitespace(decode_utf8_at(text, stop, len))) break;
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
    for (const auto& step : normalizers_) s = detail::apply_normalizer(step, std::move(s));
    return s;
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
        std::vector<detail::Piece> pieces{{std::string_view(normalized).substr(sub.begin, sub.end - sub.begin),
                                           seg.begin == 0 && sub.begin == 0}};
        std::deque<std::string> storage;  // pieces that a pre-tokenizer rewrote
        bool after_byte_level = false;    // later steps see the pieces in the byte-level alphabet, as in HF
        for (const auto& step : pre_tokenizers_) {
          if (const auto* split = std::get_if<SplitStep>(&step)) {
            detail::split_pieces(pieces, split->pattern, split->behavior, split->invert, after_byte_level);
          } else if (const auto* meta = std::get_if<MetaspaceStep>(&step)) {
            detail::metaspace_pieces(pieces, meta->replacement, meta->scheme, meta->split, storage);
          } else {
            const auto& bl = std::get<ByteLevelStep>(step);
            if (bl.add_prefix_space) {
              for (auto& p : pieces) {
                if (!p.text.empty() && p.text.front() == ' ') continue;
                std::string& spaced = storage.emplace_back(1, ' ');
                spaced.append(p.text.data(), p.text.size());
                p.text = spaced;
              }
            }
            if (bl.use_regex) detail::split_pieces(pieces, bl.regex, SplitBehavior::isolated, false, after_byte_level);
            after_byte_level = true;
          }
        }
        for (const auto& piece : pieces) encode_word(piece.text, ids);
      }
    }
  }

  std::vector<TokenId> apply_post_processor(std::vector<TokenId> ids) const {
    for (const auto& t : templates_) {
      std::vector<TokenId> out;
      out.reserve(ids.size() + 4);
      for (const auto& piece : t) {
        if (piece.is_sequence) out.insert(out.end(), ids.begin(), ids.end());
        else out.insert(out.end(), piece.ids.begin(), piece.ids.end());
      }
      ids = std::move(out);
    }
    return ids;
  }

  static std::uint64_t pair_key(TokenId a, TokenId b) {
    return (static_cast<std::uint64_t>(a) << 32) | static_cast<std::uint64_t>(static_cast<std::uint32_t>(b));
  }

  // The model on one pre-token, through the per-word cache.
  void encode_word(std::string_view word, std::vector<TokenId>& ids) const {
    if (word.empty()) return;
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
    const std::size_t first = ids.size();
    switch (model_kind_) {
      case ModelKind::unigram:
        unigram_->encode(word, ids, [&](std::string_view piece) -> std::optional<TokenId> {
          const auto it = vocab_.find(std::string(piece));
          if (it == vocab_.end()) return std::nullopt;
          return it->second;
        });
        break;
      case ModelKind::bpe: bpe(word, ids); break;
      case ModelKind::word_piece: word_piece(word, ids); break;
      case ModelKind::word_level: {
        const auto it = vocab_.find(std::string(word));
        ids.push_back(it != vocab_.end() ? it->second : unknown_id());
        break;
      }
    }
    if (cacheable) {
      std::lock_guard lock(shard->mutex);
      if (shard->map.size() < MergeCache::kCapacityPerShard) {
        shard->map.try_emplace(std::string(word), ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end());
      }
    }
  }

  // BPE of one pre-token: byte-level models start from one symbol per byte; others from one symbol per character
  // (with byte fallback to <0xNN> pieces, else the unknown token), then merges apply lowest rank first (leftmost on
  // ties).
  void bpe(std::string_view word, std::vector<TokenId>& ids) const {
    if (ignore_merges_) {
      if (byte_level_) {
        if (const auto it = bytes_to_id_.find(std::string(word)); it != bytes_to_id_.end()) {
          ids.push_back(it->second);
          return;
        }
      } else if (const auto it = vocab_.find(std::string(word)); it != vocab_.end()) {
        ids.push_back(it->second);
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
    const auto add = [&](TokenId id) {
      const int k = static_cast<int>(symbols.size());
      symbols.push_back({id, k - 1, k + 1, true});
    };
    if (byte_level_) {
      for (const char ch : word) {
        const TokenId id = byte_id_[static_cast<unsigned char>(ch)];
        if (id >= 0) add(id);  // a byte without a token (no unk token): dropped, as HF does
      }
    } else {
      std::optional<TokenId> unk_id;
      if (unk_token_) {
        if (const auto it = vocab_.find(*unk_token_); it != vocab_.end()) unk_id = it->second;
      }
      bool pending_unk = false;
      std::string key;
      for (std::size_t at = 0; at < word.size();) {
        const std::size_t len = std::max<std::size_t>(utf8_sequence_length(word, at), 1);
        key.clear();
        if (at > 0) key += prefix_;
        key.append(word.substr(at, len));
        if (at + len == word.size()) key += suffix_;
        at += len;
        if (const auto it = vocab_.find(key); it != vocab_.end()) {
          if (pending_unk) add(*unk_id);
          pending_unk = false;
          add(it->second);
          continue;
        }
        if (byte_fallback_) {
          bool all = true;
          for (const char ch : key) all = all && byte_piece_[static_cast<unsigned char>(ch)] >= 0;
          if (all) {
            for (const char ch : key) add(byte_piece_[static_cast<unsigned char>(ch)]);
            continue;
          }
        }
        if (unk_token_) {
          if (!unk_id) throw Error("tokenizer: the unk_token \"" + *unk_token_ + "\" is not in the vocabulary");
          if (pending_unk && !fuse_unk_) add(*unk_id);
          pending_unk = true;
        }
      }
      if (pending_unk) add(*unk_id);
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
    for (const auto& s : symbols) {
      if (s.alive) ids.push_back(s.id);
    }
  }

  // The id of the model's unk_token; throws when it has none (HF's MissingUnkToken).
  TokenId unknown_id() const {
    if (unk_token_) {
      if (const auto it = vocab_.find(*unk_token_); it != vocab_.end()) return it->second;
      throw Error("tokenizer: the unk_token \"" + *unk_token_ + "\" is not in the vocabulary");
    }
    throw Error("tokenizer: a word has no token and the model has no unk_token");
  }

  // WordPiece: greedy longest match from the left, later pieces with the continuing-subword prefix ("##"); a word
  // with an unmatchable part, or longer than max_input_chars_per_word characters, is the unknown token.
  void word_piece(std::string_view word, std::vector<TokenId>& ids) const {
    std::size_t chars = 0;
    for (std::size_t at = 0; at < word.size(); at += std::max<std::size_t>(utf8_sequence_length(word, at), 1)) ++chars;
    if (chars > max_input_chars_per_word_) {
      ids.push_back(unknown_id());
      return;
    }
    std::vector<TokenId> pieces;
    std::string key;
    for (std::size_t start = 0; start < word.size();) {
      std::size_t end = word.size();
      std::optional<TokenId> found;
      while (start < end) {
        key.assign(start > 0 ? prefix_ : std::string());
        key.append(word.substr(start, end - start));
        if (const auto it = vocab_.find(key); it != vocab_.end()) {
          found = it->second;
          break;
        }
        --end;  // back to the previous character boundary
        while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80) --end;
      }
      if (!found) {
        ids.push_back(unknown_id());
        return;
      }
      pieces.push_back(*found);
      start = end;
    }
    ids.insert(ids.end(), pieces.begin(), pieces.end());
  }

  struct MergeTarget {
    std::uint32_t rank;
    TokenId new_id;
  };

  std::vector<std::string> tokens_;       // id -> token string (vocabulary piece, or added content)
  std::vector<std::string> token_bytes_;  // id -> the bytes it decodes to under a ByteLevel decoder
  std::vector<bool> has_token_, is_special_;
  std::unordered_map<std::string, TokenId> vocab_, added_ids_, bytes_to_id_;
  ModelKind model_kind_ = ModelKind::bpe;
  // BPE
  bool byte_level_ = false;
  std::array<TokenId, 256> byte_id_{};     // byte-level: the token of each byte's alphabet character
  std::array<TokenId, 256> byte_piece_{};  // byte fallback: the <0xNN> token of each byte, -1 if none
  std::unordered_map<std::uint64_t, MergeTarget> merges_;
  bool ignore_merges_ = false, byte_fallback_ = false, fuse_unk_ = false;
  std::optional<std::string> unk_token_;
  std::string prefix_, suffix_;  // BPE's continuing_subword_prefix / end_of_word_suffix; WordPiece's prefix
  std::size_t max_input_chars_per_word_ = 100;  // WordPiece
  // Unigram
  std::shared_ptr<const detail::UnigramModel> unigram_;
  std::vector<AddedToken> added_;
  std::vector<std::string> added_match_;  // per added token: the text it matches (normalized content if normalized)
  AddedTable raw_added_, normalized_added_;
  std::vector<detail::NormalizerStep> normalizers_;
  std::vector<PreTokenizerStep> pre_tokenizers_;
  std::vector<detail::DecoderStep> decoders_;
  bool has_decoder_ = false, byte_level_decode_ = false;
  std::vector<Template> templates_;
  bool clean_up_tokenization_spaces_ = false;
  std::optional<bool> legacy_;
  SpecialTokens special_;
  std::optional<std::string> chat_template_;
  std::filesystem::path source_folder_;
  std::size_t model_max_length_ = static_cast<std::size_t>(1) << 40;
  std::shared_ptr<MergeCache> cache_ = std::make_shared<MergeCache>();
};

}  // namespace xpo::text
