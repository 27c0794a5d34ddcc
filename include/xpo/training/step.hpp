// xpo/training/step.hpp — the tensor path of one XPO step after sampling (ALGORITHM.md §1.3–§1.6 and §3), from
// completions and model logits to the loss, its parts and the metrics. The Trainer calls it with the logits of
// its forward passes; the golden tests call it with the fixture's logits, so both run the same code.
#pragma once

#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "xpo/core/concepts.hpp"
#include "xpo/core/tensor_ops.hpp"
#include "xpo/core/types.hpp"
#include "xpo/losses/metrics.hpp"
#include "xpo/scoring/preference.hpp"

namespace xpo::training {

// Performance switches of the Trainer's step (issue 23), set with Trainer::set_step_options. Each one removes work
// without changing the loss, metrics or updates beyond float summation order; switching one off runs the plain
// computation, so that its own saving can be measured (benchmarks/trainer_bench.cpp) and checked against
// (tests/training/trainer_test.cpp). A performance knob, not an XPOConfig field: a run's results do not depend on it.
struct StepOptions {
  // The reference's log-probs of its own sample are recorded while it generates it (log_softmax of its raw logits
  // at the drawn tokens, SamplingOptions::output_token_logprobs), so its loss forward covers only [prompt; the
  // policy's sample]: B rows instead of 2B. Used under float32 and under bf16/fp16 alike (both are the same
  // model's log-probs at the same compute precision; see the README's "A faster step").
  bool record_reference_logps = true;
  // Each prompt runs once through each model in the loss forward and both completions attend to its keys and
  // values (models::CausalLM::forward_shared_prompt); a Model type without it runs [prompt; completion] rows.
  bool shared_prompt_forward = true;
  // Under LoRA (the reference is the policy with adapters off) both samples come from ONE batched decode of 2B rows
  // that reads the base weights once, the adapters applied to the policy's rows only
  // (generation::generate_adapted_and_base). The same samples as two decodes: each row keeps its own stream.
  bool fused_lora_decode = true;
};

// Who won, from scores or judgements (ALGORITHM.md §1.4).
struct Preference {
  torch::Tensor chosen_mask;   // [B] bool: the policy's sample is chosen
  torch::Tensor model_scores;  // [B] after the missing-EOS penalty; undefined for a judge
  torch::Tensor ref_scores;    // [B]
};

// Raw scores of both samples -> penalty (completion-only EOS rule) and the tie-to-policy chosen mask.
inline Preference preference_from_scores(const torch::Tensor& model_raw, const torch::Tensor& ref_raw,
                                         const torch::Tensor& model_contain_eos, const torch::Tensor& ref_contain_eos,
                                         std::optional<double> missing_eos_penalty) {
  Preference p;
  p.model_scores = scoring::apply_missing_eos_penalty(model_raw, model_contain_eos, missing_eos_penalty);
  p.ref_scores = scoring::apply_missing_eos_penalty(ref_raw, ref_contain_eos, missing_eos_penalty);
  p.chosen_mask = scoring::chosen_mask_from_scores(p.model_scores, p.ref_scores);
  return p;
}

inline Preference preference_from_judgements(const std::vector<int>& ranks, torch::Device device) {
  return {scoring::chosen_mask_from_judgements(ranks, device), {}, {}};
}

// The four per-token log-prob tensors of a step ([B, T_m] for the policy's sample, [B, T_r] for the reference's;
// 0 on masked positions). The policy's carry grad.
struct TokenLogps {
  torch::Tensor policy_model_data, policy_ref_data, ref_model_data, ref_ref_data;
};

// Aligned logits (row t predicts completion token t) -> masked per-token log-probs:
// logits [B, T, V], completions ids/mask [B, T] -> TokenLogps.
inline TokenLogps token_logps_from_aligned_logits(const torch::Tensor& policy_logits_model, const torch::Tensor& policy_logits_ref,
                                                  const torch::Tensor& ref_logits_model, const torch::Tensor& ref_logits_ref,
                                                  const TruncatedCompletions& model, const TruncatedCompletions& ref) {
  return {aligned_token_logps(policy_logits_model, model.ids, model.mask), aligned_token_logps(policy_logits_ref, ref.ids, ref.mask),
          aligned_token_logps(ref_logits_model, model.ids, model.mask), aligned_token_logps(ref_logits_ref, ref.ids, ref.mask)};
}

struct StepResult {
  PreferenceLogps logps;
  LossOutput loss;
  std::map<std::string, double> metrics;
};

// Sums, loss and metrics of one micro-step: token log-probs, who won, EOS flags, weights -> StepResult.
template <PreferenceLoss Loss>
StepResult loss_and_metrics(const Loss& loss_fn, const TokenLogps& lp, const Preference& preference,
                            const torch::Tensor& model_contain_eos, const torch::Tensor& ref_contain_eos,
                            LossWeights weights) {
  StepResult r;
  r.logps = {lp.policy_model_data.sum(-1), lp.policy_ref_data.sum(-1), lp.ref_model_data.sum(-1),
             lp.ref_ref_data.sum(-1), preference.chosen_mask};
  r.loss = loss_fn.compute(r.logps, weights);
  r.metrics = losses::step_metrics({r.logps, r.loss, weights, model_contain_eos, ref_contain_eos,
                                    preference.model_scores, preference.ref_scores});
  return r;
}

}  // namespace xpo::training
