// xpo/losses/concepts.hpp — the Loss slot of xpo::Trainer (xpo::PreferenceLoss, defined in core/concepts.hpp)
// and the smaller policy the shipped XPO loss is built on: a DPO loss on the implicit-reward margin.
#pragma once

#include <torch/torch.h>

#include <concepts>
#include <string_view>

#include "xpo/core/concepts.hpp"

namespace xpo::losses {

using xpo::PreferenceLoss;

// A DPO-family loss on the margin logits = chosen_log_ratio - rejected_log_ratio:
//  - losses(logits [B], beta) -> [B] per-row losses (differentiable in logits);
//  - name: the TRL loss_type string ("sigmoid", "ipo").
template <class D>
concept DPOLossFunction = requires(const torch::Tensor& logits, double beta) {
  { D::losses(logits, beta) } -> std::same_as<torch::Tensor>;
  { D::name } -> std::convertible_to<std::string_view>;
};

}  // namespace xpo::losses
