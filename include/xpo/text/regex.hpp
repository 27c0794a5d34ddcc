// xpo/text/regex.hpp — the pre-tokenizer's regex engine: PCRE2 (UTF + UCP, JIT-compiled when available) with the
// pattern rewritten so that \s / \S mean Unicode White_Space and \w / \W Oniguruma's word characters
// (Alphabetic, marks, decimal digits, connector punctuation, Join_Control), as in Oniguruma, which HF `tokenizers`
// uses. (PCRE2 10.42's \s also matches U+180E MONGOLIAN VOWEL SEPARATOR, and its \w is only letters, numbers and
// '_', so "नमस्ते" would split at its vowel signs; the rewrite removes both differences.) Known and accepted: Debian's
// PCRE2 knows Unicode 14 where Oniguruma knows 15, so a few characters added in Unicode 15 match differently.
#pragma once

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "xpo/core/errors.hpp"

namespace xpo::text {

namespace detail {
// The members of Unicode White_Space, written for the inside of a PCRE2 character class.
inline constexpr std::string_view kWhiteSpaceClassBody =
    R"(\t\n\x0B\f\r\x20\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// Oniguruma's Unicode word characters (\w), for the inside of a PCRE2 character class.
inline constexpr std::string_view kWordClassBody = R"(\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control})";

// Rewrites \s / \S and \w / \W: outside a class to an explicit (negated) class, inside a class to the class's
// members. A \S or \W inside a class cannot be expressed that way and is rejected.
inline std::string rewrite_whitespace_classes(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpaceClassBody) : "[" + std::string(kWhiteSpaceClassBody) + "]";
      } else if (e == 'S') {
        if (in_class) throw Error("regex: \\S inside a character class is not supported: " + std::string(pattern));
        out += "[^" + std::string(kWhiteSpaceClassBody) + "]";
      } else if (e == 'w') {
        out += in_class ? std::string(kWordClassBody) : "[" + std::string(kWordClassBody) + "]";
      } else if (e == 'W') {
        if (in_class) throw Error("regex: \\W inside a character class is not supported: " + std::string(pattern));
        out += "[^" + std::string(kWordClassBody) + "]";
      } else if (e == 'Q') {  // \Q...\E is literal text
        const auto end = pattern.find("\\E", i + 2);
        const auto stop = end == std::string_view::npos ? pattern.size() : end + 2;
        out.append(pattern.substr(i, stop - i));
        i = stop - 1;
        continue;
      } else {
        out += c;
        out += e;
      }
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {  // POSIX class [:alpha:]
      const auto end = pattern.find(":]", i + 2);
      if (end != std::string_view::npos) {
        out.append(pattern.substr(i, end + 2 - i));
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}
}  // namespace detail

// A compiled pattern. Thread-safe: every call uses its own match data.
class Regex {
 public:
  struct Match {
    std::size_t begin = 0;
    std::size_t end = 0;
  };

  explicit Regex(std::string_view pattern) : pattern_(pattern) {
    const std::string rewritten = detail::rewrite_whitespace_classes(pattern);
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                                     PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &error, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      throw Error("regex does not compile at offset " + std::to_string(offset) + ": " +
                  reinterpret_cast<const char*>(message) + " — pattern: " + std::string(pattern));
    }
    code_.reset(code);
    jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  }

  [[nodiscard]] const std::string& pattern() const noexcept { return pattern_; }

  // Every non-overlapping match in `subject` (valid UTF-8), left to right; an empty match advances by one
  // character, as Rust's and Oniguruma's find_iter do.
  [[nodiscard]] std::vector<Match> find_all(std::string_view subject) const {
    std::vector<Match> matches;
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr), &pcre2_match_data_free);
    const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
    std::size_t start = 0;
    while (start <= subject.size()) {
      const int rc = jit_ ? pcre2_jit_match(code_.get(), s, subject.size(), start, 0, data.get(), nullptr)
                          : pcre2_match(code_.get(), s, subject.size(), start, PCRE2_NO_UTF_CHECK, data.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof message);
        throw Error(std::string("regex match failed: ") + reinterpret_cast<const char*>(message));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.get());
      const Match m{ov[0], ov[1]};
      if (m.end == m.begin) {  // empty match: record it only if it is not where the previous one ended
        if (matches.empty() || matches.back().end != m.begin) matches.push_back(m);
        start = m.end + 1;
        while (start < subject.size() && (static_cast<unsigned char>(subject[start]) & 0xC0) == 0x80) ++start;
      } else {
        matches.push_back(m);
        start = m.end;
      }
    }
    return matches;
  }

 private:
  struct CodeFree {
    void operator()(pcre2_code* c) const { pcre2_code_free(c); }
  };
  std::string pattern_;
  std::unique_ptr<pcre2_code, CodeFree> code_;
  bool jit_ = false;
};

}  // namespace xpo::text
