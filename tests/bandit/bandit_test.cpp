// xpo/bandit/bandit.hpp: the exact optimum against brute force, the loss gradient w.r.t. the tabular logits
// against finite differences, and xpo's Trainer converging to the exact optimum on a well-covered bandit.
#include <xpo/bandit/bandit.hpp>
#include <xpo/losses/dpo.hpp>
#include <xpo/losses/xpo.hpp>
#include <xpo/training/step.hpp>
#include <xpo/training/trainer.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "support/fixtures.hpp"

namespace {

namespace bandit = xpo::bandit;

// A random problem: rewards uniform in [0, 1), reference rows with every entry >= floor (then normalised).
bandit::Problem random_problem(int contexts, int responses, double floor, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  bandit::Problem p{Eigen::MatrixXd(contexts, responses), Eigen::MatrixXd(contexts, responses)};
  for (int x = 0; x < contexts; ++x) {
    for (int y = 0; y < responses; ++y) {
      p.reward(x, y) = u(rng);
      p.reference(x, y) = floor + u(rng);
    }
    p.reference.row(x) /= p.reference.row(x).sum();
  }
  p.validate();
  return p;
}

// The exact optimum of a 2-context, 3-response bandit against a brute-force search of each context's simplex
// on a grid of step 1/400: no grid point does better, the best one lies within a grid step of pi*, and the
// closed-form optimal objective equals J(pi*).
TEST(BanditExact, OptimumMatchesBruteForceOnTwoContextsThreeResponses) {
  const auto p = random_problem(2, 3, 0.05, 7);
  for (const double beta : {0.05, 0.3, 2.0}) {
    const Eigen::MatrixXd star = bandit::optimal_policy(p, beta);
    EXPECT_NEAR(bandit::objective(p, star, beta), bandit::optimal_objective(p, beta), 1e-12);
    Eigen::MatrixXd best = star;
    const int n = 400;
    for (int x = 0; x < 2; ++x) {
      double best_value = -1e300;
      for (int i = 0; i <= n; ++i) {
        for (int j = 0; i + j <= n; ++j) {
          Eigen::MatrixXd q = star;  // only row x varies; the objective is a sum over rows
          q.row(x) << double(i) / n, double(j) / n, double(n - i - j) / n;
          const double v = bandit::objective(p, q, beta);
          if (v > best_value) {
            best_value = v;
            best.row(x) = q.row(x);
          }
        }
      }
      Eigen::MatrixXd with_best = star;
      with_best.row(x) = best.row(x);
      EXPECT_LE(best_value, bandit::objective(p, star, beta) + 1e-12) << "beta " << beta;
    }
    // Each grid coordinate is within half a step of pi*'s, so TV per context is at most 3/2 * 1/(2n)... plus
    // the flatness of J near its maximum; 2 steps bounds both.
    EXPECT_LE(bandit::total_variation(best, star), 2.0 / n) << "beta " << beta;
  }
}

TEST(BanditExact, DistancesAndObjectiveBasics) {
  const auto p = random_problem(3, 4, 0.05, 11);
  const Eigen::MatrixXd star = bandit::optimal_policy(p, 0.2);
  EXPECT_NEAR(bandit::total_variation(star, star), 0.0, 1e-15);
  EXPECT_NEAR(bandit::kl_divergence(star, star), 0.0, 1e-15);
  EXPECT_NEAR(bandit::objective(p, p.reference, 0.2), p.reward.cwiseProduct(p.reference).rowwise().sum().mean(), 1e-12)
      << "at pi_ref the KL term is zero";
  EXPECT_GT(bandit::kl_divergence(star, p.reference), 0.0);
  EXPECT_THROW((bandit::Problem{Eigen::MatrixXd::Zero(2, 3), Eigen::MatrixXd::Zero(2, 3)}.validate()), xpo::ConfigError);
}

// The token layout: the policy's logits at a context token are its table row on the response tokens and
// probability 0 elsewhere, and the bandit tokenizer reads prompts and responses as single bytes.
TEST(BanditModel, LogitsTokenizerAndScorers) {
  const auto p = random_problem(3, 4, 0.05, 3);
  const auto tok = bandit::tokenizer();
  bandit::TabularPolicy policy(p.reference, static_cast<std::int64_t>(tok.vocab_size()));
  const auto ids = torch::tensor({tok.encode("B", false).at(0), tok.encode("C", false).at(0)}).view({2, 1});
  const auto logp = torch::log_softmax(policy->forward(ids, torch::ones_like(ids), torch::zeros_like(ids)), -1);
  for (int row = 0; row < 2; ++row) {
    for (int y = 0; y < 4; ++y) {
      const auto id = tok.encode(std::string(1, static_cast<char>('a' + y)), false).at(0);
      EXPECT_NEAR(std::exp(logp[row][0][id].item<double>()), p.reference(row + 1, y), 1e-12);
    }
    EXPECT_NEAR(logp[row][0].exp().sum().item<double>(), 1.0, 1e-12);
  }
  EXPECT_EQ(tok.special_tokens().generation_eos_ids, std::vector<xpo::text::TokenId>{256});
  EXPECT_EQ(bandit::context_of("C", 3), 2);
  EXPECT_THROW((void)bandit::response_of("e", 4), xpo::Error);
  // Bradley-Terry: the empirical win rate of a pair matches sigmoid(r - r') (binomial, 6 sigma).
  bandit::BradleyTerryJudge judge(p.reward, 5);
  const int n = 20000;
  std::vector<std::string> prompts(n, "A");
  std::vector<xpo::CompletionPair> pairs(n, {"a", "c"});
  const auto ranks = judge.judge(prompts, pairs);
  const double wins = static_cast<double>(std::count(ranks.begin(), ranks.end(), 0)) / n;
  const double expected = 1.0 / (1.0 + std::exp(-(p.reward(0, 0) - p.reward(0, 2))));
  EXPECT_NEAR(wins, expected, 6.0 * std::sqrt(expected * (1 - expected) / n));
}

// The loss gradient with respect to the tabular logits, through the same tensor path as the Trainer (forward ->
// aligned token log-probs -> loss_and_metrics), against central finite differences in float64.
template <class Loss>
void check_gradient(double alpha, double beta) {
  const auto p = random_problem(3, 4, 0.05, 13);
  const auto tok = bandit::tokenizer();
  const auto V = static_cast<std::int64_t>(tok.vocab_size());
  bandit::TabularPolicy policy(bandit::optimal_policy(p, 0.7), V);  // away from the reference
  bandit::TabularPolicy reference(p.reference, V);
  // Six rows: contexts, the policy's and the reference's responses (some equal), and who won.
  const std::vector<int> xs{0, 1, 2, 0, 1, 2}, ym{0, 1, 3, 2, 2, 0}, yr{1, 1, 0, 3, 2, 2};
  const std::vector<bool> chosen{true, false, true, false, true, true};
  std::vector<std::int64_t> prompt, model, ref;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    prompt.push_back(bandit::kContextByte + xs[i]);
    model.push_back(bandit::kResponseByte + ym[i]);
    ref.push_back(bandit::kResponseByte + yr[i]);
  }
  const auto ids = torch::tensor(prompt).view({-1, 1});
  const xpo::TruncatedCompletions m{torch::tensor(model).view({-1, 1}), torch::ones({6, 1}, torch::kLong)};
  const xpo::TruncatedCompletions r{torch::tensor(ref).view({-1, 1}), torch::ones({6, 1}, torch::kLong)};
  xpo::training::Preference pref;
  pref.chosen_mask = torch::tensor(std::vector<int>(chosen.begin(), chosen.end())).to(torch::kBool);
  const auto no_eos = torch::zeros({6}, torch::kBool);
  const auto loss_value = [&]() {
    const auto z = torch::zeros_like(ids);
    const auto pl = policy->forward(ids, z, z), rl = reference->forward(ids, z, z).detach();
    const auto lp = xpo::training::token_logps_from_aligned_logits(pl, pl, rl, rl, m, r);
    return xpo::training::loss_and_metrics(Loss{}, lp, pref, no_eos, no_eos, {alpha, beta}).loss.loss;
  };
  policy->table().mutable_grad() = torch::Tensor();
  loss_value().backward();
  const auto grad = policy->table().grad().clone();
  const double h = 1e-6;
  torch::NoGradGuard no_grad;
  for (int x = 0; x < 3; ++x) {
    for (int y = 0; y < 4; ++y) {
      auto entry = policy->table()[x][y];
      const double saved = entry.item<double>();
      entry.fill_(saved + h);
      const double up = loss_value().template item<double>();
      entry.fill_(saved - h);
      const double down = loss_value().template item<double>();
      entry.fill_(saved);
      const double fd = (up - down) / (2 * h);
      EXPECT_NEAR(grad[x][y].item<double>(), fd, 1e-7 * (1 + std::abs(fd))) << "table[" << x << "][" << y << "]";
    }
  }
  EXPECT_GT(grad.abs().sum().item<double>(), 1e-3) << "a gradient that vanishes proves nothing";
}

TEST(BanditGradient, XpoSigmoidLossMatchesFiniteDifferences) {
  check_gradient<xpo::losses::XPO<xpo::losses::Sigmoid>>(0.3, 0.2);
}
TEST(BanditGradient, XpoIpoLossMatchesFiniteDifferences) { check_gradient<xpo::losses::XPO<xpo::losses::IPO>>(0.3, 0.2); }

// xpo's Trainer, unchanged, on a well-covered bandit (3 contexts, 4 responses, every reference probability
// >= 1/12): XPO with a small alpha and Bradley-Terry preferences, 3000 steps of 48 samples, ends within TV 0.05
// of the exact optimum pi* (it starts 0.41 away; seeds 17-20 of the problem end at 0.020-0.031). alpha is kept
// small because XPO's bonus biases the fixed point away from pi*: alpha = 1e-2 ends 0.07-0.14 away here.
class BanditTrainer : public xpo::test::ScratchDir {};

TEST_F(BanditTrainer, XpoConvergesToTheExactOptimumOnAWellCoveredBandit) {
  const auto p = random_problem(3, 4, 0.5, 18);
  const double beta = 0.25;
  xpo::XPOConfig c;
  c.output_dir = (dir_ / "out").string();
  c.per_device_train_batch_size = 48;
  c.max_steps = 3000;
  c.learning_rate = 0.02;
  c.lr_scheduler_type = "linear";
  c.max_new_tokens = 1;
  c.temperature = 1.0;
  c.beta = {beta};
  c.alpha = {1e-4};
  c.save_steps = 1'000'000;
  c.max_grad_norm = 0;  // plain AdamW on the table
  c.seed = 1;
  const auto tok = bandit::tokenizer();
  const auto V = static_cast<std::int64_t>(tok.vocab_size());
  xpo::io::PromptRows rows;
  for (int copy = 0; copy < 32; ++copy)
    for (const auto& r : bandit::prompts(p)) rows.push_back(r);
  xpo::Trainer<bandit::TabularPolicy, bandit::BradleyTerryJudge> trainer(
      bandit::TabularPolicy(p.reference, V), bandit::TabularPolicy(p.reference, V), bandit::BradleyTerryJudge(p.reward, 2),
      tok, c, rows);
  const Eigen::MatrixXd star = bandit::optimal_policy(p, beta);
  const double start = bandit::total_variation(p.reference, star);
  trainer.train();
  const Eigen::MatrixXd trained = trainer.policy()->probabilities();
  const double tv = bandit::total_variation(trained, star);
  std::cout << "[ bandit   ] TV(pi_ref, pi*) = " << start << ", TV(trained, pi*) = " << tv
            << ", KL(trained || pi*) = " << bandit::kl_divergence(trained, star)
            << ", J gap = " << bandit::optimal_objective(p, beta) - bandit::objective(p, trained, beta) << "\n";
  EXPECT_GT(start, 0.3) << "the problem must start far from its optimum";
  EXPECT_LT(tv, 0.05);
}

// The deterministic variant: RewardTable as the Trainer's RewardScorer (the higher reward wins). Hard
// preferences have no finite DPO optimum, so this only checks that the plumbing learns the right direction:
// the expected reward rises and the best response gains mass in every context.
TEST_F(BanditTrainer, RewardTableScorerRaisesTheExpectedReward) {
  const auto p = random_problem(3, 4, 0.5, 21);
  xpo::XPOConfig c;
  c.output_dir = (dir_ / "out").string();
  c.per_device_train_batch_size = 12;
  c.max_steps = 200;
  c.learning_rate = 0.02;
  c.max_new_tokens = 1;
  c.temperature = 1.0;
  c.beta = {0.25};
  c.save_steps = 1'000'000;
  const auto tok = bandit::tokenizer();
  const auto V = static_cast<std::int64_t>(tok.vocab_size());
  xpo::io::PromptRows rows;
  for (int copy = 0; copy < 4; ++copy)
    for (const auto& r : bandit::prompts(p)) rows.push_back(r);
  xpo::Trainer<bandit::TabularPolicy, bandit::RewardTable> trainer(
      bandit::TabularPolicy(p.reference, V), bandit::TabularPolicy(p.reference, V), bandit::RewardTable(p.reward), tok, c, rows);
  trainer.train();
  const Eigen::MatrixXd trained = trainer.policy()->probabilities();
  const auto expected_reward = [&](const Eigen::MatrixXd& pi) { return p.reward.cwiseProduct(pi).rowwise().sum().mean(); };
  EXPECT_GT(expected_reward(trained), expected_reward(p.reference) + 0.05);
  for (int x = 0; x < p.contexts(); ++x) {
    Eigen::Index best = 0;
    p.reward.row(x).maxCoeff(&best);
    EXPECT_GT(trained(x, best), p.reference(x, best)) << "context " << x;
  }
}

}  // namespace
