// xpo/text/jinja/value.hpp — the values a chat template computes with: Python's None, bool, int, float, str, list
// and dict (insertion-ordered, shared by reference like Python objects), plus Jinja's Undefined, namespace() objects
// and built-in functions. Printing, equality, truthiness and JSON follow Python/Jinja2, so rendered text is
// byte-identical with transformers' renderer.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "xpo/core/errors.hpp"
#include "xpo/text/unicode.hpp"

namespace xpo::text::jinja {

// An error in a template, or raised while rendering it; names the line and column (1-based) of the template.
class TemplateError : public Error {
 public:
  TemplateError(const std::string& what, int line, int column)
      : Error("chat template, line " + std::to_string(line) + ", column " + std::to_string(column) + ": " + what),
        line_(line), column_(column) {}
  [[nodiscard]] int line() const noexcept { return line_; }
  [[nodiscard]] int column() const noexcept { return column_; }

 private:
  int line_, column_;
};

struct Value;
using List = std::vector<Value>;
struct Dict;
struct Function;

struct Undefined {
  std::string name;  // what was looked up, for error messages
};
struct None {};

// How deep lists and dicts may nest. Every traversal of a value (printing, comparing, freeing) recurses once per
// level, so this bound is what keeps an untrusted template from exhausting the stack.
inline constexpr std::uint32_t kMaxValueDepth = 512;

// What the render in progress on this thread may still spend on values, in bytes: each string made or copied and
// each list or dict made costs its size. Costs are never given back, so this bounds both the memory a template can
// hold and the copying it can do (Limits::max_value_bytes). Template::render installs one for the length of a
// render (MeterScope); outside a render nothing is counted.
struct Meter {
  std::size_t limit;
  std::size_t left;
};
inline thread_local Meter* active_meter = nullptr;

inline void charge(std::size_t bytes) {
  Meter* m = active_meter;
  if (m == nullptr) return;
  if (bytes > m->left) {
    throw Error("the template's values need more than the limit of " + std::to_string(m->limit) +
                " bytes (Limits::max_value_bytes)");
  }
  m->left -= bytes;
}

// Installs a meter of `limit` bytes for its lifetime, or, with std::nullopt, pauses metering (for the renderer's
// own bookkeeping, such as the `loop` object made for every iteration, which the loop limit already bounds).
class MeterScope {
 public:
  explicit MeterScope(std::optional<std::size_t> limit)
      : meter_{limit.value_or(0), limit.value_or(0)}, saved_(active_meter) {
    active_meter = limit ? &meter_ : nullptr;
  }
  ~MeterScope() { active_meter = saved_; }
  MeterScope(const MeterScope&) = delete;
  MeterScope& operator=(const MeterScope&) = delete;

 private:
  Meter meter_;
  Meter* saved_;
};

struct Value {
  std::variant<Undefined, None, bool, std::int64_t, double, std::string, std::shared_ptr<List>, std::shared_ptr<Dict>,
               std::shared_ptr<Function>>
      v;
  // Measured when a list or dict is wrapped (they are not changed afterwards, except namespaces, see Dict):
  // `depth` is 1 + the deepest item's (a namespace counts 1), `holds_namespace` says whether a namespace is in it.
  std::uint32_t depth = 0;
  bool holds_namespace = false;
  // A list made as a Python tuple (a tuple literal, dict.items() pairs, varargs): printed "(1, 2)", never equal to
  // a list, and spread by the % operator. Tuples and lists are otherwise the same here.
  bool tuple = false;

  Value() = default;
  Value(const Value& o) : v(metered(o)), depth(o.depth), holds_namespace(o.holds_namespace), tuple(o.tuple) {}
  Value(Value&&) noexcept = default;
  Value& operator=(const Value& o) {
    if (this != &o) {
      v = metered(o);
      depth = o.depth;
      holds_namespace = o.holds_namespace;
      tuple = o.tuple;
    }
    return *this;
  }
  Value& operator=(Value&&) noexcept = default;
  ~Value() = default;
  Value(Undefined u) : v(std::move(u)) {}                   // NOLINT(google-explicit-constructor)
  Value(None) : v(None{}) {}                                // NOLINT
  Value(bool b) : v(b) {}                                   // NOLINT
  Value(std::int64_t i) : v(i) {}                           // NOLINT
  Value(int i) : v(static_cast<std::int64_t>(i)) {}         // NOLINT
  Value(double d) : v(d) {}                                 // NOLINT
  Value(std::string s) : v((charge(s.size()), std::move(s))) {}  // NOLINT
  Value(const char* s) : Value(std::string(s)) {}                 // NOLINT
  Value(std::shared_ptr<List> l) : v(std::move(l)) { measure(); }  // NOLINT
  Value(std::shared_ptr<Dict> d) : v(std::move(d)) { measure(); }  // NOLINT
  Value(std::shared_ptr<Function> f) : v(std::move(f)) {}   // NOLINT

  [[nodiscard]] bool is_undefined() const { return std::holds_alternative<Undefined>(v); }
  [[nodiscard]] bool is_none() const { return std::holds_alternative<None>(v); }
  [[nodiscard]] bool is_bool() const { return std::holds_alternative<bool>(v); }
  [[nodiscard]] bool is_int() const { return std::holds_alternative<std::int64_t>(v) || is_bool(); }
  [[nodiscard]] bool is_number() const { return is_int() || std::holds_alternative<double>(v); }
  [[nodiscard]] bool is_string() const { return std::holds_alternative<std::string>(v); }
  [[nodiscard]] bool is_list() const { return std::holds_alternative<std::shared_ptr<List>>(v); }
  [[nodiscard]] bool is_dict() const { return std::holds_alternative<std::shared_ptr<Dict>>(v); }
  [[nodiscard]] bool is_function() const { return std::holds_alternative<std::shared_ptr<Function>>(v); }

  [[nodiscard]] const std::string& str() const { return std::get<std::string>(v); }
  [[nodiscard]] List& list() const { return *std::get<std::shared_ptr<List>>(v); }
  [[nodiscard]] Dict& dict() const { return *std::get<std::shared_ptr<Dict>>(v); }
  [[nodiscard]] std::int64_t as_int() const {
    if (is_bool()) return std::get<bool>(v) ? 1 : 0;
    return std::get<std::int64_t>(v);
  }
  [[nodiscard]] double as_double() const {
    return std::holds_alternative<double>(v) ? std::get<double>(v) : static_cast<double>(as_int());
  }

  static Value make_list(List items = {}) { return Value(std::make_shared<List>(std::move(items))); }
  static Value make_tuple(List items) {
    Value t = make_list(std::move(items));
    t.tuple = true;
    return t;
  }
  static Value make_dict();

 private:
  void measure();  // sets depth and holds_namespace, charges the items; throws Error past kMaxValueDepth
  static const decltype(v)& metered(const Value& o) {  // a copied string is charged before it is copied
    if (const auto* s = std::get_if<std::string>(&o.v)) charge(s->size());
    return o.v;
  }
};

// An insertion-ordered dict (Python 3.7+). `is_namespace` marks namespace() objects, the only ones whose
// attributes a template may assign, and so the only values that change after they are made. A namespace may not
// hold another namespace (Jinja allows it; xpo refuses it): then no value can contain itself, every value is freed
// when its last reference goes, and nothing nests deeper than 2 * kMaxValueDepth + 1.
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  bool is_namespace = false;

  [[nodiscard]] const Value* find(std::string_view key) const {
    for (const auto& [k, val] : items) {
      if (k == key) return &val;
    }
    return nullptr;
  }
  void set(const std::string& key, Value val) {
    for (auto& [k, old] : items) {
      if (k == key) {
        old = std::move(val);
        return;
      }
    }
    items.emplace_back(key, std::move(val));
  }
};

inline Value Value::make_dict() { return Value(std::make_shared<Dict>()); }

inline void Value::measure() {
  std::uint32_t deepest = 0;
  const auto take = [&](const Value& item) {
    deepest = std::max(deepest, item.depth);
    holds_namespace = holds_namespace || item.holds_namespace;
  };
  if (is_list()) {
    charge(list().size() * sizeof(Value));
    for (const auto& item : list()) take(item);
  } else {
    charge(dict().items.size() * sizeof(std::pair<std::string, Value>));
    if (dict().is_namespace) {
      holds_namespace = true;  // its attributes were checked when they were set, and may change: count it as 1
    } else {
      for (const auto& [_, item] : dict().items) take(item);
    }
  }
  depth = deepest + 1;
  if (depth > kMaxValueDepth) throw Error("lists and dicts nest more than " + std::to_string(kMaxValueDepth) + " levels deep");
}

// Arguments of a call: positional and keyword.
struct Arguments {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;

  [[nodiscard]] const Value* get(std::size_t index, std::string_view name) const {
    if (index < positional.size()) return &positional[index];
    for (const auto& [k, val] : keyword) {
      if (k == name) return &val;
    }
    return nullptr;
  }
};

struct Function {
  Function(std::string function_name, std::function<Value(const Arguments&)> body, bool macro = false)
      : name(std::move(function_name)), call(std::move(body)), is_macro(macro) {}
  std::string name;
  std::function<Value(const Arguments&)> call;
  bool is_macro;  // a template's {% macro %}: printed as Jinja2 prints it
};

[[nodiscard]] inline bool truthy(const Value& x) {
  return std::visit(
      [](const auto& a) -> bool {
        using T = std::decay_t<decltype(a)>;
        if constexpr (std::is_same_v<T, Undefined> || std::is_same_v<T, None>) return false;
        else if constexpr (std::is_same_v<T, bool>) return a;
        else if constexpr (std::is_same_v<T, std::int64_t>) return a != 0;
        else if constexpr (std::is_same_v<T, double>) return a != 0.0;
        else if constexpr (std::is_same_v<T, std::string>) return !a.empty();
        else if constexpr (std::is_same_v<T, std::shared_ptr<List>>) return !a->empty();
        else if constexpr (std::is_same_v<T, std::shared_ptr<Dict>>) return !a->items.empty();
        else return true;
      },
      x.v);
}

// Python's str(float): the shortest repr that round-trips, with ".0" on integral values.
inline std::string python_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, d);
  std::string s(buf, r.ptr);
  // Python switches to exponent notation at 1e16 and below 1e-4; to_chars picks the shortest form instead.
  const double a = std::fabs(d);
  if (a != 0.0 && (a >= 1e16 || a < 1e-4)) {
    const auto e = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
    s.assign(buf, e.ptr);
    const auto pos = s.find('e');
    std::string mantissa = s.substr(0, pos), exponent = s.substr(pos + 1);
    const char sign = exponent[0] == '-' ? '-' : '+';
    if (exponent[0] == '-' || exponent[0] == '+') exponent.erase(0, 1);
    while (exponent.size() > 2 && exponent[0] == '0') exponent.erase(0, 1);
    if (exponent.size() < 2) exponent.insert(0, "0");
    return mantissa + "e" + sign + exponent;
  }
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

// Python's repr() of a str.
inline std::string python_repr(const std::string& s) {
  const char quote = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == quote || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7F) {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[u >> 4];
      out += hex[u & 15];
    } else {
      out += c;
    }
  }
  out += quote;
  return out;
}

namespace detail {

[[noreturn]] inline void text_too_long(std::size_t max_bytes) {
  throw Error("the text of a value is longer than the limit of " + std::to_string(max_bytes) + " bytes");
}

// Appends Python's str(x) (or repr(x) if `quoted`) to `out`; throws Error once `out` is longer than `max_bytes`.
// Lists may share items, so a value's text can be exponentially longer than the value: the bound is checked as
// the text grows, never after.
inline void append_text(const Value& x, bool quoted, std::string& out, std::size_t max_bytes) {
  std::visit(
      [&](const auto& a) {
        using T = std::decay_t<decltype(a)>;
        if constexpr (std::is_same_v<T, Undefined>) {
        } else if constexpr (std::is_same_v<T, None>) {
          out += "None";
        } else if constexpr (std::is_same_v<T, bool>) {
          out += a ? "True" : "False";
        } else if constexpr (std::is_same_v<T, std::int64_t>) {
          out += std::to_string(a);
        } else if constexpr (std::is_same_v<T, double>) {
          out += python_float(a);
        } else if constexpr (std::is_same_v<T, std::string>) {
          out += quoted ? python_repr(a) : a;
        } else if constexpr (std::is_same_v<T, std::shared_ptr<List>>) {
          out += x.tuple ? '(' : '[';
          for (std::size_t i = 0; i < a->size() && out.size() <= max_bytes; ++i) {
            if (i) out += ", ";
            append_text((*a)[i], true, out, max_bytes);
          }
          if (x.tuple && a->size() == 1) out += ',';
          out += x.tuple ? ')' : ']';
        } else if constexpr (std::is_same_v<T, std::shared_ptr<Dict>>) {
          out += a->is_namespace ? "<Namespace {" : "{";
          for (std::size_t i = 0; i < a->items.size() && out.size() <= max_bytes; ++i) {
            if (i) out += ", ";
            out += python_repr(a->items[i].first);
            out += ": ";
            append_text(a->items[i].second, true, out, max_bytes);
          }
          out += a->is_namespace ? "}>" : "}";
        } else {
          out += a->is_macro ? "<Macro '" + a->name + "'>" : "<built-in function " + a->name + ">";
        }
      },
      x.v);
  if (out.size() > max_bytes) text_too_long(max_bytes);
}

}  // namespace detail

inline constexpr std::size_t kUnbounded = std::numeric_limits<std::size_t>::max();

// What {{ x }} prints (Python's str(), Jinja's empty Undefined), at most max_bytes long (else Error).
inline std::string to_string(const Value& x, std::size_t max_bytes = kUnbounded) {
  if (x.is_string()) {
    if (x.str().size() > max_bytes) detail::text_too_long(max_bytes);
    return x.str();
  }
  std::string out;
  detail::append_text(x, false, out, max_bytes);
  return out;
}

inline std::string repr(const Value& x, std::size_t max_bytes = kUnbounded) {
  std::string out;
  detail::append_text(x, true, out, max_bytes);
  return out;
}

// Python equality (1 == 1.0 == True; lists and dicts item by item, an item equal to itself as Python's
// identity shortcut has it). Each step spends one unit of `budget`; Error when it runs out, as items may be shared
// and a comparison exponentially longer than the values.
inline bool equal(const Value& a, const Value& b, std::size_t& budget) {
  const auto spend = [&](std::size_t steps) {
    if (steps > budget) throw Error("comparing the values takes more steps than the limit");
    budget -= steps;
  };
  spend(1);
  if (a.is_number() && b.is_number()) {
    if (std::holds_alternative<double>(a.v) || std::holds_alternative<double>(b.v)) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.v.index() != b.v.index()) return false;
  if (a.is_undefined() || a.is_none()) return true;
  if (a.is_string()) return a.str() == b.str();
  if (a.is_list()) {
    if (a.tuple != b.tuple) return false;  // Python: (1, 2) != [1, 2]
    const auto &x = a.list(), &y = b.list();
    if (&x == &y) return true;
    if (x.size() != y.size()) return false;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (!equal(x[i], y[i], budget)) return false;
    }
    return true;
  }
  if (a.is_dict()) {
    const auto &x = a.dict(), &y = b.dict();
    if (&x == &y) return true;
    if (x.items.size() != y.items.size()) return false;
    for (const auto& [k, val] : x.items) {
      spend(y.items.size());  // the look-up
      const Value* other = y.find(k);
      if (other == nullptr || !equal(val, *other, budget)) return false;
    }
    return true;
  }
  return std::get<std::shared_ptr<Function>>(a.v) == std::get<std::shared_ptr<Function>>(b.v);
}

inline bool equal(const Value& a, const Value& b) {
  std::size_t budget = kUnbounded;
  return equal(a, b, budget);
}

// ---- JSON in and out -------------------------------------------------------------------------------------------

// A JSON value (nlohmann::json or ordered_json; the latter keeps key order, as Python's json.loads does).
template <typename Json>
Value from_json(const Json& j, std::uint32_t depth = 0) {
  if (depth > kMaxValueDepth) throw Error("JSON nests more than " + std::to_string(kMaxValueDepth) + " levels deep");
  if (j.is_null()) return None{};
  if (j.is_boolean()) return j.template get<bool>();
  if (j.is_number_integer()) return j.template get<std::int64_t>();
  if (j.is_number()) return j.template get<double>();
  if (j.is_string()) return j.template get<std::string>();
  if (j.is_array()) {
    List items;
    items.reserve(j.size());
    for (const auto& e : j) items.push_back(from_json(e, depth + 1));
    return Value::make_list(std::move(items));
  }
  auto d = std::make_shared<Dict>();
  for (auto it = j.begin(); it != j.end(); ++it) d->items.emplace_back(it.key(), from_json(it.value(), depth + 1));
  return Value(std::move(d));
}

// json.dumps' options besides indent: separators (item, key; empty: ", " / ": " without indent, "," / ": "
// with it), sort_keys, ensure_ascii (non-ASCII as \uXXXX escapes, UTF-16 surrogate pairs beyond the BMP).
struct JsonStyle {
  std::optional<std::string> item_separator, key_separator;
  bool sort_keys = false;
  bool ensure_ascii = false;
};

// Python's json.dumps(x, ensure_ascii=..., indent=indent, separators=..., sort_keys=...), as transformers' tojson
// filter calls it (defaults: ensure_ascii=False, separators by indent, unsorted keys).
// The text may not grow past max_bytes (TemplateError).
inline void dump_json(const Value& x, int indent, int depth, std::string& out, int line, int column,
                      std::size_t max_bytes = kUnbounded, const JsonStyle* style = nullptr) {
  static const JsonStyle kDefault;
  if (style == nullptr) style = &kDefault;
  const std::string item_sep = style->item_separator ? *style->item_separator : indent < 0 ? ", " : ",";
  const std::string key_sep = style->key_separator ? *style->key_separator : ": ";
  if (depth > 256) throw TemplateError("tojson: nesting deeper than 256", line, column);
  if (out.size() > max_bytes) {
    throw TemplateError("tojson: the text is longer than the limit of " + std::to_string(max_bytes) + " bytes", line, column);
  }
  const auto newline = [&](int d) {
    if (indent < 0) return;
    const std::size_t spaces = static_cast<std::size_t>(indent) * static_cast<std::size_t>(d);  // < 2^31 * 258: no overflow
    if (spaces > max_bytes - std::min(max_bytes, out.size() + 1)) {
      throw TemplateError("tojson: the text is longer than the limit of " + std::to_string(max_bytes) + " bytes", line, column);
    }
    out += '\n';
    out.append(spaces, ' ');
  };
  if (x.is_undefined() || x.is_function()) {
    throw TemplateError("tojson: " + std::string(x.is_undefined() ? "an undefined value" : "a function") +
                            " is not JSON serializable", line, column);
  }
  if (x.is_none()) {
    out += "null";
  } else if (x.is_bool()) {
    out += std::get<bool>(x.v) ? "true" : "false";
  } else if (x.is_int()) {
    out += std::to_string(x.as_int());
  } else if (x.is_number()) {
    const double d = x.as_double();
    out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : python_float(d);
  } else if (x.is_string()) {
    out += '"';
    const std::string& text = x.str();
    for (std::size_t ci = 0; ci < text.size(); ++ci) {
      const char c = text[ci];
      const auto u = static_cast<unsigned char>(c);
      if (u >= 0x80 && style->ensure_ascii) {  // \uXXXX, as a surrogate pair past U+FFFF
        const std::size_t n = std::max<std::size_t>(utf8_sequence_length(text, ci), 1);
        const char32_t cp = decode_utf8_at(text, ci, n);
        ci += n - 1;
        const auto hex4 = [&](unsigned v) {
          static const char* hex = "0123456789abcdef";
          out += "\\u";
          for (int shift = 12; shift >= 0; shift -= 4) out += hex[(v >> shift) & 15];
        };
        if (cp >= 0x10000) {
          const unsigned w = static_cast<unsigned>(cp) - 0x10000;
          hex4(0xD800 + (w >> 10));
          hex4(0xDC00 + (w & 0x3FF));
        } else {
          hex4(static_cast<unsigned>(cp));
        }
        continue;
      }
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        default:
          if (u < 0x20) {
            static const char* hex = "0123456789abcdef";
            out += "\\u00";
            out += hex[u >> 4];
            out += hex[u & 15];
          } else {
            out += c;
          }
      }
    }
    out += '"';
  } else if (x.is_list()) {
    const auto& l = x.list();
    if (l.empty()) {
      out += "[]";
      return;
    }
    out += '[';
    for (std::size_t i = 0; i < l.size(); ++i) {
      if (i) out += item_sep;
      newline(depth + 1);
      dump_json(l[i], indent, depth + 1, out, line, column, max_bytes, style);
    }
    newline(depth);
    out += ']';
  } else {
    const auto& d = x.dict();
    if (d.items.empty()) {
      out += "{}";
      return;
    }
    out += '{';
    std::vector<std::size_t> order(d.items.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    if (style->sort_keys) {
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return d.items[a].first < d.items[b].first; });
    }
    for (std::size_t k = 0; k < order.size(); ++k) {
      const std::size_t i = order[k];
      if (k) out += item_sep;
      newline(depth + 1);
      dump_json(Value(d.items[i].first), indent, depth + 1, out, line, column, max_bytes, style);
      out += key_sep;
      dump_json(d.items[i].second, indent, depth + 1, out, line, column, max_bytes, style);
    }
    newline(depth);
    out += '}';
  }
}

}  // namespace xpo::text::jinja
