// xpo/models/decoder.hpp — one decoder stack for every supported family ("model." in Hugging Face's names):
// token embedding (optionally scaled), N x (RMSNorm -> grouped-query attention with rotary positions -> residual ->
// RMSNorm -> gated MLP -> residual), final RMSNorm. The per-family differences are the policies of io::ModelConfig
// (norm kind, q/k norms, fused projections, activation, sliding window and RoPE per layer, query scale).
// Explicit position ids (left padding: cumsum(mask) - 1); a preallocated KV cache for incremental decoding whose
// logits equal the full forward's.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <memory>
#include <string>
#include <utility>
#include <tuple>
#include <vector>

#include "xpo/core/compat.hpp"
#include "xpo/core/tensor_ops.hpp"
#include "xpo/io/hf_config.hpp"
#include "xpo/models/checkpoint.hpp"
#include "xpo/models/layers.hpp"

namespace xpo::models {

// Keys and values of every layer for a batch, preallocated for `capacity` positions. Slots count every column of
// the attention mask (left pads included), as transformers' cache does, so a sliding window over slots is the same.
struct KVCache {
  std::vector<torch::Tensor> keys;    // per layer [B, Hkv, capacity, D]
  std::vector<torch::Tensor> values;  // per layer [B, Hkv, capacity, D]
  std::int64_t length = 0;            // positions already filled
  // LongRoPE models only (undefined otherwise): the tokens and positions of the filled slots, so that a call that
  // switches between the short and long factor sets recomputes the whole sequence with the new set.
  torch::Tensor token_ids;            // [B, capacity] int64
  torch::Tensor positions;            // [B, capacity] int64
  std::optional<bool> rope_long;      // the set the cached keys were computed with

  [[nodiscard]] std::int64_t capacity() const { return keys.empty() ? 0 : keys.front().size(2); }
  [[nodiscard]] std::int64_t batch_size() const { return keys.empty() ? 0 : keys.front().size(0); }

  // Keep only the given batch rows (generation drops finished rows): rows [B'] int64.
  void select_rows(const torch::Tensor& rows) {
    for (auto& k : keys) k = k.index_select(0, rows);
    for (auto& v : values) v = v.index_select(0, rows);
    if (token_ids.defined()) token_ids = token_ids.index_select(0, rows.to(token_ids.device()));
    if (positions.defined()) positions = positions.index_select(0, rows.to(positions.device()));
  }
};

// Grouped-query self-attention with the per-architecture options of io::ModelConfig: separate q/k/v projections
// or Phi3's fused qkv_proj (rows q, then k, then v), RMSNorm on q and k over head_dim (Qwen3, Gemma3), rotary
// positions on the first rotary_dim dims (or none: SmolLM3's NoPE layers), and the query scale (head_dim^-0.5,
// Gemma3's query_pre_attn_scalar^-0.5).
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const io::ModelConfig& c)
      : heads_(c.num_attention_heads), kv_heads_(c.num_key_value_heads), head_dim_(c.head_dim),
        dropout_(c.attention_dropout), fused_(c.fused_projections),
        query_multiplier_(c.query_scale * std::sqrt(static_cast<double>(c.head_dim))) {
    if (fused_) {
      qkv_proj = register_module("qkv_proj", Linear(c.hidden_size, (heads_ + 2 * kv_heads_) * head_dim_, c.qkv_bias));
    } else {
      q_proj = register_module("q_proj", Linear(c.hidden_size, heads_ * head_dim_, c.qkv_bias));
      k_proj = register_module("k_proj", Linear(c.hidden_size, kv_heads_ * head_dim_, c.qkv_bias));
      v_proj = register_module("v_proj", Linear(c.hidden_size, kv_heads_ * head_dim_, c.qkv_bias));
    }
    o_proj = register_module("o_proj", Linear(heads_ * head_dim_, c.hidden_size, c.o_proj_bias));
    if (c.qk_norm) {
      q_norm = register_module("q_norm", RMSNorm(head_dim_, c.rms_norm_eps, c.norm_adds_one));
      k_norm = register_module("k_norm", RMSNorm(head_dim_, c.rms_norm_eps, c.norm_adds_one));
    }
    if (std::abs(query_multiplier_ - 1.0) < 1e-12) query_multiplier_ = 1.0;
  }

  // x [B, T, H], rotary tables [B, 1, T, R] (nullptr: no rotation), additive mask [B, 1, T, Tpast+T]; cache (if
  // any) gains T positions for this layer -> [B, T, H]
  torch::Tensor forward(const torch::Tensor& x, const RotaryTables* rope, const torch::Tensor& mask, KVCache* cache,
                        std::size_t layer) {
    const auto t = x.size(1);
    auto [q, k, v] = project(x, rope);
    if (cache != nullptr) {
      const auto past = cache->length;
      cache->keys[layer].narrow(2, past, t).copy_(k);
      cache->values[layer].narrow(2, past, t).copy_(v);
      k = cache->keys[layer].narrow(2, 0, past + t);
      v = cache->values[layer].narrow(2, 0, past + t);
    }
    return attend(q, k, v, mask);
  }

  // Prompts and their continuations (DecoderModelImpl::forward_shared_prompt): prompt rows xp [B, P, H] with tables
  // [B, 1, P, R] and mask [B, 1, P, P]; continuation rows xc [C B, T, H] (row c B + i continues prompt i) with
  // tables [C B, 1, T, R] and mask [C B, 1, T, P + T] over the prompt's keys, then their own -> {[B, P, H],
  // [C B, T, H]}. The prompt's keys and values are computed once and repeated for the C copies; in backward their
  // gradients add up, as over C separate prompt rows.
  std::pair<torch::Tensor, torch::Tensor> forward_shared_prompt(const torch::Tensor& xp, const RotaryTables* rope_p,
                                                                const torch::Tensor& mask_p, const torch::Tensor& xc,
                                                                const RotaryTables* rope_c, const torch::Tensor& mask_c) {
    const auto copies = xc.size(0) / xp.size(0);
    auto [qp, kp, vp] = project(xp, rope_p);
    auto [qc, kc, vc] = project(xc, rope_c);
    auto out_p = attend(qp, kp, vp, mask_p);
    const auto k = torch::cat({copies == 1 ? kp : kp.repeat({copies, 1, 1, 1}), kc}, 2);  // [C B, Hkv, P + T, D]
    const auto v = torch::cat({copies == 1 ? vp : vp.repeat({copies, 1, 1, 1}), vc}, 2);
    return {std::move(out_p), attend(qc, k, v, mask_c)};
  }

  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, qkv_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};

  // The concatenated low-precision q/k/v copy (FusedProjection; never held for a fused qkv_proj): whether it is
  // held, and dropping it.
  [[nodiscard]] bool holds_fused_copy() const { return qkv_copy_.holds_copy(); }
  void drop_fused_copy() { qkv_copy_.reset(); }

 private:
  // x [B, T, H] -> q [B, H, T, D], k and v [B, Hkv, T, D]: projected, q and k normed (if the model norms them) and
  // rotated (rope nullptr: not rotated).
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> project(const torch::Tensor& x, const RotaryTables* rope) {
    const auto b = x.size(0), t = x.size(1);
    torch::Tensor q, k, v;
    if (fused_) {
      const auto qkv = qkv_proj(x);  // [B, T, (H + 2 Hkv) D]
      q = qkv.narrow(-1, 0, heads_ * head_dim_);
      k = qkv.narrow(-1, heads_ * head_dim_, kv_heads_ * head_dim_);
      v = qkv.narrow(-1, (heads_ + kv_heads_) * head_dim_, kv_heads_ * head_dim_);
    } else if (auto qkv = qkv_copy_.forward(x, {q_proj.get(), k_proj.get(), v_proj.get()}); !qkv.empty()) {
      q = qkv[0], k = qkv[1], v = qkv[2];  // one low-precision product (FusedProjection)
    } else {
      q = q_proj(x), k = k_proj(x), v = v_proj(x);
    }
    q = q.reshape({b, t, heads_, head_dim_});
    k = k.reshape({b, t, kv_heads_, head_dim_});
    if (q_norm) {
      q = q_norm(q);
      k = k_norm(k);
    }
    q = q.transpose(1, 2);                                                    // [B, H, T, D]
    k = k.transpose(1, 2);                                                    // [B, Hkv, T, D]
    v = v.reshape({b, t, kv_heads_, head_dim_}).transpose(1, 2);              // [B, Hkv, T, D]
    if (rope != nullptr) {
      q = apply_rotary(q, *rope);
      k = apply_rotary(k, *rope);
    }
    return {q, k, v};
  }

  // Attention of q [B, H, T, D] over k, v [B, Hkv, Tk, D] with the additive mask [B, 1, T, Tk], then o_proj ->
  // [B, T, hidden].
  torch::Tensor attend(torch::Tensor q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& mask) {
    const auto b = q.size(0), t = q.size(2);
    // grouped_query_attention divides by sqrt(head_dim); another query scale is folded into q.
    if (query_multiplier_ != 1.0) q = q * query_multiplier_;
    const double p = is_training() ? dropout_ : 0.0;
    const auto out = compat::grouped_query_attention(q, k, v, mask, p);  // [B, H, T, D]
    return o_proj(out.transpose(1, 2).reshape({b, t, heads_ * head_dim_}));
  }

  std::int64_t heads_, kv_heads_, head_dim_;
  double dropout_;
  bool fused_;
  double query_multiplier_;
  FusedProjection qkv_copy_;
};
TORCH_MODULE(Attention);

// Gated MLP: down(act(gate(x)) * up(x)) with act = silu or gelu_pytorch_tanh; Phi3 fuses gate and up into
// gate_up_proj (gate = the first half of its rows).
class MLPImpl : public torch::nn::Module {
 public:
  explicit MLPImpl(const io::ModelConfig& c)
      : intermediate_(c.intermediate_size), gelu_tanh_(c.hidden_act == "gelu_pytorch_tanh") {
    if (c.fused_projections) {
      gate_up_proj = register_module("gate_up_proj", Linear(c.hidden_size, 2 * c.intermediate_size, c.mlp_bias));
    } else {
      gate_proj = register_module("gate_proj", Linear(c.hidden_size, c.intermediate_size, c.mlp_bias));
      up_proj = register_module("up_proj", Linear(c.hidden_size, c.intermediate_size, c.mlp_bias));
    }
    down_proj = register_module("down_proj", Linear(c.intermediate_size, c.hidden_size, c.mlp_bias));
  }
  // x [B, T, H] -> [B, T, H]
  torch::Tensor forward(const torch::Tensor& x) {
    if (gate_up_proj) {
      const auto gu = gate_up_proj(x);
      return down_proj(gu.narrow(-1, intermediate_, intermediate_) * activation(gu.narrow(-1, 0, intermediate_)));
    }
    if (auto gu = gate_up_copy_.forward(x, {gate_proj.get(), up_proj.get()}); !gu.empty())  // one product (FusedProjection)
      return down_proj(activation(gu[0]) * gu[1]);
    const auto gate = gate_proj(x);  // gate first, as the fused product orders them (dropout draws)
    return down_proj(activation(gate) * up_proj(x));
  }

  Linear gate_proj{nullptr}, up_proj{nullptr}, gate_up_proj{nullptr}, down_proj{nullptr};

  // The concatenated low-precision gate/up copy (FusedProjection; never held for a fused gate_up_proj): whether it
  // is held, and dropping it.
  [[nodiscard]] bool holds_fused_copy() const { return gate_up_copy_.holds_copy(); }
  void drop_fused_copy() { gate_up_copy_.reset(); }

 private:
  torch::Tensor activation(const torch::Tensor& x) const { return gelu_tanh_ ? torch::gelu(x, "tanh") : torch::silu(x); }
  std::int64_t intermediate_;
  bool gelu_tanh_;
  FusedProjection gate_up_copy_;
};
TORCH_MODULE(MLP);

// Pre-norm residual layer; Gemma3 ("sandwich") also norms each branch's output and names the MLP's input norm
// pre_feedforward_layernorm. Phi3's resid_pdrop applies dropout to each branch in training.
class DecoderLayerImpl : public torch::nn::Module {
 public:
  explicit DecoderLayerImpl(const io::ModelConfig& c) : resid_dropout_(c.resid_dropout) {
    self_attn = register_module("self_attn", Attention(c));
    mlp = register_module("mlp", MLP(c));
    input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_adds_one));
    post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_adds_one));
    if (c.sandwich_norms) {
      pre_feedforward_layernorm = register_module("pre_feedforward_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_adds_one));
      post_feedforward_layernorm = register_module("post_feedforward_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_adds_one));
    }
  }
  // x [B, T, H] -> [B, T, H]
  torch::Tensor forward(const torch::Tensor& x, const RotaryTables* rope, const torch::Tensor& mask, KVCache* cache,
                        std::size_t layer) {
    return after_attention(x, self_attn->forward(input_layernorm(x), rope, mask, cache, layer));
  }

  // Prompt rows [B, P, H] and their continuation rows [C B, T, H] (AttentionImpl::forward_shared_prompt for the
  // shapes, tables and masks) -> both outputs.
  std::pair<torch::Tensor, torch::Tensor> forward_shared_prompt(const torch::Tensor& xp, const RotaryTables* rope_p,
                                                                const torch::Tensor& mask_p, const torch::Tensor& xc,
                                                                const RotaryTables* rope_c, const torch::Tensor& mask_c) {
    auto [ap, ac] = self_attn->forward_shared_prompt(input_layernorm(xp), rope_p, mask_p, input_layernorm(xc), rope_c, mask_c);
    return {after_attention(xp, ap), after_attention(xc, ac)};
  }

  Attention self_attn{nullptr};
  MLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  RMSNorm pre_feedforward_layernorm{nullptr}, post_feedforward_layernorm{nullptr};

 private:
  // The layer after its attention: x the layer's input, attn the attention's output -> the layer's output.
  torch::Tensor after_attention(const torch::Tensor& x, const torch::Tensor& attn) {
    if (pre_feedforward_layernorm) {
      const auto h = x + post_attention_layernorm(attn);
      return h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)));
    }
    const auto h = x + residual_dropout(attn);
    return h + residual_dropout(mlp(post_attention_layernorm(h)));
  }
  torch::Tensor residual_dropout(const torch::Tensor& x) {
    return resid_dropout_ > 0 && is_training() ? torch::dropout(x, resid_dropout_, true) : x;
  }
  double resid_dropout_;
};
TORCH_MODULE(DecoderLayer);

// The decoder stack without a head (Hugging Face's Qwen2Model / LlamaModel / Qwen3Model / MistralModel /
// Gemma3TextModel / Phi3Model / SmolLM3Model, "model." in checkpoints). Per layer, config.layer_attention picks
// the causal or the sliding-window mask and config.layer_rope the global table, the local one or none.
class DecoderModelImpl : public torch::nn::Module {
 public:
  explicit DecoderModelImpl(const io::ModelConfig& c) : config_(c) {
    embed_tokens = register_module("embed_tokens", Embedding(c.vocab_size, c.hidden_size));
    layers = register_module("layers", torch::nn::ModuleList());
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
      blocks_.push_back(DecoderLayer(c));
      layers->push_back(blocks_.back());
    }
    norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_adds_one));
    // Not checkpoint tensors and not buffers: module.to(bfloat16) must not round them. Follow the device lazily.
    global_rope_ = RotaryEmbedding(c.rope_theta, c.rotary_dim(), c.rope_scaling, c.max_position_embeddings);
    local_rope_ = RotaryEmbedding(c.rope_local_base_freq, c.rotary_dim(), std::nullopt, c.max_position_embeddings);
    for (auto kind : c.layer_rope) {
      if (kind == io::LayerRope::global) uses_global_ = true;
      if (kind == io::LayerRope::local) uses_local_ = true;
    }
    for (auto kind : c.layer_attention) {
      if (kind == io::LayerAttention::sliding) uses_sliding_ = true;
      else uses_full_ = true;
    }
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
    std::optional<bool> use_long;
    if (global_rope_.is_longrope() && uses_global_) {
      // LongRoPE picks its factor set from the longest position of this call; when that differs from the set the
      // cache was filled with, the whole sequence is recomputed with the new set (what a call without cache gives).
      use_long = global_rope_.uses_long_factors(RotaryEmbedding::max_length(position_ids));
      if (cache != nullptr && past > 0 && cache->rope_long && *cache->rope_long != *use_long) {
        const auto ids = torch::cat({cache->token_ids.narrow(1, 0, past), input_ids}, 1);
        const auto pos = torch::cat({cache->positions.narrow(1, 0, past), position_ids}, 1);
        cache->length = 0;
        return run(ids, attention_mask, pos, cache, use_long).narrow(1, past, t);
      }
    }
    return run(input_ids, attention_mask, position_ids, cache, use_long);
  }

  // Each prompt once, then its continuations attending to its keys and values (the trainer's loss forward: one
  // prompt, two completions): prompt_ids, prompt_mask [B, P] (left-padded), ids, attention_mask [C B, T] (row
  // c B + i continues prompt i, C >= 1) -> final normed hidden states {prompts [B, P, H], continuations [C B, T, H]}.
  // The same masks, positions (each continuation's from its prompt's real length) and rotary tables as forward()
  // over the C B rows [prompt; continuation], so the same values up to float summation order, at the cost of B
  // prompts instead of C B. Gradients reach the prompt through every continuation. Gradient checkpointing applies
  // as in forward (one prompt layer and its continuation layer are one recomputed block).
  std::pair<torch::Tensor, torch::Tensor> forward_shared_prompt(const torch::Tensor& prompt_ids, const torch::Tensor& prompt_mask,
                                                                const torch::Tensor& ids, const torch::Tensor& attention_mask) {
    const auto b = prompt_ids.size(0), p = prompt_ids.size(1), t = ids.size(1);
    TORCH_CHECK(prompt_mask.sizes() == prompt_ids.sizes(), "forward_shared_prompt: prompt mask ", prompt_mask.sizes(),
                " != prompt ids ", prompt_ids.sizes());
    TORCH_CHECK(attention_mask.sizes() == ids.sizes(), "forward_shared_prompt: mask ", attention_mask.sizes(), " != ids ", ids.sizes());
    TORCH_CHECK(b > 0 && ids.size(0) >= b && ids.size(0) % b == 0, "forward_shared_prompt: ", ids.size(0),
                " continuation rows are not a multiple of the ", b, " prompts");
    const auto copies = ids.size(0) / b;
    const auto full_mask = torch::cat({copies == 1 ? prompt_mask : prompt_mask.repeat({copies, 1}), attention_mask.to(prompt_mask.scalar_type())}, 1);
    const auto positions = position_ids_from_mask(full_mask);  // [C B, P + T]
    std::optional<bool> use_long;
    if (global_rope_.is_longrope() && uses_global_) use_long = global_rope_.uses_long_factors(RotaryEmbedding::max_length(positions));
    auto hp = embed(prompt_ids), hc = embed(ids);
    const auto dtype = hp.scalar_type();
    // Tables of the whole rows, as forward computes them (dynamic RoPE depends on the longest position), then split.
    const auto split = [&](const RotaryTables& all) {
      return std::pair<RotaryTables, RotaryTables>{{all.cos.narrow(0, 0, b).narrow(2, 0, p), all.sin.narrow(0, 0, b).narrow(2, 0, p)},
                                                  {all.cos.narrow(2, p, t), all.sin.narrow(2, p, t)}};
    };
    std::pair<RotaryTables, RotaryTables> global, local;
    if (uses_global_) global = split(global_rope_.tables(positions, dtype, use_long));
    if (uses_local_) local = split(local_rope_.tables(positions, dtype));
    torch::Tensor full_p, full_c, sliding_p, sliding_c;
    if (uses_full_) {
      full_p = additive_causal_mask(prompt_mask, 0, p, dtype);
      full_c = additive_causal_mask(full_mask, p, t, dtype);
    }
    if (uses_sliding_) {
      sliding_p = additive_causal_mask(prompt_mask, 0, p, dtype, config_.sliding_window);
      sliding_c = additive_causal_mask(full_mask, p, t, dtype, config_.sliding_window);
    }
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const auto rope_kind = config_.layer_rope[i];
      const auto* tables = rope_kind == io::LayerRope::global ? &global : rope_kind == io::LayerRope::local ? &local : nullptr;
      const bool sliding = config_.layer_attention[i] == io::LayerAttention::sliding;
      const auto& mask_p = sliding ? sliding_p : full_p;
      const auto& mask_c = sliding ? sliding_c : full_c;
      const RotaryTables* rope_p = tables ? &tables->first : nullptr;
      const RotaryTables* rope_c = tables ? &tables->second : nullptr;
      if (gradient_checkpointing_ && torch::GradMode::is_enabled()) {
        std::tie(hp, hc) = checkpointed_shared_prompt_layer(i, rope_p, mask_p, rope_c, mask_c, hp, hc);
      } else {
        std::tie(hp, hc) = blocks_[i]->forward_shared_prompt(hp, rope_p, mask_p, hc, rope_c, mask_c);
      }
    }
    return {norm(hp), norm(hc)};
  }

  // A cache for `batch` rows and `capacity` positions on the model's device, in the model's dtype, or, for a
  // float32 model made while autocast is on (bf16/fp16 mixed precision), in autocast's dtype: the attention's
  // matmuls read keys and values in that dtype anyway, so they are rounded once, as written, with the same values
  // autocast's cast would give, instead of re-cast at every decoding step (and the cache is half the size).
  [[nodiscard]] KVCache make_cache(std::int64_t batch, std::int64_t capacity) const {
    KVCache cache;
    auto opts = embed_tokens->weight.options().requires_grad(false);
    if (const auto low = compat::autocast_dtype_on(opts.device().type()); low && opts.dtype() == torch::kFloat) opts = opts.dtype(*low);
    for (std::int64_t i = 0; i < config_.num_hidden_layers; ++i) {
      cache.keys.push_back(torch::zeros({batch, config_.num_key_value_heads, capacity, config_.head_dim}, opts));
      cache.values.push_back(torch::zeros({batch, config_.num_key_value_heads, capacity, config_.head_dim}, opts));
    }
    if (global_rope_.is_longrope()) {
      cache.token_ids = torch::zeros({batch, capacity}, opts.dtype(torch::kLong));
      cache.positions = torch::zeros({batch, capacity}, opts.dtype(torch::kLong));
    }
    return cache;
  }

  // 0 where query i (at sequence index past + i) may attend key j (j <= past + i and attention_mask[b, j] == 1,
  // and with a `window`, j > past + i - window: the query and the window - 1 slots before it), the dtype's lowest
  // finite value elsewhere: attention_mask [B, Tk] -> [B, 1, T, Tk].
  static torch::Tensor additive_causal_mask(const torch::Tensor& attention_mask, std::int64_t past, std::int64_t t,
                                            torch::ScalarType dtype, std::optional<std::int64_t> window = std::nullopt) {
    const auto tk = attention_mask.size(1);
    const auto opts = attention_mask.options().dtype(torch::kLong);
    const auto query_index = torch::arange(past, past + t, opts).unsqueeze(1);           // [T, 1]
    const auto key_index = torch::arange(tk, opts).unsqueeze(0);                          // [1, Tk]
    auto causal = key_index.le(query_index);                                              // [T, Tk]
    if (window) causal = causal.logical_and(key_index.gt(query_index - *window));
    const auto allowed = causal.unsqueeze(0).logical_and(attention_mask.ne(0).unsqueeze(1));  // [B, T, Tk]
    return torch::zeros(allowed.sizes(), attention_mask.options().dtype(dtype))
        .masked_fill(allowed.logical_not(), compat::lowest_finite(dtype))
        .unsqueeze(1);
  }

  [[nodiscard]] const io::ModelConfig& config() const { return config_; }
  [[nodiscard]] const std::vector<DecoderLayer>& blocks() const { return blocks_; }

  // Gradient checkpointing (Hugging Face's gradient_checkpointing_enable()): in a forward with grad and without
  // a KV cache, each decoder layer keeps only its input and is recomputed in backward (models/checkpoint.hpp).
  void set_gradient_checkpointing(bool on) { gradient_checkpointing_ = on; }
  [[nodiscard]] bool gradient_checkpointing() const { return gradient_checkpointing_; }

  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};

 private:
  torch::Tensor run(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                    const torch::Tensor& position_ids, KVCache* cache, std::optional<bool> use_long) {
    const auto t = input_ids.size(1);
    const auto past = cache != nullptr ? cache->length : 0;
    auto h = embed(input_ids);  // [B, T, H]
    const auto dtype = h.scalar_type();
    RotaryTables global, local;
    if (uses_global_) global = global_rope_.tables(position_ids, dtype, use_long);
    if (uses_local_) local = local_rope_.tables(position_ids, dtype);
    torch::Tensor full_mask, sliding_mask;
    if (uses_full_) full_mask = additive_causal_mask(attention_mask, past, t, dtype);
    if (uses_sliding_) sliding_mask = additive_causal_mask(attention_mask, past, t, dtype, config_.sliding_window);
    if (cache != nullptr && cache->token_ids.defined()) {
      cache->token_ids.narrow(1, past, t).copy_(input_ids);
      cache->positions.narrow(1, past, t).copy_(position_ids);
      cache->rope_long = use_long;
    }
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const auto rope_kind = config_.layer_rope[i];
      const RotaryTables* rope = rope_kind == io::LayerRope::global ? &global : rope_kind == io::LayerRope::local ? &local : nullptr;
      const auto& mask = config_.layer_attention[i] == io::LayerAttention::sliding ? sliding_mask : full_mask;
      if (gradient_checkpointing_ && cache == nullptr && torch::GradMode::is_enabled()) {
        h = checkpointed_layer(i, rope, mask, h);
      } else {
        h = blocks_[i]->forward(h, rope, mask, cache, i);
      }
    }
    if (cache != nullptr) cache->length += t;
    return norm(h);
  }

  // ids [B, T] -> embeddings [B, T, H], scaled (Gemma: the scale is rounded to the weights' dtype first), with
  // embedding dropout in training.
  torch::Tensor embed(const torch::Tensor& input_ids) {
    auto h = embed_tokens(input_ids);
    if (config_.embedding_scale != 1.0)
      h = h * torch::scalar_tensor(config_.embedding_scale, h.options().dtype(torch::kFloat)).to(h.scalar_type());
    if (config_.embd_dropout > 0 && is_training()) h = torch::dropout(h, config_.embd_dropout, true);
    return h;
  }

  // Layer i of forward_shared_prompt through models::checkpoint, which takes and returns one tensor: the prompt
  // and continuation hidden states travel packed in one flat tensor (a copy of the layer's input, which is all the
  // checkpoint keeps).
  std::pair<torch::Tensor, torch::Tensor> checkpointed_shared_prompt_layer(std::size_t i, const RotaryTables* rope_p,
                                                                           const torch::Tensor& mask_p, const RotaryTables* rope_c,
                                                                           const torch::Tensor& mask_c, const torch::Tensor& hp,
                                                                           const torch::Tensor& hc) {
    auto block = blocks_[i];
    bool trainable = false;
    for (const auto& param : block->parameters()) trainable = trainable || param.requires_grad();
    const bool dropout = is_training();
    std::optional<RotaryTables> tables_p, tables_c;
    if (rope_p != nullptr) tables_p = *rope_p;
    if (rope_c != nullptr) tables_c = *rope_c;
    const auto np = hp.numel();
    const auto shape_p = hp.sizes().vec(), shape_c = hc.sizes().vec();
    const auto out = checkpoint(
        [block, tables_p, tables_c, mask_p, mask_c, np, shape_p, shape_c](const torch::Tensor& x) mutable {
          auto [op, oc] = block->forward_shared_prompt(x.narrow(0, 0, np).view(shape_p), tables_p ? &*tables_p : nullptr, mask_p,
                                                       x.narrow(0, np, x.numel() - np).view(shape_c),
                                                       tables_c ? &*tables_c : nullptr, mask_c);
          return torch::cat({op.reshape({-1}), oc.reshape({-1})});
        },
        torch::cat({hp.reshape({-1}), hc.reshape({-1})}), trainable, dropout);
    return {out.narrow(0, 0, np).view(shape_p), out.narrow(0, np, out.numel() - np).view(shape_c)};
  }

  // Layer i through models::checkpoint; what it reads besides h is captured by value (backward runs it later).
  torch::Tensor checkpointed_layer(std::size_t i, const RotaryTables* rope, const torch::Tensor& mask, const torch::Tensor& h) {
    auto block = blocks_[i];
    bool trainable = false;
    for (const auto& p : block->parameters()) trainable = trainable || p.requires_grad();
    const bool dropout = is_training();  // attention, residual or LoRA dropout may draw: replay the generator
    std::optional<RotaryTables> tables;
    if (rope != nullptr) tables = *rope;
    return checkpoint(
        [block, tables, mask, i](const torch::Tensor& x) mutable {
          return block->forward(x, tables ? &*tables : nullptr, mask, nullptr, i);
        },
        h, trainable, dropout);
  }

  bool gradient_checkpointing_ = false;
  io::ModelConfig config_;
  RotaryEmbedding global_rope_, local_rope_;
  bool uses_global_ = false, uses_local_ = false, uses_full_ = false, uses_sliding_ = false;
  std::vector<DecoderLayer> blocks_;  // the same modules as `layers`, typed
};
TORCH_MODULE(DecoderModel);

}  // namespace xpo::models
