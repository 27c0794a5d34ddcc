// xpo/models/layers.hpp — the building blocks of the Qwen2/Llama decoder, registered under Hugging Face's
// parameter names so that loading and saving is a name-for-name copy:
//   Linear   `weight` [out, in], optional `bias` [out]; optional LoRA adapters `lora_A.weight` [r, in],
//            `lora_B.weight` [out, r] (PEFT's names) behind a switch shared by the whole model;
//   RMSNorm  `weight` [H];
//   rotary tables (rotate-half layout) from rope_theta and rope_scaling.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <numbers>
#include <optional>

#include "xpo/io/hf_config.hpp"

namespace xpo::models {

// One switch for every adapter of a model: the reference model is the same weights with adapters off.
struct AdapterSwitch {
  bool enabled = true;
};

struct LoRAOptions {
  std::int64_t r = 8;
  double alpha = 16.0;
  double dropout = 0.05;
  // PEFT's default targets for Qwen2/Llama; "all-linear" style lists name all seven projections.
  std::vector<std::string> target_modules = {"q_proj", "v_proj"};
  [[nodiscard]] double scaling() const { return alpha / static_cast<double>(r); }
};

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(std::int64_t in_features, std::int64_t out_features, bool with_bias)
      : in_(in_features), out_(out_features) {
    weight = register_parameter("weight", torch::empty({out_features, in_features}));
    if (with_bias) bias = register_parameter("bias", torch::empty({out_features}));
  }

  // x [..., in] -> [..., out]
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = torch::nn::functional::linear(x, weight, bias);
    if (lora_A && switch_ && switch_->enabled) {
      auto h = dropout_ > 0 && is_training() ? torch::dropout(x, dropout_, true) : x;
      y = y + lora_B(lora_A(h)).mul(scaling_);
    }
    return y;
  }

  // Attach rank-r adapters (A: Kaiming-uniform as PEFT, B: zeros, so the model starts unchanged) and freeze the
  // base weight and bias.
  void attach_lora(const LoRAOptions& options, std::shared_ptr<AdapterSwitch> adapter_switch) {
    TORCH_CHECK(!lora_A, "LoRA adapters are already attached");
    TORCH_CHECK(options.r > 0 && options.r <= std::min(in_, out_), "LoRA rank ", options.r, " must be in [1, ",
                std::min(in_, out_), "]");
    const auto opts = torch::nn::LinearOptions(in_, options.r).bias(false);
    lora_A = register_module("lora_A", torch::nn::Linear(opts));
    lora_B = register_module("lora_B", torch::nn::Linear(torch::nn::LinearOptions(options.r, out_).bias(false)));
    lora_A->to(weight.device(), weight.scalar_type());
    lora_B->to(weight.device(), weight.scalar_type());
    {
      torch::NoGradGuard no_grad;
      torch::nn::init::kaiming_uniform_(lora_A->weight, std::sqrt(5.0));
      lora_B->weight.zero_();
    }
    scaling_ = options.scaling();
    dropout_ = options.dropout;
    switch_ = std::move(adapter_switch);
    weight.set_requires_grad(false);
    if (bias.defined()) bias.set_requires_grad(false);
  }

  [[nodiscard]] bool has_lora() const { return static_cast<bool>(lora_A); }

  // The plain weight a merged checkpoint stores: W + scaling * B A (W itself without adapters). [out, in]
  [[nodiscard]] torch::Tensor merged_weight() const {
    torch::NoGradGuard no_grad;
    if (!lora_A) return weight.detach();
    return (weight + torch::matmul(lora_B->weight, lora_A->weight).mul(scaling_)).detach();
  }

  torch::Tensor weight;
  torch::Tensor bias;
  torch::nn::Linear lora_A{nullptr};
  torch::nn::Linear lora_B{nullptr};

 private:
  std::int64_t in_;
  std::int64_t out_;
  double scaling_ = 0.0;
  double dropout_ = 0.0;
  std::shared_ptr<AdapterSwitch> switch_;
};
TORCH_MODULE(Linear);

// Token embedding `weight` [V, H]. Allocated uninitialised like Linear (loading overwrites it; init_weights draws
// it for a fresh model), unlike torch::nn::Embedding, which spends V x H normal draws on construction.
class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(std::int64_t vocab, std::int64_t hidden) { weight = register_parameter("weight", torch::empty({vocab, hidden})); }
  // ids [...] int64 -> [..., H]
  torch::Tensor forward(const torch::Tensor& ids) { return torch::embedding(weight, ids); }
  torch::Tensor weight;
};
TORCH_MODULE(Embedding);

// Root-mean-square norm as Hugging Face computes it: in float32, then back to the input dtype, times weight.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(std::int64_t hidden, double eps) : eps_(eps) { weight = register_parameter("weight", torch::ones({hidden})); }

  // x [..., H] -> [..., H]
  torch::Tensor forward(const torch::Tensor& x) {
    const auto x32 = x.to(torch::kFloat);
    const auto normed = x32 * torch::rsqrt(x32.square().mean(-1, /*keepdim=*/true) + eps_);
    return weight * normed.to(x.scalar_type());
  }

  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// Rotary inverse frequencies [D/2] in float32, with rope_scaling applied ("linear" or "llama3").
inline torch::Tensor rotary_inverse_frequencies(const io::ModelConfig& config) {
  const auto d = config.head_dim;
  auto inv_freq = 1.0 / torch::pow(config.rope_theta, torch::arange(0, d, 2, torch::kLong).to(torch::kFloat) / d);
  if (!config.rope_scaling) return inv_freq;
  const auto& s = *config.rope_scaling;
  if (s.type == "linear") return inv_freq / s.factor;
  // llama3: long wavelengths are slowed by `factor`, short ones kept, the band between interpolated smoothly.
  const double old_context = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / s.low_freq_factor;
  const double high_freq_wavelen = old_context / s.high_freq_factor;
  const auto wavelen = 2 * std::numbers::pi / inv_freq;
  auto scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  const auto smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  const auto smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  const auto medium = wavelen.ge(high_freq_wavelen).logical_and(wavelen.le(low_freq_wavelen));
  return torch::where(medium, smoothed, scaled);
}

struct RotaryTables {
  torch::Tensor cos;  // [B, 1, T, D] in the model's dtype
  torch::Tensor sin;  // [B, 1, T, D]
};

// cos/sin of position x inverse frequency, computed in float32: position_ids [B, T], inv_freq [D/2] -> [B,1,T,D].
inline RotaryTables rotary_tables(const torch::Tensor& position_ids, const torch::Tensor& inv_freq,
                                  torch::ScalarType dtype) {
  const auto freqs = position_ids.to(torch::kFloat).unsqueeze(-1) * inv_freq.to(torch::kFloat);  // [B, T, D/2]
  const auto emb = torch::cat({freqs, freqs}, -1).unsqueeze(1);                                  // [B, 1, T, D]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

// rotate_half(x) = cat(-x[D/2:], x[:D/2]); x [..., D] -> [..., D]
inline torch::Tensor rotate_half(const torch::Tensor& x) {
  const auto half = x.size(-1) / 2;
  return torch::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
}

// x [B, heads, T, D] with tables [B, 1, T, D] -> [B, heads, T, D]
inline torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryTables& t) {
  return x * t.cos + rotate_half(x) * t.sin;
}

}  // namespace xpo::models
