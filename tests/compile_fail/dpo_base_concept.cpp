// XPO<Base> needs a DPO loss with a TRL loss_type name.
#include <xpo/xpo.hpp>

struct UnnamedHinge {
  static torch::Tensor losses(const torch::Tensor& logits, double beta) { return torch::relu(1 - beta * logits); }
};
struct Hinge : UnnamedHinge {
  static constexpr std::string_view name = "hinge";
};

#ifdef XPO_EXPECT_FAIL
template struct xpo::losses::XPO<UnnamedHinge>;
#else
template struct xpo::losses::XPO<Hinge>;
#endif
