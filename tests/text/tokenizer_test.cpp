// Tokenizer parity with Hugging Face `tokenizers`: every golden case of $XPO_FIXTURES_DIR/tokenizers/<family>/
// (encode -> ids and tokens, decode with and without special tokens, decode-only cases), plus malformed files.
#include <xpo/text/chat.hpp>
#include <xpo/text/tokenizer.hpp>

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "support/fixtures.hpp"

namespace {

using xpo::text::TokenId;
using xpo::text::Tokenizer;

// Every tokenizer family folder of the fixture set that has golden cases.
std::vector<std::filesystem::path> tokenizer_folders() {
  const auto root = xpo::test::fixture_path("tokenizers");
  std::vector<std::filesystem::path> folders;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    if (e.is_directory() && std::filesystem::exists(e.path() / "cases.jsonl")) folders.push_back(e.path());
  }
  std::sort(folders.begin(), folders.end());
  return folders;
}

std::string window(const std::vector<TokenId>& v, std::size_t at) {
  std::ostringstream s;
  const std::size_t lo = at >= 4 ? at - 4 : 0;
  for (std::size_t i = lo; i < std::min(v.size(), at + 5); ++i) s << (i == at ? "[" : "") << v[i] << (i == at ? "] " : " ");
  return s.str();
}

// Exact vector equality, printing the first differing index and a window of both sides.
::testing::AssertionResult same_ids(const std::string& id, const std::vector<TokenId>& got, const std::vector<TokenId>& want) {
  if (got == want) return ::testing::AssertionSuccess();
  std::size_t at = 0;
  while (at < got.size() && at < want.size() && got[at] == want[at]) ++at;
  return ::testing::AssertionFailure() << id << ": ids differ at index " << at << " (got " << got.size() << " ids, want "
                                       << want.size() << ")\n  got:  " << window(got, at) << "\n  want: " << window(want, at);
}

const Tokenizer& load(const std::filesystem::path& folder) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(folder.string());
  if (it == cache.end()) it = cache.emplace(folder.string(), Tokenizer::from_pretrained(folder)).first;
  return it->second;
}

TEST(TokenizerParity, FixtureFamiliesArePresent) {
  // Both families the issue names must be there; a missing folder is a failure, not a skip.
  for (const char* family : {"tokenizers/qwen/tokenizer.json", "tokenizers/gpt2/tokenizer.json"}) {
    EXPECT_NO_THROW(xpo::test::fixture_path(family));
  }
  EXPECT_FALSE(tokenizer_folders().empty());
}

TEST(TokenizerParity, EncodeAndDecodeEveryCase) {
  for (const auto& folder : tokenizer_folders()) {
    const auto& tok = load(folder);
    const auto cases = xpo::test::read_jsonl(folder / "cases.jsonl");
    ASSERT_FALSE(cases.empty()) << folder;
    for (const auto& c : cases) {
      const auto id = c.at("id").get<std::string>();
      const auto text = c.at("text").get<std::string>();
      const auto want = c.at("ids").get<std::vector<TokenId>>();
      const auto got = tok.encode(text, /*add_special_tokens=*/false);
      EXPECT_TRUE(same_ids(id, got, want));
      const auto tokens = c.at("tokens").get<std::vector<std::string>>();
      ASSERT_EQ(tokens.size(), want.size()) << id;
      for (std::size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ(tok.id_to_token(want[i]).value_or("<none>"), tokens[i]) << id << " token " << i;
        EXPECT_EQ(tok.token_to_id(tokens[i]).value_or(-1), want[i]) << id << " token " << i;
      }
      EXPECT_EQ(tok.decode(want), c.at("decoded").get<std::string>()) << id;
      EXPECT_EQ(tok.decode(want, /*skip_special_tokens=*/true), c.at("decoded_skip_special").get<std::string>()) << id;
    }
  }
}

TEST(TokenizerParity, DecodeOnlyCases) {
  for (const auto& folder : tokenizer_folders()) {
    const auto path = folder / "decode_cases.jsonl";
    ASSERT_TRUE(std::filesystem::exists(path)) << path;
    const auto& tok = load(folder);
    for (const auto& c : xpo::test::read_jsonl(path)) {
      const auto id = c.at("id").get<std::string>();
      const auto ids = c.at("ids").get<std::vector<TokenId>>();
      EXPECT_EQ(tok.decode(ids), c.at("decoded").get<std::string>()) << id;
      EXPECT_EQ(tok.decode(ids, true), c.at("decoded_skip_special").get<std::string>()) << id;
      if (c.contains("tokens")) {
        const auto tokens = c.at("tokens").get<std::vector<std::string>>();
        for (std::size_t i = 0; i < ids.size() && i < tokens.size(); ++i) {
          EXPECT_EQ(tok.id_to_token(ids[i]).value_or("<none>"), tokens[i]) << id << " token " << i;
        }
      }
    }
  }
}

// The encoder is deterministic and the merge cache does not change results: a second pass (all words cached),
// a copy of the tokenizer, and the two-thread batch encoder all agree with the first pass.
TEST(TokenizerParity, CacheCopiesAndBatchAgree) {
  for (const auto& folder : tokenizer_folders()) {
    const auto& tok = load(folder);
    std::vector<std::string> texts;
    std::vector<std::vector<TokenId>> first;
    for (const auto& c : xpo::test::read_jsonl(folder / "cases.jsonl")) {
      texts.push_back(c.at("text").get<std::string>());
      first.push_back(tok.encode(texts.back(), false));
    }
    const Tokenizer copy = tok;
    xpo::text::BatchEncodeOptions options;
    options.pad = false;
    options.threads = 2;
    const auto batch = tok.encode_batch(texts, options);
    for (std::size_t i = 0; i < texts.size(); ++i) {
      EXPECT_EQ(tok.encode(texts[i], false), first[i]) << i;
      EXPECT_EQ(copy.encode(texts[i], false), first[i]) << i;
      EXPECT_EQ(batch.ids[i], first[i]) << i;
    }
  }
}

TEST(TokenizerBatch, PaddingAndTruncation) {
  const auto& tok = load(xpo::test::fixture_path("tokenizers/qwen"));
  const std::vector<std::string> texts = {"Hello world, this is a longer sentence.", "Hi"};
  const auto a = tok.encode(texts[0], false), b = tok.encode(texts[1], false);
  ASSERT_GT(a.size(), b.size() + 2);
  const TokenId pad = *tok.special_tokens().pad_id;

  xpo::text::BatchEncodeOptions left;
  const auto l = tok.encode_batch(texts, left);
  ASSERT_EQ(l.ids[1].size(), a.size());
  EXPECT_EQ(l.ids[0], a);
  EXPECT_EQ(std::vector<TokenId>(l.ids[1].end() - static_cast<std::ptrdiff_t>(b.size()), l.ids[1].end()), b);
  EXPECT_EQ(l.ids[1].front(), pad);
  EXPECT_EQ(l.attention_mask[1].front(), 0);
  EXPECT_EQ(l.attention_mask[1].back(), 1);

  xpo::text::BatchEncodeOptions right;
  right.padding_side = xpo::PaddingSide::right;
  right.max_length = 3;
  const auto r = tok.encode_batch(texts, right);
  EXPECT_EQ(r.ids[0], std::vector<TokenId>(a.begin(), a.begin() + 3));
  EXPECT_EQ(r.ids[1].size(), 3U);
  EXPECT_EQ(r.ids[1].back(), b.size() < 3 ? pad : b[2]);

  right.truncation_side = xpo::PaddingSide::left;
  const auto rl = tok.encode_batch(texts, right);
  EXPECT_EQ(rl.ids[0], std::vector<TokenId>(a.end() - 3, a.end()));
}

// Special-token roles come from tokenizer_config.json, as transformers resolves them.
TEST(TokenizerConfig, SpecialTokensAndTemplate) {
  const auto folder = xpo::test::fixture_path("tokenizers/qwen");
  const auto config = xpo::test::read_json(folder / "tokenizer_config.json");
  const auto& tok = load(folder);
  const auto& special = tok.special_tokens();
  for (const char* role : {"eos_token", "pad_token", "bos_token"}) {
    const auto& want = config.contains(role) ? config[role] : nlohmann::json();
    const auto& got = std::string(role) == "eos_token" ? special.eos_token
                      : std::string(role) == "pad_token" ? special.pad_token : special.bos_token;
    if (want.is_null()) {
      EXPECT_FALSE(got.has_value()) << role;
    } else {
      ASSERT_TRUE(got.has_value()) << role;
      EXPECT_EQ(*got, want.is_string() ? want.get<std::string>() : want["content"].get<std::string>());
    }
  }
  ASSERT_TRUE(special.eos_id.has_value());
  EXPECT_EQ(tok.id_to_token(*special.eos_id), special.eos_token);
  EXPECT_EQ(special.generation_eos_ids, std::vector<TokenId>{*special.eos_id});
  ASSERT_TRUE(tok.chat_template().has_value());
  EXPECT_EQ(*tok.chat_template(), config["chat_template"].get<std::string>());
}

// ---- properties that hold for any byte-level tokenizer (no golden values) --------------------------------------

TEST(TokenizerProperties, RoundTripAndUnknownIds) {
  for (const auto& folder : tokenizer_folders()) {
    const auto& tok = load(folder);
    // Byte-level BPE is lossless on NFC text without added tokens.
    for (const std::string text : {"plain ascii", "tabs\tand\nnewlines  ", "日本語のテキスト", "emoji 🤗🤗", "x = f(y) // z"}) {
      EXPECT_EQ(tok.decode(tok.encode(text, false)), text) << folder << ": " << text;
    }
    // Ids past the vocabulary and negative ids decode to nothing.
    const auto ids = tok.encode("ab", false);
    std::vector<TokenId> with_unknown = {static_cast<TokenId>(tok.vocab_size()) + 5, ids[0], -1};
    with_unknown.insert(with_unknown.end(), ids.begin() + 1, ids.end());
    EXPECT_EQ(tok.decode(with_unknown), "ab");
    EXPECT_THROW((void)tok.encode(std::string("bad \xC3 utf8"), false), xpo::Error);
  }
}

// \s must be Unicode White_Space (PCRE2 counts U+180E as a space; the reference does not).
TEST(TokenizerProperties, WhitespaceClassIsUnicodeWhiteSpace) {
  const xpo::text::Regex ws("\\s+");
  const auto count = [&](const std::string& s) { return ws.find_all(s).size(); };
  EXPECT_EQ(count("a\xE1\xA0\x8E" "b"), 0U);       // U+180E is not White_Space
  EXPECT_EQ(count("a\xE3\x80\x80" "b"), 1U);       // U+3000 is
  EXPECT_EQ(count("a\xC2\x85" "b"), 1U);           // U+0085 is
  EXPECT_EQ(count("a\xE2\x80\x8B" "b"), 0U);       // U+200B is not
  const xpo::text::Regex not_ws("[^\\s]+");
  EXPECT_EQ(not_ws.find_all("x\xE1\xA0\x8Ey").size(), 1U);  // one run: U+180E is not a separator
  const xpo::text::Regex lookahead("\\s+(?!\\S)");
  EXPECT_EQ(lookahead.find_all("a   b").front().end - lookahead.find_all("a   b").front().begin, 2U);
}

// normalize() sends only non-ASCII runs (with the character before each) through utf8proc; the result must equal
// normalizing the whole string at once, on every fixture text and on texts built to stress the run boundaries.
TEST(TokenizerProperties, ChunkedNormalizationEqualsWholeString) {
  using xpo::text::NormalizationForm;
  std::vector<std::string> texts = {"e\xCC\x81", "a\xCC\x81\xCC\xA3 x", "\xCC\x81start", "caf\xC3\xA9\xCC\x81",
                                    "\xE1\x84\x80\xE1\x85\xA1 \xEA\xB0\x80", "A\xE2\x84\xAB\xCD\xBE;", "plain"};
  for (const auto& folder : tokenizer_folders()) {
    for (const auto& c : xpo::test::read_jsonl(folder / "cases.jsonl")) texts.push_back(c.at("text").get<std::string>());
  }
  for (const auto form : {NormalizationForm::NFC, NormalizationForm::NFD, NormalizationForm::NFKC, NormalizationForm::NFKD}) {
    for (const auto& t : texts) {
      EXPECT_EQ(xpo::text::normalize(t, form), xpo::text::detail::utf8proc_normalize(t, form)) << t;
    }
  }
}

TEST(TokenizerProperties, LossyUtf8IsMaximalSubpart) {
  using xpo::text::utf8_lossy;
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8_lossy("\xF0\x9F\xA4"), fffd);                 // truncated 4-byte sequence: one
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), fffd + fffd + fffd);   // surrogate: three
  EXPECT_EQ(utf8_lossy("\xC0\xAF"), fffd + fffd);              // overlong: two
  EXPECT_EQ(utf8_lossy("a\xE2\x82" "b"), "a" + fffd + "b");
  EXPECT_EQ(utf8_lossy("\xF4\x90\x80\x80"), fffd + fffd + fffd + fffd);  // above U+10FFFF
}

// ignore_merges (Llama-3): a word that is itself a vocabulary token is emitted whole, even when the merges
// would not build it. No fixture covers it, so this builds a tokenizer where the difference shows.
TEST(TokenizerProperties, IgnoreMergesIsHonoured) {
  nlohmann::json j = {
      {"model",
       {{"type", "BPE"},
        {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"abc", 4}}},
        {"merges", nlohmann::json::array({"a b"})}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}}};
  EXPECT_EQ(Tokenizer::from_json(j).encode("abc", false), (std::vector<TokenId>{3, 2}));
  j["model"]["ignore_merges"] = true;
  const auto t = Tokenizer::from_json(j);
  EXPECT_EQ(t.encode("abc", false), (std::vector<TokenId>{4}));
  EXPECT_EQ(t.encode("abcab", false), (std::vector<TokenId>{3, 2, 3}));  // not in vocab: merges apply
}

// A byte-level tokenizer.json with the 256 byte tokens and the given added tokens (ids = byte values).
nlohmann::json synthetic_tokenizer(const nlohmann::json& added) {
  nlohmann::json vocab = nlohmann::json::object();
  const auto& alphabet = xpo::text::ByteAlphabet::get();
  for (int b = 0; b < 256; ++b) vocab[alphabet.utf8_of_byte[static_cast<std::size_t>(b)]] = b;
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
          {"added_tokens", added},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"decoder", {{"type", "ByteLevel"}}}};
}

// Added-token flags: lstrip/rstrip swallow neighbouring spaces, single_word needs word boundaries, and a
// TemplateProcessing post-processor adds a BOS only when asked.
TEST(TokenizerProperties, AddedTokenFlagsAndPostProcessor) {
  nlohmann::json j = synthetic_tokenizer(
      {{{"id", 300}, {"content", "<m>"}, {"lstrip", true}, {"rstrip", true}, {"special", true}, {"normalized", false}},
       {{"id", 301}, {"content", "cat"}, {"single_word", true}, {"special", false}, {"normalized", false}},
       {{"id", 302}, {"content", "<s>"}, {"special", true}, {"normalized", false}}});
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {302}}, {"tokens", {"<s>"}}}}}}};
  const auto t = Tokenizer::from_json(j);
  EXPECT_EQ(t.encode("x  <m>  y", false), (std::vector<TokenId>{'x', 300, 'y'}));
  EXPECT_EQ(t.encode("a cat", false), (std::vector<TokenId>{'a', ' ', 301}));  // ids = byte values here
  EXPECT_EQ(t.encode("cats", false), (std::vector<TokenId>{'c', 'a', 't', 's'}));  // not a single word
  EXPECT_EQ(t.encode("x", true), (std::vector<TokenId>{302, 'x'}));
  EXPECT_EQ(t.decode(std::vector<TokenId>{302, 'x', 300}, true), "x");
  EXPECT_EQ(t.decode(std::vector<TokenId>{302, 'x', 301}, true), "xcat");  // not special: kept
}

std::size_t jinja_default_limit() { return xpo::text::jinja::Limits{}.max_template_bytes; }

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Special tokens as transformers resolves them: tokenizer_config.json first (strings or {"content": ...}), then
// special_tokens_map.json; generation stop ids from generation_config.json (int or list); chat_template.jinja
// wins over the config's template, and a list of named templates uses "default".
class TokenizerFolder : public xpo::test::ScratchDir {};

TEST_F(TokenizerFolder, SpecialTokensGenerationConfigAndTemplates) {
  const nlohmann::json added = {{{"id", 300}, {"content", "<eos>"}, {"special", true}},
                                {{"id", 301}, {"content", "<pad>"}, {"special", true}},
                                {{"id", 302}, {"content", "<bos>"}, {"special", true}},
                                {{"id", 303}, {"content", "<eot>"}, {"special", true}}};
  write_file(dir_ / "tokenizer.json", synthetic_tokenizer(added).dump());
  write_file(dir_ / "tokenizer_config.json",
             nlohmann::json{{"eos_token", {{"content", "<eos>"}, {"lstrip", false}}},
                            {"bos_token", "<bos>"},
                            {"chat_template", nlohmann::json::array({{{"name", "tool_use"}, {"template", "T"}},
                                                                     {{"name", "default"}, {"template", "D"}}})}}
                 .dump());
  write_file(dir_ / "special_tokens_map.json", nlohmann::json{{"pad_token", "<pad>"}, {"eos_token", "<bos>"}}.dump());
  auto t = Tokenizer::from_pretrained(dir_);
  EXPECT_EQ(t.special_tokens().eos_id, 300);  // tokenizer_config.json wins over special_tokens_map.json
  EXPECT_EQ(t.special_tokens().pad_id, 301);
  EXPECT_EQ(t.special_tokens().bos_id, 302);
  EXPECT_EQ(t.special_tokens().generation_eos_ids, std::vector<TokenId>{300});
  EXPECT_EQ(t.chat_template(), "D");

  write_file(dir_ / "generation_config.json", nlohmann::json{{"eos_token_id", {300, 303}}}.dump());
  write_file(dir_ / "chat_template.jinja", "J");
  t = Tokenizer::from_pretrained(dir_);
  EXPECT_EQ(t.special_tokens().generation_eos_ids, (std::vector<TokenId>{300, 303}));
  EXPECT_EQ(t.chat_template(), "J");

  write_file(dir_ / "generation_config.json", nlohmann::json{{"eos_token_id", 303}}.dump());
  EXPECT_EQ(Tokenizer::from_pretrained(dir_).special_tokens().generation_eos_ids, std::vector<TokenId>{303});

  // A special token that is not in the vocabulary is an error naming the field and the file.
  write_file(dir_ / "tokenizer_config.json", nlohmann::json{{"eos_token", "<nope>"}}.dump());
  try {
    (void)Tokenizer::from_pretrained(dir_);
    ADD_FAILURE();
  } catch (const xpo::FileError& e) {
    EXPECT_NE(std::string(e.what()).find("eos_token \"<nope>\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
  }
  std::filesystem::remove(dir_ / "tokenizer.json");
  EXPECT_THROW((void)Tokenizer::from_pretrained(dir_), xpo::FileError);
}

// Resource bounds: a tokenizer file or a chat template larger than the configured limit is refused, naming the
// file and the limit; at the limit it loads.
TEST_F(TokenizerFolder, FileAndTemplateSizeLimitsAreConfigurable) {
  write_file(dir_ / "tokenizer.json", synthetic_tokenizer({}).dump());
  const std::string tmpl = "{% for m in messages %}{{ m['content'] }}{% endfor %}";
  write_file(dir_ / "tokenizer_config.json", nlohmann::json{{"chat_template", tmpl}}.dump());
  const auto file_bytes = std::filesystem::file_size(dir_ / "tokenizer.json");
  const auto error_of = [&](const xpo::text::TokenizerLimits& limits) -> std::string {
    try {
      (void)Tokenizer::from_pretrained(dir_, limits);
    } catch (const xpo::FileError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(error_of({.max_file_bytes = file_bytes, .max_chat_template_bytes = tmpl.size()}), "");
  auto e = error_of({.max_file_bytes = file_bytes - 1});
  EXPECT_NE(e.find((dir_ / "tokenizer.json").string()), std::string::npos) << e;
  EXPECT_NE(e.find("limit of " + std::to_string(file_bytes - 1)), std::string::npos) << e;
  e = error_of({.max_chat_template_bytes = tmpl.size() - 1});
  EXPECT_NE(e.find((dir_ / "tokenizer_config.json").string()), std::string::npos) << e;
  EXPECT_NE(e.find("chat template has " + std::to_string(tmpl.size()) + " bytes"), std::string::npos) << e;
  write_file(dir_ / "chat_template.jinja", tmpl + tmpl);  // the .jinja file wins and is bounded the same way
  e = error_of({.max_chat_template_bytes = tmpl.size()});
  EXPECT_NE(e.find((dir_ / "chat_template.jinja").string()), std::string::npos) << e;
  // A template above the renderer's own default bound renders when the tokenizer's limit admitted it.
  std::string big = "{# " + std::string(jinja_default_limit() + 16, 'x') + " #}" + tmpl;
  write_file(dir_ / "chat_template.jinja", big);
  const auto t = Tokenizer::from_pretrained(dir_, {.max_chat_template_bytes = big.size()});
  const auto chat = xpo::text::ChatTemplate::of(t);
  EXPECT_EQ(chat.render(nlohmann::json::array({{{"role", "user"}, {"content", "hi"}}}), t.special_tokens()), "hi");
}

// Malformed tokenizer.json files are clear errors that say what is wrong.
TEST(TokenizerErrors, MalformedFilesAreClearErrors) {
  const auto expect_error = [](const nlohmann::json& j, const std::string& needle) {
    try {
      (void)Tokenizer::from_json(j, "bad/tokenizer.json");
      ADD_FAILURE() << "no error for " << j.dump().substr(0, 200);
    } catch (const xpo::FileError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("bad/tokenizer.json"), std::string::npos) << e.what();
    }
  };
  const nlohmann::json pre = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  expect_error({{"pre_tokenizer", pre}}, "no \"model\"");
  expect_error({{"model", {{"type", "Mystery"}, {"vocab", {{"a", 0}}}}}, {"pre_tokenizer", pre}}, "Mystery");
  expect_error({{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}}}, {"merges", {"a  b"}}}}, {"pre_tokenizer", pre}},
               "model.merges[0]");
  expect_error({{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}}}, {"merges", {"a b"}}}}, {"pre_tokenizer", pre}},
               "\"ab\" is not in model.vocab");
  expect_error({{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", nlohmann::json::array({nlohmann::json::array({"a", 1})})}}}, {"pre_tokenizer", pre}},
               "model.merges[0]");
  expect_error({{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}}}, {"pre_tokenizer", {{"type", "UnicodeScripts"}}}},
               "pre_tokenizer.type \"UnicodeScripts\"");
  expect_error({{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}}}, {"pre_tokenizer", pre}, {"normalizer", {{"type", "Strange"}}}},
               "normalizer.type \"Strange\"");
  expect_error({{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}}},
                {"pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}}}},
               "pre_tokenizer.pattern");
  expect_error({{"model", {{"type", "Unigram"}, {"vocab", {{"a", 0}}}}}}, "model.vocab of a Unigram model");
  expect_error({{"model", {{"type", "Unigram"}, {"vocab", nlohmann::json::array({nlohmann::json::array({"a"})})}}}}, "model.vocab[0] is not [piece, score]");
  expect_error({{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}}}, {"normalizer", {{"type", "Prepend"}, {"prepend", 3}}}},
               "normalizer.prepend must be a string");
  expect_error(nlohmann::json::array(), "not a tokenizer.json");
}


// ---- real-world tokenizers: every line of every case file of $XPO_FIXTURES_DIR/realworld/<family>/ ------------------
// The references come from HF's Rust `tokenizers` on tokenizer.json alone, so the file is loaded alone (no
// tokenizer_config.json settings on top).

std::vector<std::filesystem::path> realworld_tokenizer_folders() {
  const auto root = xpo::test::fixture_path("realworld");
  std::vector<std::filesystem::path> folders;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    if (e.is_directory() && std::filesystem::exists(e.path() / "tokenizer.json") &&
        std::filesystem::exists(e.path() / "cases.jsonl")) {
      folders.push_back(e.path());
    }
  }
  std::sort(folders.begin(), folders.end());
  return folders;
}

TEST(TokenizerRealWorld, EveryCaseOfEveryFolder) {
  const auto folders = realworld_tokenizer_folders();
  ASSERT_FALSE(folders.empty()) << "no folder with tokenizer.json + cases.jsonl under " << xpo::test::fixture_path("realworld");
  for (const auto& folder : folders) {
    const auto tok = Tokenizer::from_file(folder / "tokenizer.json");
    const auto cases = xpo::test::read_jsonl(folder / "cases.jsonl");
    ASSERT_FALSE(cases.empty()) << folder;
    for (const auto& c : cases) {
      const auto id = folder.filename().string() + "/" + c.at("id").get<std::string>();
      const auto text = c.at("text").get<std::string>();
      EXPECT_TRUE(same_ids(id, tok.encode(text, false), c.at("ref_ids").get<std::vector<TokenId>>()));
      const auto with_special = c.at("ref_ids_special").get<std::vector<TokenId>>();
      EXPECT_TRUE(same_ids(id + " (special)", tok.encode(text, true), with_special));
      EXPECT_EQ(tok.decode(with_special), c.at("ref_decode").get<std::string>()) << id;
      EXPECT_EQ(tok.decode(with_special, true), c.at("ref_decode_skip").get<std::string>()) << id;
    }
  }
}

// The word cache, a copy and the two-thread batch encoder agree with a first pass, for these tokenizers too.
TEST(TokenizerRealWorld, CacheCopiesAndBatchAgree) {
  for (const auto& folder : realworld_tokenizer_folders()) {
    const auto tok = Tokenizer::from_file(folder / "tokenizer.json");
    std::vector<std::string> texts;
    std::vector<std::vector<TokenId>> first;
    for (const auto& c : xpo::test::read_jsonl(folder / "cases.jsonl")) {
      texts.push_back(c.at("text").get<std::string>());
      first.push_back(tok.encode(texts.back(), false));
    }
    const Tokenizer copy = tok;
    xpo::text::BatchEncodeOptions options;
    options.pad = false;
    options.threads = 2;
    const auto batch = copy.encode_batch(texts, options);
    for (std::size_t i = 0; i < texts.size(); ++i) {
      EXPECT_EQ(tok.encode(texts[i], false), first[i]) << folder << " " << i;
      EXPECT_EQ(batch.ids[i], first[i]) << folder << " " << i;
    }
  }
}

// PairRM's DeBERTa-v3 tokenizer (Unigram + Precompiled normalizer + Metaspace, the markers as normalized added
// tokens), loaded from its folder as any checkpoint folder: every reference string's ids and pieces.
TEST(TokenizerRealWorld, PairRmUnigramReferenceIds) {
  const auto folder = xpo::test::fixture_path("judges/tiny-pairrm");
  const auto tok = Tokenizer::from_pretrained(folder);
  std::ifstream in(xpo::test::fixture_path("judges/tiny-pairrm/tokenizer_reference.json"));
  const auto reference = nlohmann::json::parse(in);
  ASSERT_FALSE(reference.at("strings").empty());
  for (const auto& s : reference.at("strings")) {
    const auto text = s.at("text").get<std::string>();
    const auto want = s.at("ids").get<std::vector<TokenId>>();
    EXPECT_TRUE(same_ids(nlohmann::json(text).dump(), tok.encode(text, true), want));
    const auto tokens = s.at("tokens").get<std::vector<std::string>>();
    ASSERT_EQ(tokens.size(), want.size()) << text;
    for (std::size_t i = 0; i < want.size(); ++i) EXPECT_EQ(tok.id_to_token(want[i]).value_or("<none>"), tokens[i]) << text;
  }
  std::vector<std::string> texts;
  for (const auto& s : reference.at("strings")) texts.push_back(s.at("text").get<std::string>());
  xpo::text::BatchEncodeOptions options;
  options.add_special_tokens = true;
  options.pad = false;
  options.threads = 2;
  const auto batch = tok.encode_batch(texts, options);
  for (std::size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(batch.ids[i], tok.encode(texts[i], true)) << texts[i];
}

// ---- components, one small hand-made input each (examples after the tokenizers documentation) -------------------

const std::string kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's word-boundary mark

// A character-level BPE tokenizer.json: `pieces` are the vocabulary (ids in order) followed by the 256 <0xNN> byte
// pieces; ignore_merges makes a pre-token that is a piece one token, so the pieces show the pre-tokenization. The
// decoder turns byte pieces back into text.
nlohmann::json char_tokenizer(const std::vector<std::string>& pieces) {
  nlohmann::json vocab = nlohmann::json::object();
  TokenId id = 0;
  for (const auto& p : pieces) vocab[p] = id++;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    if (!vocab.contains(name)) vocab[name] = id++;
  }
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}, {"byte_fallback", true},
                     {"ignore_merges", true}}},
          {"decoder", {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}}}};
}

std::vector<std::string> tokens_of(const Tokenizer& t, const std::string& text, bool special = false) {
  std::vector<std::string> out;
  for (const auto id : t.encode(text, special)) out.push_back(t.id_to_token(id).value_or("<none>"));
  return out;
}

using Strings = std::vector<std::string>;

// What a normalizer makes of `text`: every character becomes its byte pieces, which decode back to the text.
std::string normalized_by(const nlohmann::json& normalizer, const std::string& text) {
  auto j = char_tokenizer({});
  j["normalizer"] = normalizer;
  const auto t = Tokenizer::from_json(j);
  return t.decode(t.encode(text, false));
}

TEST(TokenizerComponents, Normalizers) {
  const auto string_pattern = [](const std::string& s) { return nlohmann::json{{"String", s}}; };
  EXPECT_EQ(normalized_by({{"type", "Prepend"}, {"prepend", kSpace}}, "hey"), kSpace + "hey");
  EXPECT_EQ(normalized_by({{"type", "Prepend"}, {"prepend", kSpace}}, ""), "");  // nothing to prepend to
  EXPECT_EQ(normalized_by({{"type", "Replace"}, {"pattern", string_pattern(" ")}, {"content", kSpace}}, "a b  c"),
            "a" + kSpace + "b" + kSpace + kSpace + "c");
  EXPECT_EQ(normalized_by({{"type", "Replace"}, {"pattern", {{"Regex", " {2,}"}}}, {"content", " "}}, "a    b  c d"), "a b c d");
  EXPECT_EQ(normalized_by({{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}}, " \t hi there \n"), "hi there");
  EXPECT_EQ(normalized_by({{"type", "Strip"}, {"strip_left", false}, {"strip_right", true}}, "  hi  "), "  hi");
  EXPECT_EQ(normalized_by({{"type", "Lowercase"}}, "HeLLo \xC3\x89T\xC3\x89"), "hello \xC3\xA9t\xC3\xA9");
  EXPECT_EQ(normalized_by({{"type", "NFKC"}}, "\xEF\xAC\x81" "ne \xEF\xBC\xA1"), "fine A");  // ligature fi, fullwidth A
  EXPECT_EQ(normalized_by({{"type", "NFC"}}, "e\xCC\x81"), "\xC3\xA9");
  EXPECT_EQ(normalized_by({{"type", "NFD"}}, "\xC3\xA9"), "e\xCC\x81");
  EXPECT_EQ(normalized_by({{"type", "NFKD"}}, "\xC2\xBD"), "1\xE2\x81\x84" "2");
  EXPECT_EQ(normalized_by({{"type", "Sequence"}, {"normalizers", {{{"type", "NFD"}}, {{"type", "StripAccents"}}, {{"type", "Lowercase"}}}}},
                          "Caf\xC3\xA9"),
            "cafe");
  // Llama-2's legacy normalizer: a word-boundary mark in front, every space becomes one.
  EXPECT_EQ(normalized_by({{"type", "Sequence"},
                           {"normalizers", {{{"type", "Prepend"}, {"prepend", kSpace}},
                                            {{"type", "Replace"}, {"pattern", string_pattern(" ")}, {"content", kSpace}}}}},
                          "Hi you"),
            kSpace + "Hi" + kSpace + "you");
  EXPECT_EQ(normalized_by({{"type", "BertNormalizer"}, {"lowercase", true}}, "H\xC3\xA9llo\tW\xE4\xBD\xA0"), "hello w \xE4\xBD\xA0 ");
}

// The Precompiled normalizer with the charsmap of a real SentencePiece model (nmt_nfkc rules): NFKC folding and
// control whitespace to spaces.
TEST(TokenizerComponents, PrecompiledCharsmap) {
  std::ifstream in(xpo::test::fixture_path("judges/tiny-pairrm/tokenizer.json"));
  const auto j = nlohmann::json::parse(in);
  nlohmann::json precompiled;
  for (const auto& n : j.at("normalizer").at("normalizers")) {
    if (n.at("type") == "Precompiled") precompiled = n;
  }
  ASSERT_FALSE(precompiled.is_null()) << "the PairRM tokenizer.json has no Precompiled normalizer";
  EXPECT_EQ(normalized_by(precompiled, "\xEF\xAC\x81" "ne"), "fine");                        // ligature
  EXPECT_EQ(normalized_by(precompiled, "\xEF\xBC\xB4\xEF\xBD\x8F"), "To");                   // fullwidth
  EXPECT_EQ(normalized_by(precompiled, "a\tb\nc"), "a b c");                                 // control whitespace
  EXPECT_EQ(normalized_by(precompiled, "plain text"), "plain text");                         // unchanged
  EXPECT_THROW((void)normalized_by({{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA!"}}, "x"), xpo::FileError);
  EXPECT_THROW((void)normalized_by({{"type", "Precompiled"}, {"precompiled_charsmap", "/////w=="}}, "x"), xpo::FileError);
}

// Split with each behaviour, on the documentation's example.
TEST(TokenizerComponents, SplitBehaviours) {
  const auto split = [](const std::string& behavior, bool invert = false) {
    auto j = char_tokenizer({"the", "final", "countdown", "-", "--", "the-", "final-", "-final", "-countdown"});
    j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}};
    return tokens_of(Tokenizer::from_json(j), "the-final--countdown");
  };
  EXPECT_EQ(split("Removed"), (Strings{"the", "final", "countdown"}));
  EXPECT_EQ(split("Isolated"), (Strings{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithPrevious"), (Strings{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithNext"), (Strings{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(split("Contiguous"), (Strings{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(split("Removed", /*invert=*/true), (Strings{"-", "-", "-"}));  // each match is its own piece
  auto j = char_tokenizer({"ab", "12", "c"});
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "\\d+"}}}, {"behavior", "Isolated"}};
  EXPECT_EQ(tokens_of(Tokenizer::from_json(j), "ab12c"), (Strings{"ab", "12", "c"}));
}

TEST(TokenizerComponents, Metaspace) {
  const auto metaspace = [&](const nlohmann::json& options, const std::string& text) {
    auto j = char_tokenizer({kSpace + "hey", kSpace + "friend", "hey", "friend", kSpace + "hey" + kSpace + "friend", "<x>"});
    j["added_tokens"] = {{{"id", 5}, {"content", "<x>"}, {"special", true}, {"normalized", false}}};
    j["pre_tokenizer"] = options;
    j["pre_tokenizer"]["type"] = "Metaspace";
    j["pre_tokenizer"]["replacement"] = kSpace;
    return tokens_of(Tokenizer::from_json(j), text);
  };
  EXPECT_EQ(metaspace({{"prepend_scheme", "always"}, {"split", true}}, "hey friend"), (Strings{kSpace + "hey", kSpace + "friend"}));
  EXPECT_EQ(metaspace({{"prepend_scheme", "always"}, {"split", false}}, "hey friend"), (Strings{kSpace + "hey" + kSpace + "friend"}));
  EXPECT_EQ(metaspace({{"prepend_scheme", "never"}, {"split", true}}, "hey friend"), (Strings{"hey", kSpace + "friend"}));
  // "first": only the piece at the start of the input gets the mark, not the one after an added token.
  EXPECT_EQ(metaspace({{"prepend_scheme", "first"}, {"split", true}}, "hey<x>hey"), (Strings{kSpace + "hey", "<x>", "hey"}));
  EXPECT_EQ(metaspace({{"prepend_scheme", "always"}, {"split", true}}, "hey<x>hey"), (Strings{kSpace + "hey", "<x>", kSpace + "hey"}));
  // The older spelling: add_prefix_space true = always, false = never.
  EXPECT_EQ(metaspace({{"add_prefix_space", true}}, "hey<x>hey"), (Strings{kSpace + "hey", "<x>", kSpace + "hey"}));
  EXPECT_EQ(metaspace({{"add_prefix_space", false}}, "hey friend"), (Strings{"hey", kSpace + "friend"}));
}

TEST(TokenizerComponents, OtherPreTokenizers) {
  const auto pre = [](const nlohmann::json& p, const Strings& pieces, const std::string& text) {
    auto j = char_tokenizer(pieces);
    j["pre_tokenizer"] = p;
    return tokens_of(Tokenizer::from_json(j), text);
  };
  const Strings words = {"Hey", "friend", "!", "!!", "friend!!", "123", "1", "2", "3", "a"};
  EXPECT_EQ(pre({{"type", "Whitespace"}}, words, "Hey friend!!"), (Strings{"Hey", "friend", "!!"}));
  EXPECT_EQ(pre({{"type", "WhitespaceSplit"}}, words, "Hey  friend!!"), (Strings{"Hey", "friend!!"}));
  EXPECT_EQ(pre({{"type", "Punctuation"}}, words, "friend!!"), (Strings{"friend", "!", "!"}));
  EXPECT_EQ(pre({{"type", "Punctuation"}, {"behavior", "Contiguous"}}, words, "friend!!"), (Strings{"friend", "!!"}));
  EXPECT_EQ(pre({{"type", "BertPreTokenizer"}}, words, "Hey friend!!"), (Strings{"Hey", "friend", "!", "!"}));
  EXPECT_EQ(pre({{"type", "Digits"}, {"individual_digits", true}}, words, "a123"), (Strings{"a", "1", "2", "3"}));
  EXPECT_EQ(pre({{"type", "Digits"}, {"individual_digits", false}}, words, "a123"), (Strings{"a", "123"}));
  EXPECT_EQ(pre({{"type", "CharDelimiterSplit"}, {"delimiter", "!"}}, words, "Hey!friend"), (Strings{"Hey", "friend"}));
  EXPECT_EQ(pre({{"type", "Sequence"}, {"pretokenizers", {{{"type", "WhitespaceSplit"}}, {{"type", "Punctuation"}}}}}, words,
                "Hey friend!!"),
            (Strings{"Hey", "friend", "!", "!"}));
  // Whitespace's \w is Oniguruma's: a Devanagari word with vowel signs (marks) stays one word.
  const std::string namaste = "\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5\x87";
  EXPECT_EQ(pre({{"type", "Whitespace"}}, {namaste}, namaste + " " + namaste), (Strings{namaste, namaste}));
}

// Pre-tokenizers after a ByteLevel step see the byte-level alphabet (Falcon: Punctuation, ByteLevel, Digits): "½"
// is two alphabet characters, "Â" (byte C2) and "½" (byte BD), of which only the second is a digit.
TEST(TokenizerComponents, SplitsAfterByteLevelSeeTheByteAlphabet) {
  auto j = synthetic_tokenizer({});
  j["model"]["vocab"]["\u00c2\u00bd"] = 300;  // the two bytes of U+00BD as one token
  j["model"]["ignore_merges"] = true;
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}},
                                           {{"type", "Digits"}, {"individual_digits", true}}}}};
  EXPECT_EQ(Tokenizer::from_json(j).encode("\xC2\xBD" "1", false), (std::vector<TokenId>{0xC2, 0xBD, '1'}));
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  EXPECT_EQ(Tokenizer::from_json(j).encode("\xC2\xBD", false), (std::vector<TokenId>{300}));
}

// Decoders on the tokens of given ids.
TEST(TokenizerComponents, Decoders) {
  const Strings pieces = {kSpace + "Hey", kSpace + "x", "a", kSpace, "<0xE2>", "<0x82>", "<0xAC>"};
  const auto decode = [&](const nlohmann::json& decoder, const std::vector<TokenId>& ids) {
    auto j = char_tokenizer(pieces);
    j["decoder"] = decoder;
    return Tokenizer::from_json(j).decode(ids);
  };
  const nlohmann::json replace = {{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}};
  const nlohmann::json llama = {{"type", "Sequence"},
                                {"decoders", {replace, {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                                              {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  EXPECT_EQ(decode(llama, {0, 4, 5, 6, 1}), "Hey\xE2\x82\xAC x");
  EXPECT_EQ(decode(llama, {4, 5, 2}), "\xEF\xBF\xBD\xEF\xBF\xBD" "a");  // an incomplete character: one U+FFFD per byte
  EXPECT_EQ(decode({{"type", "Metaspace"}, {"replacement", kSpace}, {"prepend_scheme", "always"}}, {0, 1}), "Hey x");
  EXPECT_EQ(decode({{"type", "Metaspace"}, {"replacement", kSpace}, {"prepend_scheme", "never"}}, {0, 1}), " Hey x");
  EXPECT_EQ(decode({{"type", "Metaspace"}, {"replacement", kSpace}, {"add_prefix_space", true}}, {3, 0}), " Hey");
  EXPECT_EQ(decode({{"type", "Sequence"}, {"decoders", {replace, {{"type", "Strip"}, {"content", "x"}, {"start", 0}, {"stop", 1}}}}}, {2, 1}),
            "a ");  // Strip works per token: only the last token ends with an x
  EXPECT_EQ(decode(replace, {0, 2}), " Heya");  // no Fuse: tokens are still joined
  auto j = char_tokenizer(pieces);
  j.erase("decoder");
  EXPECT_EQ(Tokenizer::from_json(j).decode(std::vector<TokenId>{0, 2}), kSpace + "Hey a");  // no decoder: joined by spaces
}

TEST(TokenizerComponents, PostProcessors) {
  auto j = char_tokenizer({"<s>", "</s>", "x"});
  j["added_tokens"] = {{{"id", 0}, {"content", "<s>"}, {"special", true}}, {{"id", 1}, {"content", "</s>"}, {"special", true}}};
  j["post_processor"] = {{"type", "RobertaProcessing"}, {"sep", {"</s>", 1}}, {"cls", {"<s>", 0}}};
  EXPECT_EQ(Tokenizer::from_json(j).encode("x", true), (std::vector<TokenId>{0, 2, 1}));
  j["post_processor"] = {{"type", "BertProcessing"}, {"sep", {"</s>", 1}}, {"cls", {"<s>", 0}}};
  EXPECT_EQ(Tokenizer::from_json(j).encode("x", true), (std::vector<TokenId>{0, 2, 1}));
  const nlohmann::json eos_template = {
      {"type", "TemplateProcessing"},
      {"single", {{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}}},
      {"special_tokens", {{"</s>", {{"id", "</s>"}, {"ids", {1}}, {"tokens", {"</s>"}}}}}}};
  j["post_processor"] = {{"type", "Sequence"}, {"processors", {{{"type", "ByteLevel"}, {"trim_offsets", false}}, eos_template}}};
  const auto t = Tokenizer::from_json(j);
  EXPECT_EQ(t.encode("x", true), (std::vector<TokenId>{2, 1}));
  EXPECT_EQ(t.encode("x", false), (std::vector<TokenId>{2}));
}

// SentencePiece-style BPE: characters, merges by rank, byte fallback, the unknown token (fused or not).
TEST(TokenizerComponents, CharacterBpeByteFallbackAndUnknown) {
  nlohmann::json j = {{"model",
                       {{"type", "BPE"},
                        {"vocab", {{"<unk>", 0}, {kSpace, 1}, {"h", 2}, {"e", 3}, {"y", 4}, {kSpace + "h", 5}, {"ey", 6},
                                   {kSpace + "hey", 7}, {"<0xC3>", 8}, {"<0xA9>", 9}}},
                        {"merges", {kSpace + " h", "e y", kSpace + "h ey"}},
                        {"unk_token", "<unk>"},
                        {"byte_fallback", true},
                        {"fuse_unk", true}}},
                      {"normalizer", {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}}}};
  auto t = Tokenizer::from_json(j);
  EXPECT_EQ(t.encode(" hey", false), (std::vector<TokenId>{7}));
  EXPECT_EQ(t.encode("hey", false), (std::vector<TokenId>{2, 6}));
  EXPECT_EQ(t.encode("h\xC3\xA9", false), (std::vector<TokenId>{2, 8, 9}));  // é -> its two byte pieces
  EXPECT_EQ(t.encode("h\xC3\xA0\xC3\xA0y", false), (std::vector<TokenId>{2, 0, 4}));  // à has no byte pieces: one fused unk
  j["model"]["fuse_unk"] = false;
  EXPECT_EQ(Tokenizer::from_json(j).encode("h\xC3\xA0\xC3\xA0y", false), (std::vector<TokenId>{2, 0, 0, 4}));
  j["model"]["byte_fallback"] = false;
  EXPECT_EQ(Tokenizer::from_json(j).encode("h\xC3\xA9", false), (std::vector<TokenId>{2, 0}));
  j["model"].erase("unk_token");
  EXPECT_EQ(Tokenizer::from_json(j).encode("h\xC3\xA9y", false), (std::vector<TokenId>{2, 4}));  // no unk: dropped
}

TEST(TokenizerComponents, UnigramViterbi) {
  const auto unigram = [](double ab_score, bool byte_fallback) {
    nlohmann::json vocab = nlohmann::json::array({nlohmann::json::array({"<unk>", 0.0}), nlohmann::json::array({"a", -1.0}),
                                                  nlohmann::json::array({"b", -1.0}), nlohmann::json::array({"ab", ab_score}),
                                                  nlohmann::json::array({"<0x78>", -5.0})});
    return Tokenizer::from_json({{"model", {{"type", "Unigram"}, {"unk_id", 0}, {"vocab", vocab}, {"byte_fallback", byte_fallback}}}});
  };
  EXPECT_EQ(unigram(-1.5, false).encode("ab", false), (std::vector<TokenId>{3}));      // -1.5 beats -1 + -1
  EXPECT_EQ(unigram(-2.5, false).encode("ab", false), (std::vector<TokenId>{1, 2}));   // -2 beats -2.5
  EXPECT_EQ(unigram(-1.5, false).encode("zzab", false), (std::vector<TokenId>{0, 3})); // unknown run: one unk
  EXPECT_EQ(unigram(-1.5, false).encode("azb", false), (std::vector<TokenId>{1, 0, 2}));
  EXPECT_EQ(unigram(-1.5, true).encode("xa", false), (std::vector<TokenId>{4, 1}));    // byte fallback for x
  EXPECT_EQ(unigram(-1.5, true).encode("za", false), (std::vector<TokenId>{0, 1}));    // no <0x7A>: unk
  const auto no_unk = Tokenizer::from_json(
      {{"model", {{"type", "Unigram"}, {"vocab", nlohmann::json::array({nlohmann::json::array({"a", -1.0})})}}}});
  EXPECT_EQ(no_unk.encode("aa", false), (std::vector<TokenId>{0, 0}));
  EXPECT_THROW((void)no_unk.encode("b", false), xpo::Error);
}

// WordPiece (BERT): greedy longest match with "##" continuations, the unknown token for a word with an unmatchable
// part or too many characters; WordLevel: whole words.
TEST(TokenizerComponents, WordPieceAndWordLevel) {
  const nlohmann::json vocab = {{"[UNK]", 0}, {"un", 1}, {"##aff", 2}, {"##able", 3}, {"aff", 4}, {"want", 5}, {"##ed", 6}};
  nlohmann::json j = {{"model", {{"type", "WordPiece"}, {"vocab", vocab}, {"unk_token", "[UNK]"}, {"max_input_chars_per_word", 9}}},
                      {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
                      {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}}};
  const auto t = Tokenizer::from_json(j);
  EXPECT_EQ(t.encode("unaffable wanted", false), (std::vector<TokenId>{1, 2, 3, 5, 6}));
  EXPECT_EQ(t.encode("unaffx want", false), (std::vector<TokenId>{0, 5}));      // "x" has no piece: the word is [UNK]
  EXPECT_EQ(t.encode("unaffableed", false), (std::vector<TokenId>{0}));        // 11 characters > 9
  EXPECT_EQ(t.decode(std::vector<TokenId>{1, 2, 3, 5, 6}), "unaffable wanted");
  j["model"] = {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "[UNK]"}};
  EXPECT_EQ(Tokenizer::from_json(j).encode("want un wanted", false), (std::vector<TokenId>{5, 1, 0}));
  j["model"].erase("unk_token");
  EXPECT_THROW((void)Tokenizer::from_json(j).encode("wanted", false), xpo::Error);
}

// Everything unsupported in a file is named in one error.
TEST(TokenizerErrors, EveryUnsupportedComponentIsNamedAtOnce) {
  nlohmann::json j = {{"model", {{"type", "Mystery"}, {"vocab", {{"a", 0}}}}},
                      {"normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Strange"}}}}}},
                      {"pre_tokenizer", {{"type", "UnicodeScripts"}}},
                      {"decoder", {{"type", "CTC"}}},
                      {"post_processor", {{"type", "Unknown"}}}};
  try {
    (void)Tokenizer::from_json(j, "many/tokenizer.json");
    ADD_FAILURE();
  } catch (const xpo::FileError& e) {
    const std::string what = e.what();
    for (const char* part : {"many/tokenizer.json", "model.type \"Mystery\"", "normalizer.normalizers[1].type \"Strange\"",
                             "pre_tokenizer.type \"UnicodeScripts\"", "decoder.type \"CTC\"", "post_processor.type \"Unknown\""}) {
      EXPECT_NE(what.find(part), std::string::npos) << part << " not in: " << what;
    }
  }
}

// ---- tokenizer_config.json on small synthetic folders ----------------------------------------------------------

TEST_F(TokenizerFolder, AddBosAndEosTokens) {
  const nlohmann::json added = {{{"id", 300}, {"content", "<s>"}, {"special", true}, {"normalized", false}},
                                {{"id", 301}, {"content", "</s>"}, {"special", true}, {"normalized", false}}};
  write_file(dir_ / "tokenizer.json", synthetic_tokenizer(added).dump());
  const auto with_config = [&](nlohmann::json config) {
    config["bos_token"] = "<s>";
    config["eos_token"] = "</s>";
    write_file(dir_ / "tokenizer_config.json", config.dump());
    return Tokenizer::from_pretrained(dir_);
  };
  // No post-processor in tokenizer.json (DeepSeek's case): the flags decide.
  auto t = with_config({{"add_bos_token", true}, {"add_eos_token", true}, {"tokenizer_class", "PreTrainedTokenizerFast"}});
  EXPECT_EQ(t.encode("x", true), (std::vector<TokenId>{300, 'x', 301}));
  EXPECT_EQ(t.encode("x", false), (std::vector<TokenId>{'x'}));
  t = with_config({{"add_bos_token", false}, {"add_eos_token", true}});
  EXPECT_EQ(t.encode("x", true), (std::vector<TokenId>{'x', 301}));
  t = with_config({{"tokenizer_class", "PreTrainedTokenizerFast"}});
  EXPECT_EQ(t.encode("x", true), (std::vector<TokenId>{'x'}));
  // Llama's fast tokenizer rebuilds the post-processor from the flags (BOS by default), whatever the file says.
  t = with_config({{"tokenizer_class", "LlamaTokenizerFast"}});
  EXPECT_EQ(t.encode("x", true), (std::vector<TokenId>{300, 'x'}));
  t = with_config({{"tokenizer_class", "GPTNeoXTokenizerFast"}, {"add_eos_token", true}});  // BOS off by default there
  EXPECT_EQ(t.encode("x", true), (std::vector<TokenId>{'x', 301}));
  auto j = synthetic_tokenizer(added);
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {300}}, {"tokens", {"<s>"}}}}}}};
  write_file(dir_ / "tokenizer.json", j.dump());
  t = with_config({{"tokenizer_class", "LlamaTokenizerFast"}, {"add_bos_token", false}, {"add_eos_token", true}});
  EXPECT_EQ(t.encode("x", true), (std::vector<TokenId>{'x', 301}));
  // A flag that asks for a token the folder does not define is an error naming the file.
  write_file(dir_ / "tokenizer.json", synthetic_tokenizer(added).dump());
  write_file(dir_ / "tokenizer_config.json", nlohmann::json{{"add_eos_token", true}}.dump());
  try {
    (void)Tokenizer::from_pretrained(dir_);
    ADD_FAILURE();
  } catch (const xpo::FileError& e) {
    EXPECT_NE(std::string(e.what()).find("add_eos_token"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
  }
  write_file(dir_ / "tokenizer_config.json", nlohmann::json{{"add_bos_token", "yes"}}.dump());
  EXPECT_THROW((void)Tokenizer::from_pretrained(dir_), xpo::FileError);
}

TEST_F(TokenizerFolder, CleanUpTokenizationSpacesAndLegacy) {
  write_file(dir_ / "tokenizer.json", synthetic_tokenizer({}).dump());
  const std::string text = "Hello , world . I 'm here ! Is n't it ?";
  write_file(dir_ / "tokenizer_config.json", nlohmann::json{{"clean_up_tokenization_spaces", true}, {"legacy", false}}.dump());
  auto t = Tokenizer::from_pretrained(dir_);
  EXPECT_TRUE(t.clean_up_tokenization_spaces());
  EXPECT_EQ(t.decode(t.encode(text, false)), "Hello, world. I'm here! Isn't it?");
  EXPECT_EQ(t.decode_tokens(t.encode(text, false)), text);  // the decoder's own text
  EXPECT_EQ(t.legacy(), std::optional<bool>(false));
  write_file(dir_ / "tokenizer_config.json", nlohmann::json{{"clean_up_tokenization_spaces", false}}.dump());
  t = Tokenizer::from_pretrained(dir_);
  EXPECT_EQ(t.decode(t.encode(text, false)), text);
  EXPECT_EQ(t.legacy(), std::nullopt);
}

// added_tokens_decoder entries that tokenizer.json lacks are added with their flags; a special token that is only in
// the vocabulary becomes a special added token (split out of text, skipped by skip_special_tokens).
TEST_F(TokenizerFolder, AddedTokensFromTheConfig) {
  auto j = synthetic_tokenizer({});
  j["normalizer"] = {{"type", "Lowercase"}};
  write_file(dir_ / "tokenizer.json", j.dump());
  const nlohmann::json decoder = {
      {"300", {{"content", "<m>"}, {"lstrip", true}, {"rstrip", true}, {"special", true}, {"normalized", false}}},
      {"301", {{"content", "cat"}, {"single_word", true}, {"special", false}, {"normalized", false}}},
      {"302", {{"content", "ab"}, {"special", false}, {"normalized", true}}}};
  write_file(dir_ / "tokenizer_config.json", nlohmann::json{{"added_tokens_decoder", decoder}, {"eos_token", "z"}}.dump());
  const auto t = Tokenizer::from_pretrained(dir_);
  EXPECT_EQ(t.encode("x  <m>  y", false), (std::vector<TokenId>{'x', 300, 'y'}));
  EXPECT_EQ(t.encode("a cat", false), (std::vector<TokenId>{'a', ' ', 301}));
  EXPECT_EQ(t.encode("cats", false), (std::vector<TokenId>{'c', 'a', 't', 's'}));
  EXPECT_EQ(t.encode("xABy", false), (std::vector<TokenId>{'x', 302, 'y'}));  // matched after lowercasing
  EXPECT_EQ(t.special_tokens().eos_id, TokenId{'z'});
  EXPECT_TRUE(t.is_special('z'));
  EXPECT_EQ(t.decode(t.encode("xzx", false), true), "xx");
}

}  // namespace
