// xpo/bandit/bandit.hpp — an exactly solvable preference-learning problem, to verify xpo's Trainer itself.
//
// A contextual bandit: C contexts x (equally likely), K responses y, a reward table r(x, y) and a reference
// policy pi_ref(y|x). For the KL-regularised objective
//     J_beta(pi) = E_x [ sum_y pi(y|x) r(x,y) - beta KL(pi(.|x) || pi_ref(.|x)) ]
// the optimum is known in closed form: pi*(y|x) ∝ pi_ref(y|x) exp(r(x,y) / beta), with
//     J_beta(pi*) = beta E_x log sum_y pi_ref(y|x) exp(r(x,y) / beta).
// These exact quantities are computed with Eigen in float64 (optimal_policy, objective, ...).
//
// The same problem plugs into xpo::Trainer unchanged, through the concepts every other model and scorer use:
//  - TabularPolicy satisfies CausalLanguageModel: a learnable C x K logits table. Contexts are the prompts "A",
//    "B", ... (one byte token each), responses the bytes 'a', 'b', ...; the model's next-token logits at a context
//    token are its table row on the response tokens and -1e4 (probability 0) everywhere else, so sampling one new
//    token draws y ~ pi(.|x) exactly. The reference is a frozen TabularPolicy holding log pi_ref.
//  - RewardTable is a deterministic RewardScorer (the higher reward wins); BradleyTerryJudge is a stochastic
//    PairwiseJudge: the policy's response y beats the reference's y' with probability sigmoid(r(x,y) - r(x,y')).
//    Under Bradley-Terry preferences pi* above is also the fixed point of (online) DPO, which is what makes the
//    trained policy comparable with it.
//  - tokenizer() and prompts() give the byte-level tokenizer and the prompt set.
// Generation, scoring, the loss, the optimizer and the schedules are the Trainer's own code paths.
#pragma once

#include <Eigen/Dense>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "xpo/core/errors.hpp"
#include "xpo/core/types.hpp"
#include "xpo/io/prompt_dataset.hpp"
#include "xpo/text/byte_tokenizer.hpp"
#include "xpo/text/tokenizer.hpp"

namespace xpo::bandit {

inline constexpr std::int64_t kContextByte = 'A';   // context x is the prompt "A" + x
inline constexpr std::int64_t kResponseByte = 'a';  // response y is the token 'a' + y
inline constexpr int kMaxContexts = 26;
inline constexpr int kMaxResponses = 26;
inline constexpr double kMaskedLogit = -1e4;  // exp underflows to exactly 0 in float32 and float64

// ---- the problem and its exact solution -------------------------------------------------------------------------
struct Problem {
  Eigen::MatrixXd reward;     // [C, K] r(x, y)
  Eigen::MatrixXd reference;  // [C, K] pi_ref(y|x): each row a distribution with every entry > 0

  [[nodiscard]] int contexts() const { return static_cast<int>(reward.rows()); }
  [[nodiscard]] int responses() const { return static_cast<int>(reward.cols()); }

  void validate() const {
    if (reward.rows() < 1 || reward.cols() < 2 || reward.rows() > kMaxContexts || reward.cols() > kMaxResponses)
      throw ConfigError("bandit: needs 1.." + std::to_string(kMaxContexts) + " contexts and 2.." +
                        std::to_string(kMaxResponses) + " responses");
    if (reference.rows() != reward.rows() || reference.cols() != reward.cols())
      throw ConfigError("bandit: the reference table's shape differs from the reward table's");
    if (!reward.allFinite()) throw ConfigError("bandit: the reward table holds a non-finite value");
    for (int x = 0; x < contexts(); ++x) {
      if (!(reference.row(x).minCoeff() > 0) || std::abs(reference.row(x).sum() - 1.0) > 1e-9)
        throw ConfigError("bandit: reference row " + std::to_string(x) + " is not a distribution with every entry > 0");
    }
  }
};

namespace detail {
inline Eigen::RowVectorXd normalised_exp(const Eigen::RowVectorXd& logits) {
  const Eigen::RowVectorXd e = (logits.array() - logits.maxCoeff()).exp().matrix();
  return e / e.sum();
}
inline double log_sum_exp(const Eigen::RowVectorXd& v) {
  const double m = v.maxCoeff();
  return m + std::log((v.array() - m).exp().sum());
}
}  // namespace detail

// pi*(y|x) ∝ pi_ref(y|x) exp(r(x,y) / beta), computed in log space.
inline Eigen::MatrixXd optimal_policy(const Problem& p, double beta) {
  Eigen::MatrixXd out(p.contexts(), p.responses());
  for (int x = 0; x < p.contexts(); ++x)
    out.row(x) = detail::normalised_exp(p.reference.row(x).array().log().matrix() + p.reward.row(x) / beta);
  return out;
}

// J_beta(pi) = mean_x [ sum_y pi r - beta KL(pi(.|x) || pi_ref(.|x)) ]  (0 log 0 = 0).
inline double objective(const Problem& p, const Eigen::MatrixXd& policy, double beta) {
  double total = 0;
  for (int x = 0; x < p.contexts(); ++x) {
    for (int y = 0; y < p.responses(); ++y) {
      const double q = policy(x, y);
      if (q > 0) total += q * (p.reward(x, y) - beta * std::log(q / p.reference(x, y)));
    }
  }
  return total / p.contexts();
}

// J_beta(pi*) in closed form: beta mean_x log sum_y pi_ref exp(r / beta).
inline double optimal_objective(const Problem& p, double beta) {
  double total = 0;
  for (int x = 0; x < p.contexts(); ++x)
    total += beta * detail::log_sum_exp(p.reference.row(x).array().log().matrix() + p.reward.row(x) / beta);
  return total / p.contexts();
}

// Mean over contexts of the total-variation distance 1/2 sum_y |p - q|.
inline double total_variation(const Eigen::MatrixXd& p, const Eigen::MatrixXd& q) {
  return 0.5 * (p - q).cwiseAbs().rowwise().sum().mean();
}

// Mean over contexts of KL(p(.|x) || q(.|x)) (0 log 0 = 0).
inline double kl_divergence(const Eigen::MatrixXd& p, const Eigen::MatrixXd& q) {
  double total = 0;
  for (Eigen::Index x = 0; x < p.rows(); ++x)
    for (Eigen::Index y = 0; y < p.cols(); ++y)
      if (p(x, y) > 0) total += p(x, y) * std::log(p(x, y) / q(x, y));
  return total / static_cast<double>(p.rows());
}

// ---- the model ----------------------------------------------------------------------------------------------------
// A learnable table of logits over the responses, one row per context (see the file comment for the token layout).
class TabularPolicyImpl : public torch::nn::Module {
 public:
  // Starts from `probabilities` (rows are distributions, entries > 0): logits = log probabilities.
  TabularPolicyImpl(const Eigen::MatrixXd& probabilities, std::int64_t vocab_size, torch::Dtype dtype = torch::kFloat64)
      : vocab_size_(vocab_size) {
    if (probabilities.rows() > kMaxContexts || probabilities.cols() > kMaxResponses || kResponseByte + probabilities.cols() > vocab_size)
      throw ConfigError("TabularPolicy: the table does not fit the token layout");
    if (!(probabilities.minCoeff() > 0)) throw ConfigError("TabularPolicy: every starting probability must be > 0");
    auto t = torch::empty({probabilities.rows(), probabilities.cols()}, torch::kFloat64);
    for (Eigen::Index x = 0; x < probabilities.rows(); ++x)
      for (Eigen::Index y = 0; y < probabilities.cols(); ++y) t[x][y] = std::log(probabilities(x, y));
    table_ = register_parameter("table", t.to(dtype));
  }

  // ids [B, T] -> logits [B, T, V]: a context token's row of the table on the response tokens, masked elsewhere;
  // at any other token, uniform over the responses. The mask and positions are not needed by a bandit.
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& /*mask*/, const torch::Tensor& /*positions*/) {
    const auto contexts = table_.size(0), responses = table_.size(1);
    const auto context = ids - kContextByte;
    const auto is_context = (context >= 0).logical_and(context < contexts).unsqueeze(-1);
    auto rows = table_.index_select(0, context.clamp(0, contexts - 1).reshape(-1)).view({ids.size(0), ids.size(1), responses});
    rows = torch::where(is_context, rows, torch::zeros_like(rows));
    const auto opts = rows.options();
    return torch::cat({torch::full({ids.size(0), ids.size(1), kResponseByte}, kMaskedLogit, opts), rows,
                       torch::full({ids.size(0), ids.size(1), vocab_size_ - kResponseByte - responses}, kMaskedLogit, opts)},
                      -1);
  }

  [[nodiscard]] std::int64_t vocab_size() const { return vocab_size_; }
  [[nodiscard]] const torch::Tensor& table() const { return table_; }

  // pi(y|x) = softmax of the table's rows, in float64.
  [[nodiscard]] Eigen::MatrixXd probabilities() const {
    const auto p = torch::softmax(table_.detach().to(torch::kCPU, torch::kFloat64), -1).contiguous();
    Eigen::MatrixXd out(p.size(0), p.size(1));
    const auto a = p.accessor<double, 2>();
    for (Eigen::Index x = 0; x < out.rows(); ++x)
      for (Eigen::Index y = 0; y < out.cols(); ++y) out(x, y) = a[x][y];
    return out;
  }

 private:
  std::int64_t vocab_size_;
  torch::Tensor table_;
};
TORCH_MODULE(TabularPolicy);

// ---- text: tokenizer, prompts, and reading contexts and responses back ---------------------------------------------
// Byte-level, with one special token "<eos>" (EOS and pad). The policy never emits it: a bandit answer is one token.
inline text::Tokenizer tokenizer() {
  auto t = text::Tokenizer::from_json(text::byte_level_tokenizer_json({"<eos>"}), "bandit tokenizer");
  t.set_eos_token("<eos>");
  t.set_pad_token("<eos>");
  return t;
}

// One prompt per context: "A", "B", ...
inline io::PromptRows prompts(const Problem& p) {
  io::PromptRows rows;
  for (int x = 0; x < p.contexts(); ++x) rows.push_back({{"prompt", std::string(1, static_cast<char>(kContextByte + x))}});
  return rows;
}

inline int context_of(const std::string& prompt, int contexts) {
  if (prompt.size() != 1 || prompt[0] < kContextByte || prompt[0] >= kContextByte + contexts)
    throw Error("bandit: \"" + prompt + "\" is not a context prompt");
  return prompt[0] - static_cast<char>(kContextByte);
}

inline int response_of(const std::string& completion, int responses) {
  if (completion.size() != 1 || completion[0] < kResponseByte || completion[0] >= kResponseByte + responses)
    throw Error("bandit: \"" + completion + "\" is not a response");
  return completion[0] - static_cast<char>(kResponseByte);
}

// ---- scorers --------------------------------------------------------------------------------------------------------
// r(x, y) of each completion, read from the token ids (a RewardScorer: the higher reward wins, ties to the policy).
class RewardTable {
 public:
  explicit RewardTable(Eigen::MatrixXd reward) : reward_(std::move(reward)) {}

  torch::Tensor score(const CompletionBatch& batch) {
    const auto prompt = batch.prompt_ids.select(1, batch.prompt_ids.size(1) - 1).to(torch::kCPU);
    const auto response = batch.completion_ids.select(1, 0).to(torch::kCPU);
    std::vector<double> out;
    for (std::int64_t i = 0; i < prompt.size(0); ++i) {
      const auto x = prompt[i].item<std::int64_t>() - kContextByte, y = response[i].item<std::int64_t>() - kResponseByte;
      if (x < 0 || x >= reward_.rows() || y < 0 || y >= reward_.cols())
        throw Error("bandit: row " + std::to_string(i) + " is not a (context, response) pair");
      out.push_back(reward_(x, y));
    }
    return torch::tensor(out, torch::kFloat64).to(batch.completion_ids.device());
  }

 private:
  Eigen::MatrixXd reward_;
};

// Bradley-Terry preferences from the reward table (a PairwiseJudge): the policy's response wins with probability
// sigmoid(r(x, y_policy) - r(x, y_reference)), drawn from the judge's own seeded stream.
class BradleyTerryJudge {
 public:
  BradleyTerryJudge(Eigen::MatrixXd reward, std::uint64_t seed) : reward_(std::move(reward)), rng_(seed) {}

  std::vector<int> judge(const std::vector<std::string>& prompts, const std::vector<CompletionPair>& pairs) {
    std::vector<int> out;
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const int x = context_of(prompts[i], static_cast<int>(reward_.rows()));
      const int y0 = response_of(pairs.at(i)[0], static_cast<int>(reward_.cols()));
      const int y1 = response_of(pairs.at(i)[1], static_cast<int>(reward_.cols()));
      const double win = 1.0 / (1.0 + std::exp(-(reward_(x, y0) - reward_(x, y1))));
      out.push_back(u(rng_) < win ? 0 : 1);
    }
    return out;
  }

 private:
  Eigen::MatrixXd reward_;
  std::mt19937_64 rng_;
};

}  // namespace xpo::bandit
