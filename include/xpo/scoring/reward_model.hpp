// xpo/scoring/reward_model.hpp — scorers built on a sequence-classification reward model (ALGORITHM.md §4):
//  - RewardModelScorer: a RewardScorer. Without a tokenizer of its own it reads the policy's ids directly (TRL's
//    get_reward on [prompt; completion]; the vocabularies must then match, which the trainer checks), at the last
//    real token given by the batch's masks. With one (TRL's OnlineDPO `reward_processing_class`), each pair is
//    re-rendered (conversations through the reward tokenizer's chat template) and re-tokenised for it.
//  - RewardModelJudge: a PairwiseJudge that scores both completions with a reward model and prefers the higher
//    (a tie goes to the first, the policy's).
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "xpo/core/concepts.hpp"
#include "xpo/core/errors.hpp"
#include "xpo/core/tensor_ops.hpp"
#include "xpo/core/types.hpp"
#include "xpo/models/reward_model.hpp"
#include "xpo/text/chat.hpp"
#include "xpo/text/tokenizer.hpp"
#include "xpo/text/tokenizer_identity.hpp"

namespace xpo::scoring {

// The reward model's score of each row at its last real token, found from the attention mask (never from a pad
// id: the ids may have been padded with another model's pad, and a pad id may also be a real token, e.g. pad =
// eos). Masked positions are fed as token 0 and not attended; positions count real tokens only (left padding
// allowed). ids, mask [B, T] (mask 1 on real tokens, a row with none reads position 0) -> [B] float32 (label 0).
// `score_index` [B] receives the position read, if asked. Follows TRL's get_reward with the pads given by mask.
inline torch::Tensor last_token_scores(models::SequenceClassifier& model, const torch::Tensor& ids, const torch::Tensor& mask,
                                       torch::Tensor* score_index = nullptr) {
  const auto attention = mask.to(torch::kLong);                                               // [B, T]
  const auto positions = (attention.cumsum(1) - 1).clamp_min(0);                              // [B, T]
  const auto hidden = model->model->forward(ids.masked_fill(attention.eq(0), 0), attention, positions, nullptr);
  const auto columns = torch::arange(ids.size(1), attention.options());                       // [T]
  const auto last = (columns * attention).argmax(-1);                                         // [B]
  if (score_index != nullptr) *score_index = last;
  const auto rows = torch::arange(ids.size(0), last.options());
  return model->score(hidden.index({rows, last})).select(-1, 0).to(torch::kFloat);
}

// How a reward model with its own tokenizer reads a (prompt, completion) pair, as TRL's OnlineDPOTrainer does
// with a `reward_processing_class`: a conversational prompt (its messages given) becomes messages +
// {"role": "assistant", "content": completion} rendered with the reward tokenizer's chat template (so the reward
// model sees its own end-of-turn token); a standard prompt is prompt text + completion text. Throws
// xpo::ConfigError when a conversation meets a reward tokenizer without a chat template.
inline std::string reward_model_text(const text::Tokenizer& tokenizer, const text::ChatTemplate* chat,
                                     const nlohmann::ordered_json& messages, const std::string& prompt_text,
                                     const std::string& completion) {
  if (messages.is_array()) {
    if (chat == nullptr) {
      throw ConfigError("reward model: its tokenizer differs from the policy's and has no chat_template, so a "
                        "conversational prompt cannot be rendered for it (add one to its tokenizer_config.json)");
    }
    auto conversation = messages;
    conversation.push_back({{"role", "assistant"}, {"content", completion}});
    return chat->render(conversation, tokenizer.special_tokens(), {});
  }
  return prompt_text + completion;
}

// The reward model's own tokenizer when `reward_folder` has a tokenizer.json that tokenises differently from
// `policy_folder`'s (text::same_tokenizer: content, not bytes), else nullopt: the shared-ids path. Throws
// xpo::FileError for an unreadable or over-large tokenizer file.
inline std::optional<text::Tokenizer> reward_tokenizer(const std::filesystem::path& reward_folder,
                                                       const std::filesystem::path& policy_folder,
                                                       const text::TokenizerLimits& limits = {}) {
  if (!std::filesystem::exists(reward_folder / "tokenizer.json")) return std::nullopt;
  if (std::filesystem::exists(policy_folder / "tokenizer.json") &&
      text::same_tokenizer(reward_folder, policy_folder, limits.max_file_bytes))
    return std::nullopt;
  return text::Tokenizer::from_pretrained(reward_folder, limits);
}

class RewardModelScorer {
 public:
  // `tokenizer`: the reward model's own tokenizer, when it differs from the policy's (see
  // text::same_tokenizer); then prompts and completions are re-rendered and re-tokenised for it.
  explicit RewardModelScorer(models::SequenceClassifier model, std::optional<text::Tokenizer> tokenizer = std::nullopt)
      : model_(std::move(model)), tokenizer_(std::move(tokenizer)) {
    model_->eval();
    for (auto& p : model_->parameters()) p.set_requires_grad(false);
    if (model_->config().num_labels != 1) {
      throw ConfigError("reward model: num_labels is " + std::to_string(model_->config().num_labels) + ", expected 1");
    }
    if (tokenizer_ && tokenizer_->chat_template()) chat_ = text::ChatTemplate::of(*tokenizer_);
  }

  // [B] float32 scores of the completions in `batch`, on the batch's device. Shared-ids path: the policy's ids
  // [prompt; completion], read at the last real token by the batch's masks (ALGORITHM.md §4), so a row's score
  // never depends on the rest of its batch or on either model's pad id. Own-tokenizer path: see score_texts.
  torch::Tensor score(const CompletionBatch& batch) {
    torch::NoGradGuard no_grad;
    const auto device = batch.completion_ids.device();
    if (!tokenizer_) {
      if (!batch.prompt_mask.defined() || !batch.completion_mask.defined())
        throw Error("RewardModelScorer::score: the batch needs prompt_mask and completion_mask (1 on real tokens)");
      const auto ids = torch::cat({batch.prompt_ids, batch.completion_ids}, 1).to(model_device());
      const auto mask = torch::cat({batch.prompt_mask, batch.completion_mask}, 1).to(model_device());
      return last_token_scores(model_, ids, mask).to(device);
    }
    return score_texts(batch.prompts, batch.completions, batch.prompt_messages).to(device);
  }

  // Scores (prompt, completion) texts with the reward model's own tokenizer: each pair is turned into one text
  // by reward_model_text (`messages[i]`: the conversation of a conversational prompt, null or absent for a
  // standard one), tokenised without special tokens with the tokenizer's BOS prepended when it has one (as the
  // policy's prompts are, ALGORITHM.md §1.1), right-padded, and read at the last real token. -> [B] float32.
  torch::Tensor score_texts(const std::vector<std::string>& prompts, const std::vector<std::string>& completions,
                            const std::vector<nlohmann::ordered_json>& messages = {}) {
    torch::NoGradGuard no_grad;
    if (!tokenizer_) throw Error("RewardModelScorer::score_texts needs the reward model's tokenizer");
    if (completions.size() != prompts.size() || (!messages.empty() && messages.size() != prompts.size()))
      throw Error("RewardModelScorer::score_texts: prompts, completions and messages differ in length");
    std::vector<std::vector<std::int64_t>> rows;
    rows.reserve(prompts.size());
    const auto& bos = tokenizer_->special_tokens().bos_id;
    static const nlohmann::ordered_json kStandard;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const auto& m = messages.empty() ? kStandard : messages[i];
      auto ids = tokenizer_->encode(reward_model_text(*tokenizer_, chat_ ? &*chat_ : nullptr, m, prompts[i], completions[i]), false);
      if (bos && (ids.empty() || ids.front() != *bos)) ids.insert(ids.begin(), *bos);
      rows.push_back(std::move(ids));
    }
    const auto batch = pad_sequences(rows, 0, PaddingSide::right, model_device());  // [B, T]; the fill is masked
    return last_token_scores(model_, batch.ids, batch.mask);
  }

  // The reward model's vocabulary; the trainer checks it against the policy's when there is no own tokenizer.
  [[nodiscard]] std::int64_t vocab_size() const { return model_->config().vocab_size; }
  [[nodiscard]] bool has_own_tokenizer() const noexcept { return tokenizer_.has_value(); }
  [[nodiscard]] models::SequenceClassifier& model() noexcept { return model_; }

 private:
  torch::Device model_device() const { return model_->parameters().front().device(); }

  models::SequenceClassifier model_;
  std::optional<text::Tokenizer> tokenizer_;
  std::optional<text::ChatTemplate> chat_;
};

// A pairwise judge on top of a reward model and its tokenizer: both completions are scored as
// RewardModelScorer::score_texts does; the higher score wins, a tie goes to the first (the policy's).
class RewardModelJudge {
 public:
  RewardModelJudge(models::SequenceClassifier model, text::Tokenizer tokenizer)
      : scorer_(std::move(model), std::move(tokenizer)) {}

  // prompts [B] (the text the policy saw), pairs [B] -> [B] 0 when the first completion wins, else 1.
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
