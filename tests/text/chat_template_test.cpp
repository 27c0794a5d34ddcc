// Chat templates: every conversation of $XPO_FIXTURES_DIR/tokenizers/*/chat_cases.jsonl renders byte-identically
// and encodes to the golden ids; every case of $XPO_FIXTURES_DIR/realworld/*/chat_cases.jsonl (real model families)
// renders as Python's Jinja2 did or raises where it raised; the Jinja subset's semantics (whitespace control, loops,
// namespaces, macros, call and filter blocks, formatting, Undefined, filters, tests, slicing) against Jinja2's
// behaviour; malformed and hostile templates; messages of any shape; prompt preparation.
#include <xpo/text/chat.hpp>

#include <gtest/gtest.h>

#include <ctime>
#include <fstream>
#include <iterator>
#include <optional>

#include "support/fixtures.hpp"

namespace {

using nlohmann::ordered_json;
using xpo::text::ChatOptions;
using xpo::text::ChatTemplate;
using xpo::text::Tokenizer;
using xpo::text::jinja::Template;
using xpo::text::jinja::TemplateError;

std::string render(const std::string& source, const ordered_json& vars = ordered_json::object()) {
  return Template(source).render_json(vars);
}

const Tokenizer& qwen() {
  static const Tokenizer t = Tokenizer::from_pretrained(xpo::test::fixture_path("tokenizers/qwen"));
  return t;
}

// Reads a JSONL fixture keeping key order (messages are rendered; tojson would see the order).
std::vector<ordered_json> read_ordered_jsonl(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  std::vector<ordered_json> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") != std::string::npos) rows.push_back(ordered_json::parse(line));
  }
  return rows;
}

TEST(ChatTemplateParity, EveryGoldenConversation) {
  std::size_t folders = 0;
  for (const auto& e : std::filesystem::directory_iterator(xpo::test::fixture_path("tokenizers"))) {
    const auto cases_path = e.path() / "chat_cases.jsonl";
    if (!std::filesystem::exists(cases_path)) continue;
    ++folders;
    const auto tok = Tokenizer::from_pretrained(e.path());
    const auto chat = ChatTemplate::of(tok);
    const auto cases = read_ordered_jsonl(cases_path);
    ASSERT_FALSE(cases.empty()) << cases_path;
    for (const auto& c : cases) {
      const auto id = c.at("id").get<std::string>();
      ChatOptions options;
      options.add_generation_prompt = c.at("add_generation_prompt").get<bool>();
      if (c.contains("template_kwargs")) options.template_kwargs = c.at("template_kwargs");
      const std::string text = chat.render(c.at("messages"), tok.special_tokens(), options);
      EXPECT_EQ(text, c.at("rendered_text").get<std::string>()) << id;
      EXPECT_EQ(tok.encode(text, false), c.at("ids").get<std::vector<xpo::text::TokenId>>()) << id;
    }
  }
  EXPECT_GT(folders, 0U) << "no tokenizers/*/chat_cases.jsonl in the fixture set";
}

// ---- real model families: $XPO_FIXTURES_DIR/realworld/*/chat_cases.jsonl ---------------------------------------

// The chat template of a model folder, as transformers finds it: chat_template.jinja, else tokenizer_config.json's
// "chat_template" (a string, or a list of named templates of which "default" is used).
std::string folder_chat_template(const std::filesystem::path& folder) {
  if (std::filesystem::exists(folder / "chat_template.jinja")) {
    std::ifstream in(folder / "chat_template.jinja", std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  std::ifstream in(folder / "tokenizer_config.json");
  const auto config = ordered_json::parse(in);
  const auto& t = config.at("chat_template");
  if (t.is_string()) return t.get<std::string>();
  for (const auto& named : t) {
    if (named.at("name") == "default") return named.at("template").get<std::string>();
  }
  throw std::runtime_error("no default chat template in " + folder.string());
}

// The special tokens tokenizer_config.json names (a string, or an AddedToken object's "content").
xpo::text::SpecialTokens folder_special_tokens(const std::filesystem::path& folder) {
  std::ifstream in(folder / "tokenizer_config.json");
  const auto config = ordered_json::parse(in);
  const auto token = [&](const char* key) -> std::optional<std::string> {
    if (!config.contains(key)) return std::nullopt;
    const auto& v = config.at(key);
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content")) return v.at("content").get<std::string>();
    return std::nullopt;
  };
  xpo::text::SpecialTokens special;
  special.bos_token = token("bos_token");
  special.eos_token = token("eos_token");
  special.unk_token = token("unk_token");
  special.pad_token = token("pad_token");
  if (config.contains("additional_special_tokens")) {
    for (const auto& v : config.at("additional_special_tokens")) {
      special.additional.push_back(v.is_string() ? v.get<std::string>() : v.at("content").get<std::string>());
    }
  }
  return special;
}

// "2025-08-05T12:00:00" as a broken-down local time (weekday and day of the year filled in).
std::tm parse_fixed_now(const std::string& iso) {
  std::tm t{};
  const char* end = strptime(iso.c_str(), "%Y-%m-%dT%H:%M:%S", &t);
  if (end == nullptr) throw std::runtime_error("bad fixed_now: " + iso);
  const std::time_t seconds = timegm(&t);
  std::tm full{};
  gmtime_r(&seconds, &full);
  return full;
}

TEST(ChatTemplateRealworld, EveryCaseOfEveryFamily) {
  const auto root = xpo::test::fixture_path("realworld");
  std::size_t folders = 0, cases_run = 0;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    const auto cases_path = e.path() / "chat_cases.jsonl";
    if (!std::filesystem::exists(cases_path)) continue;
    ++folders;
    SCOPED_TRACE(e.path().filename().string());
    std::optional<ChatTemplate> chat;
    try {
      chat.emplace(folder_chat_template(e.path()), xpo::text::jinja::Limits{});
    } catch (const std::exception& err) {
      ADD_FAILURE() << e.path() << ": the template does not parse: " << err.what();
      continue;
    }
    const auto special = folder_special_tokens(e.path());
    const auto cases = read_ordered_jsonl(cases_path);
    ASSERT_FALSE(cases.empty()) << cases_path;
    for (const auto& c : cases) {
      const auto id = c.at("id").get<std::string>();
      ChatOptions options;
      options.add_generation_prompt = c.value("add_generation_prompt", false);
      options.continue_final_message = c.contains("continue_final_message") && c.at("continue_final_message").is_boolean() &&
                                       c.at("continue_final_message").get<bool>();
      if (c.contains("template_kwargs") && c.at("template_kwargs").is_object()) options.template_kwargs = c.at("template_kwargs");
      if (c.contains("fixed_now")) options.now = parse_fixed_now(c.at("fixed_now").get<std::string>());
      const auto& reference = c.at("reference");
      ++cases_run;
      if (reference.contains("text")) {
        try {
          EXPECT_EQ(chat->render(c.at("messages"), special, options), reference.at("text").get<std::string>()) << id;
        } catch (const std::exception& err) {
          ADD_FAILURE() << id << ": Jinja2 renders it, xpo raised: " << err.what();
        }
      } else {
        EXPECT_THROW((void)chat->render(c.at("messages"), special, options), xpo::Error)
            << id << ": Jinja2 raised " << reference.at("error");
      }
    }
  }
  EXPECT_GT(folders, 0U) << "no realworld/*/chat_cases.jsonl in the fixture set";
  EXPECT_GT(cases_run, 0U);
}

// ---- Jinja semantics (expected strings follow Jinja2's documented rules) --------------------------------------

TEST(Jinja, WhitespaceControlAndBlockTrimming) {
  // trim_blocks drops the newline after a block tag; lstrip_blocks the indentation before it.
  EXPECT_EQ(render("{% if true %}\n  yes\n{% endif %}\nend"), "  yes\nend");
  EXPECT_EQ(render("  {% if true %}x{% endif %}"), "x");
  EXPECT_EQ(render("a  {% if true %}x{% endif %}"), "a  x");  // not at a line start: kept
  EXPECT_EQ(render("a\n    {%+ if true %}x{% endif %}"), "a\n    x");  // '+' disables lstrip
  EXPECT_EQ(render("a   {{- 'b' -}}   \n c"), "abc");
  EXPECT_EQ(render("a\n{%- if true -%}\n\n b {%- endif %}"), "ab");
  EXPECT_EQ(render("{{ 'x' }}\n\n"), "x\n");  // trim_blocks does not apply to {{ }}; the last newline goes
  EXPECT_EQ(render("a{# note #}\nb"), "ab");
  EXPECT_EQ(render("{% if true +%}\nx{% endif %}"), "\nx");
}

TEST(Jinja, LoopsNamespacesAndScoping) {
  ordered_json vars = {{"xs", {"a", "b", "c"}}};
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}{{ x }}{% if not loop.last %},{% endif %}{% endfor %}", vars), "1a,2b,3c");
  EXPECT_EQ(render("{% for x in xs[::-1] %}{{ loop.index0 }}{{ x }}{{ loop.length }}{% endfor %}", vars), "0c31b32a3");
  EXPECT_EQ(render("{% for x in xs if x != 'b' %}{{ x }}{% else %}none{% endfor %}", vars), "ac");
  EXPECT_EQ(render("{% for x in [] %}{{ x }}{% else %}none{% endfor %}"), "none");
  // set inside a loop does not leak; a namespace carries the value out.
  EXPECT_EQ(render("{% set n = 0 %}{% for x in xs %}{% set n = n + 1 %}{% endfor %}{{ n }}", vars), "0");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for x in xs %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}", vars), "3");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
  EXPECT_EQ(render("{% for x in range(5) %}{% if x == 3 %}{% break %}{% endif %}{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% endfor %}"), "02");
  EXPECT_EQ(render("{% set x %}in{{ 1 + 1 }}{% endset %}[{{ x }}]"), "[in2]");
}

TEST(Jinja, ExpressionsFiltersAndTests) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 1 / 2 }} {{ 2 ** 10 }}"), "7 3 -4 1 2 0.5 1024");
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none }} {{ 'a' + 'b' }} {{ [1] + [2] }} {{ 'ab' * 2 }}"), "a1None ab [1, 2] abab");
  EXPECT_EQ(render("{{ 1 if false }}|{{ 'y' if 1 < 2 else 'n' }}|{{ 0 or 'z' }}|{{ 1 and 2 }}"), "|y|z|2");
  EXPECT_EQ(render("{{ 'b' in 'abc' }} {{ 2 not in [1, 2] }} {{ 'k' in {'k': 1} }}"), "True False True");
  EXPECT_EQ(render("{{ ' hi '|trim }}|{{ 'ab'|upper }}|{{ 'hello world'|capitalize }}|{{ [1,2,3]|length }}|{{ 'héllo'|length }}"),
            "hi|AB|Hello world|3|5");
  EXPECT_EQ(render("{{ [1,2,3]|first }}{{ [1,2,3]|last }}|{{ ['a','b']|join('-') }}|{{ 'a.b.c'|replace('.', '/') }}"), "13|a-b|a/b/c");
  EXPECT_EQ(render("{{ undefined_thing|default('d') }}|{{ ''|default('d', true) }}|{{ 'x'|default('d') }}"), "d|d|x");
  EXPECT_EQ(render("{{ {'b': [1, 2.5, none, true], 'a': 'q\"\\n'}|tojson }}"), R"({"b": [1, 2.5, null, true], "a": "q\"\n"})");
  EXPECT_EQ(render("{{ {'a': [1]}|tojson(indent=2) }}"), "{\n  \"a\": [\n    1\n  ]\n}");
  EXPECT_EQ(render("{{ 'a,b,,c'.split(',') }} {{ '  a  b '.split() }} {{ 'xxhixx'.strip('x') }} {{ '\\n\\nhi'.lstrip('\\n') }}"),
            "['a', 'b', '', 'c'] ['a', 'b'] hi hi");
  EXPECT_EQ(render("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'a</think>b'.split('</think>')[-1] }}"), "True True b");
  EXPECT_EQ(render("{{ 'héllo'[1] }}{{ 'héllo'[-1] }}{{ 'héllo'[1:3] }}{{ [1,2,3,4][::2] }}{{ [1,2,3][-2:] }}"), "éoél[1, 3][2, 3]");
  EXPECT_EQ(render("{{ x is defined }} {{ none is none }} {{ 'a' is string }} {{ {} is mapping }} {{ false is false }} {{ 0 is false }} {{ 3 is odd }} {{ x is not defined }}"),
            "False True True True True False True True");
  EXPECT_EQ(render("{{ m.role }}|{{ m['content'] }}|{{ m.missing }}|{{ m.get('missing', 'dflt') }}",
                   {{"m", {{"role", "user"}, {"content", "hi"}}}}),
            "user|hi||dflt");
  EXPECT_EQ(render("{{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 3 / 1 }} {{ true }} {{ none }}"), "1.0 0.30000000000000004 1e+20 3.0 True None");
  EXPECT_EQ(render("{{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='c')|join(',') }}",
                   {{"msgs", {{{"role", "user"}, {"c", "1"}}, {{"role", "bot"}, {"c", "2"}}, {{"role", "user"}, {"c", "3"}}}}}),
            "1,3");
}

TEST(Jinja, ContentIsDataNeverTemplate) {
  EXPECT_EQ(render("{{ c }}", {{"c", "{{ 1 + 1 }} {% if %}"}}), "{{ 1 + 1 }} {% if %}");
}

// ---- errors: clear, with line and column ----------------------------------------------------------------------

void expect_template_error(const std::string& source, const std::string& needle, int line = 0, int column = 0,
                           const ordered_json& vars = ordered_json::object(), xpo::text::jinja::Limits limits = {}) {
  try {
    (void)Template(source, {}, limits).render_json(vars);
    ADD_FAILURE() << "no error for: " << source;
  } catch (const TemplateError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    if (line > 0) {
      EXPECT_EQ(e.line(), line) << e.what();
    }
    if (column > 0) {
      EXPECT_EQ(e.column(), column) << e.what();
    }
  }
}

TEST(JinjaErrors, MalformedTemplates) {
  expect_template_error("a\n{% if x %}b", "unclosed block", 0, 0);
  expect_template_error("a {{ x ", "unclosed expression", 1, 3);
  expect_template_error("{% if x %}\n{{ x|frobnicate }}{% endif %}", "unknown filter 'frobnicate'", 2, 6);
  expect_template_error("{{ x is frob }}", "unknown test 'frob'", 1, 9);
  expect_template_error("line1\n  {% include 'other.jinja' %}", "unsupported tag 'include'", 2, 6);
  expect_template_error("{% endfor %}", "without a matching opening tag", 1, 4);
  expect_template_error("{{ 'abc }}", "unterminated string", 1, 4);
  expect_template_error("{# never closed", "unclosed comment", 1, 1);
  expect_template_error("{{ 1 + }}", "expected an expression", 1, 8);
  expect_template_error("a{% if true %}{% break %}{% endif %}", "outside a for loop", 1, 18);
  expect_template_error("{% for x in [1] %}{% endfor %}{% continue %}", "outside a for loop", 1, 34);
  expect_template_error("{{" + std::string(300, '(') + "1" + std::string(300, ')') + "}}", "nesting deeper");
}

TEST(JinjaErrors, RuntimeErrorsAndBounds) {
  expect_template_error("{{ raise_exception('Conversation roles must alternate') }}", "Conversation roles must alternate", 1, 4);
  expect_template_error("\n\n{{ messages[0].role }}", "'messages' is undefined", 3, 4);
  expect_template_error("{{ 'a' + 1 }}", "unsupported operand types for +: 'str' and 'int'", 1, 8);
  expect_template_error("{% set x = 1 %}{% set x.y = 2 %}", "only namespace() objects");
  // An endless-looking loop and an exploding output both stop at the limits, with an error.
  expect_template_error("{% for i in range(1000000000) %}x{% endfor %}", "loop iteration limit");
  expect_template_error("{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}", "loop iteration");
  xpo::text::jinja::Limits small;
  small.max_output_bytes = 1000;
  expect_template_error("{% for i in range(500) %}abc{% endfor %}", "output exceeds", 0, 0, ordered_json::object(), small);
  expect_template_error("{{ 'x' * 100000 }}", "exceeds the output limit", 0, 0, ordered_json::object(), small);
  small.max_template_bytes = 10;
  EXPECT_THROW(Template(std::string(11, 'a'), {}, small), TemplateError);
}

// Values a template builds stay bounded (found by fuzz/chat_template_fuzz.cpp): no value contains itself (that
// would leak, and printing it would recurse forever), nesting is bounded (freeing a value recurses once per
// level), and shared items cannot make printing or comparing exponentially long.
TEST(JinjaErrors, ValuesCannotContainThemselvesNestTooDeeplyOrExplode) {
  const std::string ns = "{% set ns = namespace(a=1) %}";
  expect_template_error(ns + "{% set ns.a = ns %}{{ ns }}", "does not let namespaces nest", 1, 30);
  expect_template_error(ns + "{% set ns.a = [1, {'k': ns}] %}", "does not let namespaces nest");
  expect_template_error(ns + "{{ namespace(b=ns) }}", "would hold a namespace");
  // a namespace may still hold lists and dicts, and be held by them
  EXPECT_EQ(render(ns + "{% set ns.a = [1, {'k': 2}] %}{{ ns.a }} {{ [ns.a] }}"), "[1, {'k': 2}] [[1, {'k': 2}]]");
  EXPECT_EQ(render(ns + "{{ [ns] }}"), "[<Namespace {'a': 1}>]");

  // growing a list inside a namespace, once per loop iteration, stops at the nesting bound
  const auto depth = std::to_string(xpo::text::jinja::kMaxValueDepth);
  expect_template_error(ns + "{% for i in range(100000) %}{% set ns.a = [ns.a] %}{% endfor %}", "nest more than " + depth);
  std::string deep = "{% set x = 0 %}";
  for (std::uint32_t i = 0; i <= xpo::text::jinja::kMaxValueDepth; ++i) deep += "{% set x = {'k': x} %}";
  expect_template_error(deep, "nest more than " + depth);
  // ... and JSON variables too deep are refused before they are read
  std::string json(1000, '[');
  json += std::string(1000, ']');
  EXPECT_THROW((void)Template("{{ x }}").render_json(ordered_json{{"x", ordered_json::parse(json)}}), xpo::Error);

  // x doubles 60 times: 2^60 leaves, but only 61 lists
  std::string doubling = "{% set x = [1] %}";
  for (int i = 0; i < 60; ++i) doubling += "{% set x = [x, x] %}";
  std::string twin = "{% set y = [1] %}";
  for (int i = 0; i < 60; ++i) twin += "{% set y = [y, y] %}";
  expect_template_error(doubling + "{{ x }}", "text of a value is longer than the limit");
  expect_template_error(doubling + "{{ x|string|length }}", "text of a value is longer than the limit");
  expect_template_error(doubling + "{{ x|tojson }}", "tojson: the text is longer than the limit");
  expect_template_error("{{ [[1]]|tojson(indent=2000000000) }}", "tojson: the text is longer than the limit");
  EXPECT_EQ(render("{{ [1]|tojson(indent=-3) }}|{{ [1]|tojson(indent=0) }}"), "[\n1\n]|[\n1\n]");  // as json.dumps
  expect_template_error(doubling + twin + "{{ x == y }}", "comparing the values takes more steps");
  expect_template_error(doubling + twin + "{{ x in [y] }}", "comparing the values takes more steps");
  EXPECT_EQ(render(doubling + "{{ x == x }} {{ x in [1, x] }} {{ x|length }}"), "True True 2");
  // a smaller budget stops smaller comparisons
  xpo::text::jinja::Limits few;
  few.max_comparison_steps = 100;
  expect_template_error("{{ range(200)|list == range(200)|list }}", "comparing", 0, 0, ordered_json::object(), few);
  EXPECT_EQ(render("{{ range(200)|list == range(200)|list }}"), "True");
}

// Python's ints are unbounded; a template's are 64-bit, and leaving that range is an error, never a wrap-around
// (found by fuzzing with UBSan). Results inside the range are Python's.
TEST(JinjaErrors, IntegersNeverWrap) {
  const std::string max = "9223372036854775807", min = "(-9223372036854775807 - 1)";
  for (const std::string& expr : std::vector<std::string>{max + " + 1", "-9223372036854775807 - 2", "4611686018427387904 * 2", "3 ** 40",
                                                           "2 ** 63", min + " // -1", "-" + min, "[" + max + ", 1]|sum",
                                                           min + "|abs", "1e300|int", "(1e308 * 10)|int"}) {
    expect_template_error("{{ " + expr + " }}", "integer overflow");
  }
  EXPECT_EQ(render("{{ " + max + " + 0 }} {{ 2 ** 62 }} {{ (-2) ** 63 }} {{ " + min + " % -1 }} {{ 7 // -1 }} "
                   "{{ -7 // 2 }} {{ 3 ** 0 }} {{ (-1) ** 1000001 }} {{ 1 ** " + max + " }} {{ 10 ** -1 }} "
                   "{{ 'nan'|float|int }} {{ -2.7|int }}"),
            max + " 4611686018427387904 -9223372036854775808 0 -7 -4 1 -1 1 0.1 0 -2");
  EXPECT_EQ(render("{{ range(-" + max + ", " + max + ", 4611686018427387904)|list }} {{ range(5, -5, -3)|list }}"),
            "[-9223372036854775807, -4611686018427387903, 1, 4611686018427387905] [5, 2, -1, -4]");
  expect_template_error("{{ range(" + max + ")|length }}", "exceeds the loop iteration limit");
  // numbers from text, as Python reads them: a float literal too large is inf (it threw std::out_of_range, found
  // by fuzzing); int() and float() of a string take all of it or fall back to the default
  EXPECT_EQ(render("{{ 1e9300 }} {{ -1e9300 }} {{ 1e-9300 }}"), "inf -inf 0.0");
  expect_template_error("{{ 1e9300|int }}", "integer overflow");
  EXPECT_EQ(render("{{ '1e999'|float }} {{ '12abc'|float }} {{ 'nan'|float }} {{ ' 2.5 '|float }} {{ '0x10'|float }}"),
            "inf 0.0 nan 2.5 0.0");
  EXPECT_EQ(render("{{ '12abc'|int }} {{ '1e3'|int }} {{ ' 42 '|int }} {{ '0x10'|int }} {{ '-7.9'|int }} {{ '+5'|int }} "
                   "{{ '+-5'|int }} {{ 'x'|int(default=3) }}"),
            "0 1000 42 0 -7 5 0 3");
  EXPECT_EQ(render("[{{ [1, 2].1 }}|{{ [1, 2].99999999999999999999 }}]"), "[2|]");
}

// Strings and values a template makes are bounded while they are made, not after.
TEST(JinjaErrors, StringsAndValuesAreBoundedAsTheyGrow) {
  expect_template_error("{{ ('x' * 5000).replace('', 'y' * 5000) }}", "exceeds the output limit");
  expect_template_error("{{ 'ab'|indent(9223372036854775807) }}", "exceeds the output limit");
  expect_template_error("{{ ('x' * 1000000).join(range(100)|map('string')|list) }}", "exceeds the output limit");
  // 40 copies of a 10 MB string: 400 MB, past the default 256 MiB of values
  std::string copies = "{% set s = 'x' * 10000000 %}{% set l = [s";
  for (int i = 0; i < 39; ++i) copies += ", s";
  expect_template_error(copies + "] %}{{ l|length }}", "max_value_bytes");
  // doubling a list in a namespace: stopped by the same budget
  expect_template_error("{% set ns = namespace(a=[1]) %}{% for i in range(40) %}{% set ns.a = ns.a + ns.a %}{% endfor %}",
                        "max_value_bytes");
  // the budget is per render, and a tight one still renders an ordinary conversation
  xpo::text::jinja::Limits tight;
  tight.max_value_bytes = 4096;
  const Template t("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}", {}, tight);
  const ordered_json vars{{"messages", {{{"role", "user"}, {"content", "Hi"}}, {{"role", "assistant"}, {"content", "Yo"}}}}};
  for (int i = 0; i < 3; ++i) EXPECT_EQ(t.render_json(vars), "<user>Hi<assistant>Yo");
  expect_template_error("{{ 'x' * 5000 }}", "max_value_bytes", 0, 0, ordered_json::object(), tight);
}

// ---- Jinja2 constructs of real chat templates (issue 19): each expectation is what Python's Jinja2 3.1 renders ----

const ordered_json kVars = {{"xs", {1, 2, 3}}, {"d", {{"a", 1}, {"b", "x"}}}, {"s", "hello world"}, {"n", nullptr}};

TEST(JinjaConstructs, Macros) {
  EXPECT_EQ(render("{% macro m(a, b=2, c='x') %}{{ a }}-{{ b }}-{{ c }}{% endmacro %}{{ m(1) }}|{{ m(1, 3) }}|{{ m(1, c='y') }}|{{ m(b=5, a=0) }}", kVars), "1-2-x|1-3-x|1-2-y|0-5-x");
  EXPECT_EQ(render("{% macro m(a) %}[{{ a }}]{% endmacro %}{{ m() }}", kVars), "[]");
  EXPECT_EQ(render("{% macro m(a, b=a * 2) %}{{ b }}{% endmacro %}{{ m(4) }}", kVars), "8");
  EXPECT_EQ(render("{% macro m() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, k=3) }}", kVars), "(1, 2){'k': 3}");
  EXPECT_EQ(render("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}", kVars), "54321");
  EXPECT_EQ(render("{% macro m() %}{% set x = 5 %}{{ x }}{% endmacro %}{% set x = 1 %}{{ m() }}{{ x }}", kVars), "51");
  EXPECT_EQ(render("{% set g = 'top' %}{% macro m() %}{{ g }}{% endmacro %}{% for i in [1] %}{% set g = 'loop' %}{{ m() }}{% endfor %}", kVars), "top");
  EXPECT_EQ(render("{% macro m(x) -%}\n  [{{ x }}]\n{%- endmacro %}\n{{ m(1) }}\n{{ m(2) }}", kVars), "[1]\n[2]");
  EXPECT_EQ(render("{% macro m(x) %}{{ x }}{% endmacro %}{{ m }}", kVars), "<Macro 'm'>");
}

TEST(JinjaConstructs, CallBlocks) {
  EXPECT_EQ(render("{% macro list(items) %}<ul>{% for i in items %}<li>{{ caller(i) }}</li>{% endfor %}</ul>{% endmacro %}{% call(x) list(xs) %}item {{ x }}{% endcall %}", kVars), "<ul><li>item 1</li><li>item 2</li><li>item 3</li></ul>");
  EXPECT_EQ(render("{% macro wrap() %}<{{ caller() }}>{% endmacro %}{% set y = 'outer' %}{% call wrap() %}{{ y }}{% endcall %}", kVars), "<outer>");
  EXPECT_EQ(render("{% macro m() %}{{ caller('a') }}{% endmacro %}{% call(x, y='z') m() %}{{ x }}{{ y }}{% endcall %}", kVars), "az");
  EXPECT_EQ(render("{% macro m() %}{% for i in [1,2] %}{{ caller(i) }}{% endfor %}{% endmacro %}{% for o in ['A','B'] %}{% call(i) m() %}{{ o }}{{ i }}{{ loop.index }}{% endcall %}{% endfor %}", kVars), "A11A21B12B22");
}

TEST(JinjaConstructs, FilterBlocks) {
  EXPECT_EQ(render("{% filter upper %}hello {{ s }}{% endfilter %}", kVars), "HELLO HELLO WORLD");
  EXPECT_EQ(render("{% filter replace('l', 'L') | trim %}  hello  {% endfilter %}", kVars), "heLLo");
  EXPECT_EQ(render("{% set x | upper %}abc{% endset %}{{ x }}", kVars), "ABC");
  EXPECT_EQ(render("{% for x in xs %}{% filter center(5) %}a{{ x }}{% endfilter %}|{% endfor %}", kVars), "  a1 |  a2 |  a3 |");
}

TEST(JinjaConstructs, LoopHelpers) {
  EXPECT_EQ(render("{% for x in xs %}{{ loop.cycle('odd', 'even') }} {% endfor %}", kVars), "odd even odd ");
  EXPECT_EQ(render("{% for x in [1,1,2,2,3,1] %}{% if loop.changed(x) %}{{ x }}{% endif %}{% endfor %}", kVars), "1231");
  EXPECT_EQ(render("{% for x in xs %}{{ loop.previtem }}/{{ loop.nextitem }} {% endfor %}", kVars), "/2 1/3 2/ ");
  EXPECT_EQ(render("{% for x in xs if x > 1 %}{{ loop.index }}{{ loop.previtem }}{{ loop.depth }}{% endfor %}", kVars), "11221");
}

TEST(JinjaConstructs, Unpacking) {
  EXPECT_EQ(render("{% set a, b = 1, 2 %}{{ a }}{{ b }}", kVars), "12");
  EXPECT_EQ(render("{% set a, b = [3, 4] %}{{ a }}{{ b }}", kVars), "34");
  EXPECT_EQ(render("{% set a, b = 'xy' %}{{ a }}{{ b }}", kVars), "xy");
  EXPECT_EQ(render("{% for (a, b) in [[1, 2], [3, 4]] %}{{ a }}{{ b }};{% endfor %}", kVars), "12;34;");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", kVars), "a=1;b=x;");
  EXPECT_EQ(render("{{ (1, 2) }}|{{ (1,) }}|{{ () }}|{{ d.items()|list }}|{{ (1, 2) == [1, 2] }}|{{ (1, 2)[1:] }}", kVars), "(1, 2)|(1,)|()|[('a', 1), ('b', 'x')]|False|(2,)");
}

TEST(JinjaConstructs, Formatting) {
  EXPECT_EQ(render("{{ '%s and %s' % (1, 'b') }}|{{ '%d%%' % 50 }}|{{ '%5.2f|%-4s|%04d' % (3.14159, 'ab', 42) }}", kVars), "1 and b|50%| 3.14|ab  |0042");
  EXPECT_EQ(render("{{ '%s' % [1, 2] }}|{{ '%(a)s-%(b)s' % d }}|{{ '%x %X %o %#x' % (255, 255, 8, 255) }}", kVars), "[1, 2]|1-x|ff FF 10 0xff");
  EXPECT_EQ(render("{{ '%.3s|%5s|%-5d|%+d|% d' % ('abcdef', 'x', 3, 4, 5) }}|{{ '%*d|%.*f' % (5, 1, 2, 3.14159) }}", kVars), "abc|    x|3    |+4| 5|    1|3.14");
  EXPECT_EQ(render("{{ '{} {}'.format(1, 'a') }}|{{ '{1}{0}'.format('a', 'b') }}|{{ '{x}!'.format(x=5) }}|{{ '{:>6}|{:<4}|{:^7}'.format('ab', 'c', 'mid') }}", kVars), "1 a|ba|5!|    ab|c   |  mid  ");
  EXPECT_EQ(render("{{ '{:.2f} {:+d} {:,} {:08.3f} {:x} {:#b} {:e}'.format(3.14159, 5, 1234567, -3.5, 255, 5, 12345.678) }}", kVars), "3.14 +5 1,234,567 -003.500 ff 0b101 1.234568e+04");
  EXPECT_EQ(render("{{ '{0[a]} {0[b]}'.format(d) }}|{{ '{!r}'.format('q') }}|{{ '{{}}'.format() }}|{{ '{:*^9}'.format('x') }}|{{ '{:{w}.{p}f}'.format(3.14159, w=8, p=2) }}", kVars), "1 x|'q'|{}|****x****|    3.14");
  EXPECT_EQ(render("{{ '{} {}'.format(*xs) }}|{{ '{a}'.format(**d) }}|{{ '{:>5}'.format(true) }}|{{ '{}'.format(1e20) }}", kVars), "1 2|1|    1|1e+20");
  EXPECT_EQ(render("{{ '%s - %s'|format('a', 'b') }}|{{ '%(x)s'|format(x=1) }}", kVars), "a - b|1");
}

TEST(JinjaConstructs, Undefined) {
  EXPECT_EQ(render("{{ 'a' in nothing }}|{{ 'a' not in nothing }}|{{ nothing }}|{{ nothing|length }}|{{ nothing|list }}", kVars), "False|True||0|[]");
  EXPECT_EQ(render("{% for x in nothing %}x{% else %}empty{% endfor %}|{{ nothing|upper }}|{{ nothing|join(',') }}|{{ nothing|default('d') }}", kVars), "empty|||d");
  EXPECT_EQ(render("{{ nothing is defined }}{{ nothing is iterable }}{{ nothing is sequence }}{{ nothing is string }}{{ nothing is none }}{{ nothing is mapping }}", kVars), "FalseTrueTrueFalseFalseFalse");
  EXPECT_EQ(render("{{ nothing ~ 'x' }}|{{ not nothing }}|{{ nothing or 'y' }}|{{ d.missing is defined }}|{{ nothing == nothing }}", kVars), "x|True|y|False|True");
}

TEST(JinjaConstructs, StringFiltersTakeStr) {
  EXPECT_EQ(render("{{ 42|upper }}|{{ 3.5|replace('.', ',') }}|{{ none|trim }}|{{ true|lower }}|{{ 12|capitalize }}|{{ [1,2]|upper }}", kVars), "42|3,5|None|true|12|[1, 2]");
  EXPECT_EQ(render("{{ 'a1b1'|replace(1, 2) }}|{{ 123|title }}|{{ 15|wordcount }}|{{ 'hello wORLD-foo (bar)'|title }}|{{ \"they're\"|title }}", kVars), "a2b2|123|1|Hello World-Foo (Bar)|They're");
  EXPECT_EQ(render("{{ 'abc'|center(9) }}|{{ 'ab'|center(5) }}|{{ 'hello world foo bar'|truncate(12) }}|{{ 'foo bar baz qux quux'|truncate(9, true) }}", kVars), "   abc   |  ab |hello...|foo ba...");
  EXPECT_EQ(render("{{ 'ABC' is upper }}{{ 'abc' is lower }}{{ '123' is lower }}{{ 'aB'.islower() }}", kVars), "TrueTrueFalseFalse");
}

TEST(JinjaConstructs, TrailingNewline) {
  EXPECT_EQ(render("a\nb\n", kVars), "a\nb");
  EXPECT_EQ(render("a\r\nb\r\n", kVars), "a\nb");
  EXPECT_EQ(render("x{% if true %}\ny{% endif %}\n\n", kVars), "xy");
  EXPECT_EQ(render("{{ 'a' }}\n", kVars), "a");
}

// Jinja2 raises on each of these (a TypeError, an UndefinedError, ...): so does xpo, naming line and column.
TEST(JinjaConstructs, ErrorsWhereJinja2Raises) {
  for (const std::string source : {
           "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}",  // TypeError: macro 'm' takes not more than 1 argument(s)
           "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, z=2) }}",  // TypeError: macro 'm' takes no keyword argument 'z'
           "{% macro m(a, b) %}{{ a }}{{ b }}{% endmacro %}{{ m(1, a=2) }}",  // TypeError: macro 'm' takes no keyword argument 'a'
           "{% set a, b = [1] %}",  // ValueError: not enough values to unpack (expected 2, got 1)
           "{% for a, b in [[1, 2, 3]] %}{% endfor %}",  // ValueError: too many values to unpack (expected 2)
           "{{ '%s %s' % (1,) }}",  // TypeError: not enough arguments for format string
           "{{ '%s' % (1, 2) }}",  // TypeError: not all arguments converted during string formatting
           "{{ 'abc' % 5 }}",  // TypeError: not all arguments converted during string formatting
           "{{ '%d' % 'x' }}",  // TypeError: %d format: a real number is required, not str
           "{{ '{}'.format() }}",  // IndexError: tuple index out of range
           "{{ '{:d}'.format('x') }}",  // ValueError: Unknown format code 'd' for object of type 'str'
           "{{ '{0}{}'.format(1, 2) }}",  // ValueError: cannot switch from manual field specification to automatic field number
           "{{ nothing.attr }}",  // UndefinedError: 'nothing' is undefined
           "{{ nothing['k'] }}",  // UndefinedError: 'nothing' is undefined
           "{{ nothing + 1 }}",  // UndefinedError: 'nothing' is undefined
           "{{ nothing() }}",  // UndefinedError: 'nothing' is undefined
           "{{ nothing|int }}",  // UndefinedError: 'nothing' is undefined
           "{{ nothing|tojson }}",  // TypeError: Object of type Undefined is not JSON serializable
           "{{ 42|length }}",  // TypeError: object of type 'int' has no len()
       }) {
    EXPECT_THROW((void)render(source, kVars), TemplateError) << source;
  }
}


TEST(JinjaConstructs, MoreOfJinja2AndTransformers) {
  EXPECT_EQ(render("{{ -1|abs }}|{{ -(2)|string }}|{{ -d.a }}|{{ - 2 ** 2 }}", kVars), "1|-2|-1|4");
  EXPECT_EQ(render("{% set spec = {'type': 'array', 'items': {'type': 'string'}} %}{% for k, v in spec.items() %}{{ k }};{% endfor %}{{ spec['items'].type }}|{{ spec.get('type') }}", kVars), "type;items;string|array");
  EXPECT_EQ(render("{{ {'b': 1, 'a': [1, 2]}|tojson(separators=(',', ':')) }}|{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}|{{ 'é🤗'|tojson(ensure_ascii=true) }}|{{ [1, 2]|tojson(indent=1) }}", kVars), "{\"b\":1,\"a\":[1,2]}|{\"a\": 2, \"b\": 1}|\"\\u00e9\\ud83e\\udd17\"|[\n 1,\n 2\n]");
  EXPECT_EQ(render("{{ [{'n': 'a', 'k': 1}, {'n': 'b', 'k': 2}, {'n': 'c', 'k': 1}]|sort(attribute='k', reverse=true)|map(attribute='n')|join }}|{{ ['b', 'A', 'a']|sort }}|{{ ['b', 'A', 'a']|sort(case_sensitive=true) }}", kVars), "bac|['A', 'a', 'b']|['A', 'a', 'b']");
  EXPECT_EQ(render("{% for k, v in {'b': 1, 'A': 3, 'c': 2}|dictsort %}{{ k }}{% endfor %}|{% for k, v in {'b': 1, 'A': 3, 'c': 2}|dictsort(by='value', reverse=true) %}{{ k }}{% endfor %}|{% for k, v in {'b': 1, 'A': 3}|dictsort(true) %}{{ k }}{% endfor %}", kVars), "Abc|Acb|Ab");
  EXPECT_EQ(render("{{ ' a b  c '.split(none, 1) }}|{{ 'a,b,c'.rsplit(',', 1) }}|{{ 'x\\ny\\r\\nz'.splitlines() }}|{{ 'abcabc'.rfind('b') }}|{{ 'abc'.removeprefix('ab') }}{{ 'abc'.removesuffix('bc') }}", kVars), "['a', 'b  c ']|['a,b', 'c']|['x', 'y', 'z']|4|ca");
  EXPECT_EQ(render("{{ 'ab'.ljust(5, '*') }}|{{ 'ab'.rjust(5) }}|{{ 'ab'.center(7, '-') }}|{{ '-42'.zfill(6) }}|{{ 'a1'.isalnum() }}{{ '12'.isnumeric() }}{{ '1.2'.isdecimal() }}", kVars), "ab***|   ab|---ab--|-00042|TrueTrueFalse");
  EXPECT_EQ(render("{% set (a, b) = [1, 2] %}{{ b }}{{ a }}", kVars), "21");
}

TEST(JinjaConstructs, RawBlocksAndMacroClosures) {
  EXPECT_EQ(render("{% for i in [1, 2] %}{% macro m() %}{{ i }}{% endmacro %}{{ m() }}{% endfor %}", kVars), "12");
  EXPECT_EQ(render("{% set x = 0 %}{% macro m() %}{{ x }}{% endmacro %}{% set x = 1 %}{{ m() }}", kVars), "1");
  EXPECT_EQ(render("a {% raw %}{{ x }}{% if %}{% endraw %} b", kVars), "a {{ x }}{% if %} b");
  EXPECT_EQ(render("a\n  {% raw %}\n {{ x }} \n  {% endraw %}\nb", kVars), "a\n\n {{ x }} \nb");
  EXPECT_EQ(render("a {%- raw -%}  {{ x }}  {%- endraw -%}  b", kVars), "a{{ x }}b");
  EXPECT_EQ(render("{% raw %}{% endraw %}{% raw %}x{%endraw%}", kVars), "x");
  expect_template_error("x\n{% raw %}{{ y }}", "unclosed raw block", 2, 1);
}
// Macros calling macros are bounded in depth (a template cannot exhaust the stack) and in number (each call counts
// as a loop iteration, so doubling recursion stops at the loop limit).
TEST(JinjaConstructs, MacroRecursionIsBounded) {
  expect_template_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}\n{{ f(0) }}", "max_call_depth", 1, 20);
  expect_template_error("{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}",
                        "loop iteration");
  xpo::text::jinja::Limits shallow;
  shallow.max_call_depth = 3;
  const std::string nest = "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}.{% endmacro %}";
  EXPECT_EQ(Template(nest + "{{ f(2) }}", {}, shallow).render_json(ordered_json::object()), "...");
  expect_template_error(nest + "{{ f(3) }}", "max_call_depth", 0, 0, ordered_json::object(), shallow);
  // an error inside a macro names the line and column in the macro
  expect_template_error("{% macro m(x) %}\n  {{ x + 1 }}{% endmacro %}{{ m('a') }}", "unsupported operand", 2, 8);
}

// transformers passes messages of any shape: the template decides what it reads, and raises what it rejects.
TEST(ChatTemplateMessages, AnyShapeToolsDocumentsAndClock) {
  const ChatTemplate chat(
      "{% for m in messages %}{{ m.role }}:{% if m.content is string %}{{ m.content }}{% elif m.content is mapping %}"
      "{{ m.content|tojson }}{% elif m.content is none %}null{% elif m.content is defined %}{{ m.content|string }}"
      "{% else %}-{% endif %}{% for c in m.tool_calls or [] %}[{{ c.function.name }}]{% endfor %};{% endfor %}"
      "{% if tools %}tools={{ tools|map(attribute='name')|join(',') }};{% endif %}"
      "{% if documents %}docs={{ documents|length }};{% endif %}{{ strftime_now('%Y-%m-%d %A') }}");
  const ordered_json messages = ordered_json::parse(R"([
      {"role": "user", "content": [{"type": "text", "text": "hi"}]},
      {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
      {"role": "tool", "content": {"result": 2}},
      {"role": "assistant", "content": null},
      {"role": "user", "content": 7}])");
  ChatOptions options;
  options.tools = ordered_json::parse(R"([{"name": "f"}, {"name": "g"}])");
  options.documents = ordered_json::parse(R"([{"text": "d1"}])");
  std::tm day{};
  day.tm_year = 2025 - 1900;
  day.tm_mon = 7;
  day.tm_mday = 5;
  day.tm_wday = 2;
  options.now = day;
  EXPECT_EQ(chat.render(messages, xpo::text::SpecialTokens{}, options),
            "user:[{'type': 'text', 'text': 'hi'}];assistant:-[f];tool:{\"result\": 2};assistant:null;user:7;"
            "tools=f,g;docs=1;2025-08-05 Tuesday");
  // a template variable of the same name wins over the option, as transformers' **kwargs would
  options.template_kwargs = {{"tools", {{{"name", "h"}}}}};
  EXPECT_NE(chat.render(messages, xpo::text::SpecialTokens{}, options).find("tools=h;"), std::string::npos);
  // a template that needs a string content raises, with its line and column
  const ChatTemplate strict("{% for m in messages %}\n{{ m.role + ': ' + m.content }}{% endfor %}");
  try {
    (void)strict.render(messages, xpo::text::SpecialTokens{});
    ADD_FAILURE() << "no error";
  } catch (const TemplateError& e) {
    EXPECT_EQ(e.line(), 2) << e.what();
  }
  // a dataset row's tools / documents columns and chat_template_kwargs, over defaults (from --config)
  const auto row = ordered_json::parse(R"({"prompt": [], "tools": [{"name": "t"}], "documents": null,
                                           "chat_template_kwargs": {"enable_thinking": false}})");
  const auto kwargs = xpo::text::row_template_kwargs(row, "rows.jsonl:1", {{"enable_thinking", true}, {"x", 1}});
  EXPECT_EQ(kwargs, ordered_json::parse(R"({"enable_thinking": false, "x": 1, "tools": [{"name": "t"}]})"));
  EXPECT_THROW((void)xpo::text::row_template_kwargs(ordered_json{{"tools", "t"}}, "rows.jsonl:2"), xpo::ConfigError);
  // still refused: a conversation that is not a list of objects
  EXPECT_THROW((void)chat.render(ordered_json::array({1}), xpo::text::SpecialTokens{}), xpo::ConfigError);
  EXPECT_THROW((void)chat.render(ordered_json::array(), xpo::text::SpecialTokens{}), xpo::ConfigError);
}

// ---- prompt preparation --------------------------------------------------------------------------------------

TEST(PreparePrompt, StandardAndConversationalPrompts) {
  const auto& tok = qwen();
  const auto chat = ChatTemplate::of(tok);
  const ordered_json user = ordered_json::array({{{"role", "user"}, {"content", "What is 2+2?"}}});

  // Standard prompt: the text as is.
  const auto plain = xpo::text::prepare_prompt(tok, ordered_json("The sky is"), &chat);
  EXPECT_EQ(plain.text, "The sky is");
  EXPECT_EQ(plain.ids, tok.encode("The sky is", false));

  // Last role user: rendered with the generation prompt.
  ChatOptions gen;
  gen.add_generation_prompt = true;
  const auto p = xpo::text::prepare_prompt(tok, user, &chat);
  EXPECT_EQ(p.text, chat.render(user, tok.special_tokens(), gen));
  EXPECT_EQ(p.ids, tok.encode(p.text, false));

  // Last role assistant: the text stops right after that message's content.
  ordered_json partial = user;
  partial.push_back({{"role", "assistant"}, {"content", "The answer is"}});
  const auto c = xpo::text::prepare_prompt(tok, partial, &chat);
  ASSERT_GE(c.text.size(), std::string("The answer is").size());
  EXPECT_EQ(c.text.substr(c.text.size() - 13), "The answer is");
  const std::string full = chat.render(partial, tok.special_tokens());
  EXPECT_EQ(full.substr(0, c.text.size()), c.text);
  EXPECT_GT(full.size(), c.text.size());  // the end-of-turn was cut

  // template kwargs reach the template.
  const auto no_think = xpo::text::prepare_prompt(tok, user, &chat, {{"enable_thinking", false}});
  EXPECT_NE(no_think.text, p.text);
  EXPECT_EQ(no_think.text.substr(0, p.text.size()), p.text);

  // Other last roles and malformed prompts are errors naming where.
  ordered_json sys = ordered_json::array({{{"role", "system"}, {"content", "x"}}});
  try {
    (void)xpo::text::prepare_prompt(tok, sys, &chat, ordered_json::object(), "prompts.jsonl:7");
    ADD_FAILURE();
  } catch (const xpo::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("prompts.jsonl:7"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("\"system\""), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)xpo::text::prepare_prompt(tok, ordered_json::array({{{"content", "x"}}}), &chat), xpo::ConfigError);
  // A conversation without any chat template: the error names the prompt and the missing template.
  const auto bare = Tokenizer::from_file(xpo::test::fixture_path("tokenizers/qwen/tokenizer.json"));
  try {
    (void)xpo::text::prepare_prompt(bare, user, nullptr, ordered_json::object(), "prompts.jsonl:3");
    ADD_FAILURE();
  } catch (const xpo::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("prompts.jsonl:3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("chat_template"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)xpo::text::prepare_prompt(tok, ordered_json(3), &chat), xpo::ConfigError);
}

// A template given directly (TRL's SIMPLE_CHAT_TEMPLATE), and a BOS prepended once when the tokenizer has one.
TEST(PreparePrompt, DirectTemplateAndBos) {
  Tokenizer tok = qwen();
  const ChatTemplate simple(xpo::text::kSimpleChatTemplate);
  const ordered_json msgs = ordered_json::array({{{"role", "user"}, {"content", "Hi"}}});
  ChatOptions gen;
  gen.add_generation_prompt = true;
  EXPECT_EQ(simple.render(msgs, tok.special_tokens(), gen), "User: Hi\n\nAssistant:");
  tok.set_chat_template(xpo::text::kSimpleChatTemplate);
  EXPECT_EQ(ChatTemplate::of(tok).source(), xpo::text::kSimpleChatTemplate);
  auto want = tok.encode("User: Hi\n\nAssistant:", false);
  if (const auto bos = tok.special_tokens().bos_id) want.insert(want.begin(), *bos);  // once, when there is one
  const auto p = xpo::text::prepare_prompt(tok, msgs, &simple);
  EXPECT_EQ(p.ids, want);
}

}  // namespace
