// xpo/models/deberta.hpp — the DeBERTa-v2/v3 encoder (transformers' DebertaV2Model, models/deberta_v2 as in
// 4.45/4.46), the backbone of llm-blender's PairRM. Parameters are registered under transformers' names
// (embeddings.word_embeddings.weight, encoder.layer.{i}.attention.self.query_proj.weight, ...), so loading is a
// name-for-name copy. Supported: the v3 shape PairRM uses — relative attention with the c2p and/or p2c terms,
// log-bucketed relative positions, shared attention keys, LayerNorm'd rel_embeddings, no absolute positions, no
// token types, no convolution layer, GELU (erf). Anything else is refused by name when the config is read.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "xpo/core/compat.hpp"
#include "xpo/core/errors.hpp"
#include "xpo/models/layers.hpp"

namespace xpo::models {

// The fields of transformers' DebertaV2Config that the forward pass reads (JSON names).
struct DebertaV2Config {
  std::int64_t vocab_size = 128100;
  std::int64_t hidden_size = 1024;
  std::int64_t num_hidden_layers = 24;
  std::int64_t num_attention_heads = 16;
  std::int64_t intermediate_size = 4096;
  std::int64_t max_position_embeddings = 512;
  std::int64_t max_relative_positions = -1;  // < 1: max_position_embeddings is used
  std::int64_t position_buckets = 256;       // > 0: log buckets; the rel_embeddings table has 2 * buckets rows
  double layer_norm_eps = 1e-7;
  bool c2p = true;  // pos_att_type contains "c2p"
  bool p2c = true;  // pos_att_type contains "p2c"
  std::int64_t pad_token_id = 0;

  [[nodiscard]] std::int64_t head_dim() const { return hidden_size / num_attention_heads; }
  // The distance at which the log buckets saturate (transformers' max_relative_positions after defaulting).
  [[nodiscard]] std::int64_t max_relative_distance() const {
    return max_relative_positions < 1 ? max_position_embeddings : max_relative_positions;
  }
  // Half the number of rel_embeddings rows (transformers' pos_ebd_size).
  [[nodiscard]] std::int64_t attention_span() const {
    return position_buckets > 0 ? position_buckets : max_relative_distance();
  }

  // Reads a transformers config.json object (DebertaV2Config keys; defaults as transformers' for absent keys).
  // Throws ConfigError naming `source` and the field for a value xpo does not implement or a bad size.
  static DebertaV2Config from_json(const nlohmann::json& j, const std::string& source) {
    if (!j.is_object()) throw FileError(source, "a DeBERTa-v2 config must be a JSON object");
    std::vector<std::string> problems;
    const auto where = [&](const std::string& key) { return source + ": \"" + key + "\""; };
    const auto get_int = [&](const char* key, std::int64_t fallback) -> std::int64_t {
      const auto it = j.find(key);
      if (it == j.end() || it->is_null()) return fallback;
      if (!it->is_number_integer()) {
        problems.push_back(where(key) + " must be an integer, got " + it->dump());
        return fallback;
      }
      return it->get<std::int64_t>();
    };
    const auto get_bool = [&](const char* key, bool fallback) -> bool {
      const auto it = j.find(key);
      if (it == j.end() || it->is_null()) return fallback;
      if (!it->is_boolean()) {
        problems.push_back(where(key) + " must be true or false, got " + it->dump());
        return fallback;
      }
      return it->get<bool>();
    };
    const auto get_string = [&](const char* key, const std::string& fallback) -> std::string {
      const auto it = j.find(key);
      if (it == j.end() || it->is_null()) return fallback;
      if (!it->is_string()) {
        problems.push_back(where(key) + " must be a string, got " + it->dump());
        return fallback;
      }
      return it->get<std::string>();
    };
    DebertaV2Config c;
    // transformers' DebertaV2Config defaults (deberta-v2-xlarge's sizes) for absent keys.
    c.vocab_size = get_int("vocab_size", 128100);
    c.hidden_size = get_int("hidden_size", 1536);
    c.num_hidden_layers = get_int("num_hidden_layers", 24);
    c.num_attention_heads = get_int("num_attention_heads", 24);
    c.intermediate_size = get_int("intermediate_size", 6144);
    c.max_position_embeddings = get_int("max_position_embeddings", 512);
    c.max_relative_positions = get_int("max_relative_positions", -1);
    c.position_buckets = get_int("position_buckets", -1);
    c.pad_token_id = get_int("pad_token_id", 0);
    if (const auto it = j.find("layer_norm_eps"); it != j.end() && !it->is_null()) {
      if (!it->is_number()) problems.push_back(where("layer_norm_eps") + " must be a number, got " + it->dump());
      else c.layer_norm_eps = it->get<double>();
    } else {
      c.layer_norm_eps = 1e-7;
    }
    // pos_att_type: a list (config.json of transformers) or a "p2c|c2p" string (older configs); absent = none.
    std::vector<std::string> att;
    if (const auto it = j.find("pos_att_type"); it != j.end() && !it->is_null()) {
      if (it->is_string()) {
        std::string s = it->get<std::string>();
        std::size_t start = 0;
        while (start <= s.size()) {
          const auto bar = s.find('|', start);
          const auto part = s.substr(start, bar == std::string::npos ? std::string::npos : bar - start);
          if (!part.empty()) att.push_back(part);
          if (bar == std::string::npos) break;
          start = bar + 1;
        }
      } else if (it->is_array()) {
        for (const auto& v : *it) {
          if (v.is_string()) att.push_back(v.get<std::string>());
          else problems.push_back(where("pos_att_type") + " must list strings, got " + v.dump());
        }
      } else {
        problems.push_back(where("pos_att_type") + " must be a list or a \"p2c|c2p\" string, got " + it->dump());
      }
    }
    c.c2p = c.p2c = false;
    for (const auto& a : att) {
      if (a == "c2p") c.c2p = true;
      else if (a == "p2c") c.p2c = true;
      else problems.push_back(where("pos_att_type") + " has \"" + a + "\"; xpo implements \"c2p\" and \"p2c\"");
    }
    // The variants xpo does not implement, refused by name rather than computed differently.
    if (!get_bool("relative_attention", false))
      problems.push_back(where("relative_attention") + " must be true (DeBERTa-v3/PairRM); absolute-only attention is not implemented");
    if (!get_bool("share_att_key", false))
      problems.push_back(where("share_att_key") + " must be true; separate pos_key_proj/pos_query_proj are not implemented");
    if (get_bool("position_biased_input", true))
      problems.push_back(where("position_biased_input") + " must be false; absolute position embeddings are not implemented");
    if (get_int("type_vocab_size", 0) != 0)
      problems.push_back(where("type_vocab_size") + " must be 0; token type embeddings are not implemented");
    if (get_int("conv_kernel_size", 0) != 0)
      problems.push_back(where("conv_kernel_size") + " must be 0; the convolution layer is not implemented");
    if (const auto e = get_int("embedding_size", c.hidden_size); e != c.hidden_size)
      problems.push_back(where("embedding_size") + " must equal hidden_size; embed_proj is not implemented");
    if (const auto act = get_string("hidden_act", "gelu"); act != "gelu")
      problems.push_back(where("hidden_act") + " is \"" + act + "\"; xpo implements \"gelu\" (erf)");
    const auto norm = get_string("norm_rel_ebd", "none");
    if (norm.find("layer_norm") == std::string::npos)
      problems.push_back(where("norm_rel_ebd") + " is \"" + norm + "\"; xpo implements \"layer_norm\"");
    if (c.hidden_size <= 0 || c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0)
      problems.push_back(where("hidden_size") + " = " + std::to_string(c.hidden_size) +
                         " must be a positive multiple of num_attention_heads = " + std::to_string(c.num_attention_heads));
    if (c.vocab_size <= 0) problems.push_back(where("vocab_size") + " must be positive");
    if (c.num_hidden_layers <= 0) problems.push_back(where("num_hidden_layers") + " must be positive");
    if (c.intermediate_size <= 0) problems.push_back(where("intermediate_size") + " must be positive");
    if (c.max_relative_distance() <= 1)
      problems.push_back(where("max_position_embeddings") + " must be > 1 (the relative distance the buckets reach)");
    if (c.position_buckets > 0 && c.position_buckets < 4)
      problems.push_back(where("position_buckets") + " must be >= 4 (or <= 0 for no buckets)");
    if (!(c.layer_norm_eps > 0)) problems.push_back(where("layer_norm_eps") + " must be positive");
    if (!problems.empty()) throw ConfigError(problems);
    return c;
  }
};

// microsoft/deberta-v3-large's network, the backbone of llm-blender/PairRM (public config values), with the
// vocabulary already resized to PairRM's 128005 (128000 pieces + [MASK] + 4 marker tokens).
inline DebertaV2Config deberta_v3_large_config() {
  DebertaV2Config c;
  c.vocab_size = 128005;
  c.hidden_size = 1024;
  c.num_hidden_layers = 24;
  c.num_attention_heads = 16;
  c.intermediate_size = 4096;
  c.max_position_embeddings = 512;
  c.max_relative_positions = -1;
  c.position_buckets = 256;
  c.layer_norm_eps = 1e-7;
  c.c2p = c.p2c = true;
  c.pad_token_id = 0;
  return c;
}

// transformers' make_log_bucket_position over a matrix of relative positions r = i - j (int64, any shape):
// |r| <= bucket_size/2 stays, farther distances are compressed logarithmically up to `max_position`.
// Evaluated in float32 as torch does. Returns int64 of the same shape.
inline torch::Tensor log_bucket_position(const torch::Tensor& relative_pos, std::int64_t bucket_size,
                                         std::int64_t max_position) {
  const auto mid = bucket_size / 2;
  const auto sign = torch::sign(relative_pos);
  const auto inside = relative_pos.lt(mid).logical_and(relative_pos.gt(-mid));
  const auto abs_pos = torch::where(inside, torch::full_like(relative_pos, mid - 1), relative_pos.abs());
  const auto midf = static_cast<float>(mid);
  const auto ratio = (abs_pos.to(torch::kFloat) / midf).log() /
                     static_cast<float>(std::log(static_cast<float>(max_position - 1) / midf)) *
                     static_cast<float>(mid - 1);
  const auto log_pos = ratio.ceil() + midf;
  return torch::where(abs_pos.le(mid), relative_pos.to(torch::kFloat), log_pos * sign.to(torch::kFloat))
      .to(torch::kLong);
}

// The [T, T] relative-position index c(i, j) into the rel_embeddings rows: clamp(bucket(i - j) + span, 0,
// 2 span - 1), on `device`. Both disentangled terms use it (bucket is odd, so p2c's -bucket(j - i) is the same).
inline torch::Tensor relative_position_index(std::int64_t length, const DebertaV2Config& c, torch::Device device) {
  const auto ids = torch::arange(length, torch::TensorOptions().dtype(torch::kLong).device(device));
  auto rel = ids.unsqueeze(1) - ids.unsqueeze(0);  // [T, T] i - j
  if (c.position_buckets > 0) rel = log_bucket_position(rel, c.position_buckets, c.max_relative_distance());
  const auto span = c.attention_span();
  return (rel + span).clamp(0, 2 * span - 1);
}

// LayerNorm with `weight` [H] and `bias` [H] (transformers' nn.LayerNorm names), allocated uninitialised (loading
// fills it); eps from the config.
class DebertaLayerNormImpl : public torch::nn::Module {
 public:
  DebertaLayerNormImpl(std::int64_t hidden, double eps) : hidden_(hidden), eps_(eps) {
    weight = register_parameter("weight", torch::ones({hidden}));
    bias = register_parameter("bias", torch::zeros({hidden}));
  }
  // x [..., H] -> [..., H]
  torch::Tensor forward(const torch::Tensor& x) { return torch::layer_norm(x, {hidden_}, weight, bias, eps_); }
  torch::Tensor weight;
  torch::Tensor bias;

 private:
  std::int64_t hidden_;
  double eps_;
};
TORCH_MODULE(DebertaLayerNorm);

// Dense + LayerNorm on a residual: LN(dense(x) + residual) (transformers' SelfOutput and Output; dropout is
// identity at inference). Parameters `dense.*`, `LayerNorm.*`.
class DebertaResidualOutputImpl : public torch::nn::Module {
 public:
  DebertaResidualOutputImpl(std::int64_t in, std::int64_t hidden, double eps) {
    dense = register_module("dense", Linear(in, hidden, true));
    LayerNorm = register_module("LayerNorm", DebertaLayerNorm(hidden, eps));
  }
  // x [B, T, in], residual [B, T, H] -> [B, T, H]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& residual) { return LayerNorm(dense(x) + residual); }
  Linear dense{nullptr};
  DebertaLayerNorm LayerNorm{nullptr};  // NOLINT: transformers' name
};
TORCH_MODULE(DebertaResidualOutput);

// Disentangled self-attention (transformers' DisentangledSelfAttention with share_att_key): parameters
// `query_proj`, `key_proj`, `value_proj` (with bias). The relative-position keys/queries come from the same
// projections applied to the normalised rel_embeddings.
class DisentangledSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit DisentangledSelfAttentionImpl(const DebertaV2Config& c) : c_(c) {
    query_proj = register_module("query_proj", Linear(c.hidden_size, c.hidden_size, true));
    key_proj = register_module("key_proj", Linear(c.hidden_size, c.hidden_size, true));
    value_proj = register_module("value_proj", Linear(c.hidden_size, c.hidden_size, true));
  }

  // x [B, T, H]; mask2d [B, 1, T, T] bool (true = attend); rel_index [T, T] int64 (relative_position_index);
  // rel [2 span, H] normalised rel_embeddings -> context [B, T, H].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask2d, const torch::Tensor& rel_index,
                        const torch::Tensor& rel) {
    const auto b = x.size(0), t = x.size(1), heads = c_.num_attention_heads, d = c_.head_dim();
    const auto split = [&](const torch::Tensor& y, std::int64_t len) {  // [N, len, H] -> [N, heads, len, d]
      return y.view({y.size(0), len, heads, d}).permute({0, 2, 1, 3});
    };
    const auto q = split(query_proj(x), t);  // [B, h, T, d]
    const auto k = split(key_proj(x), t);
    const auto v = split(value_proj(x), t);
    const auto factor = 1 + static_cast<std::int64_t>(c_.c2p) + static_cast<std::int64_t>(c_.p2c);
    const double scale = std::sqrt(static_cast<double>(d * factor));
    auto scores = torch::matmul(q, k.transpose(-1, -2) / scale);  // [B, h, T, T]
    const auto span2 = rel.size(0);
    const auto index = rel_index.view({1, 1, t, t}).expand({b, heads, t, t});
    if (c_.c2p) {
      const auto pos_k = split(key_proj(rel).unsqueeze(0), span2);         // [1, h, 2s, d]
      const auto c2p = torch::matmul(q, pos_k.transpose(-1, -2));           // [B, h, T, 2s]
      scores = scores + c2p.gather(-1, index) / scale;                      // [B, h, T, T]
    }
    if (c_.p2c) {
      const auto pos_q = split(query_proj(rel).unsqueeze(0), span2);       // [1, h, 2s, d]
      const auto p2c = torch::matmul(k, pos_q.transpose(-1, -2));           // [B, h, T(key), 2s]
      // p2c[i][j] = k_j . pos_q[c(i, j)]: gather along the keys' rows with the transposed index.
      scores = scores + p2c.gather(-1, index.transpose(-1, -2)).transpose(-1, -2) / scale;
    }
    // Masked keys at the dtype's lowest value, then rows of padded queries zeroed (transformers' XSoftmax).
    const auto lowest = compat::lowest_finite(scores.scalar_type());  // torch.finfo(dtype).min, as transformers masks
    auto probs = torch::softmax(scores.masked_fill(mask2d.logical_not(), lowest), -1).masked_fill(mask2d.logical_not(), 0);
    const auto context = torch::matmul(probs, v);  // [B, h, T, d]
    return context.permute({0, 2, 1, 3}).reshape({b, t, c_.hidden_size});
  }

  Linear query_proj{nullptr};
  Linear key_proj{nullptr};
  Linear value_proj{nullptr};

 private:
  DebertaV2Config c_;
};
TORCH_MODULE(DisentangledSelfAttention);

// `attention.self` + `attention.output`.
class DebertaAttentionImpl : public torch::nn::Module {
 public:
  explicit DebertaAttentionImpl(const DebertaV2Config& c) {
    self = register_module("self", DisentangledSelfAttention(c));
    output = register_module("output", DebertaResidualOutput(c.hidden_size, c.hidden_size, c.layer_norm_eps));
  }
  // x [B, T, H] -> [B, T, H]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask2d, const torch::Tensor& rel_index,
                        const torch::Tensor& rel) {
    return output(self(x, mask2d, rel_index, rel), x);
  }
  DisentangledSelfAttention self{nullptr};
  DebertaResidualOutput output{nullptr};
};
TORCH_MODULE(DebertaAttention);

// `intermediate.dense` then GELU (erf).
class DebertaIntermediateImpl : public torch::nn::Module {
 public:
  explicit DebertaIntermediateImpl(const DebertaV2Config& c) {
    dense = register_module("dense", Linear(c.hidden_size, c.intermediate_size, true));
  }
  // x [B, T, H] -> [B, T, intermediate]
  torch::Tensor forward(const torch::Tensor& x) { return torch::gelu(dense(x)); }
  Linear dense{nullptr};
};
TORCH_MODULE(DebertaIntermediate);

// transformers' DebertaV2Layer: attention, then LN(dense2(gelu(dense1(h))) + h). Parameters `attention.*`,
// `intermediate.dense.*`, `output.*`.
class DebertaLayerImpl : public torch::nn::Module {
 public:
  explicit DebertaLayerImpl(const DebertaV2Config& c) {
    attention = register_module("attention", DebertaAttention(c));
    intermediate = register_module("intermediate", DebertaIntermediate(c));
    output = register_module("output", DebertaResidualOutput(c.intermediate_size, c.hidden_size, c.layer_norm_eps));
  }
  // x [B, T, H] -> [B, T, H]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask2d, const torch::Tensor& rel_index,
                        const torch::Tensor& rel) {
    const auto h = attention(x, mask2d, rel_index, rel);
    return output(intermediate(h), h);
  }
  DebertaAttention attention{nullptr};
  DebertaIntermediate intermediate{nullptr};
  DebertaResidualOutput output{nullptr};
};
TORCH_MODULE(DebertaLayer);

// transformers' DebertaV2Embeddings without positions or token types: word_embeddings, LayerNorm, times the mask.
class DebertaEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit DebertaEmbeddingsImpl(const DebertaV2Config& c) {
    word_embeddings = register_module("word_embeddings", Embedding(c.vocab_size, c.hidden_size));
    LayerNorm = register_module("LayerNorm", DebertaLayerNorm(c.hidden_size, c.layer_norm_eps));
  }
  // ids [B, T] int64, mask [B, T] -> [B, T, H]
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& mask) {
    const auto e = LayerNorm(word_embeddings(ids));
    return e * mask.unsqueeze(-1).to(e.scalar_type());
  }
  Embedding word_embeddings{nullptr};
  DebertaLayerNorm LayerNorm{nullptr};  // NOLINT: transformers' name
};
TORCH_MODULE(DebertaEmbeddings);

// transformers' DebertaV2Encoder: the layers plus `rel_embeddings.weight` [2 span, H] and its `LayerNorm`.
class DebertaEncoderImpl : public torch::nn::Module {
 public:
  explicit DebertaEncoderImpl(const DebertaV2Config& c) : c_(c) {
    layer = register_module("layer", torch::nn::ModuleList());
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) layer->push_back(DebertaLayer(c));
    rel_embeddings = register_module("rel_embeddings", Embedding(2 * c.attention_span(), c.hidden_size));
    LayerNorm = register_module("LayerNorm", DebertaLayerNorm(c.hidden_size, c.layer_norm_eps));
  }
  // x [B, T, H] embeddings, mask [B, T] (1 = token) -> last hidden state [B, T, H]
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& mask) {
    const auto t = x.size(1);
    const auto m = mask.to(torch::kBool);
    const auto mask2d = m.unsqueeze(1).unsqueeze(2).logical_and(m.unsqueeze(1).unsqueeze(3));  // [B, 1, T, T]
    const auto rel_index = relative_position_index(t, c_, x.device());
    const auto rel = LayerNorm(rel_embeddings->weight);  // [2 span, H]
    for (const auto& l : *layer) x = l->as<DebertaLayerImpl>()->forward(x, mask2d, rel_index, rel);
    return x;
  }
  torch::nn::ModuleList layer{nullptr};
  Embedding rel_embeddings{nullptr};
  DebertaLayerNorm LayerNorm{nullptr};  // NOLINT: transformers' name

 private:
  DebertaV2Config c_;
};
TORCH_MODULE(DebertaEncoder);

// transformers' DebertaV2Model (no pooler): `embeddings.*`, `encoder.*`. Device- and dtype-agnostic (move it with
// ->to()); call under torch::InferenceMode / NoGradGuard when judging.
class DebertaV2ModelImpl : public torch::nn::Module {
 public:
  explicit DebertaV2ModelImpl(DebertaV2Config c) : config_(std::move(c)) {
    embeddings = register_module("embeddings", DebertaEmbeddings(config_));
    encoder = register_module("encoder", DebertaEncoder(config_));
  }
  // input_ids [B, T] int64, attention_mask [B, T] (1 = token, 0 = pad) -> last_hidden_state [B, T, H].
  // Positions are relative only, so no position ids are taken.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
    TORCH_CHECK(input_ids.dim() == 2 && attention_mask.sizes() == input_ids.sizes(),
                "DebertaV2Model: input_ids and attention_mask must both be [B, T]");
    return encoder(embeddings(input_ids, attention_mask), attention_mask);
  }
  [[nodiscard]] const DebertaV2Config& config() const { return config_; }

  DebertaEmbeddings embeddings{nullptr};
  DebertaEncoder encoder{nullptr};

 private:
  DebertaV2Config config_;
};
TORCH_MODULE(DebertaV2Model);

}  // namespace xpo::models
