// xpo/text/jinja/format.hpp — Python's three ways of formatting text, as chat templates use them:
//   format(value, spec)      the format-spec mini-language ("{:>8.2f}"),
//   str.format(*a, **kw)     replacement fields "{}", "{0}", "{name}", "{0[key]}", "{x.attr}", "{!r:^10}",
//   fmt % args               printf-style "%s", "%-5d", "%(name)s", "%.*f", "%%" (also Jinja's `format` filter).
// Results follow CPython's; every width is bounded by max_bytes (Error past it), and a malformed format or a type a
// conversion does not take is an Error naming the problem, as Python raises ValueError/TypeError.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "xpo/text/jinja/value.hpp"

namespace xpo::text::jinja::detail {

[[noreturn]] inline void format_too_long(std::size_t max_bytes) {
  throw Error("a formatted string exceeds the output limit of " + std::to_string(max_bytes) + " bytes");
}

inline std::size_t code_points(std::string_view s) {
  std::size_t n = 0;
  for (const char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80 ? 1 : 0;
  return n;
}

// The first `n` code points of s.
inline std::string first_code_points(const std::string& s, std::size_t n) {
  std::size_t i = 0, seen = 0;
  for (; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
      if (seen == n) break;
      ++seen;
    }
  }
  return s.substr(0, i);
}

// A parsed format spec: [[fill]align][sign][#][0][width][,|_][.precision][type]
struct FormatSpec {
  std::string fill = " ";  // one code point
  char align = 0;          // '<', '>', '^', '=' or 0 (the type's default)
  char sign = '-';
  bool alternate = false;
  std::size_t width = 0;
  char grouping = 0;
  std::optional<std::size_t> precision;
  char type = 0;
};

inline std::size_t read_count(std::string_view s, std::size_t& i, std::size_t max_bytes) {
  std::size_t n = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    n = n * 10 + static_cast<std::size_t>(s[i] - '0');
    if (n > max_bytes) format_too_long(max_bytes);
    ++i;
  }
  return n;
}

inline FormatSpec parse_format_spec(std::string_view s, std::size_t max_bytes) {
  FormatSpec f;
  std::size_t i = 0;
  const auto is_align = [](char c) { return c == '<' || c == '>' || c == '^' || c == '='; };
  const std::size_t first_len = s.empty() ? 0 : std::max<std::size_t>(utf8_sequence_length(s, 0), 1);
  if (first_len < s.size() && is_align(s[first_len])) {
    f.fill = std::string(s.substr(0, first_len));
    f.align = s[first_len];
    i = first_len + 1;
  } else if (!s.empty() && is_align(s[0])) {
    f.align = s[0];
    i = 1;
  }
  if (i < s.size() && (s[i] == '+' || s[i] == '-' || s[i] == ' ')) f.sign = s[i++];
  if (i < s.size() && s[i] == '#') {
    f.alternate = true;
    ++i;
  }
  if (i < s.size() && s[i] == '0') {
    if (f.align == 0) {
      f.fill = "0";
      f.align = '=';
    }
    ++i;
  }
  f.width = read_count(s, i, max_bytes);
  if (i < s.size() && (s[i] == ',' || s[i] == '_')) f.grouping = s[i++];
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (i >= s.size() || s[i] < '0' || s[i] > '9') throw Error("format specifier missing precision");
    f.precision = read_count(s, i, max_bytes);
  }
  if (i < s.size()) f.type = s[i++];
  if (i != s.size()) throw Error("invalid format specifier '" + std::string(s) + "'");
  return f;
}

// Pads `body` (its sign, if any, already at its front: `sign_len` bytes) to the spec's width.
inline std::string pad_formatted(const std::string& body, std::size_t sign_len, const FormatSpec& f, char default_align,
                                 std::size_t max_bytes) {
  const std::size_t len = code_points(body);
  if (f.width <= len) return body;
  const std::size_t missing = f.width - len;
  if (missing > max_bytes / std::max<std::size_t>(f.fill.size(), 1)) format_too_long(max_bytes);
  std::string pad;
  for (std::size_t k = 0; k < missing; ++k) pad += f.fill;
  const char align = f.align != 0 ? f.align : default_align;
  if (align == '<') return body + pad;
  if (align == '>') return pad + body;
  if (align == '=') return body.substr(0, sign_len) + pad + body.substr(sign_len);
  std::string left, right;  // '^': the extra fill goes right
  for (std::size_t k = 0; k < missing / 2; ++k) left += f.fill;
  for (std::size_t k = 0; k < missing - missing / 2; ++k) right += f.fill;
  return left + body + right;
}

inline std::string group_digits(const std::string& digits, char sep, std::size_t every) {
  std::string out;
  const std::size_t n = digits.size();
  for (std::size_t k = 0; k < n; ++k) {
    if (k > 0 && (n - k) % every == 0) out += sep;
    out += digits[k];
  }
  return out;
}

inline std::string to_base(std::uint64_t v, unsigned base, bool upper) {
  if (v == 0) return "0";
  const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  std::string out;
  while (v > 0) {
    out.insert(out.begin(), digits[v % base]);
    v /= base;
  }
  return out;
}

inline std::string sign_prefix(bool negative, char sign) {
  if (negative) return "-";
  if (sign == '+') return "+";
  if (sign == ' ') return " ";
  return "";
}

// A float as C's printf formats it with `conv` (f, e, g, ...) and the precision.
inline std::string printf_double(double d, char conv, int precision, bool alternate) {
  char spec[16];
  std::snprintf(spec, sizeof spec, "%%%s.*%c", alternate ? "#" : "", conv);
  const int n = std::snprintf(nullptr, 0, spec, precision, d);
  std::string out(static_cast<std::size_t>(std::max(n, 0)), '\0');
  std::snprintf(out.data(), out.size() + 1, spec, precision, d);
  return out;
}

// Python's format(value, spec).
inline std::string format_value(const Value& v, std::string_view spec_text, std::size_t max_bytes) {
  if (spec_text.empty()) return to_string(v, max_bytes);
  const FormatSpec f = parse_format_spec(spec_text, max_bytes);
  const bool is_float = std::holds_alternative<double>(v.v);
  const bool integral = v.is_int();
  if (v.is_string() || (!v.is_number())) {
    if (!v.is_string() && !v.is_undefined()) {
      throw Error(std::string("unsupported format string passed to ") + (v.is_none() ? "NoneType" : v.is_list() ? "list" : v.is_dict() ? "dict" : "object") + ".__format__");
    }
    if (f.type != 0 && f.type != 's') throw Error(std::string("unknown format code '") + f.type + "' for object of type 'str'");
    if (f.align == '=') throw Error("'=' alignment not allowed in string format specifier");
    std::string s = to_string(v, max_bytes);
    if (f.precision) s = first_code_points(s, *f.precision);
    return pad_formatted(s, 0, f, '<', max_bytes);
  }
  char type = f.type;
  if (integral && (type == 0 || type == 'd' || type == 'n' || type == 'x' || type == 'X' || type == 'o' || type == 'b' || type == 'c')) {
    if (f.precision) throw Error("precision not allowed in integer format specifier");
    const std::int64_t i = v.as_int();
    if (type == 'c') {
      if (i < 0 || i > 0x10FFFF) throw Error("%c arg not in range(0x110000)");
      std::string s;
      append_utf8(s, static_cast<char32_t>(i));
      return pad_formatted(s, 0, f, '>', max_bytes);
    }
    const bool negative = i < 0;
    const std::uint64_t mag = negative ? std::uint64_t{0} - static_cast<std::uint64_t>(i) : static_cast<std::uint64_t>(i);
    const unsigned base = type == 'x' || type == 'X' ? 16 : type == 'o' ? 8 : type == 'b' ? 2 : 10;
    std::string digits = to_base(mag, base, type == 'X');
    if (f.grouping != 0) digits = group_digits(digits, f.grouping, base == 10 ? 3 : 4);
    std::string prefix = sign_prefix(negative, f.sign);
    if (f.alternate && base != 10) prefix += base == 16 ? (type == 'X' ? "0X" : "0x") : base == 8 ? "0o" : "0b";
    return pad_formatted(prefix + digits, prefix.size(), f, '>', max_bytes);
  }
  if (!is_float && !integral) throw Error("cannot format the value");
  if (type != 0 && std::string_view("eEfFgG%").find(type) == std::string_view::npos) {
    throw Error(std::string("unknown format code '") + type + "' for object of type '" + (is_float ? "float" : "int") + "'");
  }
  double d = v.as_double();
  std::string body;
  if (type == 0 && !f.precision) {
    body = integral ? std::to_string(v.as_int()) : python_float(d);
    if (!body.empty() && body[0] == '-') body.erase(0, 1);
  } else {
    const int precision = static_cast<int>(f.precision.value_or(6));
    char conv = type == 0 ? 'g' : type == '%' ? 'f' : type;
    if (type == '%') d *= 100;
    body = printf_double(std::fabs(d), conv, type == 0 && precision == 0 ? 1 : precision, f.alternate);
    if (type == 0 && body.find_first_of(".einEIN") == std::string::npos) body += ".0";  // Python's repr-like default
    if (type == '%') body += '%';
  }
  if (f.grouping != 0) {
    const auto end = body.find_first_not_of("0123456789");
    body = group_digits(body.substr(0, end), f.grouping, 3) + (end == std::string::npos ? "" : body.substr(end));
  }
  const std::string prefix = sign_prefix(std::signbit(d) && !std::isnan(d), f.sign);
  return pad_formatted(prefix + body, prefix.size(), f, '>', max_bytes);
}

// Looks up `name` ("0", "key", "0[k].attr", ...) in the arguments of str.format; `next_auto` numbers "{}" fields.
inline Value format_field(std::string_view name, const Arguments& a, std::size_t& next_auto, bool& manual) {
  std::size_t i = 0;
  while (i < name.size() && name[i] != '.' && name[i] != '[') ++i;
  const std::string_view head = name.substr(0, i);
  Value cur;
  if (head.empty()) {
    if (manual) throw Error("cannot switch from manual field specification to automatic field numbering");
    if (next_auto >= a.positional.size()) throw Error("Replacement index " + std::to_string(next_auto) + " out of range for positional args tuple");
    cur = a.positional[next_auto++];
  } else if (head.find_first_not_of("0123456789") == std::string_view::npos) {
    if (next_auto > 0) throw Error("cannot switch from automatic field numbering to manual field specification");
    manual = true;
    std::size_t k = 0;
    for (const char c : head) {
      k = k * 10 + static_cast<std::size_t>(c - '0');
      if (k > a.positional.size()) break;
    }
    if (k >= a.positional.size()) throw Error("Replacement index " + std::string(head) + " out of range for positional args tuple");
    cur = a.positional[k];
  } else {
    const Value* kw = nullptr;
    for (const auto& [k, val] : a.keyword) {
      if (k == head) kw = &val;
    }
    if (kw == nullptr) throw Error("KeyError: '" + std::string(head) + "'");
    cur = *kw;
  }
  while (i < name.size()) {
    std::string key;
    const bool bracket = name[i] == '[';
    ++i;
    if (bracket) {
      const auto close = name.find(']', i);
      if (close == std::string_view::npos) throw Error("Missing ']' in format string");
      key = std::string(name.substr(i, close - i));
      i = close + 1;
    } else {
      const std::size_t start = i;
      while (i < name.size() && name[i] != '.' && name[i] != '[') ++i;
      key = std::string(name.substr(start, i - start));
      if (key.empty()) throw Error("Empty attribute in format string");
    }
    if (cur.is_dict()) {
      const Value* found = cur.dict().find(key);
      if (found == nullptr) throw Error("KeyError: '" + key + "'");
      cur = *found;
    } else if (cur.is_list() && bracket && !key.empty() && key.find_first_not_of("0123456789") == std::string::npos && key.size() < 18) {
      const std::size_t k = std::stoull(key);
      if (k >= cur.list().size()) throw Error("IndexError: list index out of range");
      cur = cur.list()[k];
    } else {
      throw Error("cannot look up '" + key + "' in a format field");
    }
  }
  return cur;
}

// Python's fmt.format(*a.positional, **a.keyword).
inline std::string str_format(std::string_view fmt, const Arguments& a, std::size_t max_bytes, int nesting = 0) {
  std::string out;
  std::size_t next_auto = 0;
  bool manual = false;
  std::size_t i = 0;
  const auto grow = [&](const std::string& piece) {
    if (piece.size() > max_bytes - std::min(max_bytes, out.size())) format_too_long(max_bytes);
    out += piece;
  };
  while (i < fmt.size()) {
    const char c = fmt[i];
    if (c == '}') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '}') {
        out += '}';
        i += 2;
        continue;
      }
      throw Error("Single '}' encountered in format string");
    }
    if (c != '{') {
      out += c;
      ++i;
      continue;
    }
    if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out += '{';
      i += 2;
      continue;
    }
    // a replacement field: find its matching '}' (a spec may hold nested fields)
    std::size_t j = i + 1;
    int depth = 1;
    while (j < fmt.size() && depth > 0) {
      if (fmt[j] == '{') ++depth;
      else if (fmt[j] == '}') --depth;
      if (depth > 0) ++j;
    }
    if (j >= fmt.size()) throw Error("expected '}' before end of string");
    const std::string_view field = fmt.substr(i + 1, j - i - 1);
    i = j + 1;
    std::size_t k = 0;
    while (k < field.size() && field[k] != '!' && field[k] != ':') {
      if (field[k] == '[') {
        while (k < field.size() && field[k] != ']') ++k;
      }
      if (k < field.size()) ++k;
    }
    const std::string_view name = field.substr(0, std::min(k, field.size()));
    char conversion = 0;
    std::string spec;
    if (k < field.size() && field[k] == '!') {
      if (k + 1 >= field.size()) throw Error("end of string while looking for conversion specifier");
      conversion = field[k + 1];
      if (conversion != 'r' && conversion != 's' && conversion != 'a') throw Error(std::string("Unknown conversion specifier ") + conversion);
      k += 2;
      if (k < field.size() && field[k] != ':') throw Error("expected ':' after conversion specifier");
    }
    if (k < field.size() && field[k] == ':') spec = std::string(field.substr(k + 1));
    if (spec.find('{') != std::string::npos) {
      if (nesting >= 1) throw Error("Max string recursion exceeded");
      spec = str_format(spec, a, max_bytes, nesting + 1);
    }
    Value v = format_field(name, a, next_auto, manual);
    if (conversion == 'r' || conversion == 'a') v = Value(repr(v, max_bytes));
    else if (conversion == 's') v = Value(to_string(v, max_bytes));
    grow(format_value(v, spec, max_bytes));
  }
  return out;
}

// Python's fmt % rhs: a tuple's items are the values (or a list's, with `spread`, as Jinja's format filter passes
// its arguments), a dict serves "%(name)s" fields, anything else is the one value.
inline std::string percent_format(std::string_view fmt, const Value& rhs, bool spread, std::size_t max_bytes) {
  std::vector<Value> args;
  const Dict* mapping = rhs.is_dict() ? &rhs.dict() : nullptr;
  if (rhs.is_list() && (spread || rhs.tuple)) {
    args = rhs.list();
  } else {
    args.push_back(rhs);
  }
  std::size_t next = 0;
  const auto take = [&]() -> const Value& {
    if (next >= args.size()) throw Error("not enough arguments for format string");
    return args[next++];
  };
  std::string out;
  const auto grow = [&](const std::string& piece) {
    if (piece.size() > max_bytes - std::min(max_bytes, out.size())) format_too_long(max_bytes);
    out += piece;
  };
  std::size_t i = 0;
  while (i < fmt.size()) {
    if (fmt[i] != '%') {
      out += fmt[i++];
      continue;
    }
    ++i;
    if (i >= fmt.size()) throw Error("incomplete format");
    const Value* value = nullptr;
    if (fmt[i] == '(') {
      const auto close = fmt.find(')', i);
      if (close == std::string_view::npos) throw Error("incomplete format key");
      if (mapping == nullptr) throw Error("format requires a mapping");
      const std::string key(fmt.substr(i + 1, close - i - 1));
      value = mapping->find(key);
      if (value == nullptr) throw Error("KeyError: '" + key + "'");
      i = close + 1;
    }
    FormatSpec f;
    bool left = false, zero = false;
    for (; i < fmt.size() && std::string_view("-+ #0").find(fmt[i]) != std::string_view::npos; ++i) {
      if (fmt[i] == '-') left = true;
      else if (fmt[i] == '0') zero = true;
      else if (fmt[i] == '#') f.alternate = true;
      else if (fmt[i] == '+' || (fmt[i] == ' ' && f.sign != '+')) f.sign = fmt[i];
    }
    const auto star = [&]() -> std::int64_t {
      const Value& w = take();
      if (!w.is_int()) throw Error("* wants int");
      return w.as_int();
    };
    if (i < fmt.size() && fmt[i] == '*') {
      const std::int64_t w = star();
      if (w < 0) left = true;
      const std::uint64_t mag = w < 0 ? std::uint64_t{0} - static_cast<std::uint64_t>(w) : static_cast<std::uint64_t>(w);
      if (mag > max_bytes) format_too_long(max_bytes);
      f.width = static_cast<std::size_t>(mag);
      ++i;
    } else {
      f.width = read_count(fmt, i, max_bytes);
    }
    if (i < fmt.size() && fmt[i] == '.') {
      ++i;
      if (i < fmt.size() && fmt[i] == '*') {
        const std::int64_t p = star();
        if (p > static_cast<std::int64_t>(max_bytes)) format_too_long(max_bytes);
        f.precision = static_cast<std::size_t>(std::max<std::int64_t>(p, 0));
        ++i;
      } else {
        f.precision = read_count(fmt, i, max_bytes);
      }
    }
    while (i < fmt.size() && (fmt[i] == 'h' || fmt[i] == 'l' || fmt[i] == 'L')) ++i;  // length modifiers: ignored
    if (i >= fmt.size()) throw Error("incomplete format");
    const char conv = fmt[i++];
    if (conv == '%') {
      out += '%';
      continue;
    }
    const Value& x = value != nullptr ? *value : take();
    f.align = left ? '<' : '>';
    std::string body;
    std::size_t sign_len = 0;
    switch (conv) {
      case 's':
      case 'r':
      case 'a':
        body = conv == 's' ? to_string(x, max_bytes) : repr(x, max_bytes);
        if (f.precision) body = first_code_points(body, *f.precision);
        break;
      case 'd':
      case 'i':
      case 'u':
      case 'x':
      case 'X':
      case 'o':
      case 'c': {
        if (conv == 'c') {
          if (x.is_string() && code_points(x.str()) == 1) {
            body = x.str();
            break;
          }
          if (!x.is_int()) throw Error("%c requires int or char");
        }
        std::int64_t n = 0;
        if (x.is_int()) {
          n = x.as_int();
        } else if (std::holds_alternative<double>(x.v) && (conv == 'd' || conv == 'i' || conv == 'u')) {
          const double d = x.as_double();
          if (std::isnan(d) || std::isinf(d) || !(d >= -0x1p63 && d < 0x1p63)) throw Error("cannot convert float to integer");
          n = static_cast<std::int64_t>(d);
        } else {
          throw Error(std::string("%") + conv + " format: a real number is required, not " +
                      (x.is_string() ? "str" : x.is_none() ? "NoneType" : x.is_list() ? "list" : x.is_dict() ? "dict" : "value"));
        }
        std::string int_spec = f.sign == '-' ? "" : std::string(1, f.sign);
        if (f.alternate) int_spec += '#';
        int_spec += conv == 'i' || conv == 'u' ? 'd' : conv;
        body = format_value(Value(n), int_spec, max_bytes);
        if (f.precision && *f.precision > 0) {  // printf's precision on integers: at least that many digits
          const std::size_t start = body.find_first_of("0123456789");
          std::size_t digits_at = start;
          if (f.alternate && (conv == 'x' || conv == 'X' || conv == 'o') && body.size() > start + 1 && body[start] == '0' &&
              (body[start + 1] == 'x' || body[start + 1] == 'X' || body[start + 1] == 'o')) {
            digits_at += 2;
          }
          const std::size_t have = body.size() - digits_at;
          if (*f.precision > have) body.insert(digits_at, *f.precision - have, '0');
        }
        sign_len = body.find_first_of("0123456789");
        if (sign_len == std::string::npos) sign_len = 0;
        if (f.alternate && (conv == 'x' || conv == 'X' || conv == 'o')) sign_len += 2;
        break;
      }
      case 'e':
      case 'E':
      case 'f':
      case 'F':
      case 'g':
      case 'G': {
        if (!x.is_number()) {
          throw Error(std::string("must be real number, not ") +
                      (x.is_string() ? "str" : x.is_none() ? "NoneType" : x.is_list() ? "list" : x.is_dict() ? "dict" : "value"));
        }
        const double d = x.as_double();
        body = sign_prefix(std::signbit(d) && !std::isnan(d), f.sign) +
               printf_double(std::fabs(d), conv, static_cast<int>(f.precision.value_or(6)), f.alternate);
        sign_len = body.find_first_not_of("+- ");
        if (sign_len == std::string::npos) sign_len = 0;
        break;
      }
      default:
        throw Error(std::string("unsupported format character '") + conv + "'");
    }
    const bool numeric = conv != 's' && conv != 'r' && conv != 'a' && conv != 'c';
    if (zero && !left && numeric) {
      f.fill = "0";
      f.align = '=';
    }
    grow(pad_formatted(body, sign_len, f, '>', max_bytes));
  }
  if (mapping == nullptr && next < args.size()) throw Error("not all arguments converted during string formatting");
  return out;
}

}  // namespace xpo::text::jinja::detail
