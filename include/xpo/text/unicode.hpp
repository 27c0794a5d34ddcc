// xpo/text/unicode.hpp — the UTF-8 and Unicode pieces the tokenizer needs: code-point iteration, lossy decoding
// (one U+FFFD per maximal invalid subsequence, like Rust's String::from_utf8_lossy and Python's errors="replace"),
// Unicode normalization through utf8proc, and GPT-2's byte <-> character alphabet of byte-level BPE.
#pragma once

#include <array>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include <utf8proc.h>

#include "xpo/core/errors.hpp"

namespace xpo::text {

// Appends code point `cp` as UTF-8.
inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Length of the valid UTF-8 sequence starting at s[i], or 0 when the bytes there are not one. Follows the
// Unicode "maximal subpart" rules (Table 3-7): no overlongs, no surrogates, nothing above U+10FFFF. On 0,
// `*invalid_len` (if given) is the length of the maximal invalid subpart to replace by one U+FFFD.
inline std::size_t utf8_sequence_length(std::string_view s, std::size_t i, std::size_t* invalid_len = nullptr) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  if (b0 < 0x80) return 1;
  std::size_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    if (invalid_len) *invalid_len = 1;
    return 0;
  }
  std::size_t k = 1;
  for (; k < need && i + k < s.size(); ++k) {
    const unsigned char b = byte(i + k);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) break;
  }
  if (k == need) return need;
  if (invalid_len) *invalid_len = k;
  return 0;
}

// Decodes the code point of the valid sequence of `len` bytes at s[i].
inline char32_t decode_utf8_at(std::string_view s, std::size_t i, std::size_t len) {
  const auto b = [&](std::size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[i + k])); };
  switch (len) {
    case 1: return b(0);
    case 2: return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3: return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default: return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

inline bool is_valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence_length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// Bytes -> text, replacing each maximal invalid subsequence with one U+FFFD.
inline std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t i = 0; i < bytes.size();) {
    std::size_t bad = 0;
    const std::size_t n = utf8_sequence_length(bytes, i, &bad);
    if (n > 0) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += bad;
    }
  }
  return out;
}

// Unicode White_Space (what Oniguruma's and Rust's whitespace mean; PCRE2's \s adds U+180E).
constexpr bool is_unicode_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// `text` without leading and trailing Unicode White_Space (how TRL strips decoded completions for judges).
inline std::string_view strip_whitespace(std::string_view text) {
  std::size_t b = 0, e = text.size();
  while (b < e) {
    const std::size_t n = utf8_sequence_length(text, b);
    if (n == 0 || !is_unicode_whitespace(decode_utf8_at(text, b, n))) break;
    b += n;
  }
  while (e > b) {
    std::size_t s = e - 1;
    while (s > b && (static_cast<unsigned char>(text[s]) & 0xC0) == 0x80) --s;
    const std::size_t n = utf8_sequence_length(text, s);
    if (n != e - s || !is_unicode_whitespace(decode_utf8_at(text, s, n))) break;
    e = s;
  }
  return text.substr(b, e - b);
}

enum class NormalizationForm { NFC, NFD, NFKC, NFKD };

namespace detail {
inline std::string utf8proc_normalize(std::string_view text, NormalizationForm form) {
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalizationForm::NFC: options |= UTF8PROC_COMPOSE; break;
    case NormalizationForm::NFD: options |= UTF8PROC_DECOMPOSE; break;
    case NormalizationForm::NFKC: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case NormalizationForm::NFKD: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* result = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                              static_cast<utf8proc_ssize_t>(text.size()), &result,
                              static_cast<utf8proc_option_t>(options));
  if (n < 0) throw Error(std::string("Unicode normalization failed: ") + utf8proc_errmsg(n));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(result, &std::free);
  return std::string(reinterpret_cast<const char*>(result), static_cast<std::size_t>(n));
}
}  // namespace detail

// Normalizes valid UTF-8 text. ASCII never changes and is a safe boundary (a starter that no composition has
// as its second character), so only the non-ASCII runs — each with the character before it, which a combining
// mark may attach to — go through utf8proc; for NFC, runs of code points below U+0300 (none of which change
// under NFC) are skipped too.
inline std::string normalize(std::string_view text, NormalizationForm form) {
  const unsigned char limit = form == NormalizationForm::NFC ? 0xCC : 0x80;  // U+0300 is 0xCC 0x80
  std::string out;
  std::size_t copied = 0;  // text[0, copied) is already in `out`
  std::size_t i = 0;
  while (i < text.size()) {
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    const std::size_t run_begin = i;
    bool needs = false;
    while (i < text.size() && static_cast<unsigned char>(text[i]) >= 0x80) {
      needs = needs || static_cast<unsigned char>(text[i]) >= limit;
      ++i;
    }
    if (!needs) continue;
    const std::size_t chunk_begin = run_begin > copied ? run_begin - 1 : run_begin;
    if (out.empty() && copied == 0) out.reserve(text.size() + 16);
    out.append(text.substr(copied, chunk_begin - copied));
    out += detail::utf8proc_normalize(text.substr(chunk_begin, i - chunk_begin), form);
    copied = i;
  }
  if (copied == 0) return std::string(text);
  out.append(text.substr(copied));
  return out;
}

// GPT-2's bytes_to_unicode: every byte gets a printable character (printable Latin-1 bytes map to themselves,
// the others to U+0100 upwards), so byte-level tokens are valid text.
struct ByteAlphabet {
  std::array<char32_t, 256> char_of_byte{};
  std::array<std::string, 256> utf8_of_byte{};

  ByteAlphabet() {
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      char_of_byte[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++);
      append_utf8(utf8_of_byte[static_cast<std::size_t>(b)], char_of_byte[static_cast<std::size_t>(b)]);
    }
  }

  // The byte a character stands for, or -1 if it is not in the alphabet.
  [[nodiscard]] int byte_of(char32_t c) const {
    if (c < 256) {
      const auto b = static_cast<std::size_t>(c);
      return char_of_byte[b] == c ? static_cast<int>(b) : -1;
    }
    if (c < 256 + 68) {
      for (std::size_t b = 0; b < 256; ++b) {
        if (char_of_byte[b] == c) return static_cast<int>(b);
      }
    }
    return -1;
  }

  static const ByteAlphabet& get() {
    static const ByteAlphabet alphabet;
    return alphabet;
  }
};

// A byte-level token string (e.g. "Ġworld") -> the bytes it stands for, or nullopt-like false when some
// character is outside the byte alphabet (then HF's decoder uses the token's own UTF-8).
inline bool byte_level_to_bytes(std::string_view token, std::string& out) {
  const auto& alphabet = ByteAlphabet::get();
  std::string bytes;
  bytes.reserve(token.size());
  for (std::size_t i = 0; i < token.size();) {
    const std::size_t n = utf8_sequence_length(token, i);
    if (n == 0) return false;
    const int b = alphabet.byte_of(decode_utf8_at(token, i, n));
    if (b < 0) return false;
    bytes += static_cast<char>(b);
    i += n;
  }
  out += bytes;
  return true;
}

}  // namespace xpo::text
