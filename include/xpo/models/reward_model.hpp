// xpo/models/reward_model.hpp — …ForSequenceClassification of any supported family (Qwen2, Llama, Qwen3, …): the
// decoder stack plus a bias-free `score` head with num_labels outputs (1 for a reward model).
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "xpo/core/tensor_ops.hpp"
#include "xpo/io/hf_config.hpp"
#include "xpo/models/decoder.hpp"
#include "xpo/models/layers.hpp"

namespace xpo::models {

class SequenceClassifierImpl : public torch::nn::Module {
 public:
  explicit SequenceClassifierImpl(io::ModelConfig config) : config_(std::move(config)) {
    model = register_module("model", DecoderModel(config_));
    score = register_module("score", Linear(config_.hidden_size, config_.num_labels, false));
  }

  // ids, attention_mask, position_ids [B, T] -> the score head at every position [B, T, num_labels]
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                        const torch::Tensor& position_ids) {
    return score(model->forward(input_ids, attention_mask, position_ids, nullptr));
  }

  // The sequence score as transformers reads it: at the rightmost token that is not pad, for left- and
  // right-padded rows alike. ids, mask, positions [B, T] -> [B, num_labels]; `score_index` [B] if asked.
  torch::Tensor sequence_scores(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                const torch::Tensor& position_ids, std::int64_t pad_token_id,
                                torch::Tensor* score_index = nullptr) {
    const auto logits = forward(input_ids, attention_mask, position_ids);  // [B, T, L]
    const auto positions = torch::arange(input_ids.size(1), input_ids.options().dtype(torch::kLong));
    const auto last = (positions * input_ids.ne(pad_token_id).to(torch::kLong)).argmax(-1);  // [B]
    if (score_index != nullptr) *score_index = last;
    return logits.index({torch::arange(input_ids.size(0), last.options()), last});
  }

  // TRL's get_reward on [prompt; completion] (ALGORITHM.md §4): attention = ids != pad, positions = exclusive
  // cumsum, pads replaced by token 0, score read at the last completion token before the first pad (P - 1 when
  // the completion starts with pad). ids [B, P + C], P = prompt width -> scores [B] (label 0);
  // `score_index` [B] if asked.
  torch::Tensor completion_scores(const torch::Tensor& ids, std::int64_t prompt_width, std::int64_t pad_token_id,
                                  torch::Tensor* score_index = nullptr) {
    const auto attention = ids.ne(pad_token_id).to(torch::kLong);             // [B, P+C]
    const auto positions = attention.cumsum(1) - attention;                    // [B, P+C]
    const auto hidden = model->forward(ids.masked_fill(attention.eq(0), 0), attention, positions, nullptr);
    const auto completion = ids.narrow(1, prompt_width, ids.size(1) - prompt_width);
    const auto index = first_true_index(completion.eq(pad_token_id)) - 1 + prompt_width;  // [B]
    if (score_index != nullptr) *score_index = index;
    const auto rows = torch::arange(ids.size(0), index.options());
    return score(hidden.index({rows, index})).select(-1, 0).to(torch::kFloat);
  }

  [[nodiscard]] std::int64_t vocab_size() const { return config_.vocab_size; }
  [[nodiscard]] const io::ModelConfig& config() const { return config_; }

  DecoderModel model{nullptr};
  Linear score{nullptr};

 private:
  io::ModelConfig config_;
};
TORCH_MODULE(SequenceClassifier);

}  // namespace xpo::models
