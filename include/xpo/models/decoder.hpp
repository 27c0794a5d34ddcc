// xpo/models/decoder.hpp — the Qwen2/Llama decoder stack ("model." in Hugging Face's names): token embedding,
// N x (RMSNorm -> grouped-query attention with rotary positions -> residual -> RMSNorm -> SwiGLU MLP -> residual),
// final RMSNorm. Explicit position ids (left padding: cumsum(mask) - 1); a preallocated KV cache for incremental
// decoding whose logits equal the full forward's.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "xpo/core/compat.hpp"
#include "xpo/io/hf_config.hpp"
#include "xpo/models/layers.hpp"

namespace xpo::models {

// Keys and values of every layer for a batch, preallocated for `capacity` positions.
struct KVCache {
  std::vector<torch::Tensor> keys;    // per layer [B, Hkv, capacity, D]
  std::vector<torch::Tensor> values;  // per layer [B, Hkv, capacity, D]
  std::int64_t length = 0;            // positions already filled

  [[nodiscard]] std::int64_t capacity() const { return keys.empty() ? 0 : keys.front().size(2); }
  [[nodiscard]] std::int64_t batch_size() const { return keys.empty() ? 0 : keys.front().size(0); }

  // Keep only the given batch rows (generation drops finished rows): rows [B'] int64.
  void select_rows(const torch::Tensor& rows) {
    for (auto& k : keys) k = k.index_select(0, rows);
    for (auto& v : values) v = v.index_select(0, rows);
  }
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const io::ModelConfig& c)
      : heads_(c.num_attention_heads), kv_heads_(c.num_key_value_heads), head_dim_(c.head_dim),
        dropout_(c.attention_dropout) {
    q_proj = register_module("q_proj", Linear(c.hidden_size, heads_ * head_dim_, c.qkv_bias));
    k_proj = register_module("k_proj", Linear(c.hidden_size, kv_heads_ * head_dim_, c.qkv_bias));
    v_proj = register_module("v_proj", Linear(c.hidden_size, kv_heads_ * head_dim_, c.qkv_bias));
    o_proj = register_module("o_proj", Linear(heads_ * head_dim_, c.hidden_size, c.o_proj_bias));
  }

  // x [B, T, H], rotary tables [B, 1, T, D], additive mask [B, 1, T, Tpast+T]; cache (if any) gains T positions
  // for this layer -> [B, T, H]
  torch::Tensor forward(const torch::Tensor& x, const RotaryTables& rope, const torch::Tensor& mask, KVCache* cache,
                        std::size_t layer) {
    const auto b = x.size(0), t = x.size(1);
    auto q = q_proj(x).view({b, t, heads_, head_dim_}).transpose(1, 2);     // [B, H, T, D]
    auto k = k_proj(x).view({b, t, kv_heads_, head_dim_}).transpose(1, 2);  // [B, Hkv, T, D]
    auto v = v_proj(x).view({b, t, kv_heads_, head_dim_}).transpose(1, 2);  // [B, Hkv, T, D]
    q = apply_rotary(q, rope);
    k = apply_rotary(k, rope);
    if (cache != nullptr) {
      const auto past = cache->length;
      cache->keys[layer].narrow(2, past, t).copy_(k);
      cache->values[layer].narrow(2, past, t).copy_(v);
      k = cache->keys[layer].narrow(2, 0, past + t);
      v = cache->values[layer].narrow(2, 0, past + t);
    }
    const double p = is_training() ? dropout_ : 0.0;
    const auto out = compat::grouped_query_attention(q, k, v, mask, p);  // [B, H, T, D]
    return o_proj(out.transpose(1, 2).reshape({b, t, heads_ * head_dim_}));
  }

  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  std::int64_t heads_, kv_heads_, head_dim_;
  double dropout_;
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
 public:
  explicit MLPImpl(const io::ModelConfig& c) {
    gate_proj = register_module("gate_proj", Linear(c.hidden_size, c.intermediate_size, c.mlp_bias));
    up_proj = register_module("up_proj", Linear(c.hidden_size, c.intermediate_size, c.mlp_bias));
    down_proj = register_module("down_proj", Linear(c.intermediate_size, c.hidden_size, c.mlp_bias));
  }
  // x [B, T, H] -> [B, T, H]: down(silu(gate(x)) * up(x))
  torch::Tensor forward(const torch::Tensor& x) { return down_proj(torch::silu(gate_proj(x)) * up_proj(x)); }

  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  explicit DecoderLayerImpl(const io::ModelConfig& c) {
    self_attn = register_module("self_attn", Attention(c));
    mlp = register_module("mlp", MLP(c));
    input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
    post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  }
  // x [B, T, H] -> [B, T, H]
  torch::Tensor forward(const torch::Tensor& x, const RotaryTables& rope, const torch::Tensor& mask, KVCache* cache,
                        std::size_t layer) {
    const auto h = x + self_attn->forward(input_layernorm(x), rope, mask, cache, layer);
    return h + mlp(post_attention_layernorm(h));
  }

  Attention self_attn{nullptr};
  MLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(DecoderLayer);

// The decoder stack without a head (Hugging Face's Qwen2Model / LlamaModel, "model." in checkpoints).
class DecoderModelImpl : public torch::nn::Module {
 public:
  explicit DecoderModelImpl(const io::ModelConfig& c) : config_(c) {
    embed_tokens = register_module("embed_tokens", Embedding(c.vocab_size, c.hidden_size));
    layers = register_module("layers", torch::nn::ModuleList());
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
      blocks_.push_back(DecoderLayer(c));
      layers->push_back(blocks_.back());
    }
    norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
    // Not a checkpoint tensor and not a buffer: module.to(bfloat16) must not round it. Follows the device lazily.
    inv_freq_ = rotary_inverse_frequencies(c);
  }

  // ids [B, T] int64, attention_mask [B, Tpast+T] (1 = real token; covers the cached positions too),
  // position_ids [B, T] -> final normed hidden states [B, T, H]. With a cache, its length advances by T.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                        const torch::Tensor& position_ids, KVCache* cache = nullptr) {
    const auto t = input_ids.size(1);
    const auto past = cache != nullptr ? cache->length : 0;
    TORCH_CHECK(attention_mask.size(1) == past + t, "attention_mask covers ", attention_mask.size(1),
                " positions; expected cached ", past, " + new ", t);
    TORCH_CHECK(cache == nullptr || past + t <= cache->capacity(), "KV cache overflow: ", past + t,
                " positions, capacity ", cache ? cache->capacity() : 0);
    auto h = embed_tokens(input_ids);  // [B, T, H]
    if (inv_freq_.device() != h.device()) inv_freq_ = inv_freq_.to(h.device());
    const auto rope = rotary_tables(position_ids, inv_freq_, h.scalar_type());
    const auto mask = additive_causal_mask(attention_mask, past, t, h.scalar_type());
    for (std::size_t i = 0; i < blocks_.size(); ++i) h = blocks_[i]->forward(h, rope, mask, cache, i);
    if (cache != nullptr) cache->length += t;
    return norm(h);
  }

  // A cache for `batch` rows and `capacity` positions, in the model's dtype and on its device.
  [[nodiscard]] KVCache make_cache(std::int64_t batch, std::int64_t capacity) const {
    KVCache cache;
    const auto opts = embed_tokens->weight.options().requires_grad(false);
    for (std::int64_t i = 0; i < config_.num_hidden_layers; ++i) {
      cache.keys.push_back(torch::zeros({batch, config_.num_key_value_heads, capacity, config_.head_dim}, opts));
      cache.values.push_back(torch::zeros({batch, config_.num_key_value_heads, capacity, config_.head_dim}, opts));
    }
    return cache;
  }

  // 0 where query i (at sequence index past + i) may attend key j (j <= past + i and attention_mask[b, j] == 1),
  // the dtype's lowest finite value elsewhere: attention_mask [B, Tk] -> [B, 1, T, Tk].
  static torch::Tensor additive_causal_mask(const torch::Tensor& attention_mask, std::int64_t past, std::int64_t t,
                                            torch::ScalarType dtype) {
    const auto tk = attention_mask.size(1);
    const auto opts = attention_mask.options().dtype(torch::kLong);
    const auto query_index = torch::arange(past, past + t, opts).unsqueeze(1);           // [T, 1]
    const auto key_index = torch::arange(tk, opts).unsqueeze(0);                          // [1, Tk]
    const auto causal = key_index.le(query_index);                                        // [T, Tk]
    const auto allowed = causal.unsqueeze(0).logical_and(attention_mask.ne(0).unsqueeze(1));  // [B, T, Tk]
    return torch::zeros(allowed.sizes(), attention_mask.options().dtype(dtype))
        .masked_fill(allowed.logical_not(), compat::lowest_finite(dtype))
        .unsqueeze(1);
  }

  [[nodiscard]] const io::ModelConfig& config() const { return config_; }
  [[nodiscard]] const std::vector<DecoderLayer>& blocks() const { return blocks_; }

  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};

 private:
  io::ModelConfig config_;
  torch::Tensor inv_freq_;            // [D/2] float32 rotary inverse frequencies
  std::vector<DecoderLayer> blocks_;  // the same modules as `layers`, typed
};
TORCH_MODULE(DecoderModel);

}  // namespace xpo::models
