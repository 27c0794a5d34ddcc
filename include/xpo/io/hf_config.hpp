// xpo/io/hf_config.hpp — a Hugging Face `config.json` for the decoder families xpo implements: qwen2, llama,
// qwen3, mistral, gemma3_text, phi3, smollm3. The keys xpo uses are read and checked; every other key is kept
// verbatim and written back on save, so a saved folder loads in transformers' `from_pretrained` with the same
// configuration. Each model_type maps to a small set of architecture policies (norm kind, q/k norms, fused
// projections, activation, per-layer sliding window and RoPE, embedding scale, logit soft-capping, query scale),
// following transformers v4.57.1's configuration classes; the one decoder in models/decoder.hpp reads only those.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "xpo/core/errors.hpp"
#include "xpo/core/json_file.hpp"

namespace xpo::io {

// rope_scaling: null / "default" (none), "linear", "llama3" (Llama 3.1+), "yarn" (Qwen2.5 long context),
// "dynamic" (NTK-aware, grows with the sequence) or "longrope" (Phi-3/Phi-4: short and long factor sets).
// Field meanings follow transformers' modeling_rope_utils.py (v4.57.1).
struct RopeScaling {
  std::string type;  // "linear" | "llama3" | "yarn" | "dynamic" | "longrope"
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  // llama3, yarn (from rope_scaling), longrope (the top-level key, as Phi3Config has it); 0 = not given
  std::int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;                  // yarn
  double beta_slow = 1.0;                   // yarn
  bool truncate = true;                     // yarn: floor/ceil the correction range
  std::optional<double> attention_factor;   // yarn, longrope: cos and sin are multiplied by it
  std::optional<double> mscale;             // yarn (DeepSeek style)
  std::optional<double> mscale_all_dim;     // yarn
  std::vector<double> short_factor;         // longrope [rotary_dim / 2]
  std::vector<double> long_factor;          // longrope [rotary_dim / 2]
};

// Attention kind of one layer.
enum class LayerAttention { full, sliding };
// Rotary kind of one layer: the global table (rope_theta + rope_scaling), the local one (Gemma3's sliding layers:
// rope_local_base_freq, unscaled) or none (SmolLM3's NoPE layers).
enum class LayerRope { global, local, none };

struct ModelConfig {
  std::string model_type;                  // "qwen2" | "llama" | "qwen3" | "mistral" | "gemma3_text" | "phi3" | "smollm3"
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

  // Architecture policies, set from model_type and the keys of that family (see from_json).
  bool norm_adds_one = false;        // Gemma: RMSNorm multiplies by (1 + w)
  bool qk_norm = false;              // Qwen3, Gemma3: RMSNorm over head_dim on q and k before RoPE
  bool sandwich_norms = false;       // Gemma3: norm after attention and pre/post feed-forward norms
  bool fused_projections = false;    // Phi3: qkv_proj [(H + 2 Hkv) D, hidden], gate_up_proj [2 I, hidden]
  double embedding_scale = 1.0;      // Gemma3: sqrt(hidden_size); 1 = none
  std::optional<double> final_logit_softcapping;  // Gemma3: logits = c tanh(logits / c)
  double query_scale = 0.0;          // attention scores x this: head_dim^-0.5, Gemma3 query_pre_attn_scalar^-0.5
  double partial_rotary_factor = 1.0;  // Phi3: the first int(head_dim x factor) dims are rotated
  std::optional<std::int64_t> sliding_window;  // keys a sliding layer's query sees, itself included
  std::vector<LayerAttention> layer_attention;  // [num_hidden_layers]
  std::vector<LayerRope> layer_rope;            // [num_hidden_layers]
  double rope_local_base_freq = 10000.0;        // Gemma3 sliding layers
  double embd_dropout = 0.0;                    // Phi3 embd_pdrop (training only)
  double resid_dropout = 0.0;                   // Phi3 resid_pdrop (training only)

  // Dimensions of a head that RoPE rotates (even; head_dim unless partial_rotary_factor < 1).
  [[nodiscard]] std::int64_t rotary_dim() const {
    return static_cast<std::int64_t>(static_cast<double>(head_dim) * partial_rotary_factor);
  }
  [[nodiscard]] bool has_sliding_layers() const {
    return sliding_window && std::find(layer_attention.begin(), layer_attention.end(), LayerAttention::sliding) !=
                                 layer_attention.end();
  }
  // The linear layers of one decoder layer under their Hugging Face names (what LoRA may target).
  [[nodiscard]] std::vector<std::string> linear_layer_names() const {
    if (fused_projections) return {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"};
    return {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  }

  nlohmann::json raw = nlohmann::json::object();  // the whole file as read; written back with updates
  // generation_config.json of the folder, as read (null when it has none): saved back unchanged, as
  // save_pretrained carries model.generation_config (its eos_token_id list, sampling defaults, ...).
  nlohmann::json generation_config;

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

namespace detail {

inline std::vector<double> number_list(const nlohmann::json& j, const char* key, const std::string& source) {
  if (!j.contains(key) || !j[key].is_array()) throw FileError(source, std::string("rope_scaling: \"") + key + "\" must be a list of numbers");
  std::vector<double> out;
  for (const auto& v : j[key]) {
    if (!v.is_number()) throw FileError(source, std::string("rope_scaling: \"") + key + "\" holds a non-number: " + v.dump());
    out.push_back(v.get<double>());
  }
  return out;
}

inline std::optional<double> optional_number(const nlohmann::json& j, const char* key, const std::string& source) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  if (!j[key].is_number()) throw FileError(source, std::string("\"") + key + "\" must be a number, got " + j[key].dump());
  return j[key].get<double>();
}

// rope_scaling as transformers v4.57.1 reads it ("rope_type", else the legacy "type").
inline std::optional<RopeScaling> read_rope_scaling(const nlohmann::json& j, const ModelConfig& c, const std::string& source) {
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return std::nullopt;
  const auto& rs = j["rope_scaling"];
  if (!rs.is_object()) throw FileError(source, "rope_scaling must be an object or null");
  const std::string type = rs.contains("rope_type") && rs["rope_type"].is_string() ? rs["rope_type"].get<std::string>()
                           : rs.contains("type") && rs["type"].is_string()         ? rs["type"].get<std::string>()
                                                                                   : "";
  if (type == "default") return std::nullopt;
  RopeScaling s;
  s.type = type;
  if (type == "linear" || type == "llama3" || type == "dynamic" || type == "yarn") {
    if (!rs.contains("factor") || !rs["factor"].is_number()) throw FileError(source, "rope_scaling." + type + " needs a numeric \"factor\"");
    s.factor = rs["factor"].get<double>();
    if (!(s.factor >= 1.0)) throw FileError(source, "rope_scaling.factor must be >= 1");
  }
  if (type == "linear" || type == "dynamic") return s;
  if (type == "llama3") {
    s.low_freq_factor = number_or(rs, "low_freq_factor", 1.0, source);
    s.high_freq_factor = number_or(rs, "high_freq_factor", 4.0, source);
    if (!(s.high_freq_factor > s.low_freq_factor))
      throw FileError(source, "rope_scaling: high_freq_factor must exceed low_freq_factor");
    s.original_max_position_embeddings = require_int(rs, "original_max_position_embeddings", source);
    return s;
  }
  if (type == "yarn") {
    // v4.57.1: with original_max_position_embeddings given, factor = max_position_embeddings / original.
    if (rs.contains("original_max_position_embeddings") && !rs["original_max_position_embeddings"].is_null()) {
      s.original_max_position_embeddings = require_int(rs, "original_max_position_embeddings", source);
      s.factor = static_cast<double>(c.max_position_embeddings) / static_cast<double>(s.original_max_position_embeddings);
    } else {
      s.original_max_position_embeddings = c.max_position_embeddings;
    }
    s.attention_factor = optional_number(rs, "attention_factor", source);
    s.mscale = optional_number(rs, "mscale", source);
    s.mscale_all_dim = optional_number(rs, "mscale_all_dim", source);
    // `x or default` in transformers: 0 and null both mean the default.
    s.beta_fast = number_or(rs, "beta_fast", 32.0, source);
    if (s.beta_fast == 0) s.beta_fast = 32.0;
    s.beta_slow = number_or(rs, "beta_slow", 1.0, source);
    if (s.beta_slow == 0) s.beta_slow = 1.0;
    if (!(s.beta_fast > s.beta_slow)) throw FileError(source, "rope_scaling: beta_fast must exceed beta_slow");
    s.truncate = bool_or(rs, "truncate", true, source);
    return s;
  }
  if (type == "longrope") {
    s.short_factor = number_list(rs, "short_factor", source);
    s.long_factor = number_list(rs, "long_factor", source);
    const auto half = static_cast<std::size_t>(c.rotary_dim() / 2);
    if (s.short_factor.size() != half || s.long_factor.size() != half)
      throw FileError(source, "rope_scaling: longrope short_factor and long_factor need rotary_dim / 2 = " +
                                  std::to_string(half) + " entries each");
    s.attention_factor = optional_number(rs, "attention_factor", source);
    // Phi3 keeps original_max_position_embeddings at the top level; the ratio to max_position_embeddings is the
    // factor of the default attention scaling.
    if (j.contains("original_max_position_embeddings") && !j["original_max_position_embeddings"].is_null()) {
      s.original_max_position_embeddings = require_int(j, "original_max_position_embeddings", source);
      s.factor = static_cast<double>(c.max_position_embeddings) / static_cast<double>(s.original_max_position_embeddings);
    } else {
      s.original_max_position_embeddings = c.max_position_embeddings;
      s.factor = number_or(rs, "factor", 1.0, source);
    }
    return s;
  }
  throw FileError(source, "rope_scaling type \"" + type +
                              "\" is not supported (null, default, linear, llama3, yarn, dynamic, longrope)");
}

inline bool is_supported_model_type(const std::string& t) {
  return t == "qwen2" || t == "llama" || t == "qwen3" || t == "mistral" || t == "gemma3_text" || t == "phi3" ||
         t == "smollm3";
}

}  // namespace detail

inline ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& source) {
  using namespace detail;
  if (!j.is_object()) throw FileError(source, "expected a JSON object");
  ModelConfig c;
  c.raw = j;
  if (!j.contains("model_type") || !j["model_type"].is_string()) throw FileError(source, "missing \"model_type\"");
  c.model_type = j["model_type"].get<std::string>();
  if (!is_supported_model_type(c.model_type))
    throw FileError(source, "model_type \"" + c.model_type +
                                "\" is not supported (xpo implements qwen2, llama, qwen3, mistral, gemma3_text, phi3, smollm3)");
  const std::string& mt = c.model_type;
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
  // Phi3Config has no head_dim key: it is always hidden_size / num_attention_heads. A missing key takes the config
  // class's default: 128 for Qwen3, 256 for Gemma3, hidden_size / num_attention_heads for the others.
  if (mt != "phi3" && j.contains("head_dim") && !j["head_dim"].is_null()) {
    c.head_dim = require_int(j, "head_dim", source);
  } else if (mt == "qwen3" && !j.contains("head_dim")) {
    c.head_dim = 128;
  } else if (mt == "gemma3_text" && !j.contains("head_dim")) {
    c.head_dim = 256;
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      throw FileError(source, "hidden_size is not a multiple of num_attention_heads and no head_dim is given");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  c.max_position_embeddings = require_int(j, "max_position_embeddings", source);
  const double default_theta = mt == "gemma3_text" ? 1000000.0 : mt == "smollm3" ? 2000000.0 : 10000.0;
  c.rope_theta = number_or(j, "rope_theta", default_theta, source);
  if (!(c.rope_theta > 1.0) || !std::isfinite(c.rope_theta)) throw FileError(source, "rope_theta must be a finite number > 1");
  c.rms_norm_eps = number_or(j, "rms_norm_eps", mt == "phi3" ? 1e-5 : 1e-6, source);
  if (!(c.rms_norm_eps > 0)) throw FileError(source, "rms_norm_eps must be > 0");
  // A missing key takes the config class's default: true for Gemma3 and SmolLM3, false for the others.
  c.tie_word_embeddings = bool_or(j, "tie_word_embeddings", mt == "gemma3_text" || mt == "smollm3", source);
  c.attention_dropout = number_or(j, "attention_dropout", 0.0, source);

  // Biases.
  if (mt == "qwen2") {
    c.qkv_bias = true;
  } else if (mt == "mistral" || mt == "phi3") {
    c.qkv_bias = c.o_proj_bias = false;
  } else {  // llama, qwen3, gemma3_text, smollm3: attention_bias on q, k, v and o
    c.qkv_bias = c.o_proj_bias = bool_or(j, "attention_bias", false, source);
    if (mt == "llama" || mt == "smollm3") c.mlp_bias = bool_or(j, "mlp_bias", false, source);
  }
  if (mt == "llama" && j.contains("pretraining_tp") && j["pretraining_tp"].is_number_integer() && j["pretraining_tp"].get<int>() != 1)
    throw FileError(source, "pretraining_tp != 1 is not supported");

  // Activation: Gemma3 names it hidden_activation.
  const char* act_key = mt == "gemma3_text" ? "hidden_activation" : "hidden_act";
  c.hidden_act = mt == "gemma3_text" ? "gelu_pytorch_tanh" : "silu";
  if (j.contains(act_key) && j[act_key].is_string()) c.hidden_act = j[act_key].get<std::string>();
  if (c.hidden_act != "silu" && c.hidden_act != "gelu_pytorch_tanh")
    throw FileError(source, std::string(act_key) + " \"" + c.hidden_act + "\" is not supported (silu, gelu_pytorch_tanh)");
  if (j.contains("dtype") && j["dtype"].is_string()) c.torch_dtype = j["dtype"].get<std::string>();
  else if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"].get<std::string>();

  // Per-family policies.
  c.norm_adds_one = c.sandwich_norms = (mt == "gemma3_text");
  c.qk_norm = (mt == "qwen3" || mt == "gemma3_text");
  c.fused_projections = (mt == "phi3");
  if (mt == "gemma3_text") {
    c.embedding_scale = std::sqrt(static_cast<double>(c.hidden_size));
    c.final_logit_softcapping = optional_number(j, "final_logit_softcapping", source);
    if (c.final_logit_softcapping && !(*c.final_logit_softcapping > 0)) c.final_logit_softcapping.reset();
    const double scalar = number_or(j, "query_pre_attn_scalar", 256.0, source);
    if (!(scalar > 0)) throw FileError(source, "query_pre_attn_scalar must be > 0");
    c.query_scale = 1.0 / std::sqrt(scalar);
    c.rope_local_base_freq = number_or(j, "rope_local_base_freq", 10000.0, source);
    if (!(c.rope_local_base_freq > 1.0)) throw FileError(source, "rope_local_base_freq must be > 1");
  } else {
    c.query_scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  }
  if (mt == "phi3") {
    c.partial_rotary_factor = number_or(j, "partial_rotary_factor", 1.0, source);
    if (!(c.partial_rotary_factor > 0 && c.partial_rotary_factor <= 1))
      throw FileError(source, "partial_rotary_factor must be in (0, 1]");
    c.embd_dropout = number_or(j, "embd_pdrop", 0.0, source);
    c.resid_dropout = number_or(j, "resid_pdrop", 0.0, source);
  }
  if (c.rotary_dim() % 2 != 0 || c.rotary_dim() < 2)
    throw FileError(source, "rotary dimension " + std::to_string(c.rotary_dim()) + " (head_dim x partial_rotary_factor) must be even");

  // Sliding window: Mistral and Phi3 apply `sliding_window` to every layer; the Qwen family and SmolLM3 only under
  // use_sliding_window (to layers >= max_window_layers unless layer_types says otherwise); Gemma3 to the layers
  // layer_types (or the pattern) marks sliding.
  std::optional<std::int64_t> window;
  if (j.contains("sliding_window") && !j["sliding_window"].is_null()) window = require_int(j, "sliding_window", source);
  // A missing key (not an explicit null) takes the class default: 4096 for Mistral, Qwen2, Qwen3 and Gemma3.
  if (!j.contains("sliding_window") && (mt == "mistral" || mt == "qwen2" || mt == "qwen3" || mt == "gemma3_text")) window = 4096;
  const bool qwen_like = (mt == "qwen2" || mt == "qwen3" || mt == "smollm3");
  if (qwen_like && !bool_or(j, "use_sliding_window", false, source)) window.reset();
  if (mt == "llama") window.reset();
  c.sliding_window = window;
  const auto layers = static_cast<std::size_t>(c.num_hidden_layers);
  c.layer_attention.assign(layers, LayerAttention::full);
  if (j.contains("layer_types") && !j["layer_types"].is_null()) {
    const auto& lt = j["layer_types"];
    if (!lt.is_array() || lt.size() != layers)
      throw FileError(source, "layer_types must list one entry per layer (" + std::to_string(layers) + ")");
    for (std::size_t i = 0; i < layers; ++i) {
      const auto kind = lt[i].is_string() ? lt[i].get<std::string>() : lt[i].dump();
      if (kind == "sliding_attention") c.layer_attention[i] = LayerAttention::sliding;
      else if (kind != "full_attention")
        throw FileError(source, "layer_types[" + std::to_string(i) + "] = \"" + kind + "\" is not supported (full_attention, sliding_attention)");
    }
  } else if (mt == "mistral" || mt == "phi3") {
    c.layer_attention.assign(layers, LayerAttention::sliding);
  } else if (qwen_like) {
    const auto first = j.contains("max_window_layers") ? require_int(j, "max_window_layers", source, false) : 28;
    for (std::size_t i = 0; i < layers; ++i)
      if (static_cast<std::int64_t>(i) >= first) c.layer_attention[i] = LayerAttention::sliding;
  } else if (mt == "gemma3_text") {
    const auto pattern = j.contains("sliding_window_pattern") ? require_int(j, "sliding_window_pattern", source) : 6;
    for (std::size_t i = 0; i < layers; ++i)
      if ((static_cast<std::int64_t>(i) + 1) % pattern != 0) c.layer_attention[i] = LayerAttention::sliding;
  }
  if (mt == "gemma3_text" && bool_or(j, "use_bidirectional_attention", false, source))
    throw FileError(source, "use_bidirectional_attention = true (Gemma3 as an encoder) is not supported: xpo trains causal LMs");
  if (!c.sliding_window) c.layer_attention.assign(layers, LayerAttention::full);

  // RoPE per layer: Gemma3's sliding layers use the local table; SmolLM3's no_rope_layers (0 = NoPE).
  c.layer_rope.assign(layers, LayerRope::global);
  if (mt == "gemma3_text")
    for (std::size_t i = 0; i < layers; ++i)
      if (c.layer_attention[i] == LayerAttention::sliding) c.layer_rope[i] = LayerRope::local;
  if (mt == "smollm3") {
    if (j.contains("no_rope_layers") && !j["no_rope_layers"].is_null()) {
      const auto& nr = j["no_rope_layers"];
      if (!nr.is_array() || nr.size() != layers)
        throw FileError(source, "no_rope_layers must list one 0/1 flag per layer (" + std::to_string(layers) + ")");
      for (std::size_t i = 0; i < layers; ++i) {
        if (!nr[i].is_number_integer() || (nr[i].get<int>() != 0 && nr[i].get<int>() != 1))
          throw FileError(source, "no_rope_layers[" + std::to_string(i) + "] must be 0 or 1");
        if (nr[i].get<int>() == 0) c.layer_rope[i] = LayerRope::none;
      }
    } else {
      const auto interval = j.contains("no_rope_layer_interval") ? require_int(j, "no_rope_layer_interval", source) : 4;
      for (std::size_t i = 0; i < layers; ++i)
        if ((static_cast<std::int64_t>(i) + 1) % interval == 0) c.layer_rope[i] = LayerRope::none;
    }
  }

  c.rope_scaling = read_rope_scaling(j, c, source);
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
  auto config = from_json(read_json_file(path), path.string());
  if (const auto generation = path.parent_path() / "generation_config.json"; std::filesystem::exists(generation)) {
    config.generation_config = read_json_file(generation);
    if (!config.generation_config.is_object()) throw FileError(generation.string(), "must hold a JSON object");
  }
  return config;
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
  if (raw.contains("dtype")) j["dtype"] = torch_dtype;  // transformers >= 4.56 writes this name
  return j;
}

}  // namespace xpo::io
