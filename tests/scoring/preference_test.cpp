// xpo/scoring/preference.hpp: the EOS penalty and the two ways to pick the chosen completion.
#include <gtest/gtest.h>

#include <xpo/scoring/preference.hpp>
#include <xpo/scoring/rules.hpp>

namespace {

TEST(MissingEosPenalty, SubtractedOnlyWhereTheCompletionHasNoEos) {
  const auto scores = torch::tensor({1.0, 2.0, 3.0}, torch::kDouble);
  const auto has_eos = torch::tensor({true, false, true});
  EXPECT_TRUE(xpo::scoring::apply_missing_eos_penalty(scores, has_eos, 1.5)
                  .equal(torch::tensor({1.0, 0.5, 3.0}, torch::kDouble)));
  EXPECT_TRUE(xpo::scoring::apply_missing_eos_penalty(scores, has_eos, std::nullopt).equal(scores));
}

TEST(ChosenMask, TieGoesToThePolicy) {
  const auto chosen = xpo::scoring::chosen_mask_from_scores(torch::tensor({1.0, 2.0, 0.0}), torch::tensor({1.0, 3.0, -1.0}));
  EXPECT_TRUE(chosen.equal(torch::tensor({true, false, true})));
}

TEST(ChosenMask, OnlyJudgementZeroPicksThePolicy) {
  EXPECT_TRUE(xpo::scoring::chosen_mask_from_judgements({0, 1, -1, 2}, torch::kCPU)
                  .equal(torch::tensor({true, false, false, false})));
}

}  // namespace

// The built-in rules (xpo/scoring/rules.hpp), on hand-made texts.
TEST(Rules, PositivityCountsLexiconWordsAndClips) {
  using xpo::scoring::rules::positivity;
  EXPECT_EQ(positivity("", "Cats are wonderful. I LOVE them!"), 2.0);
  EXPECT_EQ(positivity("", "Rain is awful, bad and boring."), -3.0);
  EXPECT_EQ(positivity("", "good bad"), 0.0);
  EXPECT_EQ(positivity("", "goodness lovelier"), 0.0) << "whole words only";
  EXPECT_EQ(positivity("", "great great great great great"), 3.0) << "clipped";
  EXPECT_EQ(positivity("a prompt full of love and joy", ""), 0.0) << "the prompt does not count";
}

TEST(Rules, ConciseRewardsFinishedShortAnswers) {
  using xpo::scoring::rules::concise;
  EXPECT_DOUBLE_EQ(concise("", "Yes."), 1.0 - 0.04);
  EXPECT_DOUBLE_EQ(concise("", "Yes. "), 1.0 - 0.05);
  EXPECT_DOUBLE_EQ(concise("", "yes and"), -0.07);
  EXPECT_DOUBLE_EQ(concise("", ""), 0.0);
}

TEST(Rules, ScorerJudgeAndUnknownNames) {
  namespace rules = xpo::scoring::rules;
  auto judge = rules::rule_judge("positivity");
  const auto ranks = judge.judge({"p", "p", "p"}, {{"it is good", "it is bad"}, {"bad", "good"}, {"meh", "meh"}});
  EXPECT_EQ(ranks, (std::vector<int>{0, 1, 0})) << "higher score wins, a tie goes to the policy";
  auto scorer = rules::rule_scorer("concise");
  xpo::CompletionBatch batch;
  batch.completion_ids = torch::zeros({2, 1}, torch::kLong);
  batch.prompts = {"p", "q"};
  batch.completions = {"Ok.", "no"};
  const auto s = scorer.score(batch);
  EXPECT_NEAR(s[0].item<double>(), 0.97, 1e-6);
  EXPECT_NEAR(s[1].item<double>(), -0.02, 1e-6);
  try {
    (void)rules::rule("positive");
    ADD_FAILURE();
  } catch (const xpo::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("positivity"), std::string::npos) << e.what();
  }
}
