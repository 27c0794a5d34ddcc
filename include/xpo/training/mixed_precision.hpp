// xpo/training/mixed_precision.hpp — mixed precision as transformers' Trainer runs it under --bf16 / --fp16:
// the weights and AdamW's moments stay in the dtype they were loaded in (float32: the master weights), the
// forward passes run under autocast in the low precision (matmuls in bfloat16/float16, reductions and the
// log-softmax in float32), and float16 adds a dynamic loss scaler (torch.cuda.amp.GradScaler's rules).
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "xpo/core/compat.hpp"
#include "xpo/core/config.hpp"
#include "xpo/core/errors.hpp"

namespace xpo::training {

// The autocast dtype a config asks for: bfloat16 (bf16), float16 (fp16), or none.
inline std::optional<torch::ScalarType> autocast_dtype(const XPOConfig& config) {
  if (config.bf16) return torch::kBFloat16;
  if (config.fp16) return torch::kHalf;
  return std::nullopt;
}

// float16's dynamic loss scaler, with torch.cuda.amp.GradScaler's defaults and rules: the loss is multiplied by
// scale() before backward; unscale() divides the gradients by it and says whether any is inf/NaN; update() halves
// the scale after such a step (which the caller skips) and doubles it after growth_interval clean steps in a row.
// The scale is a power of two, so scaling and unscaling are exact.
class GradScaler {
 public:
  struct Options {
    double init_scale = 65536.0;
    double growth_factor = 2.0;
    double backoff_factor = 0.5;
    std::int64_t growth_interval = 2000;
  };
  GradScaler() : GradScaler(Options{}) {}
  explicit GradScaler(Options options) : options_(options), scale_(options.init_scale) {
    if (!(options.init_scale > 0 && std::isfinite(options.init_scale)) || !(options.growth_factor > 1) ||
        !(options.backoff_factor > 0 && options.backoff_factor < 1) || options.growth_interval < 1)
      throw ConfigError("GradScaler: init_scale must be finite and > 0, growth_factor > 1, backoff_factor in (0, 1), "
                        "growth_interval >= 1");
  }

  [[nodiscard]] double scale() const noexcept { return scale_; }
  [[nodiscard]] std::int64_t growth_tracker() const noexcept { return growth_tracker_; }
  // Steps skipped because their gradients overflowed (update(true) calls), over the run.
  [[nodiscard]] std::int64_t overflow_steps() const noexcept { return overflow_steps_; }

  // loss -> loss x scale (same shape and dtype).
  [[nodiscard]] torch::Tensor scale(const torch::Tensor& loss) const { return loss * scale_; }

  // Divides each defined gradient of `params` by the scale, in place; true when any gradient holds inf or NaN.
  bool unscale(const std::vector<torch::Tensor>& params) const {
    torch::NoGradGuard no_grad;
    const double inv = 1.0 / scale_;
    bool found_inf = false;
    for (const auto& p : params) {
      auto g = p.grad();
      if (!g.defined()) continue;
      g.mul_(inv);
      if (!found_inf) found_inf = !torch::isfinite(g).all().item<bool>();
    }
    return found_inf;
  }

  // After an optimizer step: found_inf (the step was skipped) -> scale x backoff_factor; otherwise one more clean
  // step, and growth_interval of them in a row -> scale x growth_factor.
  void update(bool found_inf) {
    if (found_inf) {
      scale_ *= options_.backoff_factor;
      growth_tracker_ = 0;
      ++overflow_steps_;
    } else if (++growth_tracker_ == options_.growth_interval) {
      scale_ *= options_.growth_factor;
      growth_tracker_ = 0;
    }
  }

  // The state a checkpoint keeps (scaler.pt, as transformers' Trainer): [scale, growth_tracker, overflow_steps]
  // in float64 (exact: the scale is a power of two, the counts are far below 2^53).
  [[nodiscard]] torch::Tensor state() const {
    return torch::tensor({scale_, static_cast<double>(growth_tracker_), static_cast<double>(overflow_steps_)}, torch::kDouble);
  }
  // Restores state(); throws xpo::FileError naming `source` when `s` is not such a tensor.
  void load_state(const torch::Tensor& s, const std::string& source) {
    if (!s.defined() || s.scalar_type() != torch::kDouble || s.dim() != 1 || s.size(0) != 3)
      throw FileError(source, "expected the loss scaler's state: a float64 tensor [scale, growth_tracker, overflow_steps]");
    const auto c = s.contiguous();
    const auto a = c.accessor<double, 1>();
    if (!(a[0] > 0 && std::isfinite(a[0])) || a[1] < 0 || a[2] < 0) throw FileError(source, "the loss scaler's state is invalid");
    scale_ = a[0];
    growth_tracker_ = static_cast<std::int64_t>(a[1]);
    overflow_steps_ = static_cast<std::int64_t>(a[2]);
  }

 private:
  Options options_;
  double scale_;
  std::int64_t growth_tracker_ = 0;
  std::int64_t overflow_steps_ = 0;
};

// What an optimizer step does with its gradients, given whether every micro-batch's loss was finite and what the
// loss scaler saw. Exactly one mechanism accounts for a step that is not applied:
//  - a non-finite loss: the trainer's guard (counted in skipped_steps, bounded by max_skipped_steps); the scaler
//    is left as it is, since the scale did not cause it;
//  - a finite loss with inf/NaN gradients under fp16: the scaler's overflow (scale lowered, counted in the
//    scaler's own overflow_steps, not in skipped_steps: a too-high scale is expected early in a run);
//  - otherwise a non-finite gradient norm (no scaler): the guard again.
enum class StepVerdict { apply, skip_non_finite, skip_overflow };

inline StepVerdict step_verdict(bool finite_loss, bool finite_grad_norm, bool scaler_found_inf, bool has_scaler) {
  if (!finite_loss) return StepVerdict::skip_non_finite;
  if (has_scaler && scaler_found_inf) return StepVerdict::skip_overflow;
  if (!finite_grad_norm) return StepVerdict::skip_non_finite;
  return StepVerdict::apply;
}

// The relative resolution of a floating dtype (machine epsilon: the gap above 1). An AdamW update of about
// learning_rate rounds away on a weight w when learning_rate < |w| x epsilon / 2.
inline double dtype_epsilon(torch::ScalarType t) {
  switch (t) {
    case torch::kBFloat16: return 0.0078125;          // 2^-7
    case torch::kHalf: return 0.0009765625;           // 2^-10
    case torch::kDouble: return 2.220446049250313e-16;
    default: return 1.1920928955078125e-07;           // 2^-23
  }
}

}  // namespace xpo::training
