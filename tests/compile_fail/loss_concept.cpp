// A loss that returns only the scalar (not the parts the metrics need) is not a PreferenceLoss.
#include "slots.hpp"

struct LossReturningScalar {
  torch::Tensor compute(const xpo::PreferenceLogps& logps, xpo::LossWeights) const {
    return logps.policy_model_data.mean();
  }
};

#ifdef XPO_EXPECT_FAIL
template struct xpo_compile_fail::LossSlot<LossReturningScalar>;
#else
template struct xpo_compile_fail::LossSlot<xpo::losses::XPO<xpo::losses::IPO>>;
#endif
