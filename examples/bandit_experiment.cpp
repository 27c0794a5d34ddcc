// xpo-bandit: the XPO paper's sample-efficiency claim, measured with xpo's own Trainer on an exactly solvable
// contextual bandit (xpo/bandit/bandit.hpp).
//
// Each context has one best response (reward 1; the others draw theirs from U(0, 0.5)) on which the reference
// puts only --best_mass of its probability. Preferences are Bradley-Terry from the rewards. For each alpha
// (alpha = 0 is online DPO) and each seed, the Trainer runs until the policy is epsilon-optimal,
//     J_beta(pi*) - J_beta(pi) <= epsilon,
// with J_beta and pi* exact, or until --max_samples preference samples (one per prompt per step) are spent.
// The table gives, per alpha, how many runs got there and the median and quartiles of the samples they needed,
// counting a run that did not get there as needing more than the budget (so the median is honest).
//
//   xpo-bandit [--seeds 20] [--alphas 0,1e-3,1e-2,1e-1] [--max_samples 16000] [--json results.json] ...
#include <xpo/xpo.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

namespace bandit = xpo::bandit;
namespace fs = std::filesystem;

struct Args {
  std::int64_t seeds = 20;
  std::vector<double> alphas{0.0, 1e-3, 1e-2, 1e-1};
  std::int64_t contexts = 4;
  std::int64_t responses = 8;
  double best_mass = 1e-3;
  double beta = 0.1;
  double epsilon = 0.05;
  std::int64_t batch = 8;
  std::int64_t max_samples = 16000;
  double learning_rate = 0.05;
  std::string json;
};

// The hard-coverage problem of one seed.
bandit::Problem make_problem(const Args& a, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const auto C = static_cast<int>(a.contexts), K = static_cast<int>(a.responses);
  bandit::Problem p{Eigen::MatrixXd(C, K), Eigen::MatrixXd(C, K)};
  for (int x = 0; x < C; ++x) {
    const int best = static_cast<int>(rng() % static_cast<std::uint64_t>(K));
    double rest = 0;
    for (int y = 0; y < K; ++y) {
      p.reward(x, y) = y == best ? 1.0 : 0.5 * u(rng);
      p.reference(x, y) = y == best ? 0.0 : 0.5 + u(rng);
      rest += p.reference(x, y);
    }
    for (int y = 0; y < K; ++y) p.reference(x, y) = y == best ? a.best_mass : (1 - a.best_mass) * p.reference(x, y) / rest;
  }
  p.validate();
  return p;
}

// Stops the run once the policy is epsilon-optimal and remembers the step.
template <class Trainer>
struct StopWhenOptimal {
  const bandit::Problem* problem;
  double beta, target;
  double optimum = bandit::optimal_objective(*problem, beta);  // J(pi*), fixed for the run
  std::int64_t reached_at = -1;
  double gap = 0;
  void on_step_end(Trainer& t) {
    gap = optimum - bandit::objective(*problem, t.policy()->probabilities(), beta);
    if (gap <= target && reached_at < 0) {
      reached_at = t.state().global_step;
      t.request_stop();
    }
  }
};

struct RunResult {
  std::int64_t samples = 0;  // preference samples used to reach epsilon, or -1
  double final_gap = 0, final_tv = 0;
};

RunResult run(const Args& a, double alpha, std::uint64_t seed, const fs::path& scratch) {
  const auto problem = make_problem(a, seed);
  const auto tok = bandit::tokenizer();
  const auto V = static_cast<std::int64_t>(tok.vocab_size());
  xpo::XPOConfig c;
  c.output_dir = (scratch / "run").string();
  c.per_device_train_batch_size = a.batch;
  c.max_steps = std::max<std::int64_t>(1, a.max_samples / a.batch);
  c.learning_rate = a.learning_rate;
  c.lr_scheduler_type = "constant";
  c.max_new_tokens = 1;
  c.temperature = 1.0;
  c.beta = {a.beta};
  c.alpha = {alpha};
  c.max_grad_norm = 0;
  c.save_steps = std::numeric_limits<std::int64_t>::max() / 2;
  c.seed = static_cast<std::int64_t>(seed);
  xpo::io::PromptRows rows;
  while (static_cast<std::int64_t>(rows.size()) < a.batch)
    for (const auto& r : bandit::prompts(problem)) rows.push_back(r);
  using T = xpo::Trainer<bandit::TabularPolicy, bandit::BradleyTerryJudge>;
  T trainer(bandit::TabularPolicy(problem.reference, V), bandit::TabularPolicy(problem.reference, V),
            bandit::BradleyTerryJudge(problem.reward, seed * 7919 + 1), tok, c, rows);
  StopWhenOptimal<T> stop{&problem, a.beta, a.epsilon};
  trainer.train(stop);
  fs::remove_all(c.output_dir);
  const auto trained = trainer.policy()->probabilities();
  return {stop.reached_at < 0 ? -1 : stop.reached_at * a.batch, stop.gap,
          bandit::total_variation(trained, bandit::optimal_policy(problem, a.beta))};
}

// The q-quantile of `v` (sorted; -1 = not reached = +infinity), as text.
std::string quantile(std::vector<std::int64_t> v, double q, std::int64_t budget) {
  for (auto& x : v)
    if (x < 0) x = std::numeric_limits<std::int64_t>::max();
  std::sort(v.begin(), v.end());
  const auto k = static_cast<std::size_t>(std::lround(q * static_cast<double>(v.size() - 1)));
  return v[k] == std::numeric_limits<std::int64_t>::max() ? "> " + std::to_string(budget) : std::to_string(v[k]);
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  xpo::FlagParser flags("xpo-bandit", "XPO vs online DPO on an exactly solvable bandit whose reference barely covers the best response.");
  flags.add("seeds", a.seeds, "runs per alpha (problem, sampling and judge seeds)");
  flags.add("alphas", a.alphas, "exploration weights to compare (0 = online DPO)");
  flags.add("contexts", a.contexts, "contexts (prompts)");
  flags.add("responses", a.responses, "responses per context");
  flags.add("best_mass", a.best_mass, "reference probability of each context's best response");
  flags.add("beta", a.beta, "KL strength");
  flags.add("epsilon", a.epsilon, "target: J(pi*) - J(pi) <= epsilon");
  flags.add("batch", a.batch, "prompts (= preference samples) per step");
  flags.add("max_samples", a.max_samples, "budget of preference samples per run");
  flags.add("learning_rate", a.learning_rate, "AdamW learning rate (constant)");
  flags.add("json", a.json, "also write the results to this JSON file");
  try {
    if (!flags.parse(argc, argv, std::cout)) return 0;
    if (a.seeds < 1 || a.batch < 1 || a.max_samples < a.batch || !(a.epsilon > 0) || a.alphas.empty())
      throw xpo::ConfigError("need seeds >= 1, batch >= 1, max_samples >= batch, epsilon > 0 and at least one alpha");
    torch::set_num_threads(1);
    const auto scratch = fs::temp_directory_path() / ("xpo-bandit-" + std::to_string(::getpid()));
    fs::create_directories(scratch);
    {
      const auto p = make_problem(a, 0);
      const auto star = bandit::optimal_policy(p, a.beta);
      double best_star = 0;
      for (int x = 0; x < p.contexts(); ++x) {
        Eigen::Index best = 0;
        p.reward.row(x).maxCoeff(&best);
        best_star += star(x, best) / p.contexts();
      }
      std::printf("problem (seed 0): J(pi*) - J(pi_ref) = %.3f, pi* puts %.2f on the best response (pi_ref: %g); epsilon = %g\n",
                  bandit::optimal_objective(p, a.beta) - bandit::objective(p, p.reference, a.beta), best_star, a.best_mass, a.epsilon);
    }
    nlohmann::json results = nlohmann::json::array();
    std::printf("\n| alpha | reached | samples to epsilon: median | 25%% | 75%% | median TV(pi, pi*) at stop |\n|---|---|---|---|---|---|\n");
    const auto start = std::chrono::steady_clock::now();
    for (const double alpha : a.alphas) {
      std::vector<std::int64_t> samples;
      std::vector<double> tvs;
      for (std::int64_t s = 0; s < a.seeds; ++s) {
        const auto r = run(a, alpha, static_cast<std::uint64_t>(s), scratch);
        samples.push_back(r.samples);
        tvs.push_back(r.final_tv);
        results.push_back({{"alpha", alpha}, {"seed", s}, {"samples", r.samples}, {"final_gap", r.final_gap}, {"final_tv", r.final_tv}});
      }
      std::sort(tvs.begin(), tvs.end());
      const auto reached = std::count_if(samples.begin(), samples.end(), [](auto v) { return v >= 0; });
      std::printf("| %g | %lld/%lld | %s | %s | %s | %.3f |\n", alpha, static_cast<long long>(reached), static_cast<long long>(a.seeds),
                  quantile(samples, 0.5, a.max_samples).c_str(), quantile(samples, 0.25, a.max_samples).c_str(),
                  quantile(samples, 0.75, a.max_samples).c_str(), tvs[tvs.size() / 2]);
      std::fflush(stdout);
    }
    std::printf("\n%lld runs in %.0f s\n", static_cast<long long>(a.seeds) * static_cast<long long>(a.alphas.size()),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    fs::remove_all(scratch);
    if (!a.json.empty()) xpo::write_json_file(a.json, {{"args", {{"contexts", a.contexts}, {"responses", a.responses},
                                                               {"best_mass", a.best_mass}, {"beta", a.beta}, {"epsilon", a.epsilon},
                                                               {"batch", a.batch}, {"max_samples", a.max_samples},
                                                               {"learning_rate", a.learning_rate}}},
                                                      {"runs", results}});
    return 0;
  } catch (const xpo::ConfigError& e) {
    std::fprintf(stderr, "xpo-bandit: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xpo-bandit: %s\n", e.what());
    return 1;
  }
}
