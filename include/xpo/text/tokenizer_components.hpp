// xpo/text/tokenizer_components.hpp — the parts of a Hugging Face tokenizer.json pipeline other than the BPE
// merge loop: normalizers, pre-tokenizer splitting, decoders, SentencePiece's precompiled character map and the
// Unigram model's Viterbi search. Each follows the behaviour of HF `tokenizers` (Rust, 0.20-0.22) as documented
// at https://huggingface.co/docs/tokenizers/components and as its source does it; only what decides ids and text
// is kept (no offsets).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <utf8proc.h>

#include "xpo/core/errors.hpp"
#include "xpo/text/regex.hpp"
#include "xpo/text/unicode.hpp"

namespace xpo::text::detail {

// ---- patterns -------------------------------------------------------------------------------------------------

// A tokenizer.json pattern: {"String": s} (matched literally) or {"Regex": r} (Oniguruma syntax, run by PCRE2).
struct TextPattern {
  std::optional<std::string> literal;   // set for String patterns
  std::shared_ptr<const Regex> regex;   // set for Regex patterns

  // Non-overlapping, non-empty matches in `s`, left to right.
  [[nodiscard]] std::vector<Regex::Match> find_all(std::string_view s) const {
    std::vector<Regex::Match> out;
    if (literal) {
      if (literal->empty()) return out;
      for (std::size_t at = s.find(*literal); at != std::string_view::npos; at = s.find(*literal, at + literal->size())) {
        out.push_back({at, at + literal->size()});
      }
      return out;
    }
    for (const auto& m : regex->find_all(s)) {
      if (m.end > m.begin) out.push_back(m);
    }
    return out;
  }

  // `s` with every match replaced by `content`.
  [[nodiscard]] std::string replace_all(std::string_view s, std::string_view content) const {
    std::string out;
    std::size_t last = 0;
    for (const auto& m : find_all(s)) {
      out.append(s.substr(last, m.begin - last));
      out.append(content);
      last = m.end;
    }
    out.append(s.substr(last));
    return out;
  }
};

// ---- Unicode helpers -------------------------------------------------------------------------------------------

inline std::vector<char32_t> to_code_points(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence_length(s, i);
    if (n == 0) {  // not reached for valid text; keep going byte by byte
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    out.push_back(decode_utf8_at(s, i, n));
    i += n;
  }
  return out;
}

inline utf8proc_category_t category_of(char32_t c) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(c));
}

inline bool is_mark(char32_t c) {
  const auto cat = category_of(c);
  return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_MC || cat == UTF8PROC_CATEGORY_ME;
}

// Rust's char::is_ascii_punctuation or a Unicode punctuation category (P*): HF's BERT/Punctuation test.
inline bool is_bert_punctuation(char32_t c) {
  if (c < 0x80) {
    return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') || (c >= '{' && c <= '~');
  }
  const auto cat = category_of(c);
  return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

// Rust's char::is_alphanumeric (Alphabetic or Numeric), approximated by the general categories L*, Nl, Nd, No.
inline bool is_alphanumeric(char32_t c) {
  const auto cat = category_of(c);
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

// ---- precompiled character map (SentencePiece's normalization rules) --------------------------------------------

inline std::string base64_decode(std::string_view in, const std::string& what) {
  static constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::array<int, 256> value{};
  value.fill(-1);
  for (std::size_t i = 0; i < kAlphabet.size(); ++i) value[static_cast<unsigned char>(kAlphabet[i])] = static_cast<int>(i);
  std::string out;
  out.reserve(in.size() / 4 * 3);
  std::uint32_t acc = 0;
  int bits = 0;
  std::size_t padding = 0;
  for (const char ch : in) {
    if (ch == '=') {
      ++padding;
      continue;
    }
    if (ch == '\n' || ch == '\r') continue;
    const int v = value[static_cast<unsigned char>(ch)];
    if (v < 0 || padding > 0) throw Error(what + " is not valid base64");
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  if (padding > 2) throw Error(what + " is not valid base64");
  return out;
}

// The "precompiled_charsmap" of a Precompiled normalizer: a little-endian u32 byte size, a darts-clone double-array
// trie of that size mapping UTF-8 keys to offsets, then the replacement strings (NUL-terminated). Applied as HF's
// spm_precompiled crate applies it: per extended grapheme cluster (shorter than 6 bytes) the first trie match of the
// cluster replaces it; otherwise each character is looked up alone.
class PrecompiledCharsmap {
 public:
  PrecompiledCharsmap() = default;

  // Throws xpo::Error naming `what` when the blob is too short or its sizes disagree.
  PrecompiledCharsmap(std::string_view blob, const std::string& what) {
    if (blob.empty()) return;
    if (blob.size() < 4) throw Error(what + " is shorter than its 4-byte header");
    std::uint32_t trie_bytes = 0;
    for (int k = 3; k >= 0; --k) trie_bytes = (trie_bytes << 8) | static_cast<unsigned char>(blob[static_cast<std::size_t>(k)]);
    if (trie_bytes % 4 != 0 || trie_bytes > blob.size() - 4) throw Error(what + ": the trie size " + std::to_string(trie_bytes) + " does not fit the data");
    units_.resize(trie_bytes / 4);
    for (std::size_t i = 0; i < units_.size(); ++i) {
      std::uint32_t u = 0;
      for (int k = 3; k >= 0; --k) u = (u << 8) | static_cast<unsigned char>(blob[4 + i * 4 + static_cast<std::size_t>(k)]);
      units_[i] = u;
    }
    normalized_.assign(blob.substr(4 + trie_bytes));
    if (!is_valid_utf8(normalized_)) throw Error(what + ": the replacement strings are not valid UTF-8");
  }

  [[nodiscard]] bool empty() const noexcept { return units_.empty(); }

  [[nodiscard]] std::string normalize(std::string_view text) const {
    if (units_.empty()) return std::string(text);
    std::string out;
    out.reserve(text.size());
    const auto cps = to_code_points(text);
    std::size_t byte = 0;
    std::size_t i = 0;
    utf8proc_int32_t state = 0;
    while (i < cps.size()) {
      // One extended grapheme cluster: [i, j) in code points, [byte, end) in bytes.
      std::size_t j = i + 1;
      std::size_t end = byte + utf8_len(cps[i]);
      state = 0;
      while (j < cps.size() && !utf8proc_grapheme_break_stateful(static_cast<utf8proc_int32_t>(cps[j - 1]),
                                                                  static_cast<utf8proc_int32_t>(cps[j]), &state)) {
        end += utf8_len(cps[j]);
        ++j;
      }
      const std::string_view cluster = text.substr(byte, end - byte);
      bool done = false;
      if (cluster.size() < 6) {
        if (const auto r = transform(cluster)) {
          out.append(*r);
          done = true;
        }
      }
      if (!done) {
        std::size_t at = byte;
        for (std::size_t k = i; k < j; ++k) {
          const std::size_t n = utf8_len(cps[k]);
          const std::string_view one = text.substr(at, n);
          if (const auto r = transform(one)) out.append(*r);
          else out.append(one);
          at += n;
        }
      }
      byte = end;
      i = j;
    }
    return out;
  }

 private:
  static std::size_t utf8_len(char32_t c) { return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4; }

  // The replacement of the shortest key that is a prefix of `chunk`, if any.
  [[nodiscard]] std::optional<std::string_view> transform(std::string_view chunk) const {
    const auto unit_at = [&](std::size_t pos) -> std::optional<std::uint32_t> {
      if (pos >= units_.size()) return std::nullopt;
      return units_[pos];
    };
    const auto offset = [](std::uint32_t u) -> std::size_t { return (u >> 10) << ((u & (1U << 9)) >> 6); };
    std::size_t pos = 0;
    auto unit = unit_at(pos);
    if (!unit) return std::nullopt;
    pos ^= offset(*unit);
    for (const char ch : chunk) {
      const auto c = static_cast<unsigned char>(ch);
      if (c == 0) break;
      pos ^= c;
      unit = unit_at(pos);
      if (!unit || (*unit & ((1U << 31) | 0xFFU)) != c) return std::nullopt;
      pos ^= offset(*unit);
      if (((*unit >> 8) & 1U) != 0) {
        const auto leaf = unit_at(pos);
        if (!leaf) return std::nullopt;
        const std::size_t index = *leaf & ((1U << 31) - 1);
        if (index >= normalized_.size()) return std::nullopt;
        const auto stop = normalized_.find('\0', index);
        const auto r = std::string_view(normalized_).substr(index, (stop == std::string::npos ? normalized_.size() : stop) - index);
        if (!is_valid_utf8(r)) return std::nullopt;  // an offset inside a character: not a replacement
        return r;
      }
    }
    return std::nullopt;
  }

  std::vector<std::uint32_t> units_;
  std::string normalized_;
};

// ---- normalizers ------------------------------------------------------------------------------------------------

struct NormalizerStep {
  enum class Kind { nfc, nfd, nfkc, nfkd, lowercase, strip, strip_accents, prepend, replace, precompiled, bert };
  Kind kind = Kind::nfc;
  bool left = false, right = false;  // Strip
  std::string text;                  // Prepend: the prefix; Replace: the content
  TextPattern pattern;               // Replace
  std::shared_ptr<const PrecompiledCharsmap> charsmap;
  // BertNormalizer
  bool clean_text = true, handle_chinese_chars = true, lowercase = true;
  std::optional<bool> strip_accents;
};

inline std::string lowercase_text(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char32_t c : to_code_points(s)) {
    // Rust's char::to_lowercase; the one character whose lowercase is two (U+0130) is special-cased as Rust does.
    if (c == 0x130) {
      out += "i\xCC\x87";
      continue;
    }
    append_utf8(out, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
  }
  return out;
}

inline std::string strip_marks(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char32_t c : to_code_points(s)) {
    if (category_of(c) != UTF8PROC_CATEGORY_MN) append_utf8(out, c);
  }
  return out;
}

inline bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

inline std::string apply_normalizer(const NormalizerStep& step, std::string s) {
  using K = NormalizerStep::Kind;
  switch (step.kind) {
    case K::nfc: return normalize(s, NormalizationForm::NFC);
    case K::nfd: return normalize(s, NormalizationForm::NFD);
    case K::nfkc: return normalize(s, NormalizationForm::NFKC);
    case K::nfkd: return normalize(s, NormalizationForm::NFKD);
    case K::lowercase: return lowercase_text(s);
    case K::strip: {
      std::string_view v = s;
      // Rust's char::is_whitespace is Unicode White_Space.
      while (step.left && !v.empty()) {
        const std::size_t n = utf8_sequence_length(v, 0);
        if (n == 0 || !is_unicode_whitespace(decode_utf8_at(v, 0, n))) break;
        v.remove_prefix(n);
      }
      while (step.right && !v.empty()) {
        std::size_t b = v.size() - 1;
        while (b > 0 && (static_cast<unsigned char>(v[b]) & 0xC0) == 0x80) --b;
        const std::size_t n = utf8_sequence_length(v, b);
        if (n == 0 || !is_unicode_whitespace(decode_utf8_at(v, b, n))) break;
        v.remove_suffix(v.size() - b);
      }
      return std::string(v);
    }
    case K::strip_accents: return strip_marks(s);
    case K::prepend: return s.empty() ? s : step.text + s;
    case K::replace: return step.pattern.replace_all(s, step.text);
    case K::precompiled: return step.charsmap ? step.charsmap->normalize(s) : s;
    case K::bert: {
      std::string out;
      out.reserve(s.size());
      for (const char32_t c : to_code_points(s)) {
        if (step.clean_text) {
          const auto cat = category_of(c);
          const bool control = c != '\t' && c != '\n' && c != '\r' &&
                               (cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF || cat == UTF8PROC_CATEGORY_CN ||
                                cat == UTF8PROC_CATEGORY_CO);
          if (c == 0 || c == 0xFFFD || control) continue;
          if (is_unicode_whitespace(c)) {
            out += ' ';
            continue;
          }
        }
        if (step.handle_chinese_chars && is_chinese_char(c)) {
          out += ' ';
          append_utf8(out, c);
          out += ' ';
          continue;
        }
        append_utf8(out, c);
      }
      const bool strip = step.strip_accents.value_or(step.lowercase);
      if (strip) out = strip_marks(normalize(out, NormalizationForm::NFD));
      if (step.lowercase) out = lowercase_text(out);
      return out;
    }
  }
  return s;
}

// ASCII punctuation (Rust's is_ascii_punctuation) or Unicode P*, one character per match: what HF's Punctuation and
// BertPreTokenizer split on.
inline constexpr const char* kPunctuationClass = R"([\p{P}\x21-\x2F\x3A-\x40\x5B-\x60\x7B-\x7E])";

// ---- pre-tokenizer splitting ----------------------------------------------------------------------------------

// A piece of text being pre-tokenized. `at_start`: it begins at offset 0 of the original input (what Metaspace's
// prepend_scheme "first" tests).
struct Piece {
  std::string_view text;
  bool at_start = false;
};

enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

// The matches of `pattern` in the byte-level form of `raw` (each byte as its GPT-2 alphabet character, what HF's
// pre-tokenizers after a ByteLevel step see), as byte ranges of `raw`.
inline std::vector<Regex::Match> find_all_byte_level(const TextPattern& pattern, std::string_view raw) {
  const auto& alphabet = ByteAlphabet::get();
  std::string mapped;
  mapped.reserve(raw.size() * 2);
  std::vector<std::size_t> raw_at(1, 0);  // mapped offset -> raw offset, at character boundaries
  for (std::size_t i = 0; i < raw.size(); ++i) {
    const auto& c = alphabet.utf8_of_byte[static_cast<unsigned char>(raw[i])];
    mapped += c;
    raw_at.resize(mapped.size() + 1, i + 1);
  }
  std::vector<Regex::Match> out;
  for (const auto& m : pattern.find_all(mapped)) out.push_back({raw_at[m.begin], raw_at[m.end]});
  return out;
}

// Splits every piece around the matches of `pattern` (HF's SplitDelimiterBehavior; `invert` swaps what counts as
// the delimiter). `byte_level`: the pattern runs on the pieces' byte-level form (after a ByteLevel step).
inline void split_pieces(std::vector<Piece>& pieces, const TextPattern& pattern, SplitBehavior behavior, bool invert,
                         bool byte_level = false) {
  std::vector<Piece> out;
  out.reserve(pieces.size() * 2);
  for (const auto& piece : pieces) {
    struct Part {
      std::size_t begin, end;
      bool is_match;
    };
    std::vector<Part> parts;
    std::size_t last = 0;
    for (const auto& m : byte_level ? find_all_byte_level(pattern, piece.text) : pattern.find_all(piece.text)) {
      if (last < m.begin) parts.push_back({last, m.begin, invert});
      parts.push_back({m.begin, m.end, !invert});
      last = m.end;
    }
    if (last < piece.text.size()) parts.push_back({last, piece.text.size(), invert});
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
      if (p.end > p.begin) out.push_back({piece.text.substr(p.begin, p.end - p.begin), piece.at_start && p.begin == 0});
    }
  }
  pieces = std::move(out);
}

enum class PrependScheme { always, first, never };

// Metaspace: spaces become `replacement`, which is prepended per `scheme`; with `split`, each piece is cut before
// every replacement character. New strings live in `storage`.
inline void metaspace_pieces(std::vector<Piece>& pieces, const std::string& replacement, PrependScheme scheme, bool split,
                             std::deque<std::string>& storage) {
  for (auto& p : pieces) {
    std::string& s = storage.emplace_back();
    s.reserve(p.text.size() + replacement.size());
    const bool starts = p.text.substr(0, replacement.size()) == replacement ||
                        (!p.text.empty() && p.text.front() == ' ');
    if (!starts && (scheme == PrependScheme::always || (scheme == PrependScheme::first && p.at_start))) s += replacement;
    for (const char ch : p.text) {
      if (ch == ' ') s += replacement;
      else s += ch;
    }
    p.text = s;
  }
  if (split) {
    TextPattern delimiter;
    delimiter.literal = replacement;
    split_pieces(pieces, delimiter, SplitBehavior::merged_with_next, false);
  }
}

// ---- decoders ---------------------------------------------------------------------------------------------------

struct DecoderStep {
  enum class Kind { byte_level, replace, byte_fallback, fuse, strip, metaspace, word_piece, bpe_suffix };
  Kind kind = Kind::fuse;
  TextPattern pattern;           // Replace
  std::string text;              // Replace: content; Metaspace: replacement; WordPiece: prefix; BPEDecoder: suffix
  char32_t strip_char = ' ';     // Strip
  std::size_t start = 0, stop = 0;
  PrependScheme scheme = PrependScheme::always;  // Metaspace
  bool cleanup = true;           // WordPiece
};

// `<0xNN>` -> the byte, else -1.
inline int byte_token_value(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return -1;
  int v = 0;
  for (std::size_t k = 3; k < 5; ++k) {
    const char c = token[k];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else return -1;
  }
  return v;
}

// transformers' / tokenizers' clean-up of spaces before punctuation and English contractions.
inline std::string clean_up_tokenization(std::string s) {
  static constexpr std::pair<std::string_view, std::string_view> kRules[] = {
      {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) {
    std::string out;
    out.reserve(s.size());
    std::size_t last = 0;
    for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, last)) {
      out.append(s, last, at - last);
      out.append(to);
      last = at + from.size();
    }
    out.append(s, last, std::string::npos);
    s = std::move(out);
  }
  return s;
}

inline void apply_decoder(const DecoderStep& step, std::vector<std::string>& tokens) {
  using K = DecoderStep::Kind;
  switch (step.kind) {
    case K::byte_level: {
      std::string bytes;
      for (const auto& t : tokens) {
        if (!byte_level_to_bytes(t, bytes)) bytes += t;
      }
      tokens.assign(1, utf8_lossy(bytes));
      return;
    }
    case K::replace:
      for (auto& t : tokens) t = step.pattern.replace_all(t, step.text);
      return;
    case K::byte_fallback: {
      std::vector<std::string> out;
      out.reserve(tokens.size());
      std::string pending;
      std::size_t pending_count = 0;
      const auto flush = [&] {
        if (pending_count == 0) return;
        if (is_valid_utf8(pending)) {
          out.push_back(pending);
        } else {
          for (std::size_t k = 0; k < pending_count; ++k) out.emplace_back("\xEF\xBF\xBD");
        }
        pending.clear();
        pending_count = 0;
      };
      for (auto& t : tokens) {
        const int b = byte_token_value(t);
        if (b >= 0) {
          pending += static_cast<char>(b);
          ++pending_count;
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      tokens = std::move(out);
      return;
    }
    case K::fuse: {
      std::string all;
      for (const auto& t : tokens) all += t;
      tokens.assign(1, std::move(all));
      return;
    }
    case K::strip: {
      std::string c;
      append_utf8(c, step.strip_char);
      for (auto& t : tokens) {
        std::size_t b = 0, e = t.size();
        for (std::size_t k = 0; k < step.start && e - b >= c.size() && t.compare(b, c.size(), c) == 0; ++k) b += c.size();
        for (std::size_t k = 0; k < step.stop && e - b >= c.size() && t.compare(e - c.size(), c.size(), c) == 0; ++k) e -= c.size();
        if (b > 0 || e < t.size()) t = t.substr(b, e - b);
      }
      return;
    }
    case K::metaspace:
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        std::string s;
        const std::string& t = tokens[i];
        for (std::size_t at = 0; at < t.size();) {
          if (!step.text.empty() && t.compare(at, step.text.size(), step.text) == 0) {
            if (!(i == 0 && step.scheme != PrependScheme::never)) s += ' ';
            at += step.text.size();
          } else {
            s += t[at++];
          }
        }
        tokens[i] = std::move(s);
      }
      return;
    case K::word_piece:
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        auto& t = tokens[i];
        if (i != 0) {
          if (t.compare(0, step.text.size(), step.text) == 0) t.erase(0, step.text.size());
          else t.insert(0, 1, ' ');
        }
        if (step.cleanup) t = clean_up_tokenization(std::move(t));
      }
      return;
    case K::bpe_suffix:
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        auto& t = tokens[i];
        const std::string replacement = i + 1 == tokens.size() ? "" : " ";
        std::size_t at = 0;
        std::string s;
        while (true) {
          const auto hit = step.text.empty() ? std::string::npos : t.find(step.text, at);
          if (hit == std::string::npos) break;
          s.append(t, at, hit - at);
          s += replacement;
          at = hit + step.text.size();
        }
        s.append(t, at, std::string::npos);
        t = std::move(s);
      }
      return;
  }
}

// ---- Unigram ----------------------------------------------------------------------------------------------------

// A byte trie over the pieces of a Unigram vocabulary, for the prefixes of a position (shortest first).
class PieceTrie {
 public:
  void insert(std::string_view key, std::int64_t id) {
    std::uint32_t node = 0;
    if (values_.empty()) values_.push_back(-1);
    for (const char ch : key) {
      const auto k = edge_key(node, ch);
      const auto it = edges_.find(k);
      if (it == edges_.end()) {
        const auto next = static_cast<std::uint32_t>(values_.size());
        values_.push_back(-1);
        edges_.emplace(k, next);
        node = next;
      } else {
        node = it->second;
      }
    }
    if (values_[node] < 0) values_[node] = id;  // the first piece with a given text keeps it
  }

  // Calls f(length_in_bytes, id) for every piece that is a prefix of `s`, shortest first.
  template <class F>
  void prefixes(std::string_view s, F&& f) const {
    if (values_.empty()) return;
    std::uint32_t node = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
      const auto it = edges_.find(edge_key(node, s[i]));
      if (it == edges_.end()) return;
      node = it->second;
      if (values_[node] >= 0) f(i + 1, values_[node]);
    }
  }

 private:
  static std::uint64_t edge_key(std::uint32_t node, char ch) {
    return (static_cast<std::uint64_t>(node) << 8) | static_cast<unsigned char>(ch);
  }
  std::unordered_map<std::uint64_t, std::uint32_t> edges_;
  std::vector<std::int64_t> values_;
};

// The Unigram model of a tokenizer.json: pieces with log-probabilities; a word is cut into the pieces of highest
// total score (Viterbi). A character no piece starts with becomes the unknown piece (score: lowest score - 10),
// consecutive unknowns fuse into one, and with byte_fallback an unknown becomes its bytes' <0xNN> pieces.
struct UnigramModel {
  std::vector<double> scores;
  PieceTrie trie;
  double min_score = 0;
  std::optional<std::int64_t> unk_id;
  bool byte_fallback = false;
  std::array<std::int64_t, 256> byte_ids{};  // <0xNN> piece of each byte, -1 if none

  // Appends the ids of `word`; `lookup` maps a piece text to its id. Throws xpo::Error when a character has no
  // piece and the model has no unk_id.
  template <class Lookup>
  void encode(std::string_view word, std::vector<std::int64_t>& ids, Lookup&& lookup) const {
    struct Node {
      std::size_t start = 0;
      std::int64_t id = -1;
      double score = 0;
      bool set = false;
    };
    const std::size_t n = word.size();
    std::vector<Node> best(n + 1);
    best[0].set = true;
    const double unk_score = min_score - 10.0;
    for (std::size_t at = 0; at < n;) {
      const std::size_t len = std::max<std::size_t>(utf8_sequence_length(word, at), 1);
      if (!best[at].set) {  // unreachable start (cannot happen: every char is covered); keep going
        at += len;
        continue;
      }
      const double base = best[at].score;
      bool single = false;
      trie.prefixes(word.substr(at), [&](std::size_t length, std::int64_t id) {
        // Only whole characters: a piece ending inside a character cannot be part of a valid cut.
        Node& target = best[at + length];
        const double candidate = base + scores[static_cast<std::size_t>(id)];
        if (!target.set || candidate > target.score) target = {at, id, candidate, true};
        if (length == len) single = true;
      });
      if (!single) {
        if (!unk_id) throw Error("tokenizer: the Unigram model has no unk_id for a character it has no piece for");
        Node& target = best[at + len];
        const double candidate = base + unk_score;
        if (!target.set || candidate > target.score) target = {at, *unk_id, candidate, true};
      }
      at += len;
    }
    // Walk back, fusing consecutive unknown pieces.
    std::vector<std::pair<std::size_t, std::size_t>> pieces;  // byte ranges, reversed
    std::vector<bool> unknown;
    for (std::size_t end = n; end > 0;) {
      const Node& node = best[end];
      const bool is_unk = unk_id && node.id == *unk_id;
      if (is_unk && !unknown.empty() && unknown.back()) {
        pieces.back().first = node.start;
      } else {
        pieces.emplace_back(node.start, end);
        unknown.push_back(is_unk);
      }
      end = node.start;
    }
    for (std::size_t k = pieces.size(); k-- > 0;) {
      const std::string_view text = word.substr(pieces[k].first, pieces[k].second - pieces[k].first);
      if (const auto id = lookup(text)) {
        ids.push_back(*id);
        continue;
      }
      if (byte_fallback) {
        bool all = true;
        for (const char ch : text) all = all && byte_ids[static_cast<unsigned char>(ch)] >= 0;
        if (all) {
          for (const char ch : text) ids.push_back(byte_ids[static_cast<unsigned char>(ch)]);
          continue;
        }
      }
      if (!unk_id) throw Error("tokenizer: the Unigram model has no unk_id for a piece it cannot encode");
      ids.push_back(*unk_id);
    }
  }
};

}  // namespace xpo::text::detail
