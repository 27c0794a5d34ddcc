// A reward scorer whose score() returns a vector instead of a [B] tensor is neither scorer kind.
#include "slots.hpp"

struct GoodScorer {
  torch::Tensor score(const xpo::CompletionBatch& batch) { return torch::zeros({batch.completion_ids.size(0)}); }
};
struct ScorerReturningVector {
  std::vector<float> score(const xpo::CompletionBatch&) { return {}; }
};

#ifdef XPO_EXPECT_FAIL
template struct xpo_compile_fail::ScorerSlot<ScorerReturningVector>;
#else
template struct xpo_compile_fail::ScorerSlot<GoodScorer>;
#endif
