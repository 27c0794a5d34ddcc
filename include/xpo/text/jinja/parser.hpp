// xpo/text/jinja/parser.hpp — lexer and parser of the Jinja subset Hugging Face chat templates use (the renderer
// is template.hpp), with transformers' settings: trim_blocks and lstrip_blocks on.
//
// Supported: {{ }}, {% if/elif/else %}, {% for %} (tuple targets, `if` filter, else, loop.* including cycle(),
// changed(), previtem/nextitem, break/continue), {% set %} (names, tuple unpacking, namespace attributes,
// {% set x %}...{% endset %} with or without filters), {% macro %} (defaults, keyword arguments, varargs, kwargs,
// caller()), {% call %}, {% filter %}, {% generation %}, comments, whitespace control ({%- -%} {{- -}} {%+),
// literals (str, int, float, bool, none, list, tuple, dict), arithmetic, `~` and `+`, `%` formatting, comparisons,
// `in`/`not in`, `and`/`or`/`not`, `x if c else y`, `.`/`[]` access and Python slicing, filters, tests, str/dict
// methods (str.format among them), namespace(), range(), raise_exception(), strftime_now(). As Jinja2 with
// keep_trailing_newline=False, line endings are read as '\n' and one trailing newline of the template is dropped.
// Templates are untrusted: nothing reaches files or the environment; loops, comparisons, output, the text of any
// value and the nesting of lists and dicts are bounded; and an unsupported construct is a TemplateError naming its
// line and column — at parse time where it can be. One departure from Jinja: a namespace may not hold another
// namespace, so that no value can contain itself (see value.hpp).
#pragma once

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "xpo/text/jinja/value.hpp"

namespace xpo::text::jinja {

struct Options {
  bool trim_blocks = true;    // drop the first newline after a block tag
  bool lstrip_blocks = true;  // drop spaces and tabs before a block tag at the start of a line
};

// Bounds on what one render may cost. A template exceeding them is an error, not a hang or an OOM.
struct Limits {
  std::size_t max_template_bytes = 1 << 20;
  std::size_t max_output_bytes = 16 << 20;
  std::size_t max_loop_iterations = 1'000'000;  // over the whole render
  std::size_t max_comparison_steps = 10'000'000;  // items visited by ==, `in`, unique, ... over the whole render
  std::size_t max_value_bytes = std::size_t{256} << 20;  // strings made or copied and lists made, over the whole render
  int max_nesting = 128;                        // of expressions and blocks, at parse time
  int max_call_depth = 48;                      // macros calling macros (each call also counts as a loop iteration)
};

namespace detail {

// ---- lexer ------------------------------------------------------------------------------------------------------
enum class Tok { text, var_begin, var_end, block_begin, block_end, name, string, integer, floating, op, end };

struct Token {
  Tok type;
  std::string text;
  int line, column;
};

class Lexer {
 public:
  Lexer(std::string_view src, const Options& options) : src_(src), options_(options) {}

  std::vector<Token> run() {
    std::size_t pos = 0;
    bool strip_next = false;  // a '-' closed the previous tag: drop the whitespace that follows it
    while (pos < src_.size()) {
      std::size_t open = find_open(pos);
      std::size_t text_end = open == std::string_view::npos ? src_.size() : open;
      std::size_t text_begin = pos;
      if (strip_next) {
        while (text_begin < text_end && is_space(src_[text_begin])) ++text_begin;
        strip_next = false;
      }
      char kind = 0, modifier = 0;
      if (open != std::string_view::npos) {
        kind = src_[open + 1];
        modifier = open + 2 < src_.size() ? src_[open + 2] : 0;
        if (modifier == '-') {
          while (text_end > text_begin && is_space(src_[text_end - 1])) --text_end;
        } else if (options_.lstrip_blocks && kind != '{' && modifier != '+') {
          std::size_t k = text_end;
          while (k > text_begin && (src_[k - 1] == ' ' || src_[k - 1] == '\t')) --k;
          const bool at_line_start = k == 0 || src_[k - 1] == '\n';
          if (at_line_start && (k > text_begin || text_begin == 0 || src_[text_begin - 1] == '\n')) text_end = k;
        }
      }
      if (text_end > text_begin) push(Tok::text, std::string(src_.substr(text_begin, text_end - text_begin)), text_begin);
      if (open == std::string_view::npos) break;
      pos = open + 2 + ((modifier == '-' || modifier == '+') ? 1 : 0);
      if (kind == '#') {
        const auto close = src_.find("#}", pos);
        if (close == std::string_view::npos) error("unclosed comment: no '#}' after it", open);
        const bool dash = close > pos && src_[close - 1] == '-';
        pos = close + 2;
        strip_next = dash;
        if (!dash && options_.trim_blocks) pos = skip_newline(pos);
        continue;
      }
      const bool is_block = kind == '%';
      if (is_block && lex_raw(open, pos, strip_next)) continue;
      push(is_block ? Tok::block_begin : Tok::var_begin, "", open);
      pos = lex_tag(pos, is_block, open, strip_next);
    }
    push(Tok::end, "", src_.size());
    return std::move(tokens_);
  }

 private:
  static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

  std::size_t find_open(std::size_t from) const {
    for (std::size_t i = src_.find('{', from); i != std::string_view::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string_view::npos;
  }
  std::size_t skip_newline(std::size_t pos) const {
    if (pos < src_.size() && src_[pos] == '\n') return pos + 1;
    if (pos + 1 < src_.size() && src_[pos] == '\r' && src_[pos + 1] == '\n') return pos + 2;
    return pos;
  }

  std::pair<int, int> where(std::size_t offset) const {
    int line = 1, column = 1;
    for (std::size_t i = 0; i < offset && i < src_.size(); ++i) {
      if (src_[i] == '\n') {
        ++line;
        column = 1;
      } else if ((static_cast<unsigned char>(src_[i]) & 0xC0) != 0x80) {
        ++column;
      }
    }
    return {line, column};
  }
  [[noreturn]] void error(const std::string& what, std::size_t offset) const {
    const auto [l, c] = where(offset);
    throw TemplateError(what, l, c);
  }
  void push(Tok type, std::string text, std::size_t offset) {
    // Line/column are computed incrementally from the previous token's offset.
    for (; cursor_ < offset && cursor_ < src_.size(); ++cursor_) {
      if (src_[cursor_] == '\n') {
        ++line_;
        column_ = 1;
      } else if ((static_cast<unsigned char>(src_[cursor_]) & 0xC0) != 0x80) {
        ++column_;
      }
    }
    tokens_.push_back({type, std::move(text), line_, column_});
  }

  // {% raw %}...{% endraw %} at `open` (`pos` is after its '{%' and modifier): the text between is kept as is. As
  // Jinja2: '-' on the raw tag strips the text's leading whitespace, '-' on endraw its trailing whitespace and the
  // whitespace after it; trim_blocks drops the newline after endraw. Returns false when the tag is not raw.
  bool lex_raw(std::size_t open, std::size_t& pos, bool& strip_next) {
    const auto is_ident = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
    const auto skip_spaces = [&](std::size_t p) {
      while (p < src_.size() && is_space(src_[p])) ++p;
      return p;
    };
    std::size_t p = skip_spaces(pos);
    if (src_.compare(p, 3, "raw") != 0 || (p + 3 < src_.size() && is_ident(src_[p + 3]))) return false;
    p = skip_spaces(p + 3);
    const bool strip_inside = p < src_.size() && src_[p] == '-';
    if (strip_inside) ++p;
    if (src_.compare(p, 2, "%}") != 0) error("expected '%}' after 'raw'", p);
    const std::size_t body = p + 2;
    for (std::size_t q = src_.find("{%", body); q != std::string_view::npos; q = src_.find("{%", q + 2)) {
      std::size_t r = q + 2;
      const bool strip_before = r < src_.size() && src_[r] == '-';
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) ++r;
      r = skip_spaces(r);
      if (src_.compare(r, 6, "endraw") != 0 || (r + 6 < src_.size() && is_ident(src_[r + 6]))) continue;
      r = skip_spaces(r + 6);
      const bool strip_after = r < src_.size() && src_[r] == '-';
      if (strip_after || (r < src_.size() && src_[r] == '+')) ++r;
      if (src_.compare(r, 2, "%}") != 0) error("expected '%}' after 'endraw'", r);
      std::size_t b = body, e = q;
      if (strip_inside) {
        while (b < e && is_space(src_[b])) ++b;
      }
      if (strip_before) {
        while (e > b && is_space(src_[e - 1])) --e;
      } else if (options_.lstrip_blocks && src_[q + 2] != '+') {  // endraw is a block tag: lstrip_blocks applies
        std::size_t k = e;
        while (k > b && (src_[k - 1] == ' ' || src_[k - 1] == '\t')) --k;
        if (k > b && src_[k - 1] == '\n') e = k;
      }
      if (e > b) push(Tok::text, std::string(src_.substr(b, e - b)), b);
      pos = r + 2;
      strip_next = strip_after;
      if (!strip_after && options_.trim_blocks) pos = skip_newline(pos);
      return true;
    }
    error("unclosed raw block: no '{% endraw %}' after it", open);
  }

  // Tokens of one {{ }} or {% %} tag; returns the position after its close.
  std::size_t lex_tag(std::size_t pos, bool is_block, std::size_t open, bool& strip_next) {
    int depth = 0;
    while (true) {
      while (pos < src_.size() && is_space(src_[pos])) ++pos;
      if (pos >= src_.size()) error(is_block ? "unclosed tag: no '%}' after '{%'" : "unclosed expression: no '}}' after '{{'", open);
      const char c = src_[pos];
      const char closer = is_block ? '%' : '}';
      const auto closes_at = [&](std::size_t p) { return p + 1 < src_.size() && src_[p] == closer && src_[p + 1] == '}'; };
      if (depth == 0 && (closes_at(pos) || (c == '-' && closes_at(pos + 1)) || (c == '+' && is_block && closes_at(pos + 1)))) {
        const bool dash = c == '-', plus = c == '+';
        push(is_block ? Tok::block_end : Tok::var_end, "", pos);
        pos += 2 + ((dash || plus) ? 1 : 0);
        strip_next = dash;
        if (is_block && !dash && !plus && options_.trim_blocks) pos = skip_newline(pos);
        return pos;
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        std::size_t e = pos;
        while (e < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
        push(Tok::name, std::string(src_.substr(pos, e - pos)), pos);
        pos = e;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        std::size_t e = pos;
        bool is_float = false;
        while (e < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
        if (e + 1 < src_.size() && src_[e] == '.' && std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
          is_float = true;
          ++e;
          while (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) ++e;
        }
        if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
          std::size_t k = e + 1;
          if (k < src_.size() && (src_[k] == '+' || src_[k] == '-')) ++k;
          if (k < src_.size() && std::isdigit(static_cast<unsigned char>(src_[k]))) {
            is_float = true;
            e = k;
            while (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) ++e;
          }
        }
        std::string digits;
        for (std::size_t k = pos; k < e; ++k) {
          if (src_[k] != '_') digits += src_[k];
        }
        push(is_float ? Tok::floating : Tok::integer, digits, pos);
        pos = e;
      } else if (c == '\'' || c == '"') {
        pos = lex_string(pos);
      } else {
        static const char* kTwo[] = {"==", "!=", "<=", ">=", "//", "**"};
        std::string op(1, c);
        for (const char* two : kTwo) {
          if (src_.compare(pos, 2, two) == 0) op = two;
        }
        if (op.size() == 1 && std::string_view("+-*/%~|.,:()[]{}<>=").find(c) == std::string_view::npos) {
          error(std::string("unexpected character '") + c + "' in a tag", pos);
        }
        if (c == '(' || c == '[' || c == '{') ++depth;
        if (c == ')' || c == ']' || c == '}') --depth;
        push(Tok::op, op, pos);
        pos += op.size();
      }
    }
  }

  std::size_t lex_string(std::size_t pos) {
    const char quote = src_[pos];
    std::string out;
    std::size_t i = pos + 1;
    while (true) {
      if (i >= src_.size()) error("unterminated string literal", pos);
      const char c = src_[i];
      if (c == quote) break;
      if (c == '\\' && i + 1 < src_.size()) {
        const char e = src_[++i];
        switch (e) {
          case 'n': out += '\n'; break;
          case 't': out += '\t'; break;
          case 'r': out += '\r'; break;
          case '0': out += '\0'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'v': out += '\v'; break;
          case 'a': out += '\a'; break;
          case '\\': out += '\\'; break;
          case '\'': out += '\''; break;
          case '"': out += '"'; break;
          case '\n': break;
          case 'x':
          case 'u':
          case 'U': {
            const std::size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            if (i + n >= src_.size()) error("truncated \\" + std::string(1, e) + " escape", i);
            const std::string hex(src_.substr(i + 1, n));
            if (hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) error("bad \\" + std::string(1, e) + " escape", i);
            const auto cp = static_cast<char32_t>(std::stoul(hex, nullptr, 16));
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) error("escape is not a Unicode scalar value", i);
            append_utf8(out, cp);
            i += n;
            break;
          }
          default:
            out += '\\';
            out += e;
        }
        ++i;
        continue;
      }
      out += c;
      ++i;
    }
    push(Tok::string, std::move(out), pos);
    return i + 1;
  }

  std::string_view src_;
  Options options_;
  std::vector<Token> tokens_;
  std::size_t cursor_ = 0;
  int line_ = 1, column_ = 1;
};

// ---- syntax tree ----------------------------------------------------------------------------------------------
struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind { literal, name, attr, item, slice, call, filter, test, unary, binary, cond, list, tuple, dict };
  Kind kind;
  int line = 0, column = 0;
  Value literal;
  std::string name;      // variable / attribute / filter / test name, or the operator
  std::vector<ExprPtr> children;  // operands, elements (dict: key, value, key, value...), call args
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  ExprPtr star_args, star_kwargs;  // call: f(*list, **dict)
  bool negated = false;  // `is not`
  std::vector<bool> has_slice_part;  // slice: which of start/stop/step were given
};

struct Node;
using Body = std::vector<std::unique_ptr<Node>>;

// The name a {% filter %} block's (or a filtered {% set %} block's) rendered body has inside its filter chain; no
// template can spell it, so it cannot clash with a variable.
inline constexpr const char* kBlockBodyName = "\x01block body";

struct Node {
  enum class Kind { text, output, if_, for_, set, set_block, break_, continue_, block, macro, call_block, filter_block };
  Kind kind;
  int line = 0, column = 0;
  std::string text;                 // text; set: variable name; macro: its name
  std::string attr;                 // set: namespace attribute
  std::vector<std::string> targets;  // for: loop variables; set: the names a tuple is unpacked into
  std::vector<std::pair<std::string, ExprPtr>> params;  // macro / call block: parameters and defaults (null: none)
  bool uses_caller = false, uses_varargs = false, uses_kwargs = false;  // macro: names its body reads
  ExprPtr expr;                     // output / set value / for iterable
  ExprPtr filter;                   // for ... if filter; filter block / filtered set block: the filter chain
  std::vector<std::pair<ExprPtr, Body>> branches;  // if / elif
  Body body, else_body;
};

// ---- parser ---------------------------------------------------------------------------------------------------
inline const std::set<std::string, std::less<>>& known_filters() {
  static const std::set<std::string, std::less<>> f = {
      "abs", "attr", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape", "first", "float", "format",
      "forceescape", "indent", "int",
      "items", "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace",
      "reverse", "round", "safe", "select", "selectattr", "sort", "split", "string", "strip", "sum", "title",
      "tojson", "trim", "truncate", "unique", "upper", "wordcount"};
  return f;
}
inline const std::set<std::string, std::less<>>& known_tests() {
  static const std::set<std::string, std::less<>> t = {
      "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "even", "false", "float", "ge", "gt",
      "greaterthan", "in", "integer", "iterable", "le", "lower", "lt", "lessthan", "mapping", "ne", "none",
      "number", "odd", "sameas", "sequence", "string", "true", "undefined", "upper", "=="};
  return t;
}

class Parser {
 public:
  Parser(std::vector<Token> tokens, const Limits& limits) : t_(std::move(tokens)), limits_(limits) {}

  Body parse() {
    Body body = parse_body({});
    if (peek().type != Tok::end) fail("unexpected '{% " + block_name() + " %}' without an opening tag");
    return body;
  }

 private:
  const Token& peek(std::size_t k = 0) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  const Token& next() {
    const Token& t = t_[i_];
    if (i_ + 1 < t_.size()) ++i_;
    return t;
  }
  [[noreturn]] void fail(const std::string& what, const Token* at = nullptr) const {
    const Token& t = at != nullptr ? *at : peek();
    throw TemplateError(what, t.line, t.column);
  }
  bool is_op(const char* op, std::size_t k = 0) const { return peek(k).type == Tok::op && peek(k).text == op; }
  bool is_name(const char* name, std::size_t k = 0) const { return peek(k).type == Tok::name && peek(k).text == name; }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(std::string("expected '") + op + "'" + found());
    next();
  }
  void expect(Tok type, const char* what) {
    if (peek().type != type) fail(std::string("expected ") + what + found());
    next();
  }
  std::string found() const {
    const auto& t = peek();
    switch (t.type) {
      case Tok::end: return ", found the end of the template";
      case Tok::block_end: return ", found '%}'";
      case Tok::var_end: return ", found '}}'";
      case Tok::text: return ", found template text";
      default: return ", found '" + t.text + "'";
    }
  }
  std::string block_name() const { return peek(1).type == Tok::name ? peek(1).text : std::string("?"); }

  struct DepthGuard {
    Parser& p;
    explicit DepthGuard(Parser& parser) : p(parser) {
      if (++p.depth_ > p.limits_.max_nesting) p.fail("nesting deeper than " + std::to_string(p.limits_.max_nesting) + " levels");
    }
    ~DepthGuard() { --p.depth_; }
  };

  // Parses nodes until a block tag whose name is in `stop` (left unconsumed: peek() is its '{%').
  Body parse_body(const std::vector<std::string>& stop) {
    DepthGuard guard(*this);
    Body body;
    while (true) {
      const Token& t = peek();
      if (t.type == Tok::end) {
        if (!stop.empty()) fail("unclosed block: expected {% " + stop.back() + " %} before the end of the template");
        return body;
      }
      if (t.type == Tok::text) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::text;
        n->text = next().text;
        body.push_back(std::move(n));
      } else if (t.type == Tok::var_begin) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::output;
        n->line = t.line;
        n->column = t.column;
        next();
        n->expr = parse_expression();
        expect(Tok::var_end, "'}}'");
        body.push_back(std::move(n));
      } else if (t.type == Tok::block_begin) {
        if (peek(1).type != Tok::name) fail("expected a tag name after '{%'", &peek(1));
        const std::string name = peek(1).text;
        if (std::find(stop.begin(), stop.end(), name) != stop.end()) return body;
        body.push_back(parse_statement());
      } else {
        fail("unexpected token" + found());
      }
    }
  }

  std::unique_ptr<Node> make(Node::Kind kind, const Token& at) {
    auto n = std::make_unique<Node>();
    n->kind = kind;
    n->line = at.line;
    n->column = at.column;
    return n;
  }

  std::unique_ptr<Node> parse_statement() {
    const Token& begin = next();  // {%
    const Token& name_tok = next();
    const std::string name = name_tok.text;
    if (name == "if") {
      auto n = make(Node::Kind::if_, begin);
      auto cond = parse_expression();
      expect(Tok::block_end, "'%}'");
      n->branches.emplace_back(std::move(cond), parse_body({"elif", "else", "endif"}));
      while (true) {
        next();  // {%
        const std::string tag = next().text;
        if (tag == "elif") {
          auto c = parse_expression();
          expect(Tok::block_end, "'%}'");
          n->branches.emplace_back(std::move(c), parse_body({"elif", "else", "endif"}));
        } else if (tag == "else") {
          expect(Tok::block_end, "'%}'");
          n->else_body = parse_body({"endif"});
        } else {  // endif
          expect(Tok::block_end, "'%}'");
          return n;
        }
      }
    }
    if (name == "for") {
      auto n = make(Node::Kind::for_, begin);
      const bool parenthesised = is_op("(");
      if (parenthesised) next();
      do {
        if (peek().type != Tok::name) fail("expected a loop variable name" + found());
        n->targets.push_back(next().text);
        if (!is_op(",")) break;
        next();
      } while (!(parenthesised && is_op(")")));
      if (parenthesised) expect_op(")");
      if (!is_name("in")) fail("expected 'in' in the for tag" + found());
      next();
      n->expr = parse_or_tuple(/*allow_cond=*/false);
      if (is_name("if")) {
        next();
        n->filter = parse_expression();
      }
      if (is_name("recursive")) fail("recursive for loops are not supported");
      expect(Tok::block_end, "'%}'");
      ++loop_depth_;
      n->body = parse_body({"else", "endfor"});
      --loop_depth_;
      next();
      if (next().text == "else") {
        expect(Tok::block_end, "'%}'");
        n->else_body = parse_body({"endfor"});
        next();
        next();
      }
      expect(Tok::block_end, "'%}'");
      return n;
    }
    if (name == "set") {
      if (is_op("(")) {  // {% set (a, b) = ... %}
        next();
        auto n = make(Node::Kind::set, begin);
        while (!is_op(")")) {
          if (peek().type != Tok::name) fail("expected a variable name" + found());
          n->targets.push_back(next().text);
          if (!is_op(",")) break;
          next();
        }
        expect_op(")");
        expect_op("=");
        n->expr = parse_or_tuple(true);
        expect(Tok::block_end, "'%}'");
        return n;
      }
      if (peek().type != Tok::name) fail("expected a variable name after 'set'" + found());
      const std::string var = next().text;
      std::string attr;
      if (is_op(",")) {  // {% set a, b = ... %}: unpacking
        auto n = make(Node::Kind::set, begin);
        n->targets.push_back(var);
        while (is_op(",")) {
          next();
          if (is_op("=")) break;
          if (peek().type != Tok::name) fail("expected a variable name" + found());
          n->targets.push_back(next().text);
        }
        expect_op("=");
        n->expr = parse_or_tuple(true);
        expect(Tok::block_end, "'%}'");
        return n;
      }
      if (is_op(".")) {
        next();
        if (peek().type != Tok::name) fail("expected an attribute name" + found());
        attr = next().text;
      }
      if (is_op("=")) {
        next();
        auto n = make(Node::Kind::set, begin);
        n->text = var;
        n->attr = attr;
        n->expr = parse_or_tuple(true);
        expect(Tok::block_end, "'%}'");
        return n;
      }
      if (!attr.empty()) fail("expected '=' after the namespace attribute" + found());
      auto n = make(Node::Kind::set_block, begin);
      if (is_op("|")) {  // {% set x | upper %}...{% endset %}
        next();
        n->filter = parse_filter_chain();
      }
      expect(Tok::block_end, "'%}'");
      n->text = var;
      n->body = parse_body({"endset"});
      next();
      next();
      expect(Tok::block_end, "'%}'");
      return n;
    }
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) fail("'{% " + name + " %}' outside a for loop", &name_tok);
      auto n = make(name == "break" ? Node::Kind::break_ : Node::Kind::continue_, begin);
      expect(Tok::block_end, "'%}'");
      return n;
    }
    if (name == "generation") {  // transformers' assistant-mask marker: renders its body
      auto n = make(Node::Kind::block, begin);
      expect(Tok::block_end, "'%}'");
      n->body = parse_body({"endgeneration"});
      next();
      next();
      expect(Tok::block_end, "'%}'");
      return n;
    }
    if (name == "macro") {
      auto n = make(Node::Kind::macro, begin);
      if (peek().type != Tok::name) fail("expected a macro name" + found());
      n->text = next().text;
      parse_params(*n);
      expect(Tok::block_end, "'%}'");
      const int saved_loops = loop_depth_;
      loop_depth_ = 0;  // break/continue may not leave a macro
      macros_.push_back(n.get());
      n->body = parse_body({"endmacro"});
      macros_.pop_back();
      loop_depth_ = saved_loops;
      next();
      next();
      expect(Tok::block_end, "'%}'");
      return n;
    }
    if (name == "call") {
      auto n = make(Node::Kind::call_block, begin);
      if (is_op("(")) parse_params(*n);
      n->expr = parse_expression();
      if (n->expr->kind != Expr::Kind::call) fail("expected a call after 'call'", &name_tok);
      expect(Tok::block_end, "'%}'");
      const int saved_loops = loop_depth_;
      loop_depth_ = 0;
      macros_.push_back(n.get());  // the body is the caller() macro
      n->body = parse_body({"endcall"});
      macros_.pop_back();
      loop_depth_ = saved_loops;
      next();
      next();
      expect(Tok::block_end, "'%}'");
      return n;
    }
    if (name == "filter") {
      auto n = make(Node::Kind::filter_block, begin);
      n->filter = parse_filter_chain();
      expect(Tok::block_end, "'%}'");
      n->body = parse_body({"endfilter"});
      next();
      next();
      expect(Tok::block_end, "'%}'");
      return n;
    }
    static const std::set<std::string, std::less<>> kEnders = {"endif",    "endfor",  "elif",      "else",         "endset",
                                                               "endmacro", "endcall", "endfilter", "endgeneration"};
    if (kEnders.count(name) != 0) fail("'{% " + name + " %}' without a matching opening tag", &name_tok);
    fail("unsupported tag '" + name + "' (supported: if, for, set, macro, call, filter, break, continue, generation)",
         &name_tok);
  }

  // `(a, b=default, ...)` of a macro or a call block.
  void parse_params(Node& n) {
    expect_op("(");
    while (!is_op(")")) {
      if (peek().type != Tok::name) fail("expected a parameter name" + found());
      const Token& param = next();
      for (const auto& [existing, _] : n.params) {
        if (existing == param.text) fail("duplicate parameter '" + param.text + "'", &param);
      }
      ExprPtr fallback;
      if (is_op("=")) {
        next();
        fallback = parse_conditional();
      } else if (!n.params.empty() && n.params.back().second) {
        fail("non-default argument follows default argument", &param);
      }
      n.params.emplace_back(param.text, std::move(fallback));
      if (!is_op(",")) break;
      next();
    }
    expect_op(")");
  }

  // `name(args) | name2 ...` of a {% filter %} block, applied to the block's body (kBlockBodyName).
  ExprPtr parse_filter_chain() {
    auto body = make_expr(Expr::Kind::name, peek());
    body->name = kBlockBodyName;
    auto e = parse_one_filter(std::move(body));
    while (is_op("|")) {
      next();
      e = parse_one_filter(std::move(e));
    }
    return e;
  }

  ExprPtr make_expr(Expr::Kind kind, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = at.line;
    e->column = at.column;
    return e;
  }

  ExprPtr parse_expression() { return parse_or_tuple(true); }

  // An expression, or an unparenthesised tuple `a, b` (for `set x = a, b` and for-loop iterables).
  ExprPtr parse_or_tuple(bool allow_cond) {
    const Token& at = peek();
    auto first = allow_cond ? parse_conditional() : parse_or();
    if (!is_op(",")) return first;
    auto tuple = make_expr(Expr::Kind::tuple, at);
    tuple->children.push_back(std::move(first));
    while (is_op(",")) {
      next();
      if (peek().type == Tok::block_end || peek().type == Tok::var_end) break;
      tuple->children.push_back(allow_cond ? parse_conditional() : parse_or());
    }
    return tuple;
  }

  ExprPtr parse_conditional() {
    DepthGuard guard(*this);
    const Token& at = peek();
    auto value = parse_or();
    if (!is_name("if")) return value;
    next();
    auto e = make_expr(Expr::Kind::cond, at);
    auto cond = parse_or();
    ExprPtr otherwise;
    if (is_name("else")) {
      next();
      otherwise = parse_conditional();
    }
    e->children.push_back(std::move(cond));
    e->children.push_back(std::move(value));
    e->children.push_back(std::move(otherwise));
    return e;
  }

  ExprPtr binary(std::string op, ExprPtr l, ExprPtr r, const Token& at) {
    auto e = make_expr(Expr::Kind::binary, at);
    e->name = std::move(op);
    e->children.push_back(std::move(l));
    e->children.push_back(std::move(r));
    return e;
  }

  ExprPtr parse_or() {
    auto l = parse_and();
    while (is_name("or")) {
      const Token& at = next();
      l = binary("or", std::move(l), parse_and(), at);
    }
    return l;
  }
  ExprPtr parse_and() {
    auto l = parse_not();
    while (is_name("and")) {
      const Token& at = next();
      l = binary("and", std::move(l), parse_not(), at);
    }
    return l;
  }
  ExprPtr parse_not() {
    if (is_name("not")) {
      DepthGuard guard(*this);
      const Token& at = next();
      auto e = make_expr(Expr::Kind::unary, at);
      e->name = "not";
      e->children.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    auto l = parse_math1();
    while (true) {
      const Token& at = peek();
      std::string op;
      if (at.type == Tok::op && (at.text == "==" || at.text == "!=" || at.text == "<" || at.text == ">" ||
                                 at.text == "<=" || at.text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        next();
        next();
        op = "not in";
      } else {
        return l;
      }
      auto r = parse_math1();
      auto e = make_expr(Expr::Kind::binary, at);
      e->name = op;
      e->children.push_back(std::move(l));
      e->children.push_back(std::move(r));
      l = std::move(e);
    }
  }
  ExprPtr parse_math1() {
    auto l = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& at = next();
      l = binary(at.text, std::move(l), parse_concat(), at);
    }
    return l;
  }
  ExprPtr parse_concat() {
    auto l = parse_math2();
    while (is_op("~")) {
      const Token& at = next();
      l = binary("~", std::move(l), parse_math2(), at);
    }
    return l;
  }
  ExprPtr parse_math2() {
    auto l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& at = next();
      l = binary(at.text, std::move(l), parse_pow(), at);
    }
    return l;
  }
  ExprPtr parse_pow() {
    auto l = parse_unary();
    while (is_op("**")) {
      const Token& at = next();
      l = binary("**", std::move(l), parse_unary(), at);
    }
    return l;
  }
  // As Jinja2: a sign applies to what follows it before any filter or test, so `-1|abs` is (-1)|abs.
  ExprPtr parse_unary(bool with_filters = true) {
    DepthGuard guard(*this);
    if (is_op("-") || is_op("+")) {
      const Token& at = next();
      auto e = make_expr(Expr::Kind::unary, at);
      e->name = at.text;
      e->children.push_back(parse_unary(false));
      return with_filters ? parse_filters(std::move(e)) : std::move(e);
    }
    auto e = parse_postfix(parse_primary());
    return with_filters ? parse_filters(std::move(e)) : std::move(e);
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) {  // f(*items) / f(**mapping), after the other arguments as in Jinja2
        const bool mapping = next().text == "**";
        ExprPtr& slot = mapping ? e.star_kwargs : e.star_args;
        if (slot) fail(std::string("only one ") + (mapping ? "'**'" : "'*'") + " argument is allowed");
        slot = parse_conditional();
      } else if (e.star_args || e.star_kwargs) {
        fail("an argument after '*' or '**' arguments");
      } else if (peek().type == Tok::name && is_op("=", 1)) {
        std::string key = next().text;
        next();
        e.kwargs.emplace_back(std::move(key), parse_conditional());
      } else {
        if (!e.kwargs.empty()) fail("positional argument after a keyword argument");
        e.children.push_back(parse_conditional());
      }
      if (!is_op(",")) break;
      next();
    }
    expect_op(")");
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      const Token& at = peek();
      if (is_op(".")) {
        next();
        if (peek().type != Tok::name && peek().type != Tok::integer) fail("expected an attribute name after '.'" + found());
        auto a = make_expr(Expr::Kind::attr, at);
        a->name = next().text;
        a->children.push_back(std::move(e));
        e = std::move(a);
      } else if (is_op("[")) {
        next();
        auto s = make_expr(Expr::Kind::item, at);
        s->children.push_back(std::move(e));
        std::vector<ExprPtr> parts(3);
        std::vector<bool> given(3, false);
        int part = 0;
        bool is_slice = false;
        while (!is_op("]")) {
          if (is_op(":")) {
            next();
            is_slice = true;
            if (++part > 2) fail("a slice has at most two ':'");
            continue;
          }
          parts[static_cast<std::size_t>(part)] = parse_conditional();
          given[static_cast<std::size_t>(part)] = true;
          if (!is_op(":") && !is_op("]")) fail("expected ']' or ':'" + found());
        }
        next();
        if (is_slice) {
          s->kind = Expr::Kind::slice;
          for (auto& p : parts) s->children.push_back(std::move(p));
          s->has_slice_part = given;
        } else {
          if (!given[0]) fail("empty subscript", &at);
          s->children.push_back(std::move(parts[0]));
        }
        e = std::move(s);
      } else if (is_op("(")) {
        auto c = make_expr(Expr::Kind::call, at);
        c->line = e->line;  // errors of a call point at what is called
        c->column = e->column;
        c->children.push_back(std::move(e));
        parse_call_args(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  // A filter's name and arguments (after its '|'), applied to `e`.
  ExprPtr parse_one_filter(ExprPtr e) {
    if (peek().type != Tok::name) fail("expected a filter name after '|'" + found());
    const Token& name = next();
    if (known_filters().count(name.text) == 0) fail("unknown filter '" + name.text + "'", &name);
    auto f = make_expr(Expr::Kind::filter, name);
    f->name = name.text;
    f->children.push_back(std::move(e));
    if (is_op("(")) parse_call_args(*f);
    return f;
  }

  ExprPtr parse_filters(ExprPtr e) {
    while (true) {
      const Token& at = peek();
      if (is_op("|")) {
        next();
        e = parse_one_filter(std::move(e));
      } else if (is_name("is")) {
        next();
        auto t = make_expr(Expr::Kind::test, at);
        if (is_name("not")) {
          next();
          t->negated = true;
        }
        const Token& name = peek();
        std::string test;
        if (name.type == Tok::name) test = name.text;
        else if (name.type == Tok::op && name.text == "==") test = "==";
        if (test == "none" || test == "true" || test == "false" || test == "True" || test == "False" || test == "None") {
          std::string lower = test;
          std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
          test = lower;
        }
        if (known_tests().count(test) == 0) fail("unknown test '" + name.text + "'", &name);
        next();
        t->name = test;
        t->children.push_back(std::move(e));
        if (is_op("(")) {
          parse_call_args(*t);
        } else if (peek().type == Tok::string || peek().type == Tok::integer || peek().type == Tok::floating ||
                   (peek().type == Tok::name && !is_name("and") && !is_name("or") && !is_name("else") &&
                    !is_name("if") && !is_name("in") && !is_name("not") && !is_name("is"))) {
          t->children.push_back(parse_postfix(parse_primary()));  // `is divisibleby 3`, `is sameas x`
        }
        e = std::move(t);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_primary() {
    DepthGuard guard(*this);
    const Token& t = peek();
    switch (t.type) {
      case Tok::string: {
        auto e = make_expr(Expr::Kind::literal, t);
        std::string s = next().text;
        while (peek().type == Tok::string) s += next().text;  // adjacent literals concatenate
        e->literal = std::move(s);
        return e;
      }
      case Tok::integer: {
        auto e = make_expr(Expr::Kind::literal, t);
        try {
          e->literal = static_cast<std::int64_t>(std::stoll(next().text));
        } catch (const std::exception&) {
          fail("integer literal out of range", &t);
        }
        return e;
      }
      case Tok::floating: {
        auto e = make_expr(Expr::Kind::literal, t);
        e->literal = std::strtod(next().text.c_str(), nullptr);  // as Python: 1e999 is inf, 1e-999 is 0.0
        return e;
      }
      case Tok::name: {
        auto e = make_expr(Expr::Kind::literal, t);
        const std::string& n = next().text;
        if (n == "true" || n == "True") e->literal = true;
        else if (n == "false" || n == "False") e->literal = false;
        else if (n == "none" || n == "None") e->literal = None{};
        else {
          e->kind = Expr::Kind::name;
          e->name = n;
          if (!macros_.empty()) {  // what a macro's body reads decides which extra arguments it takes
            Node& m = *macros_.back();
            if (n == "caller") m.uses_caller = true;
            if (n == "varargs") m.uses_varargs = true;
            if (n == "kwargs") m.uses_kwargs = true;
          }
        }
        return e;
      }
      case Tok::op:
        if (t.text == "(") {
          next();
          if (is_op(")")) {
            next();
            return make_expr(Expr::Kind::tuple, t);
          }
          auto inner = parse_conditional();
          if (is_op(",")) {
            auto tuple = make_expr(Expr::Kind::tuple, t);
            tuple->children.push_back(std::move(inner));
            while (is_op(",")) {
              next();
              if (is_op(")")) break;
              tuple->children.push_back(parse_conditional());
            }
            inner = std::move(tuple);
          }
          expect_op(")");
          return inner;
        }
        if (t.text == "[") {
          next();
          auto list = make_expr(Expr::Kind::list, t);
          while (!is_op("]")) {
            list->children.push_back(parse_conditional());
            if (!is_op(",")) break;
            next();
          }
          expect_op("]");
          return list;
        }
        if (t.text == "{") {
          next();
          auto dict = make_expr(Expr::Kind::dict, t);
          while (!is_op("}")) {
            dict->children.push_back(parse_conditional());
            expect_op(":");
            dict->children.push_back(parse_conditional());
            if (!is_op(",")) break;
            next();
          }
          expect_op("}");
          return dict;
        }
        break;
      default: break;
    }
    fail("expected an expression" + found());
  }

  std::vector<Token> t_;
  std::size_t i_ = 0;
  Limits limits_;
  int depth_ = 0;
  int loop_depth_ = 0;  // for bodies being parsed: where break/continue are allowed
  std::vector<Node*> macros_;  // the macro (or call block) bodies being parsed, innermost last
};

}  // namespace detail

}  // namespace xpo::text::jinja

