// xpo/text/jinja/value.hpp — the values a chat template computes with: Python's None, bool, int, float, str, list
// and dict (insertion-ordered, shared by reference like Python objects), plus Jinja's Undefined, namespace() objects
// and built-in functions. Printing, equality, truthiness and JSON follow Python/Jinja2, so rendered text is
// byte-identical with transformers' renderer.
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
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

struct Value {
  std::variant<Undefined, None, bool, std::int64_t, double, std::string, std::shared_ptr<List>, std::shared_ptr<Dict>,
               std::shared_ptr<Function>>
      v;

  Value() = default;
  Value(Undefined u) : v(std::move(u)) {}                   // NOLINT(google-explicit-constructor)
  Value(None) : v(None{}) {}                                // NOLINT
  Value(bool b) : v(b) {}                                   // NOLINT
  Value(std::int64_t i) : v(i) {}                           // NOLINT
  Value(int i) : v(static_cast<std::int64_t>(i)) {}         // NOLINT
  Value(double d) : v(d) {}                                 // NOLINT
  Value(std::string s) : v(std::move(s)) {}                 // NOLINT
  Value(const char* s) : v(std::string(s)) {}               // NOLINT
  Value(std::shared_ptr<List> l) : v(std::move(l)) {}       // NOLINT
  Value(std::shared_ptr<Dict> d) : v(std::move(d)) {}       // NOLINT
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
  static Value make_dict();
};

// An insertion-ordered dict (Python 3.7+). `is_namespace` marks namespace() objects, the only ones whose
// attributes a template may assign.
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
  std::string name;
  std::function<Value(const Arguments&)> call;
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

std::string to_string(const Value& x);

inline std::string repr(const Value& x) {
  if (x.is_string()) return python_repr(x.str());
  return to_string(x);
}

// What {{ x }} prints (Python's str(), Jinja's empty Undefined).
inline std::string to_string(const Value& x) {
  return std::visit(
      [&](const auto& a) -> std::string {
        using T = std::decay_t<decltype(a)>;
        if constexpr (std::is_same_v<T, Undefined>) return "";
        else if constexpr (std::is_same_v<T, None>) return "None";
        else if constexpr (std::is_same_v<T, bool>) return a ? "True" : "False";
        else if constexpr (std::is_same_v<T, std::int64_t>) return std::to_string(a);
        else if constexpr (std::is_same_v<T, double>) return python_float(a);
        else if constexpr (std::is_same_v<T, std::string>) return a;
        else if constexpr (std::is_same_v<T, std::shared_ptr<List>>) {
          std::string out = "[";
          for (std::size_t i = 0; i < a->size(); ++i) out += (i ? ", " : "") + repr((*a)[i]);
          return out + "]";
        } else if constexpr (std::is_same_v<T, std::shared_ptr<Dict>>) {
          std::string out = a->is_namespace ? "<Namespace {" : "{";
          for (std::size_t i = 0; i < a->items.size(); ++i) {
            out += (i ? ", " : "") + python_repr(a->items[i].first) + ": " + repr(a->items[i].second);
          }
          return out + (a->is_namespace ? "}>" : "}");
        } else {
          return "<built-in function " + a->name + ">";
        }
      },
      x.v);
}

// Python equality (1 == 1.0 == True; lists and dicts element-wise).
inline bool equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (std::holds_alternative<double>(a.v) || std::holds_alternative<double>(b.v)) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.v.index() != b.v.index()) return false;
  if (a.is_undefined() || a.is_none()) return true;
  if (a.is_string()) return a.str() == b.str();
  if (a.is_list()) {
    const auto &x = a.list(), &y = b.list();
    if (x.size() != y.size()) return false;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (!equal(x[i], y[i])) return false;
    }
    return true;
  }
  if (a.is_dict()) {
    const auto &x = a.dict(), &y = b.dict();
    if (x.items.size() != y.items.size()) return false;
    for (const auto& [k, val] : x.items) {
      const Value* other = y.find(k);
      if (other == nullptr || !equal(val, *other)) return false;
    }
    return true;
  }
  return std::get<std::shared_ptr<Function>>(a.v) == std::get<std::shared_ptr<Function>>(b.v);
}

// ---- JSON in and out -------------------------------------------------------------------------------------------

// A JSON value (nlohmann::json or ordered_json; the latter keeps key order, as Python's json.loads does).
template <typename Json>
Value from_json(const Json& j) {
  if (j.is_null()) return None{};
  if (j.is_boolean()) return j.template get<bool>();
  if (j.is_number_integer()) return j.template get<std::int64_t>();
  if (j.is_number()) return j.template get<double>();
  if (j.is_string()) return j.template get<std::string>();
  if (j.is_array()) {
    List items;
    items.reserve(j.size());
    for (const auto& e : j) items.push_back(from_json(e));
    return Value::make_list(std::move(items));
  }
  auto d = std::make_shared<Dict>();
  for (auto it = j.begin(); it != j.end(); ++it) d->items.emplace_back(it.key(), from_json(it.value()));
  return Value(std::move(d));
}

// Python's json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=False), as transformers' tojson filter
// calls it: separators ", " / ": " without indent, "," / ": " with it.
inline void dump_json(const Value& x, int indent, int depth, std::string& out, int line, int column) {
  if (depth > 256) throw TemplateError("tojson: nesting deeper than 256", line, column);
  const auto newline = [&](int d) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<std::size_t>(indent * d), ' ');
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
    for (const char c : x.str()) {
      const auto u = static_cast<unsigned char>(c);
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
      if (i) out += indent < 0 ? ", " : ",";
      newline(depth + 1);
      dump_json(l[i], indent, depth + 1, out, line, column);
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
    for (std::size_t i = 0; i < d.items.size(); ++i) {
      if (i) out += indent < 0 ? ", " : ",";
      newline(depth + 1);
      dump_json(Value(d.items[i].first), indent, depth + 1, out, line, column);
      out += ": ";
      dump_json(d.items[i].second, indent, depth + 1, out, line, column);
    }
    newline(depth);
    out += '}';
  }
}

}  // namespace xpo::text::jinja
