// The real Trainer rejects a policy that is not a CausalLanguageModel, naming the concept.
#include <xpo/training/trainer.hpp>

struct GoodPolicy {
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor&, const torch::Tensor&) { return ids; }
  std::vector<torch::Tensor> parameters() const { return {}; }
  void train(bool) {}
  bool is_training() const { return false; }
  std::int64_t vocab_size() const { return 8; }
};
struct PolicyWithoutForward {
  std::vector<torch::Tensor> parameters() const { return {}; }
  void train(bool) {}
  bool is_training() const { return false; }
  std::int64_t vocab_size() const { return 8; }
};

#ifdef XPO_EXPECT_FAIL
template class xpo::Trainer<PolicyWithoutForward, xpo::scoring::FunctionScorer>;
#else
template class xpo::Trainer<GoodPolicy, xpo::scoring::FunctionScorer>;
#endif
