// xpo/models/lora.hpp — LoRA on a model's linear layers, and the guard that switches adapters off (how the
// reference model is obtained under LoRA without a second copy of the weights).
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "xpo/io/hf_config.hpp"

#include "xpo/core/errors.hpp"
#include "xpo/models/layers.hpp"

namespace xpo::models {

// Every linear layer name of any supported architecture (what lora_target_modules may name at all).
inline const std::set<std::string>& lora_target_names() {
  static const std::set<std::string> names = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj", "qkv_proj", "gate_up_proj"};
  return names;
}

// PEFT's default LoRA targets for a model_type (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING): phi3 adapts
// its fused layers, the others q_proj and v_proj.
inline std::vector<std::string> default_lora_targets(const std::string& model_type) {
  if (model_type == "phi3") return {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"};
  return {"q_proj", "v_proj"};
}

// Throws ConfigError naming the model's own linear layers when a target is not one of them (PEFT's "Target
// modules ... not found in the base model").
inline void check_lora_targets(const io::ModelConfig& config, const LoRAOptions& options) {
  const auto names = config.linear_layer_names();
  for (const auto& t : options.target_modules) {
    if (std::find(names.begin(), names.end(), t) != names.end()) continue;
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    throw ConfigError("lora_target_modules: \"" + t + "\" is not a linear layer of this " + config.model_type +
                      " model (" + list + ")");
  }
}

// Attach adapters to every Linear of `root` whose own name is in options.target_modules; freeze every other
// parameter of `root`. Returns the number of layers adapted.
inline std::size_t attach_lora(torch::nn::Module& root, const LoRAOptions& options,
                               const std::shared_ptr<AdapterSwitch>& adapter_switch) {
  for (const auto& t : options.target_modules) {
    if (!lora_target_names().count(t))
      throw ConfigError("lora_target_modules: \"" + t + "\" is not a linear layer of the decoder (q_proj, k_proj, "
                        "v_proj, o_proj, gate_proj, up_proj, down_proj; phi3: qkv_proj, gate_up_proj)");
  }
  if (options.r < 1) throw ConfigError("lora_r = " + std::to_string(options.r) + ": must be >= 1");
  if (!(options.alpha > 0)) throw ConfigError("lora_alpha must be > 0");
  if (!(options.dropout >= 0 && options.dropout < 1)) throw ConfigError("lora_dropout must be in [0, 1)");
  for (auto& p : root.parameters()) p.set_requires_grad(false);
  std::size_t adapted = 0;
  for (const auto& item : root.named_modules()) {
    const auto& name = item.key();
    auto* linear = item.value()->as<LinearImpl>();
    if (linear == nullptr) continue;
    const auto leaf = name.substr(name.find_last_of('.') + 1);
    if (std::find(options.target_modules.begin(), options.target_modules.end(), leaf) == options.target_modules.end())
      continue;
    linear->attach_lora(options, adapter_switch);
    ++adapted;
  }
  return adapted;
}

// While alive, every adapter behind `adapter_switch` is off: the model computes with its base weights only.
class AdaptersDisabled {
 public:
  explicit AdaptersDisabled(std::shared_ptr<AdapterSwitch> adapter_switch) : switch_(std::move(adapter_switch)) {
    if (switch_) {
      previous_ = switch_->enabled;
      switch_->enabled = false;
    }
  }
  ~AdaptersDisabled() {
    if (switch_) switch_->enabled = previous_;
  }
  AdaptersDisabled(const AdaptersDisabled&) = delete;
  AdaptersDisabled& operator=(const AdaptersDisabled&) = delete;

 private:
  std::shared_ptr<AdapterSwitch> switch_;
  bool previous_ = true;
};

}  // namespace xpo::models
