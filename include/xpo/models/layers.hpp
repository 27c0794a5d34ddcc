// xpo/models/layers.hpp — the building blocks of the decoder, registered under Hugging Face's parameter names so
// that loading and saving is a name-for-name copy:
//   Linear   `weight` [out, in], optional `bias` [out]; optional LoRA adapters `lora_A.weight` [r, in],
//            `lora_B.weight` [out, r] (PEFT's names) behind a switch shared by the whole model;
//   RMSNorm  `weight` [H], times w (Llama family) or (1 + w) (Gemma);
//   RotaryEmbedding: cos/sin tables (rotate-half layout, optionally over the first rotary_dim dims only) from a
//            base and rope_scaling (linear, llama3, yarn, dynamic, longrope), as transformers v4.57.1's
//            modeling_rope_utils.py computes them.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <numbers>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "xpo/core/compat.hpp"
#include "xpo/io/hf_config.hpp"

namespace xpo::models {

// One switch for every adapter of a model: the reference model is the same weights with adapters off.
// `leading_rows` (when set) limits the adapters to the first n rows of every batch (dim 0), so one batched forward
// can compute the adapted model on rows [0, n) and the base model on the rest: generation::generate_adapted_and_base
// decodes the LoRA policy's and its reference's samples together, reading the base weights once.
struct AdapterSwitch {
  bool enabled = true;
  std::optional<std::int64_t> leading_rows;  // nullopt: every row
};

// A frozen float32 tensor's copy in a low precision, made when first asked and again only when the source changes
// (its version counter), dtype or device: what autocast would cast it to at every use, cast once. The copy is an
// ordinary tensor (never an inference tensor), so a forward that records autograd may use it.
class LowPrecisionCopy {
 public:
  // source (float32) -> source.to(dtype), from the kept copy when still current.
  const torch::Tensor& of(const torch::Tensor& source, torch::ScalarType dtype) {
    if (!copy_.defined() || copy_.scalar_type() != dtype || copy_.device() != source.device() || version_ != source._version()) {
      // A normal tensor even when first asked under InferenceMode (generation): the training forward saves it for
      // backward, which an inference tensor cannot be.
      c10::InferenceMode normal(/*enabled=*/false);
      torch::NoGradGuard no_grad;
      copy_ = source.detach().to(dtype);
      version_ = source._version();
    }
    return copy_;
  }
  void reset() { copy_ = torch::Tensor(); }
  // Whether a copy is held (tests; memory accounting).
  [[nodiscard]] bool holds_copy() const { return copy_.defined(); }

 private:
  torch::Tensor copy_;
  std::int64_t version_ = -1;
};

// The tensor a float32 `weight` is multiplied as, when `cache` is on and autocast is on for its device: the kept
// copy in autocast's dtype (`copy`), exactly what autocast would cast it to. Used for a frozen weight always, and
// for a trainable one under InferenceMode (generation: the copy is made at the first decoding step and read by
// every later one, where autocast would cast the weight again at each step, as it caches nothing there). Any other
// forward gets the trainable weight itself (autocast casts it; with gradients on, the gradient reaches the float32
// weight) and drops its copy, stale after the next optimizer step anyway: the memory is held only from generation
// to the loss forward, and a checkpointed forward (run without gradients) keeps none. Otherwise: `weight` itself.
inline torch::Tensor autocast_weight(const torch::Tensor& weight, bool cache, LowPrecisionCopy& copy) {
  if (!cache || !weight.defined() || weight.scalar_type() != torch::kFloat) return weight;
  if (weight.requires_grad() && !c10::InferenceMode::is_enabled()) {
    copy.reset();
    return weight;
  }
  const auto low = compat::autocast_dtype_on(weight.device().type());
  return low ? copy.of(weight, *low) : weight;
}

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
    return add_adapter(x, torch::nn::functional::linear(x, autocast_weight(weight, low_precision_cache_, cached_weight_), bias));
  }

  // y (this layer's base product x W^T + b, [..., out]) plus the adapters' contribution for input x [..., in]
  // when adapters are attached and switched on (only on the switch's leading rows when it names them); y itself
  // otherwise. FusedProjection computes the base product of several layers at once and adds each one's here.
  torch::Tensor add_adapter(const torch::Tensor& x, torch::Tensor y) {
    if (lora_A && switch_ && switch_->enabled) {
      const auto rows = switch_->leading_rows;
      if (rows && *rows < x.size(0)) {  // only the first rows: the same arithmetic on them, the rest left as is
        if (*rows > 0) {
          const auto head = x.narrow(0, 0, *rows);
          const auto h = dropout_ > 0 && is_training() ? torch::dropout(head, dropout_, true) : head;
          y = torch::cat({y.narrow(0, 0, *rows) + lora_B(lora_A(h)).mul(scaling_), y.narrow(0, *rows, y.size(0) - *rows)}, 0);
        }
        return y;
      }
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

  // Mixed precision without per-call casts: autocast casts a float32 weight to its dtype at every call, caching
  // only weights that require grad and only while gradients are recorded, so a frozen layer (LoRA's base) was
  // re-cast at every decoding step and forward, and every layer at every decoding step. When on, a frozen float32
  // weight is cast once and kept, and a trainable one once per generation (under InferenceMode, autocast_weight);
  // a copy is re-cast only when its weight changed (version counter) or moved: the same values autocast's cast
  // gives, so the results are unchanged. (The bias stays as it is: autocast's linear adds a float32 bias to the
  // low-precision product without rounding it first.) Costs the low-precision copy (2 bytes per weight under
  // bf16/fp16; a trainable weight's only between a generation and the next forward outside InferenceMode). Off
  // (the default): no copy is kept.
  void set_low_precision_cache(bool on) {
    low_precision_cache_ = on;
    if (!on) cached_weight_.reset();
  }

  // Whether a low-precision copy of the weight is held now (set_low_precision_cache).
  [[nodiscard]] bool holds_low_precision_copy() const { return cached_weight_.holds_copy(); }
  // Drops the weight's own low-precision copy (a FusedProjection holding it in its group's copy instead).
  void drop_low_precision_copy() { cached_weight_.reset(); }
  [[nodiscard]] bool low_precision_cache() const { return low_precision_cache_; }

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
  bool low_precision_cache_ = false;
  LowPrecisionCopy cached_weight_;
};
TORCH_MODULE(Linear);

// Linear layers that read the same input (q/k/v, gate/up) multiplied as ONE matrix product over their concatenated
// weights, where each weight would be multiplied as a low-precision copy anyway (autocast_weight: the low-precision
// cache on, a float32 weight, autocast on for its device, and the weight frozen or the call under InferenceMode).
// The concatenated copy replaces the layers' own copies (no extra memory). Under InferenceMode (generation) a
// decoding step then makes one call to the BLAS/oneDNN per group instead of one per layer: each call has a fixed
// cost (about 0.1 ms with sleeping OpenMP threads under bf16 here) that a one-token step pays for every product.
// The same operands as the layers' own calls (autocast casts the input and the concatenated float32 biases as it
// casts each layer's), so each output equals the layer's own product up to the GEMM's summation order. Other
// forwards (frozen parts, e.g. LoRA's base in the loss forward) multiply each part's rows of the copy separately:
// exactly the unfused layers' products and gradients. Adapters (LoRA) are added per layer after the base product
// (LinearImpl::add_adapter). Elsewhere (a trainable weight outside InferenceMode, float32 without autocast, the
// cache off) forward() returns nothing, and the caller runs the layers one by one, as before; the copy is dropped
// when it is stale (a part trains outside InferenceMode, or its cache is off), kept otherwise.
class FusedProjection {
 public:
  // x [..., in] -> each part's output [..., out_i] (views into one product, adapters added), or an empty vector
  // when the fused product does not apply to this call (see above). `parts`: the layers, all with the same
  // in_features, in the order their outputs are returned.
  std::vector<torch::Tensor> forward(const torch::Tensor& x, const std::vector<LinearImpl*>& parts) {
    const auto low = applies(parts);
    if (!low) {
      if (stale(parts)) reset();  // else (autocast off for this call, say) kept for the next call that applies
      return {};
    }
    refresh(parts, *low);
    for (auto* part : parts) part->drop_low_precision_copy();  // one copy per weight: the group's
    std::vector<torch::Tensor> out;
    out.reserve(parts.size());
    std::int64_t offset = 0;
    if (c10::InferenceMode::is_enabled()) {  // generation: one product
      const auto y = torch::nn::functional::linear(x, weight_, bias_);
      for (auto* part : parts) {
        const auto n = part->weight.size(0);
        out.push_back(part->add_adapter(x, y.narrow(-1, offset, n)));
        offset += n;
      }
      return out;
    }
    // A forward that may record gradients (frozen parts): each part's own product over its rows of the copy, with
    // its own bias, so that the input's gradient sums the parts' rounded products as the unfused layers do (one
    // product would round the sum once: other bfloat16 gradients).
    for (auto* part : parts) {
      const auto n = part->weight.size(0);
      out.push_back(part->add_adapter(x, torch::nn::functional::linear(x, weight_.narrow(0, offset, n), part->bias)));
      offset += n;
    }
    return out;
  }

  // Drops the concatenated copy (the memory it holds).
  void reset() {
    weight_ = torch::Tensor();
    bias_ = torch::Tensor();
    sources_.clear();
  }
  // Whether the concatenated low-precision copy is held (tests; memory accounting).
  [[nodiscard]] bool holds_copy() const { return weight_.defined(); }

  // The parts' weights concatenated along their rows, each cast to `dtype` first -> [sum out_i, in], and their
  // biases in float32 (zeros for a part without one: the same products) -> [sum out_i], undefined when no part has
  // one. What forward's one product multiplies (benchmarks reproduce it with this).
  static std::pair<torch::Tensor, torch::Tensor> concatenate(const std::vector<const LinearImpl*>& parts, torch::ScalarType dtype) {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> weights, biases;
    bool any_bias = false;
    for (const auto* part : parts) {
      weights.push_back(part->weight.detach().to(dtype));  // cast part by part: no float32 copy of the whole group
      any_bias = any_bias || part->bias.defined();
    }
    if (any_bias) {
      for (const auto* part : parts)
        biases.push_back(part->bias.defined() ? part->bias.detach() : torch::zeros({part->weight.size(0)}, part->weight.options()));
    }
    return {torch::cat(weights, 0), any_bias ? torch::cat(biases, 0) : torch::Tensor()};
  }

 private:
  // Whether a part trains (its weight or bias requires grad): its copy is multiplied only under InferenceMode.
  static bool trains(const LinearImpl& part) {
    return part.weight.requires_grad() || (part.bias.defined() && part.bias.requires_grad());
  }

  // autocast's dtype when every part's weight would be multiplied as its low-precision copy here, else nullopt.
  static std::optional<torch::ScalarType> applies(const std::vector<LinearImpl*>& parts) {
    if (parts.empty()) return std::nullopt;
    const auto device = parts.front()->weight.device();
    const auto low = compat::autocast_dtype_on(device.type());
    if (!low) return std::nullopt;
    const bool inference = c10::InferenceMode::is_enabled();
    for (const auto* part : parts) {
      const auto& w = part->weight;
      if (!part->low_precision_cache() || !w.defined() || w.scalar_type() != torch::kFloat || w.device() != device) return std::nullopt;
      if (trains(*part) && !inference) return std::nullopt;
    }
    return low;
  }

  // Whether a held copy must go when the fused product does not apply: the cache is off for a part, or a part
  // trains and this forward is outside InferenceMode (its copy is stale after the next update, and a checkpointed
  // forward must not keep it).
  static bool stale(const std::vector<LinearImpl*>& parts) {
    const bool inference = c10::InferenceMode::is_enabled();
    for (const auto* part : parts)
      if (!part->low_precision_cache() || (trains(*part) && !inference)) return true;
    return false;
  }

  // (Re)builds the concatenated copy when a part's weight or bias changed (version counter, or another tensor),
  // or the dtype or device did; otherwise keeps it.
  void refresh(const std::vector<LinearImpl*>& parts, torch::ScalarType low) {
    std::vector<std::pair<const void*, std::int64_t>> sources;
    for (const auto* part : parts) {
      sources.emplace_back(part->weight.unsafeGetTensorImpl(), part->weight._version());
      sources.emplace_back(part->bias.defined() ? part->bias.unsafeGetTensorImpl() : nullptr,
                           part->bias.defined() ? part->bias._version() : 0);
    }
    if (weight_.defined() && sources == sources_ && weight_.scalar_type() == low && weight_.device() == parts.front()->weight.device()) return;
    // Normal tensors even when first made under InferenceMode: a frozen part's copy is also read by training
    // forwards, which save it for backward.
    c10::InferenceMode normal(/*enabled=*/false);
    std::tie(weight_, bias_) = concatenate(std::vector<const LinearImpl*>(parts.begin(), parts.end()), low);
    sources_ = std::move(sources);
  }

  torch::Tensor weight_;  // [sum out_i, in] in autocast's dtype
  torch::Tensor bias_;    // [sum out_i] float32 (autocast casts it as it casts each layer's), or undefined; the
                          // one product's (InferenceMode) only
  std::vector<std::pair<const void*, std::int64_t>> sources_;  // each weight's and bias's tensor and version
};

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

// Root-mean-square norm as Hugging Face computes it: normalised in float32; Llama family: back to the input dtype,
// then times weight; Gemma (`adds_one`): times (1 + weight) in float32, then back to the input dtype.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(std::int64_t hidden, double eps, bool adds_one = false) : eps_(eps), adds_one_(adds_one) {
    weight = register_parameter("weight", adds_one ? torch::zeros({hidden}) : torch::ones({hidden}));
  }

  // x [..., H] -> [..., H]
  torch::Tensor forward(const torch::Tensor& x) {
    const auto x32 = x.to(torch::kFloat);
    const auto normed = x32 * torch::rsqrt(x32.square().mean(-1, /*keepdim=*/true) + eps_);
    if (adds_one_) return (normed * (weight.to(torch::kFloat) + 1.0)).to(x.scalar_type());
    return weight * normed.to(x.scalar_type());
  }

  [[nodiscard]] bool adds_one() const { return adds_one_; }

  torch::Tensor weight;

 private:
  double eps_;
  bool adds_one_;
};
TORCH_MODULE(RMSNorm);

// Rotary inverse frequencies [dim/2] in float32 for base `theta` over `dim` rotated dims, with static rope_scaling
// applied ("linear", "llama3", "yarn"; "longrope" takes the short factors, "dynamic" the unscaled base).
inline torch::Tensor rotary_inverse_frequencies(double theta, std::int64_t dim, const std::optional<io::RopeScaling>& scaling) {
  const auto exponents = torch::arange(0, dim, 2, torch::kLong).to(torch::kFloat) / static_cast<double>(dim);  // [dim/2]
  auto inv_freq = 1.0 / torch::pow(theta, exponents);
  if (!scaling) return inv_freq;
  const auto& s = *scaling;
  if (s.type == "linear") return inv_freq / s.factor;
  if (s.type == "dynamic") return inv_freq;
  if (s.type == "longrope") return 1.0 / (torch::tensor(s.short_factor, torch::kDouble).to(torch::kFloat) * torch::pow(theta, exponents));
  if (s.type == "yarn") {
    // Dimensions that turn fewer than beta_slow times over the original context are interpolated (divided by
    // factor), those that turn more than beta_fast times are kept, a linear ramp between.
    const double original = static_cast<double>(s.original_max_position_embeddings);
    const auto correction_dim = [&](double rotations) {
      return static_cast<double>(dim) * std::log(original / (rotations * 2 * std::numbers::pi)) / (2 * std::log(theta));
    };
    double low = correction_dim(s.beta_fast), high = correction_dim(s.beta_slow);
    if (s.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
    const auto pos_freqs = torch::pow(theta, exponents);
    const auto extrapolation = 1.0 / pos_freqs;
    const auto interpolation = 1.0 / (s.factor * pos_freqs);
    const auto ramp = ((torch::arange(dim / 2, torch::kFloat) - low) / (high - low)).clamp(0, 1);
    const auto keep = 1 - ramp;
    return interpolation * (1 - keep) + extrapolation * keep;
  }
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

// The global table's inverse frequencies of a model: rope_theta over its rotary dims with its rope_scaling.
inline torch::Tensor rotary_inverse_frequencies(const io::ModelConfig& config) {
  return rotary_inverse_frequencies(config.rope_theta, config.rotary_dim(), config.rope_scaling);
}

// The factor cos and sin are multiplied by: 1 except for yarn (0.1 ln(factor) + 1 unless given) and longrope
// (sqrt(1 + ln(factor) / ln(original)) unless given).
inline double rotary_attention_factor(const std::optional<io::RopeScaling>& scaling) {
  if (!scaling) return 1.0;
  const auto& s = *scaling;
  const auto mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
  if (s.type == "yarn") {
    if (s.attention_factor) return *s.attention_factor;
    if (s.mscale && s.mscale_all_dim && *s.mscale != 0 && *s.mscale_all_dim != 0)
      return mscale(s.factor, *s.mscale) / mscale(s.factor, *s.mscale_all_dim);
    return mscale(s.factor, 1.0);
  }
  if (s.type == "longrope") {
    if (s.attention_factor) return *s.attention_factor;
    if (s.factor <= 1.0) return 1.0;
    return std::sqrt(1 + std::log(s.factor) / std::log(static_cast<double>(s.original_max_position_embeddings)));
  }
  return 1.0;
}

struct RotaryTables {
  torch::Tensor cos;  // [B, 1, T, R] in the model's dtype (R = rotary dims), attention factor applied
  torch::Tensor sin;  // [B, 1, T, R]
};

// cos/sin of position x inverse frequency, computed in float32: position_ids [B, T], inv_freq [R/2] -> [B,1,T,R].
inline RotaryTables rotary_tables(const torch::Tensor& position_ids, const torch::Tensor& inv_freq,
                                  torch::ScalarType dtype, double attention_factor = 1.0) {
  const auto freqs = position_ids.to(torch::kFloat).unsqueeze(-1) * inv_freq.to(torch::kFloat);  // [B, T, R/2]
  const auto emb = torch::cat({freqs, freqs}, -1).unsqueeze(1);                                  // [B, 1, T, R]
  if (attention_factor == 1.0) return {emb.cos().to(dtype), emb.sin().to(dtype)};
  return {(emb.cos() * attention_factor).to(dtype), (emb.sin() * attention_factor).to(dtype)};
}

// One rotary table source: a base, the rotated dims and rope_scaling. Static kinds compute their frequencies once;
// "dynamic" and "longrope" choose them per call from the longest position of the batch (max(position_ids) + 1),
// as transformers' dynamic_rope_update does on every forward.
class RotaryEmbedding {
 public:
  RotaryEmbedding() = default;
  RotaryEmbedding(double theta, std::int64_t dim, std::optional<io::RopeScaling> scaling, std::int64_t max_position_embeddings)
      : theta_(theta), dim_(dim), scaling_(std::move(scaling)), max_positions_(max_position_embeddings) {
    inv_freq_ = rotary_inverse_frequencies(theta_, dim_, scaling_);
    attention_factor_ = rotary_attention_factor(scaling_);
    if (is_longrope())
      long_inv_freq_ = 1.0 / (torch::tensor(scaling_->long_factor, torch::kDouble).to(torch::kFloat) *
                              torch::pow(theta_, torch::arange(0, dim_, 2, torch::kLong).to(torch::kFloat) / static_cast<double>(dim_)));
  }

  [[nodiscard]] bool is_longrope() const { return scaling_ && scaling_->type == "longrope"; }
  [[nodiscard]] bool is_dynamic() const { return scaling_ && scaling_->type == "dynamic"; }
  [[nodiscard]] std::int64_t dim() const { return dim_; }
  [[nodiscard]] double attention_factor() const { return attention_factor_; }

  // longrope: whether a call whose positions reach `length` (max position + 1) uses the long factors.
  [[nodiscard]] bool uses_long_factors(std::int64_t length) const {
    return is_longrope() && length > scaling_->original_max_position_embeddings;
  }

  // Tables for position_ids [B, T] -> [B, 1, T, dim]. `long_factors` forces longrope's set (nullopt: decided from
  // the positions of this call).
  RotaryTables tables(const torch::Tensor& position_ids, torch::ScalarType dtype, std::optional<bool> long_factors = std::nullopt) {
    if (inv_freq_.device() != position_ids.device()) {
      inv_freq_ = inv_freq_.to(position_ids.device());
      if (long_inv_freq_.defined()) long_inv_freq_ = long_inv_freq_.to(position_ids.device());
    }
    if (is_longrope()) {
      const bool use_long = long_factors ? *long_factors : uses_long_factors(max_length(position_ids));
      return rotary_tables(position_ids, use_long ? long_inv_freq_ : inv_freq_, dtype, attention_factor_);
    }
    if (is_dynamic()) {
      // NTK-aware: past max_position_embeddings the base grows with the sequence length.
      const auto length = std::max(max_length(position_ids), max_positions_);
      if (length > max_positions_) {
        const double f = scaling_->factor;
        const double d = static_cast<double>(dim_);
        const double base = theta_ * std::pow(f * static_cast<double>(length) / static_cast<double>(max_positions_) - (f - 1), d / (d - 2));
        const auto inv = rotary_inverse_frequencies(base, dim_, std::nullopt).to(position_ids.device());
        return rotary_tables(position_ids, inv, dtype, attention_factor_);
      }
    }
    return rotary_tables(position_ids, inv_freq_, dtype, attention_factor_);
  }

  // max(position_ids) + 1 (a host sync; only the length-dependent kinds ask).
  static std::int64_t max_length(const torch::Tensor& position_ids) {
    return position_ids.numel() == 0 ? 0 : position_ids.max().item<std::int64_t>() + 1;
  }

 private:
  double theta_ = 10000.0;
  std::int64_t dim_ = 0;
  std::optional<io::RopeScaling> scaling_;
  std::int64_t max_positions_ = 0;
  torch::Tensor inv_freq_;       // [dim/2] float32 (longrope: short factors)
  torch::Tensor long_inv_freq_;  // [dim/2] float32, longrope only
  double attention_factor_ = 1.0;
};

// rotate_half(x) = cat(-x[D/2:], x[:D/2]); x [..., D] -> [..., D]
inline torch::Tensor rotate_half(const torch::Tensor& x) {
  const auto half = x.size(-1) / 2;
  return torch::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
}

// x [B, heads, T, D] with tables [B, 1, T, R], R <= D: the first R dims rotated, the rest passed through
// (Phi3's partial rotary) -> [B, heads, T, D]
inline torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryTables& t) {
  const auto r = t.cos.size(-1);
  if (r == x.size(-1)) return x * t.cos + rotate_half(x) * t.sin;
  const auto rot = x.narrow(-1, 0, r);
  return torch::cat({rot * t.cos + rotate_half(rot) * t.sin, x.narrow(-1, r, x.size(-1) - r)}, -1);
}

// The inverse of apply_rotary (cos and sin carry the same attention factor m, so R^-1 x = (x cos - rh(x) sin) / m^2).
inline torch::Tensor unapply_rotary(const torch::Tensor& x, const RotaryTables& t, double attention_factor) {
  const auto r = t.cos.size(-1);
  const auto rot = x.narrow(-1, 0, r);
  auto back = (rot * t.cos - rotate_half(rot) * t.sin) / (attention_factor * attention_factor);
  if (r == x.size(-1)) return back;
  return torch::cat({back, x.narrow(-1, r, x.size(-1) - r)}, -1);
}

}  // namespace xpo::models
