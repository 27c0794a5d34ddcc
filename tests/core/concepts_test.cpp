// xpo/core/concepts.hpp: what satisfies each concept. The negative cases are compile-failure tests
// (tests/compile_fail/), since a type that misses a requirement must not compile where the Trainer uses it.
#include <gtest/gtest.h>

#include <xpo/xpo.hpp>

namespace {

// A plain class can be a model...
struct PlainModel {
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor&, const torch::Tensor&) {
    return torch::zeros({ids.size(0), ids.size(1), 4});
  }
  std::vector<torch::Tensor> parameters() const { return {}; }
  void train(bool) {}
  bool is_training() const { return false; }
  std::int64_t vocab_size() const { return 4; }
};
static_assert(xpo::CausalLanguageModel<PlainModel>);

// ...and so can a LibTorch module behind its TORCH_MODULE holder, which is how models are passed around.
struct TinyLMImpl : torch::nn::Module {
  TinyLMImpl() : embed(register_module("embed", torch::nn::Embedding(5, 5))) {}
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor&, const torch::Tensor&) { return embed(ids); }
  std::int64_t vocab_size() const { return 5; }
  torch::nn::Embedding embed;
};
TORCH_MODULE(TinyLM);
static_assert(xpo::CausalLanguageModel<TinyLM>);
static_assert(xpo::CausalLanguageModel<TinyLMImpl>);

struct LengthReward {
  torch::Tensor score(const xpo::CompletionBatch& batch) { return batch.completion_mask.sum(-1).to(torch::kFloat); }
};
struct AlwaysPolicyJudge {
  std::vector<int> judge(const std::vector<std::string>& prompts, const std::vector<xpo::CompletionPair>&) {
    return std::vector<int>(prompts.size(), 0);
  }
};
static_assert(xpo::RewardScorer<LengthReward> && !xpo::PairwiseJudge<LengthReward>);
static_assert(xpo::PairwiseJudge<AlwaysPolicyJudge> && !xpo::RewardScorer<AlwaysPolicyJudge>);
static_assert(xpo::PreferenceScorer<LengthReward> && xpo::PreferenceScorer<AlwaysPolicyJudge>);
static_assert(!xpo::PreferenceScorer<PlainModel>);
static_assert(xpo::PreferenceLoss<xpo::losses::XPO<>> && !xpo::PreferenceLoss<LengthReward>);
static_assert(xpo::WeightSchedule<xpo::schedules::Constant> && !xpo::WeightSchedule<PlainModel>);

TEST(Concepts, UnwrapReachesTheModuleBehindAHolder) {
  TinyLM holder;
  auto& impl = xpo::unwrap(holder);
  static_assert(std::is_same_v<decltype(impl), TinyLMImpl&>);
  EXPECT_EQ(&impl, holder.get());
  PlainModel plain;
  EXPECT_EQ(&xpo::unwrap(plain), &plain);
  const auto ids = torch::tensor({{1, 2, 3}}, torch::kLong);
  EXPECT_EQ(xpo::unwrap(holder).forward(ids, ids, ids).sizes(), (std::vector<std::int64_t>{1, 3, 5}));
  EXPECT_EQ(xpo::unwrap(holder).parameters().size(), 1u);
}

}  // namespace
