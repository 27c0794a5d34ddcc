// xpo/core/types.hpp — the plain data that crosses policy boundaries: what a scorer sees, what a loss is given
// and what it returns. Field names follow TRL's XPOTrainer so a TRL user recognises them.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <array>
#include <string>
#include <vector>

namespace xpo {

// One set of completions (the policy's or the reference's) for a micro-batch, as a scorer sees it.
struct CompletionBatch {
  torch::Tensor prompt_ids;              // [B, P] int64, left-padded with pad_token_id
  torch::Tensor prompt_mask;             // [B, P] int64, 1 on real prompt tokens
  torch::Tensor completion_ids;          // [B, T] int64, pad after the first EOS
  torch::Tensor completion_mask;         // [B, T] int64, 1 up to and including the first EOS
  std::vector<std::string> prompts;      // [B] the prompt text as the model saw it (after the chat template)
  std::vector<std::string> completions;  // [B] decoded completions, special tokens skipped, whitespace stripped
  // [B] the conversation of each conversational prompt (a JSON list of messages), null for a standard prompt;
  // empty when the caller has none (scorers then treat every prompt as standard text).
  std::vector<nlohmann::ordered_json> prompt_messages;
};

// The four per-sequence log-prob sums of one XPO step plus who won. `pol`/`ref` = which model scores,
// `model`/`ref` data = whose sample is scored (ALGORITHM.md §1.6: S_pol_m, S_pol_r, S_ref_m, S_ref_r).
struct PreferenceLogps {
  torch::Tensor policy_model_data;  // [B] S_pol_m: policy log-prob of the policy's sample (carries grad)
  torch::Tensor policy_ref_data;    // [B] S_pol_r: policy log-prob of the reference's sample (carries grad)
  torch::Tensor ref_model_data;     // [B] S_ref_m: reference log-prob of the policy's sample (no grad)
  torch::Tensor ref_ref_data;       // [B] S_ref_r: reference log-prob of the reference's sample (no grad)
  torch::Tensor chosen_mask;        // [B] bool: true where the policy's sample is the chosen one
};

// alpha (exploration bonus weight) and beta (KL strength) in force for one step.
struct LossWeights {
  double alpha = 1e-5;
  double beta = 0.1;
};

// Everything a PreferenceLoss returns: the scalar to differentiate and the per-row parts the metrics need.
struct LossOutput {
  torch::Tensor loss;                   // [] mean over rows of dpo_losses + xpo_losses
  torch::Tensor dpo_losses;             // [B]
  torch::Tensor xpo_losses;             // [B] alpha * S_pol_r (zero when alpha = 0)
  torch::Tensor chosen_policy_logps;    // [B]
  torch::Tensor rejected_policy_logps;  // [B]
  torch::Tensor chosen_ref_logps;       // [B]
  torch::Tensor rejected_ref_logps;     // [B]
  torch::Tensor chosen_log_ratios;      // [B] chosen_policy - chosen_ref
  torch::Tensor rejected_log_ratios;    // [B] rejected_policy - rejected_ref
  torch::Tensor logits;                 // [B] chosen_log_ratios - rejected_log_ratios
  torch::Tensor chosen_rewards;         // [B] beta * chosen_log_ratios (detached)
  torch::Tensor rejected_rewards;       // [B] beta * rejected_log_ratios (detached)
};

// A pairwise judge compares two completions of the same prompt: {policy's, reference's}.
using CompletionPair = std::array<std::string, 2>;

}  // namespace xpo
