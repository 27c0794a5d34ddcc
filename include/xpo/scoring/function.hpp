// xpo/scoring/function.hpp — scorers from a user's callable on decoded text (rule-based rewards and judges):
//  - FunctionScorer(f): f(prompt, completion) -> double, one score per completion (a RewardScorer);
//  - FunctionJudge(f):  f(prompt, {policy's, reference's}) -> int, 0 = the first wins (a PairwiseJudge).
// Prompts are the text the policy saw (after the chat template); completions are decoded with special tokens
// skipped and surrounding whitespace stripped, as TRL's judges see them.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "xpo/core/concepts.hpp"
#include "xpo/core/types.hpp"

namespace xpo::scoring {

class FunctionScorer {
 public:
  using Function = std::function<double(const std::string& prompt, const std::string& completion)>;
  explicit FunctionScorer(Function f) : f_(std::move(f)) {}

  // [B] float32 scores on the batch's device.
  torch::Tensor score(const CompletionBatch& batch) {
    std::vector<float> values;
    values.reserve(batch.completions.size());
    for (std::size_t i = 0; i < batch.completions.size(); ++i) {
      values.push_back(static_cast<float>(f_(batch.prompts.at(i), batch.completions[i])));
    }
    return torch::tensor(values, torch::kFloat).to(batch.completion_ids.device());
  }

 private:
  Function f_;
};

class FunctionJudge {
 public:
  using Function = std::function<int(const std::string& prompt, const CompletionPair& pair)>;
  explicit FunctionJudge(Function f) : f_(std::move(f)) {}

  std::vector<int> judge(const std::vector<std::string>& prompts, const std::vector<CompletionPair>& pairs) {
    std::vector<int> out;
    out.reserve(pairs.size());
    for (std::size_t i = 0; i < pairs.size(); ++i) out.push_back(f_(prompts.at(i), pairs[i]));
    return out;
  }

 private:
  Function f_;
};

static_assert(RewardScorer<FunctionScorer>);
static_assert(PairwiseJudge<FunctionJudge>);

}  // namespace xpo::scoring
