// xpo/models/checkpoint.hpp — activation (gradient) checkpointing: run a block without keeping its activations,
// and recompute them in backward (PyTorch's torch.utils.checkpoint, reentrant variant, which Hugging Face's
// gradient_checkpointing_enable() uses per decoder layer). Only the block's input is kept.
#pragma once

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/torch.h>

#include <functional>
#include <optional>
#include <utility>

#include "xpo/core/compat.hpp"

namespace xpo::models {

namespace detail {

// The backward node of one checkpointed call: recomputes the block from its saved input with grad on, under the
// autocast state and (optionally) the CPU generator state of the forward, then back-propagates the incoming
// gradient through it. The block's parameters receive their gradients from that inner backward (accumulated, and
// their hooks fire, as in PyTorch's reentrant checkpoint); the node returns the input's gradient.
struct RecomputeBackward : torch::autograd::Node {
  std::function<torch::Tensor(const torch::Tensor&)> block;
  torch::Tensor input;  // detached
  bool input_requires_grad = false;
  bool cpu_autocast = false, cuda_autocast = false;
  torch::ScalarType cpu_dtype = torch::kBFloat16, cuda_dtype = torch::kHalf;
  std::optional<at::Tensor> rng_state;  // the CPU generator before the forward (dropout replays the same masks)

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    TORCH_CHECK(block, "gradient checkpointing: backward through a checkpointed block twice (its inputs are freed)");
    if (!grads[0].defined()) return {torch::Tensor()};
    auto x = input.detach().requires_grad_(input_requires_grad);
    torch::Tensor y;
    {
      torch::AutoGradMode grad_on(true);
      const bool cache = at::autocast::is_autocast_cache_enabled();
      at::autocast::set_autocast_cache_enabled(false);  // no cast of another scope without grad history is reused
      std::optional<at::Tensor> outer_rng;
      if (rng_state) {
        outer_rng = compat::default_cpu_generator_state();
        compat::set_default_cpu_generator_state(*rng_state);
      }
      try {
        compat::AutocastGuard cpu(c10::DeviceType::CPU, cpu_dtype, cpu_autocast);
        compat::AutocastGuard cuda(c10::DeviceType::CUDA, cuda_dtype, cuda_autocast);
        y = block(x);
      } catch (...) {
        at::autocast::set_autocast_cache_enabled(cache);
        if (outer_rng) compat::set_default_cpu_generator_state(*outer_rng);
        throw;
      }
      at::autocast::set_autocast_cache_enabled(cache);
      if (outer_rng) compat::set_default_cpu_generator_state(*outer_rng);  // backward leaves the stream as it was
    }
    if (y.requires_grad()) torch::autograd::backward({y}, {grads[0]});
    block = nullptr;  // free what the block captured (masks, tables) and the saved input
    auto g = input_requires_grad ? x.grad() : torch::Tensor();
    input = torch::Tensor();
    return {g};
  }
};

}  // namespace detail

// y = block(input) without keeping block's activations for backward: the forward runs without grad, and
// backward recomputes it (one more forward per block). input [..] -> block's output. `block` must capture by value
// everything it reads besides its argument (it runs again in backward, after the caller has returned), and must
// give the same result when run again: `preserve_rng` replays the CPU generator (dropout on); randomness on other
// devices is not replayed, so it is refused there. `trainable`: whether any parameter the block uses requires
// grad (with neither that nor input.requires_grad(), the block is simply run). Without grad mode: block(input).
inline torch::Tensor checkpoint(std::function<torch::Tensor(const torch::Tensor&)> block, const torch::Tensor& input,
                                bool trainable, bool preserve_rng = false) {
  if (!torch::GradMode::is_enabled() || (!trainable && !input.requires_grad())) return block(input);
  TORCH_CHECK(!preserve_rng || input.device().is_cpu(),
              "gradient checkpointing with dropout replays the CPU generator only; turn dropout off on ",
              input.device().str());
  auto node = std::shared_ptr<detail::RecomputeBackward>(new detail::RecomputeBackward(), torch::autograd::deleteNode);
  node->input_requires_grad = input.requires_grad();
  node->set_next_edges(torch::autograd::collect_next_edges(input));
  node->cpu_autocast = compat::AutocastGuard::is_enabled(c10::DeviceType::CPU);
  node->cpu_dtype = compat::AutocastGuard::get_dtype(c10::DeviceType::CPU);
  node->cuda_autocast = compat::AutocastGuard::is_enabled(c10::DeviceType::CUDA);
  node->cuda_dtype = compat::AutocastGuard::get_dtype(c10::DeviceType::CUDA);
  if (preserve_rng) node->rng_state = compat::default_cpu_generator_state();
  node->input = input.detach();
  torch::Tensor y;
  {
    torch::NoGradGuard no_grad;
    const bool cache = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);  // casts made here have no grad history: keep them out of the cache
    try {
      y = block(input);
    } catch (...) {
      at::autocast::set_autocast_cache_enabled(cache);
      throw;
    }
    at::autocast::set_autocast_cache_enabled(cache);
  }
  node->block = std::move(block);
  torch::autograd::set_history(y, node);
  return y;
}

}  // namespace xpo::models
