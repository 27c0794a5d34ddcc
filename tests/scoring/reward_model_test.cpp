// The reward-model scorer (scoring/reward_model.hpp) on the tiny fixture reward model: a completion's score is read
// at its last real token from the batch's masks, so it never depends on the rest of the batch or on either model's
// pad id; a reward model with its own tokenizer sees conversations rendered with its own chat template; tokenizer
// identity is decided by content, not file bytes.
#include <xpo/xpo.hpp>

#include <gtest/gtest.h>

#include <fstream>

#include "support/fixtures.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

fs::path tiny_policy() { return xpo::test::fixture_path("models/tiny-qwen2"); }
fs::path tiny_reward_model() { return xpo::test::fixture_path("models/tiny-qwen2-rm"); }

// The score of one unpadded sequence, read at its last token (transformers' classifier on a sequence with no pad:
// pad id -1 never matches) — an independent path to compare the scorer with. [T] ids -> score.
float unpadded_score(xpo::models::SequenceClassifier& rm, const std::vector<std::int64_t>& ids) {
  torch::NoGradGuard no_grad;
  const auto t = torch::tensor(ids).unsqueeze(0);
  const auto mask = torch::ones_like(t);
  return rm->sequence_scores(t, mask, xpo::position_ids_from_mask(mask), -1).select(-1, 0).item<float>();
}

// Rows of (prompt ids, completion ids up to and including EOS or the budget).
struct Row {
  std::vector<std::int64_t> prompt, completion;
};

// Left-pads the prompts and right-pads the completions with `pad` (which may be a real token, e.g. eos).
xpo::CompletionBatch batch_of(const std::vector<Row>& rows, std::int64_t pad) {
  std::vector<std::vector<std::int64_t>> prompts, completions;
  for (const auto& r : rows) {
    prompts.push_back(r.prompt);
    completions.push_back(r.completion);
  }
  auto p = xpo::pad_sequences(prompts, pad, xpo::PaddingSide::left);
  auto c = xpo::pad_sequences(completions, pad, xpo::PaddingSide::right);
  xpo::CompletionBatch b;
  b.prompt_ids = p.ids;
  b.prompt_mask = p.mask;
  b.completion_ids = c.ids;
  b.completion_mask = c.mask;
  b.prompts.assign(rows.size(), "");
  b.completions.assign(rows.size(), "");
  return b;
}

// Tolerance: float32 scores of the same tokens computed in batches of different widths (another padding changes
// only the masked terms, which contribute exact zeros, and the summation order of the matmuls): 1e-5 relative.
constexpr double kScoreTol = 1e-5;

TEST(RewardModelScorer, AScoreDoesNotDependOnItsBatchOrOnPadIds) {
  auto rm = xpo::models::load_reward_model(tiny_reward_model());
  xpo::scoring::RewardModelScorer scorer(rm);
  const auto tok = xpo::text::Tokenizer::from_pretrained(tiny_policy());
  const auto eos = tok.special_tokens().eos_id.value();
  // pad = eos, as for a policy whose tokenizer has no pad token; the reward model's config says pad 0.
  std::vector<Row> rows = {{tok.encode("a short one", false), tok.encode(" yes", false)},
                           {tok.encode("a much longer prompt than the others, with commas", false), tok.encode(" no way", false)},
                           {tok.encode("mid length prompt", false), {}},
                           {tok.encode("x", false), tok.encode(" three words here", false)}};
  rows[0].completion.push_back(eos);
  rows[1].completion.push_back(eos);
  rows[2].completion.push_back(eos);  // an answer that is EOS alone
  const auto together = scorer.score(batch_of(rows, eos));
  for (std::size_t i = 0; i < rows.size(); ++i) {
    SCOPED_TRACE(i);
    const auto alone = scorer.score(batch_of({rows[i]}, eos));
    auto full = rows[i].prompt;
    full.insert(full.end(), rows[i].completion.begin(), rows[i].completion.end());
    const auto want = unpadded_score(rm, full);
    EXPECT_TRUE(xpo::test::all_close(together[static_cast<std::int64_t>(i)], torch::tensor(want), kScoreTol));
    EXPECT_TRUE(xpo::test::all_close(alone[0], torch::tensor(want), kScoreTol));
    // Padded with another id (the reward model's own 0): the same score.
    EXPECT_TRUE(xpo::test::all_close(scorer.score(batch_of(rows, 0))[static_cast<std::int64_t>(i)], torch::tensor(want), kScoreTol));
  }
}

TEST(RewardModelScorer, ARewardModelWithoutPadIdScoresTheSharedIds) {
  auto config = xpo::test::read_json(tiny_reward_model() / "config.json");
  config.erase("pad_token_id");
  xpo::models::SequenceClassifier rm(xpo::io::ModelConfig::from_json(config));
  xpo::models::load_weights(*rm, xpo::io::TensorStore::open(tiny_reward_model()), tiny_reward_model().string());
  rm->eval();
  xpo::scoring::RewardModelScorer scorer(rm);
  const auto tok = xpo::text::Tokenizer::from_pretrained(tiny_policy());
  const Row row{tok.encode("hello", false), tok.encode(" world", false)};
  const auto s = scorer.score(batch_of({row, {tok.encode("a longer prompt", false), tok.encode(" ok", false)}}, 2));
  auto full = row.prompt;
  full.insert(full.end(), row.completion.begin(), row.completion.end());
  EXPECT_TRUE(xpo::test::all_close(s[0], torch::tensor(unpadded_score(rm, full)), kScoreTol));
}

// A reward model with its own tokenizer (TRL's reward_processing_class): a conversational prompt is rendered with
// the reward tokenizer's chat template, the completion as an assistant message, so the reward model sees its own
// end-of-turn token; a standard prompt is prompt + completion text.
TEST(RewardModelScorer, OwnTokenizerRendersConversationsWithItsChatTemplate) {
  auto rm = xpo::models::load_reward_model(tiny_reward_model());
  auto tok = xpo::text::Tokenizer::from_pretrained(tiny_reward_model());
  tok.set_chat_template("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|im_end|>{% endfor %}");
  xpo::scoring::RewardModelScorer scorer(rm, tok);
  const ordered_json conversation = ordered_json::array({{{"role", "user"}, {"content", "how are you"}}});
  const auto chat = xpo::text::ChatTemplate::of(tok);
  const auto text = xpo::scoring::reward_model_text(tok, &chat, conversation, "ignored: the policy's rendering", "fine");
  EXPECT_EQ(text, "[user] how are you<|im_end|>[assistant] fine<|im_end|>");
  const auto scores = scorer.score_texts({"policy text", "standard prompt"}, {"fine", " and more"}, {conversation, ordered_json()});
  EXPECT_TRUE(xpo::test::all_close(scores[0], torch::tensor(unpadded_score(rm, tok.encode(text, false))), kScoreTol));
  EXPECT_TRUE(xpo::test::all_close(scores[1], torch::tensor(unpadded_score(rm, tok.encode("standard prompt and more", false))), kScoreTol));
  // Without a chat template a conversation cannot be rendered for the reward model: a clear error.
  auto plain = xpo::text::Tokenizer::from_file(tiny_reward_model() / "tokenizer.json");
  xpo::scoring::RewardModelScorer no_template(rm, plain);
  EXPECT_THROW((void)no_template.score_texts({"p"}, {"c"}, {conversation}), xpo::ConfigError);
}

TEST(TokenizerIdentity, SameContentIsTheSameTokenizerWhateverTheBytes) {
  const auto dir = fs::temp_directory_path() / ("xpo-tokenizer-identity-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy(tiny_reward_model(), dir / "indented", fs::copy_options::recursive);
  const auto json = xpo::test::read_json(tiny_reward_model() / "tokenizer.json");
  std::ofstream(dir / "indented" / "tokenizer.json") << json.dump(4);
  EXPECT_TRUE(xpo::text::same_tokenizer(dir / "indented", tiny_policy()));
  EXPECT_FALSE(xpo::scoring::reward_tokenizer(dir / "indented", tiny_policy()).has_value()) << "the shared-ids path";
  // Another vocabulary entry: a different tokenizer, which the reward model then gets as its own.
  fs::copy(tiny_reward_model(), dir / "other", fs::copy_options::recursive);
  auto other = json;
  auto& vocab = other["model"]["vocab"];
  const auto first = vocab.begin().key();
  const auto id = vocab[first];
  vocab.erase(first);
  vocab[first + "x"] = id;
  std::ofstream(dir / "other" / "tokenizer.json") << other.dump();
  EXPECT_FALSE(xpo::text::same_tokenizer(dir / "other", tiny_policy()));
  EXPECT_TRUE(xpo::scoring::reward_tokenizer(dir / "other", tiny_policy()).has_value());
  // add_bos_token in tokenizer_config.json changes encoding too.
  fs::copy(tiny_reward_model(), dir / "bos", fs::copy_options::recursive);
  auto config = xpo::test::read_json(tiny_reward_model() / "tokenizer_config.json");
  config["add_bos_token"] = true;
  std::ofstream(dir / "bos" / "tokenizer_config.json") << config.dump();
  EXPECT_FALSE(xpo::text::same_tokenizer(dir / "bos", tiny_policy()));
  fs::remove_all(dir);
}

}  // namespace
