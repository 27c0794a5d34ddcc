// xpo/scoring/preference.hpp — from scores or judgements to the chosen mask (ALGORITHM.md §1.4).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace xpo::scoring {

// Subtract `penalty` from the score of every completion that has no EOS: scores [B], contains_eos [B] bool -> [B].
// [fix] `contains_eos` is about the COMPLETION only; TRL looks at prompt + completion, so a left-padded prompt
// whose pad id equals EOS (Qwen) would never be penalised.
inline torch::Tensor apply_missing_eos_penalty(const torch::Tensor& scores, const torch::Tensor& contains_eos,
                                               std::optional<double> penalty) {
  if (!penalty) return scores;
  return scores - contains_eos.logical_not().to(scores.scalar_type()) * *penalty;
}

// The policy's completion is chosen where it scores at least as high as the reference's (a tie goes to the
// policy): model_scores, ref_scores [B] -> [B] bool.
inline torch::Tensor chosen_mask_from_scores(const torch::Tensor& model_scores, const torch::Tensor& ref_scores) {
  return model_scores.ge(ref_scores);
}

// A pairwise judge's answers -> [B] bool: 0 means the policy's completion won; 1, -1 (judge failure) or any
// other value means the reference's did.
inline torch::Tensor chosen_mask_from_judgements(const std::vector<int>& ranks, torch::Device device) {
  std::vector<std::int64_t> wide(ranks.begin(), ranks.end());
  return torch::tensor(wide, torch::kLong).eq(0).to(device);
}

}  // namespace xpo::scoring
