// xpo/scoring/preference.hpp: the EOS penalty and the two ways to pick the chosen completion.
#include <gtest/gtest.h>

#include <xpo/scoring/preference.hpp>

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
