// xpo/losses/dpo.hpp — the two DPO losses TRL's XPOTrainer offers (loss_type "sigmoid" and "ipo").
#pragma once

#include <torch/torch.h>

#include <string_view>

#include "xpo/losses/concepts.hpp"

namespace xpo::losses {

// -log sigmoid(beta * logits): logits [B] -> [B]. log_sigmoid is evaluated as min(x, 0) - log1p(exp(-|x|)),
// so it neither overflows nor loses the tail for |beta * logits| in the hundreds.
struct Sigmoid {
  static constexpr std::string_view name = "sigmoid";
  static torch::Tensor losses(const torch::Tensor& logits, double beta) { return -torch::log_sigmoid(beta * logits); }
};

// (logits - 1 / (2 beta))^2 on the summed (not length-averaged) log-ratios, as TRL's online trainers do:
// logits [B] -> [B].
struct IPO {
  static constexpr std::string_view name = "ipo";
  static torch::Tensor losses(const torch::Tensor& logits, double beta) {
    return (logits - 1.0 / (2.0 * beta)).square();
  }
};

static_assert(DPOLossFunction<Sigmoid>);
static_assert(DPOLossFunction<IPO>);

}  // namespace xpo::losses
