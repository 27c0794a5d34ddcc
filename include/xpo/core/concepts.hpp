// xpo/core/concepts.hpp — what each of the four policies of xpo::Trainer<Model, Scorer, Loss, Schedule> must
// provide. A type that misses a requirement fails at the point of use with the concept's name in the error.
// Each family's own header (models/concepts.hpp, scoring/concepts.hpp, ...) re-exports its concept here and
// adds family-specific helpers; the definitions live in core so that nothing in core depends on a family.
#pragma once

#include <torch/torch.h>

#include <concepts>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "xpo/core/types.hpp"

namespace xpo {

// The object behind a LibTorch module holder (`models::CausalLM` -> `CausalLMImpl&`), or the object itself.
// Lets concepts and the trainer treat `TORCH_MODULE` holders and plain classes alike.
template <class M>
decltype(auto) unwrap(M& m) {
  if constexpr (requires { m.ptr(); m.operator->(); }) {
    return *m;
  } else {
    return (m);
  }
}

// A causal language model: token ids in, next-token logits out.
//  - forward(input_ids [B,T] int64, attention_mask [B,T] int64, position_ids [B,T] int64) -> logits [B,T,V]:
//    the trainer passes explicit positions (cumsum(mask) - 1) because prompts are left-padded.
//  - parameters(): what the optimizer updates (LoRA models return only adapter weights as trainable).
//  - train(bool) / is_training(): generation and the reference pass run with dropout off.
//  - vocab_size(): V, to check that a reward model without its own tokenizer shares the policy's vocabulary.
template <class M>
concept CausalLanguageModel =
    requires(M& m, const M& cm, const torch::Tensor& ids, const torch::Tensor& mask, const torch::Tensor& pos) {
      { unwrap(m).forward(ids, mask, pos) } -> std::same_as<torch::Tensor>;
      { unwrap(m).parameters() } -> std::convertible_to<std::vector<torch::Tensor>>;
      unwrap(m).train(true);
      { unwrap(cm).is_training() } -> std::convertible_to<bool>;
      { unwrap(cm).vocab_size() } -> std::convertible_to<std::int64_t>;
    };

// A scalar reward: one score per completion, higher is better (TRL's reward_model). The trainer scores the
// policy's and the reference's completions separately and prefers the higher (a tie goes to the policy).
//  - score(const CompletionBatch&) -> [B] floating tensor on any device.
template <class S>
concept RewardScorer = requires(S& s, const CompletionBatch& batch) {
  { s.score(batch) } -> std::same_as<torch::Tensor>;
};

// A pairwise judge (TRL's BasePairwiseJudge): for each prompt and pair {policy's, reference's} returns the
// index of the better completion. 0 = the policy's wins; 1, -1 (failure) or anything else = the reference's.
template <class J>
concept PairwiseJudge =
    requires(J& j, const std::vector<std::string>& prompts, const std::vector<CompletionPair>& pairs) {
      { j.judge(prompts, pairs) } -> std::same_as<std::vector<int>>;
    };

// Either kind of scorer: the Scorer slot of the Trainer.
template <class S>
concept PreferenceScorer = RewardScorer<S> || PairwiseJudge<S>;

// A preference loss: the four log-prob sums of a step and the chosen mask in, the loss and its parts out.
//  - compute(const PreferenceLogps&, LossWeights) -> LossOutput; `loss` must be a scalar carrying the graph of
//    the policy sums, every other field a [B] tensor.
template <class L>
concept PreferenceLoss = requires(const L& l, const PreferenceLogps& logps, LossWeights weights) {
  { l.compute(logps, weights) } -> std::same_as<LossOutput>;
};

// alpha and beta as functions of the fractional epoch (ALGORITHM.md §2). Both return plain doubles so that a
// schedule can be evaluated at compile time; the shipped ones check their values when they are built.
template <class S>
concept WeightSchedule = requires(const S& s, double epoch) {
  { s.alpha(epoch) } -> std::same_as<double>;
  { s.beta(epoch) } -> std::same_as<double>;
};

}  // namespace xpo
