// xpo/losses/metrics.hpp — the per-micro-step metrics of ALGORITHM.md §3, under TRL's names. Computed on
// detached tensors and copied to the host in ONE transfer (one device sync per step, not one per metric).
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "xpo/core/types.hpp"

namespace xpo::losses {

struct MetricInputs {
  const PreferenceLogps& logps;
  const LossOutput& loss;
  LossWeights weights;
  torch::Tensor model_contain_eos;  // [B] bool: the policy's completion contains EOS
  torch::Tensor ref_contain_eos;    // [B] bool: the reference's completion contains EOS
  torch::Tensor model_scores;       // [B] after the missing-EOS penalty; undefined for a pairwise judge
  torch::Tensor ref_scores;         // [B] likewise
};

// One micro-step's metrics; the trainer averages them over the micro-steps since the last log.
inline std::map<std::string, double> step_metrics(const MetricInputs& in) {
  torch::NoGradGuard no_grad;
  const auto& lp = in.logps;
  const auto& out = in.loss;
  auto f = [](const torch::Tensor& t) { return t.detach().to(torch::kDouble); };
  const auto margins = f(out.chosen_rewards) - f(out.rejected_rewards);  // [B]

  std::vector<std::string> keys = {"loss/dpo", "loss/xpo", "objective/kl", "objective/entropy",
                                   "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                                   "logps/chosen", "logps/rejected",
                                   "val/model_contain_eos_token", "val/ref_contain_eos_token"};
  std::vector<torch::Tensor> values = {
      f(out.dpo_losses).mean(),
      f(out.xpo_losses).mean(),
      ((f(lp.policy_model_data) - f(lp.ref_model_data)).mean() + (f(lp.policy_ref_data) - f(lp.ref_ref_data)).mean()) / 2,
      ((-f(lp.policy_model_data)).mean() + (-f(lp.policy_ref_data)).mean()) / 2,
      f(out.chosen_rewards).mean(),
      f(out.rejected_rewards).mean(),
      margins.mean(),
      margins.gt(0).to(torch::kDouble).mean(),  // strict: a tie counts as wrong
      f(out.chosen_policy_logps).mean(),        // [fix] policy sums only (TRL adds the reference sums)
      f(out.rejected_policy_logps).mean(),
      f(in.model_contain_eos).mean(),
      f(in.ref_contain_eos).mean(),
  };
  if (in.model_scores.defined() && in.ref_scores.defined()) {
    keys.insert(keys.end(), {"objective/model_scores", "objective/ref_scores", "objective/scores_margin"});
    values.push_back(f(in.model_scores).mean());
    values.push_back(f(in.ref_scores).mean());
    values.push_back((f(in.model_scores) - f(in.ref_scores)).mean());  // policy minus reference
  }
  const auto host = torch::stack(values).cpu();  // the one device -> host copy
  const auto* data = host.data_ptr<double>();
  std::map<std::string, double> metrics;
  for (std::size_t i = 0; i < keys.size(); ++i) metrics[keys[i]] = data[i];
  metrics["alpha"] = in.weights.alpha;
  metrics["beta"] = in.weights.beta;
  return metrics;
}

}  // namespace xpo::losses
