// A model without vocab_size() is not a CausalLanguageModel.
#include "slots.hpp"

struct GoodModel {
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor&, const torch::Tensor&) { return ids; }
  std::vector<torch::Tensor> parameters() const { return {}; }
  void train(bool) {}
  bool is_training() const { return false; }
  std::int64_t vocab_size() const { return 8; }
};
struct ModelWithoutVocabSize {
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor&, const torch::Tensor&) { return ids; }
  std::vector<torch::Tensor> parameters() const { return {}; }
  void train(bool) {}
  bool is_training() const { return false; }
};

#ifdef XPO_EXPECT_FAIL
template struct xpo_compile_fail::ModelSlot<ModelWithoutVocabSize>;
#else
template struct xpo_compile_fail::ModelSlot<GoodModel>;
#endif
