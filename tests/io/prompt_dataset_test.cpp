// Prompt datasets from JSONL: both formats (per file), folders, other columns kept, bad lines named by file and
// line (or skipped and counted), bounded line length, and a deterministic eval split.
#include <xpo/io/prompt_dataset.hpp>

#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "support/fixtures.hpp"

namespace {

using xpo::io::PromptFormat;

class PromptDatasetTest : public xpo::test::ScratchDir {
 protected:
  std::filesystem::path write(const std::string& name, const std::string& text) {
    const auto path = dir_ / name;
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
  void expect_error(const std::filesystem::path& path, const std::string& where, const std::string& what) {
    try {
      (void)xpo::io::load_prompt_dataset(path);
      ADD_FAILURE() << "no error for " << path;
    } catch (const xpo::FileError& e) {
      EXPECT_NE(std::string(e.what()).find(where), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  }
};

TEST_F(PromptDatasetTest, StandardConversationalAndFolders) {
  write("b.jsonl", R"({"prompt": [{"role": "user", "content": "Hi"}], "chat_template_kwargs": {"enable_thinking": false}})"
                   "\n\n"
                   R"({"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]})"
                   "\r\n");
  write("a.jsonl", R"({"prompt": "The sky is", "id": 7, "extra": [1, 2]})"
                   "\n"
                   R"({"prompt": "Water is"})");
  write("notes.txt", "ignored");
  const auto d = xpo::io::load_prompt_dataset(dir_);
  ASSERT_EQ(d.rows.size(), 4U);
  ASSERT_EQ(d.files.size(), 2U);
  EXPECT_EQ(d.files[0].first.filename(), "a.jsonl");  // name order
  EXPECT_EQ(d.files[0].second, PromptFormat::standard);
  EXPECT_EQ(d.files[1].second, PromptFormat::conversational);
  EXPECT_EQ(d.rows[0]["prompt"], "The sky is");
  EXPECT_EQ(d.rows[0]["id"], 7);  // other columns are kept
  EXPECT_EQ(d.rows[2]["chat_template_kwargs"]["enable_thinking"], false);
  EXPECT_EQ(d.rows[3]["prompt"].size(), 2U);
  EXPECT_EQ(d.skipped_rows, 0U);
}

TEST_F(PromptDatasetTest, BadLinesNameFileAndLine) {
  const auto bad_json = write("bad.jsonl", R"({"prompt": "ok"})" "\n" R"({"prompt": "unterminated)" "\n");
  expect_error(bad_json, "bad.jsonl:2", "not valid JSON");
  expect_error(write("missing.jsonl", R"({"prompt": "ok"})" "\n\n" R"({"text": "x"})" "\n"), "missing.jsonl:3", "no \"prompt\"");
  expect_error(write("mixed.jsonl", R"({"prompt": "ok"})" "\n" R"({"prompt": [{"role": "user", "content": "x"}]})"),
               "mixed.jsonl:2", "must be a string");
  expect_error(write("msg.jsonl", R"({"prompt": [{"role": "user"}]})"), "msg.jsonl:1", "message 0");
  expect_error(write("array.jsonl", R"(["prompt", "x"])"), "array.jsonl:1", "JSON object");
  expect_error(write("utf8.jsonl", "{\"prompt\": \"caf\xC3\"}"), "utf8.jsonl:1", "not valid JSON");
  expect_error(write("empty.jsonl", "\n\n"), "empty.jsonl", "no usable prompt rows");
  expect_error(dir_ / "absent.jsonl", "absent.jsonl", "cannot open");

  // With skip_bad_rows, bad lines are counted and the rest is read.
  xpo::io::PromptDatasetOptions skip;
  skip.skip_bad_rows = true;
  const auto d = xpo::io::load_prompt_dataset(bad_json, skip);
  EXPECT_EQ(d.rows.size(), 1U);
  EXPECT_EQ(d.skipped_rows, 1U);
}

TEST_F(PromptDatasetTest, OverlongLinesAreRefused) {
  const auto path = write("long.jsonl", R"({"prompt": "short"})" "\n{\"prompt\": \"" + std::string(5000, 'x') + "\"}\n");
  xpo::io::PromptDatasetOptions options;
  options.max_line_bytes = 1000;
  try {
    (void)xpo::io::load_prompt_dataset(path, options);
    ADD_FAILURE();
  } catch (const xpo::FileError& e) {
    EXPECT_NE(std::string(e.what()).find("long.jsonl:2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("1000 bytes"), std::string::npos) << e.what();
  }
  options.max_line_bytes = 10000;
  EXPECT_EQ(xpo::io::load_prompt_dataset(path, options).rows.size(), 2U);
}

TEST(PromptDatasetSplit, DeterministicDisjointAndComplete) {
  xpo::io::PromptRows rows;
  for (int i = 0; i < 50; ++i) rows.push_back({{"prompt", std::to_string(1000 + i)}});
  const auto [train, eval] = xpo::io::split_eval(rows, 0.2, 42);
  EXPECT_EQ(eval.size(), 10U);
  EXPECT_EQ(train.size(), 40U);
  std::set<std::string> seen;
  for (const auto& r : train) seen.insert(r["prompt"].get<std::string>());
  for (const auto& r : eval) EXPECT_TRUE(seen.insert(r["prompt"].get<std::string>()).second);
  EXPECT_EQ(seen.size(), 50U);
  EXPECT_EQ(xpo::io::split_eval(rows, 0.2, 42).second, eval);   // same seed, same split
  EXPECT_NE(xpo::io::split_eval(rows, 0.2, 43).second, eval);   // another seed, another split
  EXPECT_EQ(xpo::io::split_eval(rows, 0.001, 1).second.size(), 1U);  // at least one eval row
  EXPECT_THROW((void)xpo::io::split_eval(rows, 1.0, 1), xpo::ConfigError);
  EXPECT_THROW((void)xpo::io::split_eval({rows[0]}, 0.5, 1), xpo::ConfigError);
}

}  // namespace
