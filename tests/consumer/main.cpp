// Uses only what `find_package(xpo)` + `#include <xpo/xpo.hpp>` provide: computes an XPO loss and its gradient.
#include <xpo/xpo.hpp>

#include <cmath>
#include <iostream>

int main() {
  constexpr xpo::schedules::Constant schedule{1e-5, 0.1};
  xpo::PreferenceLogps logps{torch::tensor({-4.0, -6.0}).requires_grad_(), torch::tensor({-5.0, -5.5}).requires_grad_(),
                             torch::tensor({-4.5, -6.0}), torch::tensor({-5.0, -5.0}), torch::tensor({true, false})};
  const auto out = xpo::losses::XPO<>{}.compute(logps, {schedule.alpha(0.0), schedule.beta(0.0)});
  out.loss.backward();
  const double loss = out.loss.item<double>();
  std::cout << "xpo " << xpo::version << " on LibTorch " << xpo::compat::torch_version() << ": loss " << loss
            << ", d loss / d S_pol_m " << logps.policy_model_data.grad() << "\n";
  return std::isfinite(loss) && logps.policy_model_data.grad().defined() ? 0 : 1;
}
