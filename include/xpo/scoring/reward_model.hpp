// xpo/scoring/reward_model.hpp — scorers built on a sequence-classification reward model (ALGORITHM.md §4):
//  - RewardModelScorer: a RewardScorer. Without a tokenizer of its own it reads the policy's ids directly (TRL's
//    get_reward on [prompt; completion]; the vocabularies must then match, which the trainer checks). With one
//    [fix: TRL ignores it], the prompt and completion text are re-tokenised for it and scored at the last token.
//  - RewardModelJudge: a PairwiseJudge that scores both completions with a reward model and prefers the higher
//    (a tie goes to the first, the policy's).
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "xpo/core/concepts.hpp"
#include "xpo/core/errors.hpp"
#include "xpo/core/tensor_ops.hpp"
#include "xpo/core/types.hpp"
#include "xpo/models/reward_model.hpp"
#include "xpo/text/tokenizer.hpp"

namespace xpo::scoring {

class RewardModelScorer {
 public:
  // `tokenizer`: the reward model's own tokenizer, if it differs from the policy's.
  explicit RewardModelScorer(models::SequenceClassifier model, std::optional<text::Tokenizer> tokenizer = std::nullopt)
      : model_(std::move(model)), tokenizer_(std::move(tokenizer)) {
    model_->eval();
    for (auto& p : model_->parameters()) p.set_requires_grad(false);
    if (model_->config().num_labels != 1) {
      throw ConfigError("reward model: num_labels is " + std::to_string(model_->config().num_labels) + ", expected 1");
    }
  }

  // [B] float32 scores of the completions in `batch`, on the batch's device.
  torch::Tensor score(const CompletionBatch& batch) {
    torch::NoGradGuard no_grad;
    const auto device = batch.completion_ids.device();
    if (!tokenizer_) {
      const auto pad = pad_id();
      const auto ids = torch::cat({batch.prompt_ids, batch.completion_ids}, 1).to(model_device());
      return model_->completion_scores(ids, batch.prompt_ids.size(1), pad).to(device);
    }
    return score_texts(batch.prompts, batch.completions).to(device);
  }

  // Scores prompt + completion texts with the reward model's tokenizer (right-padded, last real token).
  torch::Tensor score_texts(const std::vector<std::string>& prompts, const std::vector<std::string>& completions) {
    torch::NoGradGuard no_grad;
    if (!tokenizer_) throw Error("RewardModelScorer::score_texts needs the reward model's tokenizer");
    std::vector<std::vector<std::int64_t>> rows;
    rows.reserve(prompts.size());
    for (std::size_t i = 0; i < prompts.size(); ++i) rows.push_back(tokenizer_->encode(prompts[i] + completions[i], false));
    const auto pad = pad_id();
    const auto batch = pad_sequences(rows, pad, PaddingSide::right, model_device());  // [B, T]
    return model_->sequence_scores(batch.ids, batch.mask, position_ids_from_mask(batch.mask), pad).select(-1, 0).to(torch::kFloat);
  }

  // The reward model's vocabulary; the trainer checks it against the policy's when there is no own tokenizer.
  [[nodiscard]] std::int64_t vocab_size() const { return model_->config().vocab_size; }
  [[nodiscard]] bool has_own_tokenizer() const noexcept { return tokenizer_.has_value(); }
  [[nodiscard]] models::SequenceClassifier& model() noexcept { return model_; }

 private:
  torch::Device model_device() const { return model_->parameters().front().device(); }

  std::int64_t pad_id() const {
    if (model_->config().pad_token_id) return *model_->config().pad_token_id;
    if (tokenizer_ && tokenizer_->special_tokens().pad_id) return *tokenizer_->special_tokens().pad_id;
    throw ConfigError("reward model: config.json has no pad_token_id (needed to find the last completion token)");
  }

  models::SequenceClassifier model_;
  std::optional<text::Tokenizer> tokenizer_;
};

// A pairwise judge on top of a reward model and its tokenizer.
class RewardModelJudge {
 public:
  RewardModelJudge(models::SequenceClassifier model, text::Tokenizer tokenizer)
      : scorer_(std::move(model), std::move(tokenizer)) {}

  std::vector<int> judge(const std::vector<std::string>& prompts, const std::vector<CompletionPair>& pairs) {
    std::vector<std::string> first, second;
    for (const auto& p : pairs) {
      first.push_back(p[0]);
      second.push_back(p[1]);
    }
    const auto a = scorer_.score_texts(prompts, first).cpu();
    const auto b = scorer_.score_texts(prompts, second).cpu();
    std::vector<int> out(pairs.size());
    for (std::size_t i = 0; i < pairs.size(); ++i) {
      out[i] = a[static_cast<std::int64_t>(i)].item<float>() >= b[static_cast<std::int64_t>(i)].item<float>() ? 0 : 1;
    }
    return out;
  }

 private:
  RewardModelScorer scorer_;
};

static_assert(RewardScorer<RewardModelScorer>);
static_assert(PairwiseJudge<RewardModelJudge>);

}  // namespace xpo::scoring
