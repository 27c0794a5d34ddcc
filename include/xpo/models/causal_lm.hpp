// xpo/models/causal_lm.hpp — …ForCausalLM of every supported family (Qwen2, Llama, Qwen3, Mistral, Gemma3, Phi3,
// SmolLM3): the decoder stack plus an LM head (tied to the embedding when tie_word_embeddings), with Gemma3's
// final logit soft-capping where the config sets it. Satisfies xpo::CausalLanguageModel.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "xpo/core/concepts.hpp"
#include "xpo/io/hf_config.hpp"
#include "xpo/models/decoder.hpp"
#include "xpo/models/layers.hpp"
#include "xpo/models/lora.hpp"

namespace xpo::models {

// Hugging Face's initialisation (normal(0, initializer_range), zero biases, unit norms: weight 1, or 0 for
// Gemma's (1 + w) norms) for every parameter of `module` except LoRA adapters. Models loaded from a checkpoint
// skip it.
inline void init_weights(torch::nn::Module& module, double std_dev = 0.02) {
  torch::NoGradGuard no_grad;
  bool norm_adds_one = false;
  for (const auto& m : module.modules())
    if (auto* n = m->as<RMSNormImpl>(); n != nullptr && n->adds_one()) norm_adds_one = true;
  for (const auto& p : module.named_parameters()) {
    const auto& name = p.key();
    if (name.find("lora_") != std::string::npos) continue;
    if (name.find("norm") != std::string::npos) {
      p.value().fill_(norm_adds_one ? 0.0 : 1.0);
    } else if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0) {
      p.value().zero_();
    } else {
      p.value().normal_(0.0, std_dev);
    }
  }
}

class CausalLMImpl : public torch::nn::Module {
 public:
  explicit CausalLMImpl(io::ModelConfig config) : config_(std::move(config)) {
    model = register_module("model", DecoderModel(config_));
    if (!config_.tie_word_embeddings) lm_head = register_module("lm_head", Linear(config_.hidden_size, config_.vocab_size, false));
  }

  // ids, attention_mask, position_ids [B, T] -> logits [B, T, V] (float32 for 16-bit models, as transformers)
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                        const torch::Tensor& position_ids) {
    return head(model->forward(input_ids, attention_mask, position_ids, nullptr));
  }

  // Logits of positions [first, first + count) only: ids, attention_mask, position_ids [B, T] -> [B, count, V].
  // The LM head is a large share of the FLOPs and its output the largest activation; the loss needs only the
  // completion's positions.
  torch::Tensor forward_window(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                               const torch::Tensor& position_ids, std::int64_t first, std::int64_t count) {
    return head(model->forward(input_ids, attention_mask, position_ids, nullptr).narrow(1, first, count));
  }

  // Each prompt once, its continuations after it (the trainer's loss forward; DecoderModelImpl::forward_shared_prompt):
  // prompt_ids, prompt_mask [B, P] (left-padded), ids, attention_mask [C B, T] (row c B + i continues prompt i) ->
  // logits aligned with ids [C B, T, V]: row t predicts ids[:, t] (the prompt's last position predicts token 0).
  // Equal to forward_window(cat(prompt, ids), ..., P - 1, T) over the C B rows up to float summation order.
  torch::Tensor forward_shared_prompt(const torch::Tensor& prompt_ids, const torch::Tensor& prompt_mask,
                                      const torch::Tensor& ids, const torch::Tensor& attention_mask) {
    const auto [prompts, continuations] = model->forward_shared_prompt(prompt_ids, prompt_mask, ids, attention_mask);
    const auto copies = ids.size(0) / prompt_ids.size(0);
    const auto last = prompts.narrow(1, prompts.size(1) - 1, 1);  // [B, 1, H]
    return head(torch::cat({copies == 1 ? last : last.repeat({copies, 1, 1}), continuations.narrow(1, 0, ids.size(1) - 1)}, 1));
  }

  // Incremental: ids [B, T] new tokens, attention_mask [B, cache.length + T], position_ids [B, T]. Returns
  // logits [B, T, V], or [B, 1, V] for the last position only when `last_only` (what decoding needs).
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                        const torch::Tensor& position_ids, KVCache& cache, bool last_only = false) {
    auto hidden = model->forward(input_ids, attention_mask, position_ids, &cache);
    if (last_only) hidden = hidden.narrow(1, hidden.size(1) - 1, 1);
    return head(hidden);
  }

  // hidden [B, T, H] -> logits [B, T, V]; soft-capped c tanh(logits / c) when final_logit_softcapping is set
  torch::Tensor head(const torch::Tensor& hidden) {
    auto logits = lm_head ? lm_head(hidden)
                          : torch::nn::functional::linear(
                                hidden, autocast_weight(model->embed_tokens->weight, low_precision_cache_, tied_head_copy_));
    const auto t = logits.scalar_type();
    if (t == torch::kHalf || t == torch::kBFloat16) logits = logits.to(torch::kFloat);
    if (config_.final_logit_softcapping) {
      const double cap = *config_.final_logit_softcapping;
      logits = torch::tanh(logits / cap) * cap;
    }
    return logits;
  }

  [[nodiscard]] KVCache make_cache(std::int64_t batch, std::int64_t capacity) const { return model->make_cache(batch, capacity); }

  // LoRA: adapters on options.target_modules (this architecture's linear layer names, as PEFT matches them:
  // Phi3 has qkv_proj and gate_up_proj instead of q/k/v_proj and gate/up_proj); every other weight frozen. The
  // LM head and embeddings stay frozen. Throws ConfigError when a name is not a linear layer of this model.
  void enable_lora(const LoRAOptions& options) {
    TORCH_CHECK(!lora_, "LoRA is already enabled");
    check_lora_targets(config_, options);
    if (attach_lora(*model, options, adapter_switch_) == 0) throw ConfigError("LoRA: no layer matched lora_target_modules");
    if (lm_head) lm_head->weight.set_requires_grad(false);
    lora_ = options;
  }
  [[nodiscard]] const std::optional<LoRAOptions>& lora() const { return lora_; }
  // The switch behind every adapter; hold an AdaptersDisabled on it to run the base (reference) model.
  [[nodiscard]] const std::shared_ptr<AdapterSwitch>& adapter_switch() const { return adapter_switch_; }

  // What the optimizer updates: every parameter that requires grad (only the adapters under LoRA).
  [[nodiscard]] std::vector<torch::Tensor> trainable_parameters() const {
    std::vector<torch::Tensor> out;
    for (const auto& p : parameters())
      if (p.requires_grad()) out.push_back(p);
    return out;
  }

  // Mixed precision without per-call weight casts (LinearImpl::set_low_precision_cache): every frozen float32
  // linear weight (and a tied LM head's) is cast to autocast's dtype once and kept, and a trainable one once per
  // generation instead of at every decoding step. The results are unchanged; the memory is 2 bytes per frozen
  // weight under bf16/fp16, and per trainable weight from a generation to the next forward outside InferenceMode.
  // Wherever the copies are used, q/k/v and gate/up are each kept as one concatenated copy instead of one per layer,
  // and multiplied in one product under InferenceMode (FusedProjection): fewer calls per decoding step.
  void set_low_precision_cache(bool on) {
    low_precision_cache_ = on;
    if (!on) tied_head_copy_.reset();
    for (auto& m : modules(/*include_self=*/false)) {
      if (auto* linear = m->as<LinearImpl>()) linear->set_low_precision_cache(on);
      if (on) continue;
      if (auto* attention = m->as<AttentionImpl>()) attention->drop_fused_copy();
      if (auto* mlp = m->as<MLPImpl>()) mlp->drop_fused_copy();
    }
  }

  // Gradient checkpointing of every decoder layer in training forwards (see DecoderModelImpl).
  void set_gradient_checkpointing(bool on) { model->set_gradient_checkpointing(on); }

  [[nodiscard]] std::int64_t vocab_size() const { return config_.vocab_size; }
  [[nodiscard]] const io::ModelConfig& config() const { return config_; }
  // Sets config().torch_dtype, the dtype the final model is saved in (Trainer::save_model; load_causal_lm sets it
  // to the dtype the checkpoint is stored in). `name`: float32, bfloat16, float16 or float64, else xpo::ConfigError.
  void set_config_torch_dtype(const std::string& name) {
    if (name != "float32" && name != "bfloat16" && name != "float16" && name != "float64")
      throw ConfigError("torch_dtype \"" + name + "\": must be float32, bfloat16, float16 or float64");
    config_.torch_dtype = name;
  }
  [[nodiscard]] torch::Device device() const { return model->embed_tokens->weight.device(); }
  [[nodiscard]] torch::ScalarType dtype() const { return model->embed_tokens->weight.scalar_type(); }

  DecoderModel model{nullptr};
  Linear lm_head{nullptr};

 private:
  io::ModelConfig config_;
  std::shared_ptr<AdapterSwitch> adapter_switch_ = std::make_shared<AdapterSwitch>();
  std::optional<LoRAOptions> lora_;
  bool low_precision_cache_ = false;
  LowPrecisionCopy tied_head_copy_;
};
TORCH_MODULE(CausalLM);

static_assert(CausalLanguageModel<CausalLM>);

}  // namespace xpo::models
