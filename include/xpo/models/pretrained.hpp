// xpo/models/pretrained.hpp — Hugging Face checkpoint folders in and out: config.json + model.safetensors (or
// shards). Loading is a name-for-name copy with every mismatch reported (missing or unexpected tensors, wrong
// shapes); saving writes what transformers' from_pretrained loads, with LoRA merged into the plain weights, and
// optionally the adapter alone in PEFT's layout.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "xpo/core/errors.hpp"
#include "xpo/io/checkpoint.hpp"
#include "xpo/io/hf_config.hpp"
#include "xpo/io/safetensors.hpp"
#include "xpo/models/causal_lm.hpp"
#include "xpo/models/layers.hpp"
#include "xpo/models/reward_model.hpp"

namespace xpo::models {

inline std::string hf_dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kHalf: return "float16";
    case torch::kDouble: return "float64";
    default: throw Error("no Hugging Face torch_dtype name for " + std::string(c10::toString(t)));
  }
}

// The dtype a Hugging Face torch_dtype name stands for ("float32", "bfloat16", "float16", "float64"); none for
// any other name (e.g. "auto").
inline std::optional<torch::ScalarType> hf_dtype_from_name(const std::string& name) {
  if (name == "float32") return torch::kFloat;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kHalf;
  if (name == "float64") return torch::kDouble;
  return std::nullopt;
}

// The floating dtype a checkpoint's weights are stored in, when they all share one of float32/bfloat16/float16/
// float64 (what transformers' torch_dtype="auto" reads from the weights); none when they mix floating dtypes.
inline std::optional<torch::ScalarType> stored_dtype(const io::TensorStore& store) {
  std::optional<torch::ScalarType> out;
  for (const auto& name : store.names()) {
    const auto t = store.entry(name).dtype.type;
    if (!c10::isFloatingType(t)) continue;
    const bool named = t == torch::kFloat || t == torch::kBFloat16 || t == torch::kHalf || t == torch::kDouble;
    if (!named || (out && *out != t)) return std::nullopt;
    out = t;
  }
  return out;
}

inline bool is_lora_parameter(const std::string& name) { return name.find("lora_") != std::string::npos; }

namespace detail {
inline std::string join_names(const std::vector<std::string>& names, std::size_t most = 8) {
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < most; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > most) out += ", ... (" + std::to_string(names.size()) + " in all)";
  return out;
}
}  // namespace detail

// Copy every checkpoint tensor into the parameter of the same name (converted to the parameter's dtype and
// device). Errors name the folder and the tensors: missing ones, ones the model has no place for (beyond
// `ignorable`), and shape mismatches.
inline void load_weights(torch::nn::Module& module, const io::TensorStore& store, const std::string& source,
                         const std::set<std::string>& ignorable = {}) {
  torch::NoGradGuard no_grad;
  std::set<std::string> used;
  std::vector<std::string> missing;
  for (auto& p : module.named_parameters()) {
    const auto& name = p.key();
    if (is_lora_parameter(name)) continue;
    if (!store.contains(name)) {
      missing.push_back(name);
      continue;
    }
    const auto& entry = store.entry(name);
    if (entry.shape != p.value().sizes().vec()) {
      throw FileError(source, "tensor \"" + name + "\" has shape " + nlohmann::json(entry.shape).dump() +
                                  " but the model built from config.json expects " +
                                  nlohmann::json(p.value().sizes().vec()).dump());
    }
    store.load_into(name, p.value());
    used.insert(name);
  }
  if (!missing.empty()) throw FileError(source, "the checkpoint lacks tensors: " + detail::join_names(missing));
  std::vector<std::string> unexpected;
  for (const auto& name : store.names()) {
    const bool rotary = name.find("rotary_emb.inv_freq") != std::string::npos;  // older checkpoints store it
    if (!used.count(name) && !ignorable.count(name) && !rotary) unexpected.push_back(name);
  }
  if (!unexpected.empty()) {
    throw FileError(source, "the model has no place for tensors: " + detail::join_names(unexpected) +
                                " (a checkpoint of another architecture?)");
  }
}

// A causal LM from a Hugging Face folder, on `device` in `dtype` (weights are converted as they are read;
// widening bf16 to float32 is exact). Returned in eval mode, as from_pretrained does.
inline CausalLM load_causal_lm(const std::filesystem::path& folder, torch::Device device = torch::kCPU,
                               torch::ScalarType dtype = torch::kFloat) {
  auto config = io::ModelConfig::load(folder);
  if (config.is_sequence_classifier())
    throw FileError(folder.string(), "holds a sequence-classification (reward) model; load it with load_reward_model");
  const auto store = io::TensorStore::open(folder);
  // config().torch_dtype = the dtype the weights are stored in (the files win over config.json when they
  // disagree; config.json's name stays when they mix floating dtypes), whatever `dtype` they are loaded in: the
  // Trainer saves the final model in it (CausalLMImpl::set_config_torch_dtype to save in another).
  if (const auto stored = stored_dtype(store)) config.torch_dtype = hf_dtype_name(*stored);
  CausalLM model(config);
  model->to(device, dtype);
  // A tied checkpoint may still carry lm_head.weight (a copy of the embedding); nothing to load it into.
  const std::set<std::string> ignorable = config.tie_word_embeddings ? std::set<std::string>{"lm_head.weight"}
                                                                     : std::set<std::string>{};
  load_weights(*model, store, folder.string(), ignorable);
  model->eval();
  return model;
}

// A reward model (…ForSequenceClassification) from a Hugging Face folder.
inline SequenceClassifier load_reward_model(const std::filesystem::path& folder, torch::Device device = torch::kCPU,
                                            torch::ScalarType dtype = torch::kFloat) {
  auto config = io::ModelConfig::load(folder);
  if (!config.is_sequence_classifier())
    throw FileError(folder.string(), "is not a sequence-classification model (architectures has no "
                                     "…ForSequenceClassification); a reward model needs a `score` head");
  SequenceClassifier model(config);
  model->to(device, dtype);
  load_weights(*model, io::TensorStore::open(folder), folder.string());
  model->eval();
  return model;
}

// The tensors a plain checkpoint stores, by Hugging Face name: LoRA adapters merged into their base weights.
inline std::vector<std::pair<std::string, torch::Tensor>> plain_state(torch::nn::Module& module,
                                                                      std::optional<torch::ScalarType> dtype) {
  std::map<std::string, torch::Tensor> merged;  // module path -> merged weight
  for (const auto& item : module.named_modules()) {
    if (auto* linear = item.value()->as<LinearImpl>(); linear != nullptr && linear->has_lora())
      merged[item.key().empty() ? "weight" : item.key() + ".weight"] = linear->merged_weight();
  }
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : module.named_parameters()) {
    if (is_lora_parameter(p.key())) continue;
    const auto it = merged.find(p.key());
    auto t = (it != merged.end() ? it->second : p.value()).detach();
    out.emplace_back(p.key(), dtype ? t.to(*dtype) : t);
  }
  return out;
}

namespace detail {
// After a single model.safetensors is written: an earlier sharded save's index and shards
// (model.safetensors.index.json, model-NNNNN-of-NNNNN.safetensors) would otherwise sit beside it and mislead any
// reader that looks for shards; save_pretrained removes such stale weight files too.
inline void remove_stale_shards(const std::filesystem::path& folder) {
  std::error_code ec;
  std::filesystem::remove(folder / "model.safetensors.index.json", ec);
  if (ec) throw FileError((folder / "model.safetensors.index.json").string(), "cannot remove the stale shard index: " + ec.message());
  for (const auto& e : std::filesystem::directory_iterator(folder, ec)) {
    const auto name = e.path().filename().string();
    const bool shard = name.rfind("model-", 0) == 0 && name.find("-of-") != std::string::npos && name.size() > 12 &&
                       name.compare(name.size() - 12, 12, ".safetensors") == 0;
    if (!shard || !e.is_regular_file()) continue;
    std::filesystem::remove(e.path(), ec);
    if (ec) throw FileError(e.path().string(), "cannot remove the stale weight shard: " + ec.message());
  }
}
}  // namespace detail

// Write `module` + its config as a Hugging Face folder (config.json, model.safetensors, generation_config.json);
// shards and an index left by an earlier sharded save in `folder` are removed.
// `dtype` defaults to the module's own. Each file is written to a temporary name and renamed.
inline void save_pretrained(torch::nn::Module& module, io::ModelConfig config, const std::filesystem::path& folder,
                            std::optional<torch::ScalarType> dtype = std::nullopt) {
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  if (ec || !std::filesystem::is_directory(folder))
    throw FileError(folder.string(), "cannot create the output folder" + (ec ? ": " + ec.message() : std::string()));
  auto tensors = plain_state(module, dtype);
  if (tensors.empty()) throw Error("save_pretrained: the module has no parameters");
  config.torch_dtype = hf_dtype_name(tensors.front().second.scalar_type());
  io::save_safetensors(folder / "model.safetensors", tensors);
  detail::remove_stale_shards(folder);
  config.save(folder);
  // The generation config the model was loaded with, unchanged; one built from config.json only when it had none
  // (transformers' GenerationConfig.from_model_config).
  nlohmann::json generation = config.generation_config;
  if (!generation.is_object()) {
    generation = {{"bos_token_id", nullptr}, {"eos_token_id", nullptr}, {"pad_token_id", nullptr}};
    if (config.bos_token_id) generation["bos_token_id"] = *config.bos_token_id;
    if (config.eos_token_ids.size() == 1) generation["eos_token_id"] = config.eos_token_ids.front();
    if (config.eos_token_ids.size() > 1) generation["eos_token_id"] = config.eos_token_ids;
    if (config.pad_token_id) generation["pad_token_id"] = *config.pad_token_id;
  }
  if (!config.is_sequence_classifier()) io::write_json_file(folder / "generation_config.json", generation);
}

inline void save_pretrained(CausalLM& model, const std::filesystem::path& folder,
                            std::optional<torch::ScalarType> dtype = std::nullopt) {
  save_pretrained(*model, model->config(), folder, dtype);
}

inline void save_pretrained(SequenceClassifier& model, const std::filesystem::path& folder,
                            std::optional<torch::ScalarType> dtype = std::nullopt) {
  save_pretrained(*model, model->config(), folder, dtype);
}

// The adapter alone in PEFT's layout: adapter_config.json + adapter_model.safetensors with tensors named
// "base_model.model.<name>.lora_A.weight". `base_model_name_or_path` is recorded for PeftModel.from_pretrained.
inline void save_lora_adapter(CausalLM& model, const std::filesystem::path& folder,
                              const std::string& base_model_name_or_path) {
  if (!model->lora()) throw Error("save_lora_adapter: the model has no LoRA adapters");
  std::filesystem::create_directories(folder);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& p : model->named_parameters())
    if (is_lora_parameter(p.key())) tensors.emplace_back("base_model.model." + p.key(), p.value().detach());
  io::save_safetensors(folder / "adapter_model.safetensors", tensors);
  const auto& o = *model->lora();
  io::write_json_file(folder / "adapter_config.json",
                      {{"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"}, {"r", o.r}, {"lora_alpha", o.alpha},
                       {"lora_dropout", o.dropout}, {"target_modules", o.target_modules}, {"bias", "none"},
                       {"fan_in_fan_out", false}, {"inference_mode", true}, {"modules_to_save", nullptr},
                       {"base_model_name_or_path", base_model_name_or_path}});
}

// A frozen reference model when LoRA is off: a deep copy of the base weights with requires_grad = false (so no
// optimizer state can ever be allocated for it), in eval mode, on the same device and dtype.
inline CausalLM frozen_copy(const CausalLM& model) {
  CausalLM copy(model->config());
  copy->to(model->device(), model->dtype());
  torch::NoGradGuard no_grad;
  const auto source = model->named_parameters();
  for (auto& p : copy->named_parameters()) p.value().copy_(source[p.key()]);
  for (auto& p : copy->parameters()) p.set_requires_grad(false);
  copy->eval();
  return copy;
}

}  // namespace xpo::models
