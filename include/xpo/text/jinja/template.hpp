// xpo/text/jinja/template.hpp — a parsed Jinja template and its renderer: Python semantics for operators,
// filters, tests and str/dict methods, Jinja's scoping (a for loop has its own scope; namespace() objects carry
// values out of it), and the bounds of Limits. See parser.hpp for the supported syntax.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "xpo/text/jinja/format.hpp"
#include "xpo/text/jinja/parser.hpp"
#include "xpo/text/jinja/value.hpp"

namespace xpo::text::jinja {

namespace detail {

// ---- str helpers with Python semantics (indices count code points) ---------------------------------------------
inline std::u32string to_u32(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = std::max<std::size_t>(utf8_sequence_length(s, i), 1);
    out += n == 1 && static_cast<unsigned char>(s[i]) >= 0x80 ? U'\uFFFD' : decode_utf8_at(s, i, n);
    i += n;
  }
  return out;
}
inline std::string from_u32(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char32_t c : s) append_utf8(out, c);
  return out;
}
// Python's str.isspace(): Unicode White_Space plus the information separators U+001C..U+001F.
inline bool py_space(char32_t c) { return is_unicode_whitespace(c) || (c >= 0x1C && c <= 0x1F); }

inline std::string py_strip(const std::string& s, const Value* chars, bool left, bool right) {
  const std::u32string u = to_u32(s);
  const std::u32string set = chars != nullptr && chars->is_string() ? to_u32(chars->str()) : std::u32string();
  const bool use_space = chars == nullptr || chars->is_none() || chars->is_undefined();
  const auto strip_it = [&](char32_t c) { return use_space ? py_space(c) : set.find(c) != std::u32string::npos; };
  std::size_t b = 0, e = u.size();
  if (left) {
    while (b < e && strip_it(u[b])) ++b;
  }
  if (right) {
    while (e > b && strip_it(u[e - 1])) --e;
  }
  return from_u32(std::u32string_view(u).substr(b, e - b));
}

inline std::vector<std::string> py_split(const std::string& s, const Value* sep, std::int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep == nullptr || sep->is_none() || sep->is_undefined()) {
    const std::u32string u = to_u32(s);
    std::size_t i = 0;
    while (true) {
      while (i < u.size() && py_space(u[i])) ++i;
      if (i >= u.size()) break;
      if (maxsplit >= 0 && static_cast<std::int64_t>(out.size()) == maxsplit) {  // the rest as is, as CPython
        out.push_back(from_u32(std::u32string_view(u).substr(i)));
        break;
      }
      std::size_t j = i;
      while (j < u.size() && !py_space(u[j])) ++j;
      out.push_back(from_u32(std::u32string_view(u).substr(i, j - i)));
      i = j;
    }
    return out;
  }
  if (!sep->is_string()) throw Error("split: the separator must be a string");
  const std::string& d = sep->str();
  if (d.empty()) throw Error("split: empty separator");
  std::size_t start = 0;
  while (true) {
    if (maxsplit >= 0 && static_cast<std::int64_t>(out.size()) == maxsplit) break;
    const auto at = s.find(d, start);
    if (at == std::string::npos) break;
    out.push_back(s.substr(start, at - start));
    start = at + d.size();
  }
  out.push_back(s.substr(start));
  return out;
}

// Python's ints are unbounded, a template's are 64-bit: leaving that range is an Error, never a wrap-around.
[[noreturn]] inline void integer_overflow() { throw Error("integer overflow (template integers are 64-bit)"); }
inline constexpr std::int64_t kIntMax = std::numeric_limits<std::int64_t>::max();
inline constexpr std::int64_t kIntMin = std::numeric_limits<std::int64_t>::min();

inline std::int64_t add_int(std::int64_t a, std::int64_t b) {
  if ((b > 0 && a > kIntMax - b) || (b < 0 && a < kIntMin - b)) integer_overflow();
  return a + b;
}
inline std::int64_t sub_int(std::int64_t a, std::int64_t b) {
  if ((b < 0 && a > kIntMax + b) || (b > 0 && a < kIntMin + b)) integer_overflow();
  return a - b;
}
inline std::int64_t mul_int(std::int64_t a, std::int64_t b) {
  const bool overflows = a > 0 ? (b > 0 ? a > kIntMax / b : b < kIntMin / a)
                               : (b > 0 ? a < kIntMin / b : a != 0 && b < kIntMax / a);
  if (overflows) integer_overflow();
  return a * b;
}
inline std::int64_t neg_int(std::int64_t a) {
  if (a == kIntMin) integer_overflow();
  return -a;
}
inline std::int64_t pow_int(std::int64_t base, std::int64_t exponent) {  // exponent >= 0
  if (base == 0) return exponent == 0 ? 1 : 0;
  if (base == 1) return 1;
  if (base == -1) return exponent % 2 == 0 ? 1 : -1;
  std::int64_t out = 1;
  for (std::int64_t i = 0; i < exponent; ++i) out = mul_int(out, base);  // |base| >= 2: overflows within 64 steps
  return out;
}
// int(x) of a float: toward zero; NaN has no int (nullopt), and a float outside the 64-bit range overflows.
inline std::optional<std::int64_t> int_of(double d) {
  if (std::isnan(d)) return std::nullopt;
  if (!(d >= -0x1p63 && d < 0x1p63)) integer_overflow();
  return static_cast<std::int64_t>(d);
}

// The whole of `s` as a Python int literal (an optional sign, then digits), if it is one and fits 64 bits.
inline std::optional<std::int64_t> parse_int(std::string_view s) {
  if (s.size() > 1 && s[0] == '+' && s[1] != '-') s.remove_prefix(1);
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// The whole of `s` as Python's float() reads it (decimal, inf, nan; no hex), if it is one. Like Python, a value
// too large is +-inf and one too small is 0 (Python's float literals and float('1e999') alike).
inline std::optional<double> parse_float(const std::string& s) {
  if (s.empty() || s.find_first_of("xX") != std::string::npos || std::isspace(static_cast<unsigned char>(s[0]))) {
    return std::nullopt;
  }
  char* end = nullptr;
  const double d = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) return std::nullopt;
  return d;
}

// [[noreturn]] for a string that would pass `max_bytes`
[[noreturn]] inline void string_too_long(std::size_t max_bytes) {
  throw Error("a string exceeds the output limit of " + std::to_string(max_bytes) + " bytes");
}

// Python's str.replace; the result may not pass max_bytes.
inline std::string py_replace(const std::string& s, const std::string& from, const std::string& to, std::int64_t count,
                              std::size_t max_bytes) {
  std::string out;
  const auto grow = [&](const std::string& piece) {
    if (piece.size() > max_bytes - std::min(max_bytes, out.size())) string_too_long(max_bytes);
    out += piece;
  };
  if (from.empty()) {  // Python inserts `to` between every character
    const std::u32string u = to_u32(s);
    std::int64_t done = 0;
    for (std::size_t i = 0; i <= u.size(); ++i) {
      if (count < 0 || done < count) {
        grow(to);
        ++done;
      }
      if (i < u.size()) append_utf8(out, u[i]);
    }
    return out;
  }
  std::size_t start = 0;
  std::int64_t done = 0;
  while (count < 0 || done < count) {
    const auto at = s.find(from, start);
    if (at == std::string::npos) break;
    out.append(s, start, at - start);
    grow(to);
    start = at + from.size();
    ++done;
  }
  out.append(s, start, std::string::npos);
  return out;
}

inline std::string map_case(const std::string& s, int mode) {  // 0 lower, 1 upper
  std::string out;
  for (const char32_t c : to_u32(s)) {
    const auto cp = static_cast<utf8proc_int32_t>(c);
    append_utf8(out, static_cast<char32_t>(mode == 0 ? utf8proc_tolower(cp) : utf8proc_toupper(cp)));
  }
  return out;
}
inline std::string capitalize(const std::string& s) {
  const std::u32string u = to_u32(s);
  if (u.empty()) return s;
  std::string out;
  append_utf8(out, static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(u[0]))));
  return out + map_case(from_u32(std::u32string_view(u).substr(1)), 0);
}
inline std::string title(const std::string& s) {
  std::string out;
  bool previous_cased = false;
  for (const char32_t c : to_u32(s)) {
    const auto cp = static_cast<utf8proc_int32_t>(c);
    const auto cat = utf8proc_category(cp);
    const bool cased = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
    append_utf8(out, static_cast<char32_t>(cased ? (previous_cased ? utf8proc_tolower(cp) : utf8proc_toupper(cp)) : cp));
    previous_cased = cased;
  }
  return out;
}

// Jinja2's `title` filter (not str.title): the text splits into runs of separators (whitespace and -({[<) and
// runs of the rest; each run starts upper-case and goes on lower-case.
inline std::string jinja_title(const std::string& s) {
  const auto separator = [](char32_t c) { return py_space(c) || c == U'-' || c == U'(' || c == U'{' || c == U'[' || c == U'<'; };
  std::string out;
  bool previous_separator = false, first = true;
  for (const char32_t c : to_u32(s)) {
    const bool sep = separator(c);
    const bool starts_run = first || sep != previous_separator;
    const auto cp = static_cast<utf8proc_int32_t>(c);
    append_utf8(out, static_cast<char32_t>(starts_run ? utf8proc_toupper(cp) : utf8proc_tolower(cp)));
    previous_separator = sep;
    first = false;
  }
  return out;
}

// Python's normalisation of slice bounds.
inline std::vector<std::int64_t> slice_indices(std::int64_t n, const std::optional<std::int64_t>& start,
                                               const std::optional<std::int64_t>& stop, std::int64_t step) {
  std::vector<std::int64_t> idx;
  if (step > 0) {
    std::int64_t b = start.value_or(0), e = stop.value_or(n);
    if (b < 0) b = std::max<std::int64_t>(b + n, 0);
    if (e < 0) e = std::max<std::int64_t>(e + n, 0);
    b = std::min(b, n);
    e = std::min(e, n);
    for (std::int64_t i = b; i < e; i += step) idx.push_back(i);
  } else {
    std::int64_t b = start.value_or(n - 1), e = stop.has_value() ? *stop : -n - 1;
    if (b < 0) b += n;
    if (e < 0) e += n;
    b = std::min(b, n - 1);
    e = std::max<std::int64_t>(e, -1);
    for (std::int64_t i = b; i > e; i += step) idx.push_back(i);
  }
  return idx;
}

inline const char* type_name(const Value& v) {
  if (v.is_undefined()) return "undefined";
  if (v.is_none()) return "NoneType";
  if (v.is_bool()) return "bool";
  if (v.is_int()) return "int";
  if (v.is_number()) return "float";
  if (v.is_string()) return "str";
  if (v.is_list()) return "list";
  if (v.is_dict()) return v.dict().is_namespace ? "Namespace" : "dict";
  return "function";
}

enum class Flow { normal, break_, continue_ };

class Renderer {
 public:
  Renderer(const Limits& limits, const Dict& variables, std::optional<std::tm> now = std::nullopt)
      : limits_(limits), now_(now), comparison_steps_left_(limits.max_comparison_steps) {
    scopes_.push_back({{}, kNoScope});
    for (const auto& [k, v] : variables.items) vars()[k] = v;
  }

  std::string run(const Body& body) {
    (void)render(body);
    return std::move(out_);
  }

 private:
  [[noreturn]] static void fail(const std::string& what, int line, int column) { throw TemplateError(what, line, column); }
  [[noreturn]] static void fail(const std::string& what, const Expr& e) { fail(what, e.line, e.column); }

  void emit(std::string_view s, int line, int column) {
    if (out_.size() + captured_bytes_ + s.size() > limits_.max_output_bytes) {
      fail("the output exceeds the limit of " + std::to_string(limits_.max_output_bytes) + " bytes", line, column);
    }
    out_.append(s);
  }

  // str(v), no longer than the output may be
  [[nodiscard]] std::string text_of(const Value& v) const { return to_string(v, limits_.max_output_bytes); }

  // a == b, spending the render's comparison budget
  [[nodiscard]] bool same(const Value& a, const Value& b) { return equal(a, b, comparison_steps_left_); }

  void count_iteration(int line, int column) {
    if (++iterations_ > limits_.max_loop_iterations) {
      fail("more than " + std::to_string(limits_.max_loop_iterations) + " loop iterations (an endless loop?)", line, column);
    }
  }

  Flow render(const Body& body) {
    for (const auto& node : body) {
      const Flow f = render(*node);
      if (f != Flow::normal) return f;
    }
    return Flow::normal;
  }

  Flow render(const Node& n) {
    try {
      return render_node(n);
    } catch (const TemplateError&) {
      throw;
    } catch (const Error& err) {  // e.g. a value too deep or too long, from a literal or an operator
      fail(err.what(), n.line, n.column);
    }
  }

  Flow render_node(const Node& n) {
    switch (n.kind) {
      case Node::Kind::text: emit(n.text, n.line, n.column); return Flow::normal;
      case Node::Kind::output: {
        const Value v = eval(*n.expr);
        emit(text_of(v), n.line, n.column);
        return Flow::normal;
      }
      case Node::Kind::if_:
        for (const auto& [cond, body] : n.branches) {
          if (truthy(eval(*cond))) return render(body);
        }
        return render(n.else_body);
      case Node::Kind::for_: return render_for(n);
      case Node::Kind::set: {
        Value v = eval(*n.expr);
        if (!n.targets.empty()) {
          unpack(n.targets, v, n.line, n.column);
        } else if (n.attr.empty()) {
          vars()[n.text] = std::move(v);
        } else {
          const Value target = lookup(n.text);
          if (!target.is_dict() || !target.dict().is_namespace) {
            fail("cannot assign attribute '" + n.attr + "' of '" + n.text + "': only namespace() objects have assignable attributes",
                 n.line, n.column);
          }
          if (v.holds_namespace) {  // the one way a value could come to contain itself; see Dict
            fail("cannot assign a namespace (or a list or dict holding one) to '" + n.text + "." + n.attr +
                     "': xpo does not let namespaces nest", n.line, n.column);
          }
          target.dict().set(n.attr, std::move(v));
        }
        return Flow::normal;
      }
      case Node::Kind::set_block: {
        std::string captured;
        const Flow f = capture(n.body, captured);
        vars()[n.text] = n.filter ? filter_block_text(*n.filter, std::move(captured)) : Value(std::move(captured));
        return f;
      }
      case Node::Kind::break_: return Flow::break_;
      case Node::Kind::continue_: return Flow::continue_;
      case Node::Kind::block: return render(n.body);
      case Node::Kind::macro: vars()[n.text] = make_macro(n, scopes_.size() - 1); return Flow::normal;
      case Node::Kind::call_block: {
        // the body becomes `caller`, a macro that sees the variables of this place in the template
        const Value caller = make_macro(n, scopes_.size() - 1);
        const Expr& call = *n.expr;
        const Value f = eval(*call.children[0]);
        Arguments args = eval_args(call, 1);
        args.keyword.emplace_back("caller", caller);
        emit(text_of(call_function(f, args, call)), n.line, n.column);
        return Flow::normal;
      }
      case Node::Kind::filter_block: {
        std::string captured;
        const Flow f = capture(n.body, captured);
        emit(text_of(filter_block_text(*n.filter, std::move(captured))), n.line, n.column);
        return f;
      }
    }
    return Flow::normal;
  }

  // Renders `body` into `into` instead of the output. The text held by enclosing captures still counts against
  // the output limit, so nested captures cannot hold more than the output could.
  Flow capture(const Body& body, std::string& into) {
    std::string saved = std::move(out_);
    out_.clear();
    captured_bytes_ += saved.size();
    Flow f = Flow::normal;
    try {
      f = render(body);
    } catch (...) {
      captured_bytes_ -= saved.size();
      out_ = std::move(saved);
      throw;
    }
    captured_bytes_ -= saved.size();
    into = std::move(out_);
    out_ = std::move(saved);
    return f;
  }

  // The filter chain of a {% filter %} block or a filtered {% set %} block, applied to the rendered body.
  Value filter_block_text(const Expr& chain, std::string body) {
    scopes_.push_back({{}, scopes_.size() - 1});
    vars()[kBlockBodyName] = Value(std::move(body));
    try {
      Value out = eval(chain);
      scopes_.pop_back();
      return out;
    } catch (...) {
      scopes_.pop_back();
      throw;
    }
  }

  // A {% macro %} (or the body of a {% call %} block, parent = the scope it sees) as a callable value. Arguments
  // bind as Jinja2 binds them: positional, then keyword; a parameter not given takes its default (evaluated at the
  // call, after the parameters before it) or is undefined; extra positional arguments are `varargs` and extra keyword
  // arguments `kwargs` when the body reads those names, else an error.
  Value make_macro(const Node& n, std::size_t parent) {
    const Node* node = &n;
    const bool is_caller = n.kind == Node::Kind::call_block;
    const std::string name = is_caller ? "caller" : n.text;
    return Value(std::make_shared<Function>(Function{name, [this, node, parent, name](const Arguments& a) -> Value {
      const Node& m = *node;
      if (call_depth_ >= limits_.max_call_depth) {
        throw Error("macro '" + name + "': calls nest deeper than " + std::to_string(limits_.max_call_depth) +
                    " (Limits::max_call_depth)");
      }
      count_iteration(m.line, m.column);
      const std::size_t caller_scope_base = scopes_.size();
      // the scope the macro was defined in (a closure, as in Jinja2); should that scope be gone (a macro kept past
      // its loop), the template's top level
      scopes_.push_back({{}, parent < caller_scope_base ? parent : 0});
      struct Frame {  // leaves the macro's scope and depth however the call ends
        Renderer& r;
        std::size_t size;
        ~Frame() {
          r.scopes_.resize(size);
          --r.call_depth_;
        }
      } frame{*this, caller_scope_base};
      ++call_depth_;
      if (a.positional.size() > m.params.size() && !m.uses_varargs) {
        throw Error("macro '" + name + "' takes not more than " + std::to_string(m.params.size()) + " argument(s)");
      }
      List extra_positional;
      for (std::size_t k = m.params.size(); k < a.positional.size(); ++k) extra_positional.push_back(a.positional[k]);
      auto extra_keyword = std::make_shared<Dict>();
      Value caller;
      for (const auto& [key, value] : a.keyword) {
        const std::string& keyword = key;  // (clang before 16 cannot capture a structured binding)
        const bool is_param = std::any_of(m.params.begin(), m.params.end(), [&](const auto& p) { return p.first == keyword; });
        if (is_param) continue;
        if (key == "caller") {
          caller = value;
        } else if (m.uses_kwargs) {
          extra_keyword->set(key, value);
        } else {
          throw Error("macro '" + name + "' takes no keyword argument '" + key + "'");
        }
      }
      for (std::size_t k = 0; k < m.params.size(); ++k) {
        const auto& [param, fallback] = m.params[k];
        const Value* given = k < a.positional.size() ? &a.positional[k] : nullptr;
        for (const auto& [key, value] : a.keyword) {
          if (key != param) continue;
          if (given != nullptr) throw Error("macro '" + name + "' got multiple values for argument '" + param + "'");
          given = &value;
        }
        if (given != nullptr) vars()[param] = *given;
        else if (fallback) vars()[param] = eval(*fallback);
        else vars()[param] = Undefined{param};
      }
      if (m.uses_varargs) vars()["varargs"] = Value::make_tuple(std::move(extra_positional));
      if (m.uses_kwargs) vars()["kwargs"] = Value(std::move(extra_keyword));
      if (!caller.is_undefined()) vars()["caller"] = caller;
      std::string text;
      (void)capture(m.body, text);
      return Value(std::move(text));
    }, /*is_macro=*/true}));
  }

  std::vector<Value> iterate(const Value& v, int line, int column) {
    if (v.is_list()) return v.list();
    if (v.is_dict()) {
      std::vector<Value> keys;
      for (const auto& [k, _] : v.dict().items) keys.emplace_back(k);
      return keys;
    }
    if (v.is_string()) {
      std::vector<Value> chars;
      for (const char32_t c : to_u32(v.str())) chars.emplace_back(from_u32(std::u32string_view(&c, 1)));
      return chars;
    }
    if (v.is_undefined()) return {};
    fail(std::string("'") + type_name(v) + "' object is not iterable", line, column);
  }

  // Assigns `item` to the names, unpacking it as Python does when there are several (a str or dict unpacks too).
  void unpack(const std::vector<std::string>& targets, const Value& item, int line, int column) {
    if (targets.size() == 1) {
      vars()[targets[0]] = item;
      return;
    }
    if (!item.is_list() && !item.is_dict() && !item.is_string()) {
      fail("cannot unpack non-iterable " + std::string(type_name(item)) + " object", line, column);
    }
    const std::vector<Value> items = iterate(item, line, column);
    if (items.size() != targets.size()) {
      fail(std::string(items.size() < targets.size() ? "not enough" : "too many") + " values to unpack (expected " +
               std::to_string(targets.size()) + ", got " + std::to_string(items.size()) + ")", line, column);
    }
    for (std::size_t k = 0; k < targets.size(); ++k) vars()[targets[k]] = items[k];
  }

  void bind_targets(const Node& n, const Value& item) { unpack(n.targets, item, n.line, n.column); }

  Flow render_for(const Node& n) {
    std::vector<Value> items = iterate(eval(*n.expr), n.line, n.column);
    scopes_.push_back({{}, scopes_.size() - 1});
    if (n.filter) {
      std::vector<Value> kept;
      for (auto& item : items) {
        count_iteration(n.line, n.column);
        bind_targets(n, item);
        if (truthy(eval(*n.filter))) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      scopes_.pop_back();
      return render(n.else_body);
    }
    const auto length = static_cast<std::int64_t>(items.size());
    auto last_changed = std::make_shared<std::optional<List>>();  // loop.changed(): the values it saw last
    for (std::int64_t i = 0; i < length; ++i) {
      count_iteration(n.line, n.column);
      vars().clear();
      bind_targets(n, items[static_cast<std::size_t>(i)]);
      auto loop = std::make_shared<Dict>();
      loop->items = {{"index", i + 1},
                     {"index0", i},
                     {"revindex", length - i},
                     {"revindex0", length - i - 1},
                     {"first", i == 0},
                     {"last", i == length - 1},
                     {"length", length},
                     {"previtem", i > 0 ? items[static_cast<std::size_t>(i - 1)] : Value(Undefined{"loop.previtem"})},
                     {"nextitem", i + 1 < length ? items[static_cast<std::size_t>(i + 1)] : Value(Undefined{"loop.nextitem"})},
                     {"depth", 1},
                     {"depth0", 0}};
      loop->items.emplace_back("cycle", Value(std::make_shared<Function>(Function{"loop.cycle", [i](const Arguments& a) -> Value {
        if (a.positional.empty()) throw Error("loop.cycle() needs at least one value");
        return a.positional[static_cast<std::size_t>(i) % a.positional.size()];
      }})));
      loop->items.emplace_back("changed", Value(std::make_shared<Function>(Function{"loop.changed", [this, last_changed](const Arguments& a) -> Value {
        const Value now = Value::make_list(a.positional);
        if (last_changed->has_value() && same(Value::make_list(**last_changed), now)) return false;
        *last_changed = a.positional;
        return true;
      }})));
      {
        const MeterScope unmetered(std::nullopt);  // the items were charged when copied into `loop`
        Value loop_value(std::move(loop));
        // loop.changed() keeps the values it was given, a namespace among them maybe: counting `loop` as holding
        // one keeps it out of namespaces, so that no value can come to contain itself (see Dict)
        loop_value.holds_namespace = true;
        vars()["loop"] = std::move(loop_value);
      }
      const Flow f = render(n.body);
      if (f == Flow::break_) break;
    }
    scopes_.pop_back();
    return Flow::normal;
  }

  // The innermost scope; set, loop variables and macro parameters go there.
  std::unordered_map<std::string, Value>& vars() { return scopes_.back().vars; }

  Value lookup(const std::string& name) {
    for (std::size_t i = scopes_.size() - 1; i != kNoScope; i = scopes_[i].parent) {
      if (const auto found = scopes_[i].vars.find(name); found != scopes_[i].vars.end()) return found->second;
    }
    if (const auto g = globals().find(name); g != globals().end()) return g->second;
    return Undefined{name};
  }

  // ---- expressions ----------------------------------------------------------------------------------------
  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::literal: return e.literal;
      case Expr::Kind::name: return lookup(e.name);
      case Expr::Kind::attr: {
        const Value obj = eval(*e.children[0]);
        return get_attr(obj, e.name, *e.children[0]);
      }
      case Expr::Kind::item: {
        const Value obj = eval(*e.children[0]);
        const Value key = eval(*e.children[1]);
        return get_item(obj, key, *e.children[0]);
      }
      case Expr::Kind::slice: return eval_slice(e);
      case Expr::Kind::call: return eval_call(e);
      case Expr::Kind::filter: return eval_filter(e);
      case Expr::Kind::test: {
        const bool r = eval_test(e);
        return e.negated ? !r : r;
      }
      case Expr::Kind::unary: {
        const Value v = eval(*e.children[0]);
        if (e.name == "not") return !truthy(v);
        if (!v.is_number()) fail(std::string("bad operand type for unary ") + e.name + ": '" + type_name(v) + "'", e);
        if (e.name == "+") return v.is_int() ? Value(v.as_int()) : v;
        return v.is_int() ? Value(neg_int(v.as_int())) : Value(-v.as_double());
      }
      case Expr::Kind::binary: return eval_binary(e);
      case Expr::Kind::cond:
        if (truthy(eval(*e.children[0]))) return eval(*e.children[1]);
        return e.children[2] ? eval(*e.children[2]) : Value(Undefined{"else branch"});
      case Expr::Kind::list:
      case Expr::Kind::tuple: {
        List items;
        for (const auto& c : e.children) items.push_back(eval(*c));
        return e.kind == Expr::Kind::tuple ? Value::make_tuple(std::move(items)) : Value::make_list(std::move(items));
      }
      case Expr::Kind::dict: {
        auto d = std::make_shared<Dict>();
        for (std::size_t i = 0; i + 1 < e.children.size(); i += 2) {
          const Value k = eval(*e.children[i]);
          if (!k.is_string()) fail("dict literal keys must be strings", *e.children[i]);
          d->set(k.str(), eval(*e.children[i + 1]));
        }
        return Value(std::move(d));
      }
    }
    return Undefined{};
  }

  // The dict methods a template may call; as in Python, `d.items` is the method even where d has a key "items"
  // (Jinja2's `.` tries the attribute first; `d['items']` is the key).
  static bool is_dict_method(const std::string& name) {
    return name == "items" || name == "keys" || name == "values" || name == "get";
  }

  Value get_attr(const Value& obj, const std::string& name, const Expr& e) {
    if (obj.is_undefined()) fail("'" + std::get<Undefined>(obj.v).name + "' is undefined (reading ." + name + ")", e);
    if (obj.is_dict()) {
      if (!obj.dict().is_namespace && is_dict_method(name)) {  // the bound method, as a value
        const Expr* where = &e;
        Value method(std::make_shared<Function>("dict." + name, [this, obj, name, where](const Arguments& a) {
          return call_method(obj, name, a, *where);
        }));
        method.holds_namespace = obj.holds_namespace;  // it holds `obj`: a namespace may not hold it if obj holds one
        return method;
      }
      if (const Value* v = obj.dict().find(name)) return *v;
      return Undefined{name};
    }
    if (obj.is_list() && !name.empty() && std::isdigit(static_cast<unsigned char>(name[0]))) {
      if (const auto i = parse_int(name)) return get_item(obj, Value(*i), e);
    }
    return Undefined{name};
  }

  Value get_item(const Value& obj, const Value& key, const Expr& e) {
    if (obj.is_undefined()) fail("'" + std::get<Undefined>(obj.v).name + "' is undefined (reading an item)", e);
    if (obj.is_dict()) {
      if (!key.is_string()) return Undefined{text_of(key)};
      if (const Value* v = obj.dict().find(key.str())) return *v;
      return Undefined{key.str()};
    }
    if ((obj.is_list() || obj.is_string()) && key.is_int()) {
      std::int64_t i = key.as_int();
      if (obj.is_list()) {
        const auto n = static_cast<std::int64_t>(obj.list().size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Undefined{"index " + std::to_string(key.as_int())};
        return obj.list()[static_cast<std::size_t>(i)];
      }
      const std::u32string u = to_u32(obj.str());
      const auto n = static_cast<std::int64_t>(u.size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Undefined{"index " + std::to_string(key.as_int())};
      return from_u32(std::u32string_view(u).substr(static_cast<std::size_t>(i), 1));
    }
    if (key.is_string()) return get_attr(obj, key.str(), e);
    return Undefined{text_of(key)};
  }

  Value eval_slice(const Expr& e) {
    const Value obj = eval(*e.children[0]);
    std::optional<std::int64_t> part[3];
    for (std::size_t k = 0; k < 3; ++k) {
      if (!e.has_slice_part[k]) continue;
      const Value v = eval(*e.children[k + 1]);
      if (v.is_none()) continue;
      if (!v.is_int()) fail("slice indices must be integers or None", e);
      part[k] = v.as_int();
    }
    const std::int64_t step = part[2].value_or(1);
    if (step == 0) fail("slice step cannot be zero", e);
    if (obj.is_list()) {
      const auto& l = obj.list();
      List out;
      for (const auto i : slice_indices(static_cast<std::int64_t>(l.size()), part[0], part[1], step)) out.push_back(l[static_cast<std::size_t>(i)]);
      Value sliced = Value::make_list(std::move(out));
      sliced.tuple = obj.tuple;  // a tuple's slice is a tuple
      return sliced;
    }
    if (obj.is_string()) {
      const std::u32string u = to_u32(obj.str());
      std::u32string out;
      for (const auto i : slice_indices(static_cast<std::int64_t>(u.size()), part[0], part[1], step)) out += u[static_cast<std::size_t>(i)];
      return from_u32(out);
    }
    if (obj.is_undefined()) fail("'" + std::get<Undefined>(obj.v).name + "' is undefined (slicing it)", e);
    fail(std::string("'") + type_name(obj) + "' object cannot be sliced", e);
  }

  Arguments eval_args(const Expr& e, std::size_t first) {
    Arguments a;
    for (std::size_t k = first; k < e.children.size(); ++k) a.positional.push_back(eval(*e.children[k]));
    for (const auto& [name, x] : e.kwargs) a.keyword.emplace_back(name, eval(*x));
    if (e.star_args) {
      const Value items = eval(*e.star_args);
      for (auto& item : iterate(items, e.line, e.column)) a.positional.push_back(std::move(item));
    }
    if (e.star_kwargs) {
      const Value mapping = eval(*e.star_kwargs);
      if (!mapping.is_dict()) fail("argument after ** must be a mapping, not " + std::string(type_name(mapping)), e);
      for (const auto& [k, x] : mapping.dict().items) a.keyword.emplace_back(k, x);
    }
    return a;
  }

  Value eval_call(const Expr& e) {
    const Expr& callee = *e.children[0];
    if (callee.kind == Expr::Kind::attr) {
      const Value obj = eval(*callee.children[0]);
      const bool dict_method = obj.is_dict() && ((!obj.dict().is_namespace && is_dict_method(callee.name)) || !obj.dict().find(callee.name));
      if (obj.is_string() || dict_method || obj.is_list()) {
        Arguments args = eval_args(e, 1);
        try {
          return call_method(obj, callee.name, args, e);
        } catch (const TemplateError&) {
          throw;
        } catch (const Error& err) {
          fail(err.what(), e);
        }
      }
      const Value f = get_attr(obj, callee.name, callee);
      return call_function(f, eval_args(e, 1), e);
    }
    const Value f = eval(callee);
    return call_function(f, eval_args(e, 1), e);
  }

  Value call_function(const Value& f, const Arguments& args, const Expr& e) {
    if (!f.is_function()) {
      const std::string what = f.is_undefined() ? "'" + std::get<Undefined>(f.v).name + "' is undefined" : std::string("'") + type_name(f) + "' object is not callable";
      fail(what, e);
    }
    try {
      return std::get<std::shared_ptr<Function>>(f.v)->call(args);
    } catch (const TemplateError&) {
      throw;
    } catch (const Error& err) {
      fail(err.what(), e);
    }
  }

  static std::int64_t int_arg(const Arguments& a, std::size_t i, const char* name, std::int64_t fallback) {
    const Value* v = a.get(i, name);
    if (v == nullptr || v->is_none()) return fallback;
    if (!v->is_int()) throw Error(std::string("argument '") + name + "' must be an integer");
    return v->as_int();
  }
  static std::string str_arg(const Arguments& a, std::size_t i, const char* name) {
    const Value* v = a.get(i, name);
    if (v == nullptr || !v->is_string()) throw Error(std::string("argument '") + name + "' must be a string");
    return v->str();
  }

  static bool affix_matches(const std::string& s, const Value& affix, bool prefix) {
    const auto one = [&](const Value& a) {
      if (!a.is_string()) throw Error(std::string(prefix ? "startswith" : "endswith") + " needs a string or a tuple of strings");
      const auto& x = a.str();
      return x.size() <= s.size() && (prefix ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0);
    };
    if (affix.is_list()) {
      return std::any_of(affix.list().begin(), affix.list().end(), one);
    }
    return one(affix);
  }

  Value call_method(const Value& obj, const std::string& name, const Arguments& a, const Expr& e) {
    if (obj.is_string()) {
      const std::string& s = obj.str();
      if (name == "startswith" || name == "endswith") {
        const Value* x = a.get(0, "prefix");
        if (x == nullptr) throw Error(name + "() takes at least 1 argument");
        return affix_matches(s, *x, name == "startswith");
      }
      if (name == "strip" || name == "lstrip" || name == "rstrip") {
        return py_strip(s, a.get(0, "chars"), name != "rstrip", name != "lstrip");
      }
      if (name == "split") {
        List parts;
        for (auto& p : py_split(s, a.get(0, "sep"), int_arg(a, 1, "maxsplit", -1))) parts.emplace_back(std::move(p));
        return Value::make_list(std::move(parts));
      }
      if (name == "upper") return map_case(s, 1);
      if (name == "lower") return map_case(s, 0);
      if (name == "capitalize") return capitalize(s);
      if (name == "title") return title(s);
      if (name == "format") return str_format(s, a, limits_.max_output_bytes);
      if (name == "islower" || name == "isupper") {
        Arguments none;
        return apply_test(name.substr(2), obj, none, e);
      }
      if (name == "replace") {
        return py_replace(s, str_arg(a, 0, "old"), str_arg(a, 1, "new"), int_arg(a, 2, "count", -1),
                          limits_.max_output_bytes);
      }
      if (name == "find" || name == "rfind") {
        const std::string sub = str_arg(a, 0, "sub");
        const auto at = name == "find" ? s.find(sub) : s.rfind(sub);
        return at == std::string::npos ? std::int64_t{-1} : static_cast<std::int64_t>(to_u32(s.substr(0, at)).size());
      }
      if (name == "removeprefix" || name == "removesuffix") {
        const std::string affix = str_arg(a, 0, name == "removeprefix" ? "prefix" : "suffix");
        if (affix.size() > s.size()) return s;
        if (name == "removeprefix") return s.compare(0, affix.size(), affix) == 0 ? s.substr(affix.size()) : s;
        return s.compare(s.size() - affix.size(), affix.size(), affix) == 0 ? s.substr(0, s.size() - affix.size()) : s;
      }
      if (name == "rsplit") {  // Python: splits from the right, at most maxsplit times
        const Value* sep = a.get(0, "sep");
        const std::int64_t maxsplit = int_arg(a, 1, "maxsplit", -1);
        if (maxsplit < 0 || sep == nullptr || sep->is_none()) {
          if (maxsplit < 0) {
            List parts;
            for (auto& p : py_split(s, sep, -1)) parts.emplace_back(std::move(p));
            return Value::make_list(std::move(parts));
          }
          throw Error("rsplit: maxsplit needs a separator here");
        }
        if (!sep->is_string() || sep->str().empty()) throw Error("rsplit: the separator must be a non-empty string");
        const std::string& d = sep->str();
        std::vector<std::string> pieces;
        std::size_t end = s.size();
        while (static_cast<std::int64_t>(pieces.size()) < maxsplit) {
          if (end < d.size()) break;
          const auto at = s.rfind(d, end - d.size());
          if (at == std::string::npos) break;
          pieces.push_back(s.substr(at + d.size(), end - at - d.size()));
          end = at;
        }
        pieces.push_back(s.substr(0, end));
        List parts;
        for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) parts.emplace_back(*it);
        return Value::make_list(std::move(parts));
      }
      if (name == "splitlines") {
        List parts;
        std::size_t start = 0;
        for (std::size_t i = 0; i < s.size(); ++i) {
          if (s[i] != '\n' && s[i] != '\r') continue;
          parts.emplace_back(s.substr(start, i - start));
          if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
          start = i + 1;
        }
        if (start < s.size()) parts.emplace_back(s.substr(start));
        return Value::make_list(std::move(parts));
      }
      if (name == "ljust" || name == "rjust" || name == "center" || name == "zfill") {
        const std::int64_t width = int_arg(a, 0, "width", 0);
        const std::size_t have = to_u32(s).size();
        if (width <= 0 || static_cast<std::uint64_t>(width) <= have) return s;
        if (static_cast<std::uint64_t>(width) > limits_.max_output_bytes) string_too_long(limits_.max_output_bytes);
        const std::size_t pad = static_cast<std::size_t>(width) - have;
        if (name == "zfill") {
          const std::size_t sign = !s.empty() && (s[0] == '+' || s[0] == '-') ? 1 : 0;
          return s.substr(0, sign) + std::string(pad, '0') + s.substr(sign);
        }
        const Value* fill_arg = a.get(1, "fillchar");
        std::string fill = " ";
        if (fill_arg != nullptr) {
          if (!fill_arg->is_string() || to_u32(fill_arg->str()).size() != 1) throw Error(name + "(): the fill character must be exactly one character long");
          fill = fill_arg->str();
        }
        const auto repeat = [&](std::size_t n) {
          std::string out;
          for (std::size_t k = 0; k < n; ++k) out += fill;
          return out;
        };
        if (name == "ljust") return s + repeat(pad);
        if (name == "rjust") return repeat(pad) + s;
        const std::size_t left = pad / 2 + (pad & static_cast<std::size_t>(width) & 1);
        return repeat(left) + s + repeat(pad - left);
      }
      if (name == "count") {
        const std::string sub = str_arg(a, 0, "sub");
        if (sub.empty()) return static_cast<std::int64_t>(to_u32(s).size() + 1);
        std::int64_t n = 0;
        for (auto at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
        return n;
      }
      if (name == "join") {
        const Value* items = a.get(0, "iterable");
        if (items == nullptr) throw Error("join() takes 1 argument");
        std::string out;
        bool first = true;
        for (const auto& item : iterate(*items, e.line, e.column)) {
          if (!item.is_string()) throw Error("join: sequence item is " + std::string(type_name(item)) + ", not str");
          if (!first) out += s;
          out += item.str();
          first = false;
          if (out.size() > limits_.max_output_bytes) string_too_long(limits_.max_output_bytes);
        }
        return out;
      }
      if (name == "isalnum" || name == "isnumeric" || name == "isdecimal") {
        const std::u32string u = to_u32(s);
        if (u.empty()) return false;
        return std::all_of(u.begin(), u.end(), [&](char32_t c) {
          const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
          const bool digit = cat == UTF8PROC_CATEGORY_ND;
          if (name == "isdecimal") return digit;
          if (name == "isnumeric") return digit || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
          return digit || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO);
        });
      }
      if (name == "isdigit" || name == "isspace" || name == "isalpha") {
        const std::u32string u = to_u32(s);
        if (u.empty()) return false;
        return std::all_of(u.begin(), u.end(), [&](char32_t c) {
          const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
          if (name == "isspace") return py_space(c);
          if (name == "isdigit") return cat == UTF8PROC_CATEGORY_ND;
          return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
        });
      }
      throw Error("'str' object has no method '" + name + "'");
    }
    if (obj.is_dict()) {
      const Dict& d = obj.dict();
      if (name == "items" || name == "keys" || name == "values") {
        List out;
        for (const auto& [k, v] : d.items) {
          if (name == "items") out.push_back(Value::make_tuple({Value(k), v}));
          else if (name == "keys") out.emplace_back(k);
          else out.push_back(v);
        }
        return Value::make_list(std::move(out));
      }
      if (name == "get") {
        const std::string key = str_arg(a, 0, "key");
        if (const Value* v = d.find(key)) return *v;
        const Value* fallback = a.get(1, "default");
        return fallback != nullptr ? *fallback : Value(None{});
      }
      throw Error("'dict' object has no method '" + name + "'");
    }
    if (obj.is_list()) {
      if (name == "index" || name == "count") {
        const Value* x = a.get(0, "value");
        if (x == nullptr) throw Error(name + "() takes 1 argument");
        std::int64_t n = 0;
        const auto& l = obj.list();
        for (std::size_t i = 0; i < l.size(); ++i) {
          if (same(l[i], *x)) {
            if (name == "index") return static_cast<std::int64_t>(i);
            ++n;
          }
        }
        if (name == "index") throw Error("list.index(x): x not in list");
        return n;
      }
      throw Error("'list' object has no method '" + name + "' (templates cannot modify lists)");
    }
    throw Error(std::string("'") + type_name(obj) + "' object has no method '" + name + "'");
  }

  // ---- binary operators -----------------------------------------------------------------------------------
  Value eval_binary(const Expr& e) {
    const std::string& op = e.name;
    if (op == "and") {
      Value l = eval(*e.children[0]);
      return truthy(l) ? eval(*e.children[1]) : l;
    }
    if (op == "or") {
      Value l = eval(*e.children[0]);
      return truthy(l) ? l : eval(*e.children[1]);
    }
    const Value l = eval(*e.children[0]);
    const Value r = eval(*e.children[1]);
    if (op == "~") {
      std::string s = text_of(l) + text_of(r);
      if (s.size() > limits_.max_output_bytes) fail("a string exceeds the output limit", e);
      return s;
    }
    if (op == "==") return same(l, r);
    if (op == "!=") return !same(l, r);
    if (op == "in" || op == "not in") {
      bool found = false;
      if (r.is_string()) {
        if (!l.is_string()) fail("'in <string>' requires a string on the left, not " + std::string(type_name(l)), e);
        found = r.str().find(l.str()) != std::string::npos;
      } else if (r.is_list()) {
        found = std::any_of(r.list().begin(), r.list().end(), [&](const Value& x) { return same(x, l); });
      } else if (r.is_dict()) {
        found = l.is_string() && r.dict().find(l.str()) != nullptr;
      } else if (r.is_undefined()) {
        found = false;  // Jinja2's Undefined iterates as empty
      } else {
        fail(std::string("argument of type '") + type_name(r) + "' is not iterable", e);
      }
      return op == "in" ? found : !found;
    }
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int c = 0;
      if (l.is_number() && r.is_number()) {
        const double a = l.as_double(), b = r.as_double();
        c = a < b ? -1 : (a > b ? 1 : 0);
      } else if (l.is_string() && r.is_string()) {
        c = l.str().compare(r.str());
        c = c < 0 ? -1 : (c > 0 ? 1 : 0);
      } else {
        fail("'" + op + "' not supported between '" + type_name(l) + "' and '" + type_name(r) + "'", e);
      }
      if (op == "<") return c < 0;
      if (op == ">") return c > 0;
      if (op == "<=") return c <= 0;
      return c >= 0;
    }
    if (op == "+") {
      if (l.is_string() && r.is_string()) {
        if (l.str().size() + r.str().size() > limits_.max_output_bytes) fail("a string exceeds the output limit", e);
        return l.str() + r.str();
      }
      if (l.is_list() && r.is_list()) {
        List out = l.list();
        out.insert(out.end(), r.list().begin(), r.list().end());
        return Value::make_list(std::move(out));
      }
    }
    if (op == "%" && l.is_string()) {
      try {
        return percent_format(l.str(), r, false, limits_.max_output_bytes);
      } catch (const TemplateError&) {
        throw;
      } catch (const Error& err) {
        fail(err.what(), e);
      }
    }
    if (op == "*" && ((l.is_string() && r.is_int()) || (l.is_int() && r.is_string()))) {
      const std::string& s = l.is_string() ? l.str() : r.str();
      const std::int64_t n = std::max<std::int64_t>(l.is_string() ? r.as_int() : l.as_int(), 0);
      if (!s.empty() && static_cast<std::uint64_t>(n) > limits_.max_output_bytes / s.size()) fail("a string exceeds the output limit", e);
      std::string out;
      for (std::int64_t i = 0; i < n; ++i) out += s;
      return out;
    }
    if (!l.is_number() || !r.is_number()) {
      if (l.is_undefined() || r.is_undefined()) {
        fail("'" + std::get<Undefined>((l.is_undefined() ? l : r).v).name + "' is undefined (operand of '" + op + "')", e);
      }
      fail("unsupported operand types for " + op + ": '" + type_name(l) + "' and '" + type_name(r) + "'", e);
    }
    const bool ints = l.is_int() && r.is_int();
    if (op == "+") return ints ? Value(add_int(l.as_int(), r.as_int())) : Value(l.as_double() + r.as_double());
    if (op == "-") return ints ? Value(sub_int(l.as_int(), r.as_int())) : Value(l.as_double() - r.as_double());
    if (op == "*") return ints ? Value(mul_int(l.as_int(), r.as_int())) : Value(l.as_double() * r.as_double());
    if (op == "**") {
      if (ints && r.as_int() >= 0) return pow_int(l.as_int(), r.as_int());
      return std::pow(l.as_double(), r.as_double());
    }
    if (r.as_double() == 0.0) fail("division by zero", e);
    if (op == "/") return l.as_double() / r.as_double();
    if (op == "//") {
      if (ints) {
        const std::int64_t a = l.as_int(), b = r.as_int();
        if (b == -1) return neg_int(a);  // the one quotient that can overflow
        std::int64_t q = a / b;
        if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
        return q;
      }
      return std::floor(l.as_double() / r.as_double());
    }
    // %
    if (ints) {
      const std::int64_t a = l.as_int(), b = r.as_int();
      if (b == -1) return std::int64_t{0};  // kIntMin % -1 would overflow
      std::int64_t m = a % b;
      if (m != 0 && ((m < 0) != (b < 0))) m += b;
      return m;
    }
    const double m = std::fmod(l.as_double(), r.as_double());
    return (m != 0 && ((m < 0) != (r.as_double() < 0))) ? m + r.as_double() : m;
  }

  // ---- tests ----------------------------------------------------------------------------------------------
  bool eval_test(const Expr& e) {
    const std::string& t = e.name;
    if (t == "defined") return !eval(*e.children[0]).is_undefined();
    if (t == "undefined") return eval(*e.children[0]).is_undefined();
    const Value v = eval(*e.children[0]);
    Arguments a = eval_args(e, 1);
    return apply_test(t, v, a, e);
  }

  bool apply_test(const std::string& t, const Value& v, const Arguments& a, const Expr& e) {
    const auto arg = [&]() -> const Value& {
      const Value* x = a.get(0, "other");
      if (x == nullptr) fail("test '" + t + "' needs an argument", e);
      return *x;
    };
    if (t == "defined") return !v.is_undefined();
    if (t == "undefined") return v.is_undefined();
    if (t == "none") return v.is_none();
    if (t == "true") return v.is_bool() && std::get<bool>(v.v);
    if (t == "false") return v.is_bool() && !std::get<bool>(v.v);
    if (t == "boolean") return v.is_bool();
    if (t == "string") return v.is_string();
    if (t == "mapping") return v.is_dict();
    // Jinja2's Undefined iterates (as empty), has a length and items, and may be called (to fail)
    if (t == "iterable") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
    if (t == "sequence") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
    if (t == "number") return v.is_number() && !v.is_bool();
    if (t == "integer") return v.is_int() && !v.is_bool();
    if (t == "float") return std::holds_alternative<double>(v.v);
    if (t == "callable") return v.is_function() || v.is_undefined();
    if (t == "lower" || t == "upper") {  // str(x).islower() / .isupper(): some cased character, none of the other case
      bool cased = false;
      for (const char32_t c : to_u32(text_of(v))) {
        const auto cp = static_cast<utf8proc_int32_t>(c);
        const auto cat = utf8proc_category(cp);
        if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LT) {
          if (t == "lower") return false;
          cased = true;
        } else if (cat == UTF8PROC_CATEGORY_LL) {
          if (t == "upper") return false;
          cased = true;
        }
      }
      return cased;
    }
    if (t == "eq" || t == "equalto" || t == "==") return same(v, arg());
    if (t == "ne") return !same(v, arg());
    if (t == "sameas") return same(v, arg()) && v.v.index() == arg().v.index();
    if (t == "in") {
      const Value& c = arg();
      if (c.is_list()) return std::any_of(c.list().begin(), c.list().end(), [&](const Value& x) { return same(x, v); });
      if (c.is_string()) return v.is_string() && c.str().find(v.str()) != std::string::npos;
      if (c.is_dict()) return v.is_string() && c.dict().find(v.str()) != nullptr;
      return false;
    }
    if (t == "even" || t == "odd" || t == "divisibleby") {
      if (!v.is_int()) fail("test '" + t + "' needs an integer", e);
      const std::int64_t d = t == "divisibleby" ? arg().as_int() : 2;
      if (d == 0) fail("divisibleby 0", e);
      const bool divisible = v.as_int() % d == 0;
      return t == "odd" ? !divisible : divisible;
    }
    if (t == "lt" || t == "lessthan" || t == "le" || t == "gt" || t == "greaterthan" || t == "ge") {
      const Value& o = arg();
      if (!v.is_number() || !o.is_number()) fail("test '" + t + "' compares numbers", e);
      const double x = v.as_double(), y = o.as_double();
      if (t == "lt" || t == "lessthan") return x < y;
      if (t == "le") return x <= y;
      if (t == "gt" || t == "greaterthan") return x > y;
      return x >= y;
    }
    fail("unknown test '" + t + "'", e);
  }

  // ---- filters --------------------------------------------------------------------------------------------
  Value eval_filter(const Expr& e) {
    const std::string& f = e.name;
    const Value v = eval(*e.children[0]);
    const Arguments a = eval_args(e, 1);
    try {
      return apply_filter(f, v, a, e);
    } catch (const TemplateError&) {
      throw;
    } catch (const Error& err) {
      fail("filter '" + f + "': " + err.what(), e);
    }
  }

  static std::size_t length_of(const Value& v) {
    if (v.is_string()) return to_u32(v.str()).size();
    if (v.is_list()) return v.list().size();
    if (v.is_dict()) return v.dict().items.size();
    if (v.is_undefined()) return 0;
    throw Error(std::string("object of type '") + type_name(v) + "' has no len()");
  }

  Value attribute_of(const Value& item, const std::string& path, const Expr& e) {
    Value cur = item;
    std::size_t start = 0;
    while (true) {
      const auto dot = path.find('.', start);
      const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      cur = cur.is_undefined() ? cur : get_item(cur, Value(part), e);
      if (dot == std::string::npos) return cur;
      start = dot + 1;
    }
  }

  Value apply_filter(const std::string& f, const Value& v, const Arguments& a, const Expr& e) {
    if (f == "length" || f == "count") return static_cast<std::int64_t>(length_of(v));
    if (f == "default" || f == "d") {
      const Value* fallback = a.get(0, "default_value");
      const Value* boolean = a.get(1, "boolean");
      const bool use = v.is_undefined() || (boolean != nullptr && truthy(*boolean) && !truthy(v));
      return use ? (fallback != nullptr ? *fallback : Value(std::string())) : v;
    }
    if (f == "tojson") {  // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
      const Value* indent = a.get(1, "indent");
      JsonStyle style;
      if (const Value* ascii = a.get(0, "ensure_ascii")) style.ensure_ascii = truthy(*ascii);
      if (const Value* sort = a.get(3, "sort_keys")) style.sort_keys = truthy(*sort);
      if (const Value* seps = a.get(2, "separators"); seps != nullptr && !seps->is_none()) {
        if (!seps->is_list() || seps->list().size() != 2 || !seps->list()[0].is_string() || !seps->list()[1].is_string()) {
          throw Error("separators must be a pair of strings");
        }
        style.item_separator = seps->list()[0].str();
        style.key_separator = seps->list()[1].str();
      }
      std::string out;
      // json.dumps indents by ' ' * indent: a negative indent is 0 (new lines, no spaces); -1 here means none
      const int spaces = indent != nullptr && indent->is_int()
                             ? static_cast<int>(std::clamp<std::int64_t>(indent->as_int(), 0, std::numeric_limits<int>::max()))
                             : -1;
      dump_json(v, spaces, 0, out, e.line, e.column, limits_.max_output_bytes, &style);
      return out;
    }
    if (f == "string") return text_of(v);
    if (f == "safe") return v;
    if (f == "e" || f == "escape") {
      std::string out;
      for (const char c : text_of(v)) {
        switch (c) {
          case '&': out += "&amp;"; break;
          case '<': out += "&lt;"; break;
          case '>': out += "&gt;"; break;
          case '"': out += "&#34;"; break;
          case '\'': out += "&#39;"; break;
          default: out += c;
        }
      }
      return out;
    }
    if (f == "list") return Value::make_list(iterate(v, e.line, e.column));
    if (f == "items") {
      if (v.is_undefined()) return Value::make_list();
      if (!v.is_dict()) throw Error("needs a mapping");
      return call_method(v, "items", {}, e);
    }
    if (f == "dictsort") {
      if (!v.is_dict()) throw Error("needs a mapping");
      // Jinja2's dictsort(case_sensitive=False, by='key', reverse=False)
      List items = call_method(v, "items", {}, e).list();
      const Value* case_sensitive = a.get(0, "case_sensitive");
      const Value* by = a.get(1, "by");
      const Value* rev = a.get(2, "reverse");
      const bool fold = case_sensitive == nullptr || !truthy(*case_sensitive);
      const bool reverse = rev != nullptr && truthy(*rev);
      std::size_t pos = 0;
      if (by != nullptr) {
        const std::string b = text_of(*by);
        if (b == "value") pos = 1;
        else if (b != "key") throw Error("You can only sort by either 'key' or 'value'");
      }
      const auto less = [&](const Value& kx, const Value& ky) {
        if (kx.is_number() && ky.is_number()) return kx.as_double() < ky.as_double();
        if (kx.is_string() && ky.is_string()) return fold ? map_case(kx.str(), 0) < map_case(ky.str(), 0) : kx.str() < ky.str();
        throw Error("cannot compare '" + std::string(type_name(kx)) + "' and '" + type_name(ky) + "'");
      };
      std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
        return reverse ? less(y.list()[pos], x.list()[pos]) : less(x.list()[pos], y.list()[pos]);
      });
      return Value::make_list(std::move(items));
    }
    if (f == "first" || f == "last") {
      if (v.is_list()) {
        if (v.list().empty()) return Undefined{f};
        return f == "first" ? v.list().front() : v.list().back();
      }
      if (v.is_string()) {
        const std::u32string u = to_u32(v.str());
        if (u.empty()) return Undefined{f};
        return from_u32(std::u32string_view(u).substr(f == "first" ? 0 : u.size() - 1, 1));
      }
      const auto items = iterate(v, e.line, e.column);
      if (items.empty()) return Undefined{f};
      return f == "first" ? items.front() : items.back();
    }
    if (f == "reverse") {
      if (v.is_string()) {
        std::u32string u = to_u32(v.str());
        std::reverse(u.begin(), u.end());
        return from_u32(u);
      }
      auto items = iterate(v, e.line, e.column);
      std::reverse(items.begin(), items.end());
      return Value::make_list(std::move(items));
    }
    if (f == "join") {
      const Value* sep = a.get(0, "d");
      const Value* attr = a.get(1, "attribute");
      std::string out;
      bool first = true;
      for (const auto& item : iterate(v, e.line, e.column)) {
        if (!first) out += sep != nullptr ? text_of(*sep) : std::string();
        out += text_of(attr != nullptr ? attribute_of(item, text_of(*attr), e) : item);
        first = false;
        if (out.size() > limits_.max_output_bytes) fail("a string exceeds the output limit", e);
      }
      return out;
    }
    if (f == "map") {
      const Value* attr = a.get(99, "attribute");
      List out;
      for (const auto& item : iterate(v, e.line, e.column)) {
        if (attr != nullptr) {
          Value x = attribute_of(item, text_of(*attr), e);
          if (x.is_undefined()) {
            if (const Value* d = a.get(99, "default")) x = *d;
          }
          out.push_back(std::move(x));
        } else {
          if (a.positional.empty() || !a.positional[0].is_string()) throw Error("map needs a filter name or attribute=");
          Arguments rest;
          rest.positional.assign(a.positional.begin() + 1, a.positional.end());
          const std::string name = a.positional[0].str();
          if (known_filters().count(name) == 0 || name == "map") throw Error("unknown filter '" + name + "'");
          out.push_back(apply_filter(name, item, rest, e));
        }
      }
      return Value::make_list(std::move(out));
    }
    if (f == "select" || f == "reject" || f == "selectattr" || f == "rejectattr") {
      const bool by_attr = f == "selectattr" || f == "rejectattr";
      const bool keep_if = f == "select" || f == "selectattr";
      std::size_t k = 0;
      std::string attr;
      if (by_attr) {
        if (a.positional.empty()) throw Error("needs an attribute name");
        attr = text_of(a.positional[k++]);
      }
      std::string test;
      if (k < a.positional.size()) test = text_of(a.positional[k++]);
      if (!test.empty() && known_tests().count(test) == 0) throw Error("unknown test '" + test + "'");
      Arguments rest;
      rest.positional.assign(a.positional.begin() + static_cast<std::ptrdiff_t>(std::min(k, a.positional.size())), a.positional.end());
      List out;
      for (const auto& item : iterate(v, e.line, e.column)) {
        const Value x = by_attr ? attribute_of(item, attr, e) : item;
        const bool ok = test.empty() ? truthy(x) : apply_test(test, x, rest, e);
        if (ok == keep_if) out.push_back(item);
      }
      return Value::make_list(std::move(out));
    }
    if (f == "unique") {
      List out;
      for (const auto& item : iterate(v, e.line, e.column)) {
        if (std::none_of(out.begin(), out.end(), [&](const Value& x) { return same(x, item); })) out.push_back(item);
      }
      return Value::make_list(std::move(out));
    }
    if (f == "sort") {
      auto items = iterate(v, e.line, e.column);
      const Value* rev = a.get(0, "reverse");
      const Value* attr = a.get(2, "attribute");
      const auto key = [&](const Value& x) { return attr != nullptr ? attribute_of(x, text_of(*attr), e) : x; };
      const bool reverse = rev != nullptr && truthy(*rev);
      const Value* case_sensitive = a.get(1, "case_sensitive");
      const bool fold = case_sensitive == nullptr || !truthy(*case_sensitive);
      const auto less = [&](const Value& kx, const Value& ky) {
        if (kx.is_number() && ky.is_number()) return kx.as_double() < ky.as_double();
        if (kx.is_string() && ky.is_string()) return fold ? map_case(kx.str(), 0) < map_case(ky.str(), 0) : kx.str() < ky.str();
        throw Error("cannot compare '" + std::string(type_name(kx)) + "' and '" + type_name(ky) + "'");
      };
      // Python's sorted(reverse=True) stays stable: equal items keep their order
      std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
        return reverse ? less(key(y), key(x)) : less(key(x), key(y));
      });
      return Value::make_list(std::move(items));
    }
    if (f == "sum" || f == "min" || f == "max") {
      const auto items = iterate(v, e.line, e.column);
      if (f == "sum") {
        Value total = std::int64_t{0};
        for (const auto& x : items) {
          if (!x.is_number()) throw Error("can only sum numbers");
          total = total.is_int() && x.is_int() ? Value(add_int(total.as_int(), x.as_int())) : Value(total.as_double() + x.as_double());
        }
        return total;
      }
      if (items.empty()) return Undefined{f};
      Value best = items[0];
      for (const auto& x : items) {
        const bool less = x.is_number() && best.is_number() ? x.as_double() < best.as_double()
                          : x.is_string() && best.is_string() ? x.str() < best.str()
                                                              : throw Error("cannot compare the items");
        if ((f == "min") == less && !same(x, best)) best = x;
      }
      return best;
    }
    if ((f == "int" || f == "float") && v.is_undefined()) {  // int(Undefined) raises in Jinja2
      throw Error("'" + std::get<Undefined>(v.v).name + "' is undefined");
    }
    if (f == "int") {
      if (v.is_int()) return v.as_int();
      if (v.is_number()) {
        if (const auto i = int_of(v.as_double())) return *i;
      }
      if (v.is_string()) {  // Jinja: int(s), else int(float(s)), else the default
        const std::string t = py_strip(v.str(), nullptr, true, true);
        if (const auto i = parse_int(t)) return *i;
        if (const auto x = parse_float(t)) {
          if (const auto i = int_of(*x)) return *i;
        }
      }
      const Value* d = a.get(0, "default");
      return d != nullptr ? *d : Value(std::int64_t{0});
    }
    if (f == "float") {
      if (v.is_number()) return v.as_double();
      if (v.is_string()) {
        if (const auto x = parse_float(py_strip(v.str(), nullptr, true, true))) return *x;
      }
      const Value* d = a.get(0, "default");
      return d != nullptr ? *d : Value(0.0);
    }
    if (f == "abs") {
      if (!v.is_number()) throw Error("needs a number");
      return v.is_int() ? Value(v.as_int() < 0 ? neg_int(v.as_int()) : v.as_int()) : Value(std::fabs(v.as_double()));
    }
    if (f == "round") {
      if (!v.is_number()) throw Error("needs a number");
      const double scale = std::pow(10.0, static_cast<double>(int_arg(a, 0, "precision", 0)));
      const Value* method = a.get(1, "method");
      const std::string m = method != nullptr ? text_of(*method) : "common";
      const double x = v.as_double() * scale;
      const double r = m == "floor" ? std::floor(x) : m == "ceil" ? std::ceil(x) : std::round(x);
      return r / scale;
    }
    if (f == "wordcount") return static_cast<std::int64_t>(py_split(text_of(v), nullptr, -1).size());
    if (f == "indent") {
      const std::int64_t width = std::max<std::int64_t>(int_arg(a, 0, "width", 4), 0);
      if (static_cast<std::uint64_t>(width) > limits_.max_output_bytes) string_too_long(limits_.max_output_bytes);
      const std::string pad(static_cast<std::size_t>(width), ' ');
      const Value* first = a.get(1, "first");
      const Value* blank = a.get(2, "blank");
      const Value newline("\n");
      const auto lines = py_split(text_of(v), &newline, -1);
      std::string out;
      for (std::size_t i = 0; i < lines.size(); ++i) {
        if (i) out += '\n';
        const bool indent_it = (i > 0 || (first != nullptr && truthy(*first))) && (!lines[i].empty() || (blank != nullptr && truthy(*blank)));
        if (indent_it) out += pad;
        out += lines[i];
        if (out.size() > limits_.max_output_bytes) string_too_long(limits_.max_output_bytes);
      }
      return out;
    }
    if (f == "attr") {  // Jinja2: getattr only; a dict's keys are items, not attributes
      if (v.is_undefined()) throw Error("'" + std::get<Undefined>(v.v).name + "' is undefined");
      return Undefined{a.positional.empty() ? std::string() : text_of(a.positional[0])};
    }
    if (f == "format") {  // Jinja2: str(value) % (kwargs or args)
      if (!a.keyword.empty()) {
        auto mapping = std::make_shared<Dict>();
        for (const auto& [k, x] : a.keyword) mapping->set(k, x);
        return percent_format(text_of(v), Value(std::move(mapping)), false, limits_.max_output_bytes);
      }
      return percent_format(text_of(v), Value::make_list(a.positional), true, limits_.max_output_bytes);
    }
    // String filters: as Jinja2, they take str(value) (an undefined value is '').
    const std::string s = text_of(v);
    if (f == "upper") return map_case(s, 1);
    if (f == "lower") return map_case(s, 0);
    if (f == "capitalize") return capitalize(s);
    if (f == "title") return jinja_title(s);
    if (f == "trim" || f == "strip") return py_strip(s, a.get(0, "chars"), true, true);
    if (f == "replace") {
      const Value* old_arg = a.get(0, "old");
      const Value* new_arg = a.get(1, "new");
      if (old_arg == nullptr || new_arg == nullptr) throw Error("replace needs the old and the new text");
      return py_replace(s, text_of(*old_arg), text_of(*new_arg), int_arg(a, 2, "count", -1), limits_.max_output_bytes);
    }
    if (f == "forceescape") return apply_filter("escape", Value(s), a, e);
    if (f == "center") {
      const std::int64_t width = int_arg(a, 0, "width", 80);
      const std::size_t have = to_u32(s).size();
      if (width <= 0 || static_cast<std::uint64_t>(width) <= have) return s;
      if (static_cast<std::uint64_t>(width) > limits_.max_output_bytes) string_too_long(limits_.max_output_bytes);
      // Python's str.center: the odd space goes left when the padding and the width are both odd
      const std::size_t pad = static_cast<std::size_t>(width) - have;
      const std::size_t left = pad / 2 + (pad & static_cast<std::size_t>(width) & 1);
      return std::string(left, ' ') + s + std::string(pad - left, ' ');
    }
    if (f == "truncate") {  // Jinja2's do_truncate(s, length=255, killwords=False, end='...', leeway=None -> 5)
      const std::int64_t length = int_arg(a, 0, "length", 255);
      const Value* killwords = a.get(1, "killwords");
      const Value* end_arg = a.get(2, "end");
      const std::string end = end_arg != nullptr ? text_of(*end_arg) : "...";
      const std::int64_t leeway = int_arg(a, 3, "leeway", 5);
      const std::u32string u = to_u32(s);
      const auto n = static_cast<std::int64_t>(u.size());
      const auto end_len = static_cast<std::int64_t>(to_u32(end).size());
      if (length < end_len) throw Error("expected length >= " + std::to_string(end_len) + ", got " + std::to_string(length));
      if (leeway < 0) throw Error("expected leeway >= 0, got " + std::to_string(leeway));
      if (n <= length + leeway) return s;
      const std::u32string head = u.substr(0, static_cast<std::size_t>(length - end_len));
      if (killwords != nullptr && truthy(*killwords)) return from_u32(head) + end;
      const auto space = head.rfind(U' ');
      return from_u32(space == std::u32string::npos ? head : head.substr(0, space)) + end;
    }
    if (f == "split") {
      List parts;
      for (auto& p : py_split(s, a.get(0, "sep"), int_arg(a, 1, "maxsplit", -1))) parts.emplace_back(std::move(p));
      return Value::make_list(std::move(parts));
    }
    fail("unknown filter '" + f + "'", e);
  }

  // ---- globals --------------------------------------------------------------------------------------------
  const std::unordered_map<std::string, Value>& globals() {
    if (!globals_.empty()) return globals_;
    const auto fn = [&](const char* name, std::function<Value(const Arguments&)> call) {
      globals_[name] = Value(std::make_shared<Function>(Function{name, std::move(call)}));
    };
    fn("namespace", [](const Arguments& a) {
      auto d = std::make_shared<Dict>();
      d->is_namespace = true;
      const auto set = [&](const std::string& k, const Value& v) {
        if (v.holds_namespace) throw Error("namespace(): attribute '" + k + "' would hold a namespace, which xpo does not allow");
        d->set(k, v);
      };
      for (const auto& p : a.positional) {
        if (!p.is_dict()) throw Error("namespace() takes keyword arguments or a dict");
        for (const auto& [k, v] : p.dict().items) set(k, v);
      }
      for (const auto& [k, v] : a.keyword) set(k, v);
      return Value(std::move(d));
    });
    fn("dict", [](const Arguments& a) {
      auto d = std::make_shared<Dict>();
      for (const auto& [k, v] : a.keyword) d->set(k, v);
      return Value(std::move(d));
    });
    fn("raise_exception", [max_bytes = limits_.max_output_bytes](const Arguments& a) -> Value {
      throw Error("raise_exception: " + (a.positional.empty() ? std::string() : to_string(a.positional[0], max_bytes)));
    });
    std::size_t* iterations = &iterations_;
    const std::size_t budget = limits_.max_loop_iterations;
    fn("range", [iterations, budget](const Arguments& a) {
      std::int64_t start = 0, stop = 0, step = 1;
      const auto at = [&](std::size_t i) {
        if (!a.positional[i].is_int()) throw Error("range() arguments must be integers");
        return a.positional[i].as_int();
      };
      if (a.positional.size() == 1) stop = at(0);
      else if (a.positional.size() >= 2) {
        start = at(0);
        stop = at(1);
        if (a.positional.size() >= 3) step = at(2);
      } else {
        throw Error("range() takes 1 to 3 arguments");
      }
      if (step == 0) throw Error("range() step must not be zero");
      // in unsigned arithmetic, which cannot overflow here: the span fits 64 bits, and every item lies in it
      using U = std::uint64_t;
      const U span = step > 0 ? (stop > start ? U(stop) - U(start) : 0) : (start > stop ? U(start) - U(stop) : 0);
      const U stride = step > 0 ? U(step) : U(0) - U(step);
      const U n = span / stride + (span % stride != 0 ? 1 : 0);
      if (n > budget - std::min(budget, *iterations)) {
        throw Error("range() of " + std::to_string(n) + " items exceeds the loop iteration limit");
      }
      List out;
      out.reserve(n);
      for (U i = 0; i < n; ++i) out.emplace_back(static_cast<std::int64_t>(U(start) + i * U(step)));
      return Value::make_list(std::move(out));
    });
    fn("strftime_now", [fixed = now_](const Arguments& a) {
      if (a.positional.empty() || !a.positional[0].is_string()) throw Error("strftime_now(format) needs a format string");
      std::tm local{};
      if (fixed) {
        local = *fixed;
      } else {
        const std::time_t now = std::time(nullptr);
        localtime_r(&now, &local);
      }
      char buf[256];
      const std::size_t n = std::strftime(buf, sizeof buf, a.positional[0].str().c_str(), &local);
      return Value(std::string(buf, n));
    });
    return globals_;
  }

  Limits limits_;
  std::string out_;
  // Scopes chain through `parent`: a for loop's to the scope around it, a macro's to the template's top level
  // (scope 0), a call block's caller() to the place of the call block.
  static constexpr std::size_t kNoScope = static_cast<std::size_t>(-1);
  struct Scope {
    std::unordered_map<std::string, Value> vars;
    std::size_t parent;
  };
  std::vector<Scope> scopes_;
  std::size_t captured_bytes_ = 0;  // text held by the captures being rendered (macros, set and filter blocks)
  int call_depth_ = 0;
  std::optional<std::tm> now_;  // strftime_now's fixed clock, if any
  std::size_t iterations_ = 0;
  std::size_t comparison_steps_left_;
  std::unordered_map<std::string, Value> globals_;
};

}  // namespace detail

// A parsed template; render() may be called any number of times, from several threads.
class Template {
 public:
  // Parses `source`; a syntax error or an unsupported construct throws TemplateError with its line and column.
  explicit Template(std::string source, Options options = {}, Limits limits = {})
      : source_(std::move(source)), limits_(limits) {
    if (source_.size() > limits_.max_template_bytes) {
      throw TemplateError("the template has " + std::to_string(source_.size()) + " bytes, more than the limit of " +
                              std::to_string(limits_.max_template_bytes), 1, 1);
    }
    if (!is_valid_utf8(source_)) throw TemplateError("the template is not valid UTF-8", 1, 1);
    const std::string text = normalized_source(source_);
    detail::Lexer lexer(text, options);
    detail::Parser parser(lexer.run(), limits_);
    body_ = std::make_shared<detail::Body>(parser.parse());
  }

  // Renders with the given variables (name -> value). `now`, when given, is the local time strftime_now() sees
  // (a fixed clock, for reproducible renders); else the system's clock. Errors: TemplateError (line, column).
  [[nodiscard]] std::string render(const Dict& variables, std::optional<std::tm> now = std::nullopt) const {
    const MeterScope meter(limits_.max_value_bytes);
    detail::Renderer renderer(limits_, variables, now);
    return renderer.run(*body_);
  }

  // Renders with variables from a JSON object (nlohmann::ordered_json keeps key order for tojson).
  template <typename Json>
  [[nodiscard]] std::string render_json(const Json& variables, std::optional<std::tm> now = std::nullopt) const {
    const Value v = from_json(variables);
    if (!v.is_dict()) throw Error("template variables must be a JSON object");
    return render(v.dict(), now);
  }

  // The source as Jinja2's lexer reads it (newline_sequence '\n', keep_trailing_newline=False): every line ending
  // (\r\n, \r, \n) becomes '\n', and one newline at the very end is dropped.
  static std::string normalized_source(const std::string& source) {
    std::string out;
    out.reserve(source.size());
    for (std::size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        out += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        out += source[i];
      }
    }
    if (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
  }

  [[nodiscard]] const std::string& source() const noexcept { return source_; }

 private:
  std::string source_;
  Limits limits_;
  std::shared_ptr<const detail::Body> body_;
};

}  // namespace xpo::text::jinja
