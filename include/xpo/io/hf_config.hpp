// xpo/io/hf_config.hpp — a Hugging Face `config.json` for the Qwen2 / Llama decoder families.
// The keys xpo uses are read and checked; every other key is kept verbatim and written back on save, so a saved
// folder loads in transformers' `from_pretrained` with the same configuration.
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "xpo/core/errors.hpp"
#include "xpo/core/json_file.hpp"

namespace xpo::io {

// rope_scaling: null / "default" (none), "linear", or "llama3" (Llama 3.1+).
struct RopeScaling {
  std::string type;  // "linear" | "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  std::int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type;                  // "qwen2" | "llama"
  std::vector<std::string> architectures;  // e.g. {"Qwen2ForCausalLM"}
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;
  std::int64_t head_dim = 0;  // hidden_size / num_attention_heads unless given
  std::int64_t max_position_embeddings = 0;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;       // Qwen2: always; Llama: attention_bias
  bool o_proj_bias = false;    // Llama attention_bias
  bool mlp_bias = false;       // Llama mlp_bias
  double attention_dropout = 0.0;
  std::string hidden_act = "silu";
  std::string torch_dtype = "float32";
  std::optional<std::int64_t> bos_token_id;
  std::vector<std::int64_t> eos_token_ids;  // one or several (Llama 3 lists two)
  std::optional<std::int64_t> pad_token_id;
  std::int64_t num_labels = 1;  // sequence classification (reward model)
  nlohmann::json raw = nlohmann::json::object();  // the whole file as read; written back with updates

  [[nodiscard]] bool is_sequence_classifier() const {
    for (const auto& a : architectures)
      if (a.find("ForSequenceClassification") != std::string::npos) return true;
    return false;
  }

  static ModelConfig from_json(const nlohmann::json& j, const std::string& source = "config.json");
  static ModelConfig load(const std::filesystem::path& folder_or_file);
  [[nodiscard]] nlohmann::json to_json() const;
  void save(const std::filesystem::path& folder) const { write_json_file(folder / "config.json", to_json()); }
};

namespace detail {

inline std::int64_t require_int(const nlohmann::json& j, const char* key, const std::string& source, bool positive = true) {
  if (!j.contains(key)) throw FileError(source, std::string("missing \"") + key + "\"");
  if (!j[key].is_number_integer() || (positive && j[key].get<std::int64_t>() <= 0))
    throw FileError(source, std::string("\"") + key + "\" must be a " + (positive ? "positive " : "") + "integer, got " + j[key].dump());
  return j[key].get<std::int64_t>();
}

inline double number_or(const nlohmann::json& j, const char* key, double fallback, const std::string& source) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number()) throw FileError(source, std::string("\"") + key + "\" must be a number, got " + j[key].dump());
  return j[key].get<double>();
}

inline bool bool_or(const nlohmann::json& j, const char* key, bool fallback, const std::string& source) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) throw FileError(source, std::string("\"") + key + "\" must be true or false, got " + j[key].dump());
  return j[key].get<bool>();
}

inline std::optional<std::int64_t> optional_id(const nlohmann::json& j, const char* key, const std::string& source) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  if (!j[key].is_number_integer() || j[key].get<std::int64_t>() < 0)
    throw FileError(source, std::string("\"") + key + "\" must be a token id, got " + j[key].dump());
  return j[key].get<std::int64_t>();
}

}  // namespace detail

inline ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& source) {
  using namespace detail;
  if (!j.is_object()) throw FileError(source, "expected a JSON object");
  ModelConfig c;
  c.raw = j;
  if (!j.contains("model_type") || !j["model_type"].is_string()) throw FileError(source, "missing \"model_type\"");
  c.model_type = j["model_type"].get<std::string>();
  if (c.model_type != "qwen2" && c.model_type != "llama")
    throw FileError(source, "model_type \"" + c.model_type + "\" is not supported (xpo implements qwen2 and llama)");
  if (j.contains("architectures") && j["architectures"].is_array())
    for (const auto& a : j["architectures"])
      if (a.is_string()) c.architectures.push_back(a.get<std::string>());
  c.vocab_size = require_int(j, "vocab_size", source);
  c.hidden_size = require_int(j, "hidden_size", source);
  c.intermediate_size = require_int(j, "intermediate_size", source);
  c.num_hidden_layers = require_int(j, "num_hidden_layers", source);
  c.num_attention_heads = require_int(j, "num_attention_heads", source);
  c.num_key_value_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                              ? require_int(j, "num_key_value_heads", source)
                              : c.num_attention_heads;
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    throw FileError(source, "num_attention_heads (" + std::to_string(c.num_attention_heads) +
                                ") is not a multiple of num_key_value_heads (" + std::to_string(c.num_key_value_heads) + ")");
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    c.head_dim = require_int(j, "head_dim", source);
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      throw FileError(source, "hidden_size is not a multiple of num_attention_heads and no head_dim is given");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0) throw FileError(source, "head_dim " + std::to_string(c.head_dim) + " must be even for rotary embeddings");
  c.max_position_embeddings = require_int(j, "max_position_embeddings", source);
  c.rope_theta = number_or(j, "rope_theta", 10000.0, source);
  if (!(c.rope_theta > 1.0) || !std::isfinite(c.rope_theta)) throw FileError(source, "rope_theta must be a finite number > 1");
  c.rms_norm_eps = number_or(j, "rms_norm_eps", 1e-6, source);
  if (!(c.rms_norm_eps > 0)) throw FileError(source, "rms_norm_eps must be > 0");
  c.tie_word_embeddings = bool_or(j, "tie_word_embeddings", false, source);  // Qwen2Config and LlamaConfig default
  c.attention_dropout = number_or(j, "attention_dropout", 0.0, source);
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;
    if (bool_or(j, "use_sliding_window", false, source))
      throw FileError(source, "use_sliding_window = true is not supported (sliding-window attention)");
  } else {
    c.qkv_bias = c.o_proj_bias = bool_or(j, "attention_bias", false, source);
    c.mlp_bias = bool_or(j, "mlp_bias", false, source);
    if (j.contains("pretraining_tp") && j["pretraining_tp"].is_number_integer() && j["pretraining_tp"].get<int>() != 1)
      throw FileError(source, "pretraining_tp != 1 is not supported");
  }
  if (j.contains("hidden_act") && j["hidden_act"].is_string()) c.hidden_act = j["hidden_act"].get<std::string>();
  if (c.hidden_act != "silu") throw FileError(source, "hidden_act \"" + c.hidden_act + "\" is not supported (silu only)");
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"].get<std::string>();

  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const auto& rs = j["rope_scaling"];
    if (!rs.is_object()) throw FileError(source, "rope_scaling must be an object or null");
    std::string type = rs.contains("rope_type") && rs["rope_type"].is_string() ? rs["rope_type"].get<std::string>()
                       : rs.contains("type") && rs["type"].is_string()     ? rs["type"].get<std::string>()
                                                                            : "";
    if (type == "linear" || type == "llama3") {
      RopeScaling scaling;
      scaling.type = type;
      scaling.factor = number_or(rs, "factor", 1.0, source);
      if (!(scaling.factor >= 1.0)) throw FileError(source, "rope_scaling.factor must be >= 1");
      if (type == "llama3") {
        scaling.low_freq_factor = number_or(rs, "low_freq_factor", 1.0, source);
        scaling.high_freq_factor = number_or(rs, "high_freq_factor", 4.0, source);
        if (!(scaling.high_freq_factor > scaling.low_freq_factor))
          throw FileError(source, "rope_scaling: high_freq_factor must exceed low_freq_factor");
        scaling.original_max_position_embeddings = require_int(rs, "original_max_position_embeddings", source);
      }
      c.rope_scaling = scaling;
    } else if (type != "default") {
      throw FileError(source, "rope_scaling type \"" + type + "\" is not supported (null, default, linear, llama3)");
    }
  }
  c.bos_token_id = optional_id(j, "bos_token_id", source);
  c.pad_token_id = optional_id(j, "pad_token_id", source);
  if (j.contains("eos_token_id") && j["eos_token_id"].is_array()) {
    for (const auto& e : j["eos_token_id"]) {
      if (!e.is_number_integer()) throw FileError(source, "eos_token_id holds a non-integer: " + e.dump());
      c.eos_token_ids.push_back(e.get<std::int64_t>());
    }
  } else if (auto eos = optional_id(j, "eos_token_id", source)) {
    c.eos_token_ids.push_back(*eos);
  }
  if (j.contains("id2label") && j["id2label"].is_object()) c.num_labels = static_cast<std::int64_t>(j["id2label"].size());
  if (j.contains("num_labels") && j["num_labels"].is_number_integer()) c.num_labels = j["num_labels"].get<std::int64_t>();
  if (c.num_labels < 1) throw FileError(source, "num_labels must be >= 1");
  for (auto id : {c.bos_token_id, c.pad_token_id})
    if (id && *id >= c.vocab_size) throw FileError(source, "special token id " + std::to_string(*id) + " is outside the vocabulary");
  for (auto id : c.eos_token_ids)
    if (id < 0 || id >= c.vocab_size) throw FileError(source, "eos_token_id " + std::to_string(id) + " is outside the vocabulary");
  return c;
}

inline ModelConfig ModelConfig::load(const std::filesystem::path& folder_or_file) {
  const auto path = std::filesystem::is_directory(folder_or_file) ? folder_or_file / "config.json" : folder_or_file;
  if (!std::filesystem::exists(path)) throw FileError(path.string(), "no config.json: not a Hugging Face model folder");
  return from_json(read_json_file(path), path.string());
}

inline nlohmann::json ModelConfig::to_json() const {
  nlohmann::json j = raw;
  j["model_type"] = model_type;
  if (!architectures.empty()) j["architectures"] = architectures;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  if (raw.contains("head_dim") || head_dim * num_attention_heads != hidden_size) j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rope_theta"] = rope_theta;
  j["rms_norm_eps"] = rms_norm_eps;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["torch_dtype"] = torch_dtype;
  return j;
}

}  // namespace xpo::io
