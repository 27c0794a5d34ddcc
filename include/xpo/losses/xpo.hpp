// xpo/losses/xpo.hpp — Exploratory Preference Optimization (Xie et al., 2024) as TRL's XPOTrainer computes it
// (ALGORITHM.md §1.6): a DPO loss on the chosen/rejected pair plus alpha times the policy's log-prob of the
// REFERENCE model's sample, whichever of the two won. alpha = 0 is online DPO.
#pragma once

#include <torch/torch.h>

#include "xpo/core/concepts.hpp"
#include "xpo/core/types.hpp"
#include "xpo/losses/concepts.hpp"
#include "xpo/losses/dpo.hpp"

namespace xpo::losses {

template <DPOLossFunction Base = Sigmoid>
struct XPO {
  using dpo_loss = Base;

  // logps: four [B] sums and the [B] chosen mask -> the loss and every part the metrics read.
  [[nodiscard]] LossOutput compute(const PreferenceLogps& logps, LossWeights weights) const {
    const auto& chosen = logps.chosen_mask;  // [B] bool
    LossOutput out;
    out.chosen_policy_logps = torch::where(chosen, logps.policy_model_data, logps.policy_ref_data);
    out.rejected_policy_logps = torch::where(chosen, logps.policy_ref_data, logps.policy_model_data);
    out.chosen_ref_logps = torch::where(chosen, logps.ref_model_data, logps.ref_ref_data);
    out.rejected_ref_logps = torch::where(chosen, logps.ref_ref_data, logps.ref_model_data);
    out.chosen_log_ratios = out.chosen_policy_logps - out.chosen_ref_logps;        // [B]
    out.rejected_log_ratios = out.rejected_policy_logps - out.rejected_ref_logps;  // [B]
    out.logits = out.chosen_log_ratios - out.rejected_log_ratios;                  // [B]
    out.dpo_losses = Base::losses(out.logits, weights.beta);                       // [B]
    out.xpo_losses = weights.alpha * logps.policy_ref_data;                        // [B], carries grad
    out.loss = (out.dpo_losses + out.xpo_losses).mean();                           // []
    out.chosen_rewards = (weights.beta * out.chosen_log_ratios).detach();
    out.rejected_rewards = (weights.beta * out.rejected_log_ratios).detach();
    return out;
  }
};

static_assert(PreferenceLoss<XPO<Sigmoid>>);
static_assert(PreferenceLoss<XPO<IPO>>);

}  // namespace xpo::losses
