// xpo/losses: the DPO bases and the XPO term against formulas written out by hand, stability at extremes.
#include <gtest/gtest.h>

#include <xpo/losses/dpo.hpp>
#include <xpo/losses/metrics.hpp>
#include <xpo/losses/xpo.hpp>

#include <cmath>

#include "support/fixtures.hpp"

namespace {

using xpo::test::all_close;

xpo::PreferenceLogps make_logps(bool requires_grad) {
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  return {torch::tensor({-10.0, -3.0, -7.5}, opts).requires_grad_(requires_grad),
          torch::tensor({-12.0, -2.0, -9.0}, opts).requires_grad_(requires_grad),
          torch::tensor({-11.0, -3.5, -7.0}, opts), torch::tensor({-12.5, -2.5, -8.0}, opts),
          torch::tensor({true, false, true})};
}

TEST(DpoLosses, SigmoidIsStableForHugeMargins) {
  const auto logits = torch::tensor({-1e4, -50.0, 0.0, 50.0, 1e4}, torch::kFloat);
  const auto l = xpo::losses::Sigmoid::losses(logits, 2.0);
  EXPECT_TRUE(l.isfinite().all().item<bool>());
  EXPECT_NEAR(l[0].item<float>(), 2e4, 1.0);              // -log sigmoid(-2e4) = 2e4 + log1p(e^-2e4)
  EXPECT_NEAR(l[2].item<float>(), std::log(2.0), 1e-6);
  EXPECT_GE(l[4].item<float>(), 0.0f);
  EXPECT_LT(l[4].item<float>(), 1e-30f);
  // Its gradient stays finite too.
  auto x = torch::tensor({-1e4, 1e4}, torch::kFloat).requires_grad_();
  xpo::losses::Sigmoid::losses(x, 2.0).sum().backward();
  EXPECT_TRUE(x.grad().isfinite().all().item<bool>());
}

TEST(DpoLosses, IpoIsTheSquaredDistanceToOneOverTwoBeta) {
  const auto logits = torch::tensor({0.0, 2.5, -1.0}, torch::kDouble);
  EXPECT_TRUE(all_close(xpo::losses::IPO::losses(logits, 0.25),
                        torch::tensor({4.0, 0.25, 9.0}, torch::kDouble), 1e-15));
}

TEST(XpoLoss, MatchesTheFormulaWrittenOutRowByRow) {
  const auto lp = make_logps(false);
  const double alpha = 0.3, beta = 0.2;
  const auto out = xpo::losses::XPO<xpo::losses::Sigmoid>{}.compute(lp, {alpha, beta});
  double total = 0;
  for (int b = 0; b < 3; ++b) {
    const bool c = lp.chosen_mask[b].item<bool>();
    const double pm = lp.policy_model_data[b].item<double>(), pr = lp.policy_ref_data[b].item<double>();
    const double rm = lp.ref_model_data[b].item<double>(), rr = lp.ref_ref_data[b].item<double>();
    const double chosen_ratio = c ? pm - rm : pr - rr;
    const double rejected_ratio = c ? pr - rr : pm - rm;
    const double margin = chosen_ratio - rejected_ratio;
    const double dpo = std::log1p(std::exp(-beta * margin));
    const double xpo = alpha * pr;  // the reference's sample, whichever won
    EXPECT_NEAR(out.dpo_losses[b].item<double>(), dpo, 1e-14);
    EXPECT_NEAR(out.xpo_losses[b].item<double>(), xpo, 1e-14);
    EXPECT_NEAR(out.chosen_rewards[b].item<double>(), beta * chosen_ratio, 1e-14);
    EXPECT_NEAR(out.rejected_rewards[b].item<double>(), beta * rejected_ratio, 1e-14);
    total += dpo + xpo;
  }
  EXPECT_NEAR(out.loss.item<double>(), total / 3, 1e-14);
  EXPECT_EQ(out.loss.dim(), 0);
}

TEST(XpoLoss, AlphaZeroIsOnlineDpoAndTheXpoTermPushesDownTheReferenceSample) {
  auto lp = make_logps(true);
  const auto dpo_only = xpo::losses::XPO<xpo::losses::IPO>{}.compute(lp, {0.0, 0.5});
  EXPECT_TRUE(dpo_only.xpo_losses.eq(0).all().item<bool>());
  EXPECT_TRUE(all_close(dpo_only.loss, dpo_only.dpo_losses.mean(), 0));

  // d loss / d S_pol_r gains exactly alpha / B from the XPO term.
  const double alpha = 0.7;
  auto with = xpo::losses::XPO<xpo::losses::IPO>{}.compute(lp, {alpha, 0.5});
  const auto g_with = torch::autograd::grad({with.loss}, {lp.policy_ref_data})[0];
  auto without = xpo::losses::XPO<xpo::losses::IPO>{}.compute(lp, {0.0, 0.5});
  const auto g_without = torch::autograd::grad({without.loss}, {lp.policy_ref_data})[0];
  EXPECT_TRUE(all_close(g_with - g_without, torch::full({3}, alpha / 3, torch::kDouble), 1e-14));
  // The rewards are detached: metrics never carry the graph.
  EXPECT_FALSE(with.chosen_rewards.requires_grad());
}

TEST(StepMetrics, ScoresAreOptionalAndAccuracyIsStrict) {
  const auto lp = make_logps(false);
  const auto out = xpo::losses::XPO<xpo::losses::Sigmoid>{}.compute(lp, {0.0, 0.1});
  const auto eos = torch::tensor({true, false, true});
  const auto judged = xpo::losses::step_metrics({lp, out, {0.0, 0.1}, eos, eos, {}, {}});
  EXPECT_EQ(judged.count("objective/model_scores"), 0u);
  EXPECT_NEAR(judged.at("val/model_contain_eos_token"), 2.0 / 3, 1e-15);
  const auto scored = xpo::losses::step_metrics(
      {lp, out, {0.0, 0.1}, eos, eos, torch::tensor({1.0, 2.0, 3.0}), torch::tensor({3.0, 2.0, 1.0})});
  EXPECT_NEAR(scored.at("objective/scores_margin"), 0.0, 1e-15);
  EXPECT_EQ(scored.size(), judged.size() + 3);
  // A tie in the margin counts as wrong.
  xpo::PreferenceLogps tie{torch::zeros({2}), torch::zeros({2}), torch::zeros({2}), torch::zeros({2}),
                           torch::tensor({true, false})};
  const auto tied = xpo::losses::XPO<xpo::losses::Sigmoid>{}.compute(tie, {0.0, 0.1});
  EXPECT_EQ(xpo::losses::step_metrics({tie, tied, {0.0, 0.1}, eos.narrow(0, 0, 2), eos.narrow(0, 0, 2), {}, {}})
                .at("rewards/accuracies"),
            0.0);
}

}  // namespace
