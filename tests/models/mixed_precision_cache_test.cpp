// The KV cache under bf16 mixed precision (DecoderModelImpl::make_cache): a float32 model's cache made while
// autocast is on holds autocast's dtype, and decoding with it gives the same logits as decoding with a float32
// cache that autocast casts at every step (both feed the attention the same bfloat16 keys and values; tolerance
// 1e-5 x (1 + |logit|) allows only a different summation order in the matmul kernels), on every fixture model.
// And CausalLM::set_low_precision_cache: frozen float32 weights cast once and kept give the same logits and input
// gradients as autocast's cast at every call, and a weight changed in place is cast again.
// And trainable weights (full fine-tuning) are cast once per generation and multiplied as themselves under grad.
// Where copies are used, q/k/v and gate/up keep one concatenated copy per group (FusedProjection), multiplied as
// one product when decoding: the same logits.
#include <gtest/gtest.h>

#include <xpo/core/compat.hpp>
#include <xpo/models/pretrained.hpp>

#include <algorithm>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "support/fixtures.hpp"

namespace {

using xpo::test::all_close;

// A batch of b rows of t tokens: ids from the first min(V, 100) tokens (drawn from the global generator), an
// all-ones mask and positions 0..t-1, all [b, t] int64.
struct Inputs {
  torch::Tensor ids, mask, positions;
};
Inputs random_inputs(const xpo::models::CausalLM& model, std::int64_t b, std::int64_t t) {
  return {torch::randint(std::min<std::int64_t>(model->vocab_size(), 100), {b, t}, torch::kLong), torch::ones({b, t}, torch::kLong),
          torch::arange(t, torch::kLong).unsqueeze(0).expand({b, t}).contiguous()};
}

// Decodes `steps` tokens greedily after `ids` with `cache`, returning the last position's logits of each step
// [B, steps, V]; runs under autocast (bfloat16) whatever the cache's dtype.
torch::Tensor decode_logits(xpo::models::CausalLM& model, const torch::Tensor& ids, xpo::models::KVCache cache, int steps) {
  torch::NoGradGuard no_grad;
  xpo::compat::AutocastGuard bf16(c10::DeviceType::CPU, torch::kBFloat16);
  const auto b = ids.size(0), p = ids.size(1);
  auto mask = torch::ones({b, p}, torch::kLong);
  auto positions = torch::arange(p, torch::kLong).unsqueeze(0).expand({b, p}).contiguous();
  auto logits = model->forward(ids, mask, positions, cache, /*last_only=*/true);
  std::vector<torch::Tensor> out{logits};
  for (int s = 1; s < steps; ++s) {
    const auto next = logits.argmax(-1);  // [B, 1]
    mask = torch::cat({mask, torch::ones({b, 1}, torch::kLong)}, 1);
    positions = torch::full({b, 1}, p + s - 1, torch::kLong);
    logits = model->forward(next, mask, positions, cache, /*last_only=*/true);
    out.push_back(logits);
  }
  return torch::cat(out, 1);
}

// Each linear layer's low-precision copies: {its own (LinearImpl), its q/k/v or gate/up group's concatenated one
// (FusedProjection)}, in module order.
std::vector<std::pair<bool, bool>> copies_held(const xpo::models::CausalLM& model) {
  std::map<const xpo::models::LinearImpl*, bool> grouped;
  for (const auto& m : model->modules(/*include_self=*/false)) {
    if (const auto* a = m->as<xpo::models::AttentionImpl>()) {
      for (const auto& l : {a->q_proj, a->k_proj, a->v_proj})
        if (l) grouped[l.get()] = a->holds_fused_copy();
    } else if (const auto* mlp = m->as<xpo::models::MLPImpl>()) {
      for (const auto& l : {mlp->gate_proj, mlp->up_proj})
        if (l) grouped[l.get()] = mlp->holds_fused_copy();
    }
  }
  std::vector<std::pair<bool, bool>> out;
  for (const auto& m : model->modules(/*include_self=*/false))
    if (const auto* l = m->as<xpo::models::LinearImpl>()) out.emplace_back(l->holds_low_precision_copy(), grouped.count(l) ? grouped[l] : false);
  return out;
}

TEST(MixedPrecisionCache, AutocastCacheHoldsTheLowPrecisionAndDecodesTheSame) {
  for (const auto& folder : xpo::test::causal_lm_fixture_folders()) {
    SCOPED_TRACE(folder.filename().string());
    auto model = xpo::models::load_causal_lm(folder);
    model->eval();
    const int steps = 6;
    const std::int64_t b = 2, p = 5, capacity = p + steps;
    torch::manual_seed(3);
    const auto ids = random_inputs(model, b, p).ids;

    const auto float_cache = model->make_cache(b, capacity);  // made outside autocast: the model's float32
    ASSERT_EQ(float_cache.keys.front().scalar_type(), torch::kFloat);
    xpo::models::KVCache low_cache;
    {
      xpo::compat::AutocastGuard bf16(c10::DeviceType::CPU, torch::kBFloat16);
      low_cache = model->make_cache(b, capacity);
    }
    ASSERT_EQ(low_cache.keys.front().scalar_type(), torch::kBFloat16);
    ASSERT_EQ(low_cache.values.back().scalar_type(), torch::kBFloat16);

    const auto with_float = decode_logits(model, ids, float_cache, steps);
    const auto with_low = decode_logits(model, ids, low_cache, steps);
    EXPECT_TRUE(all_close(with_low, with_float, 1e-5));
  }
}

TEST(MixedPrecisionCache, FrozenWeightsCastOnceGiveTheSameLogitsAndGradients) {
  for (const auto& folder : xpo::test::causal_lm_fixture_folders()) {
    SCOPED_TRACE(folder.filename().string());
    auto model = xpo::models::load_causal_lm(folder);
    const auto& c = model->config();
    model->enable_lora({.r = 4, .alpha = 8, .dropout = 0.0,
                        .target_modules = c.fused_projections ? std::vector<std::string>{"qkv_proj"} : std::vector<std::string>{"q_proj", "v_proj"}});
    model->eval();
    torch::manual_seed(5);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : model->parameters())
        if (p.requires_grad()) p.normal_(0, 0.05);  // adapters that change the output
    }
    const std::int64_t b = 2, t = 7;
    const auto [ids, mask, positions] = random_inputs(model, b, t);
    const auto run = [&] {  // logits under bf16 autocast, and the adapters' gradients of their sum
      model->zero_grad();
      xpo::compat::AutocastGuard bf16(c10::DeviceType::CPU, torch::kBFloat16);
      const auto logits = model->forward_window(ids, mask, positions, 0, t);
      logits.sum().backward();
      std::vector<torch::Tensor> grads;
      for (const auto& p : model->parameters())
        if (p.requires_grad()) grads.push_back(p.grad().clone());
      return std::pair{logits.detach(), grads};
    };
    const auto decode = [&] {  // greedy decoding with the adapters on, as generation runs it
      xpo::models::KVCache cache;
      {
        xpo::compat::AutocastGuard bf16(c10::DeviceType::CPU, torch::kBFloat16);
        cache = model->make_cache(b, t + 3);
      }
      c10::InferenceMode inference;
      return decode_logits(model, ids, cache, 3);
    };
    const auto [plain_logits, plain_grads] = run();
    const auto plain_decoded = decode();
    model->set_low_precision_cache(true);
    {  // the copies are first made where generation makes them: under InferenceMode, then used by a training forward
      c10::InferenceMode inference;
      xpo::compat::AutocastGuard bf16(c10::DeviceType::CPU, torch::kBFloat16);
      (void)model->forward_window(ids, mask, positions, 0, t);
    }
    // Decoding multiplies each q/k/v and gate/up group as one product, then adds each layer's adapter: the same
    // bfloat16 operands, the same logits (1e-6).
    EXPECT_TRUE(all_close(decode(), plain_decoded, 1e-6));
    if (!c.fused_projections) {
      const auto held = copies_held(model);
      EXPECT_TRUE(std::any_of(held.begin(), held.end(), [](auto h) { return h.second; }));
    }
    const auto [cached_logits, cached_grads] = run();
    EXPECT_TRUE(all_close(cached_logits, plain_logits, 1e-6));
    ASSERT_EQ(cached_grads.size(), plain_grads.size());
    for (std::size_t i = 0; i < plain_grads.size(); ++i) EXPECT_TRUE(all_close(cached_grads[i], plain_grads[i], 1e-5));

    // A frozen weight changed in place: the kept copy follows it.
    {
      torch::NoGradGuard no_grad;
      for (auto& p : model->parameters())
        if (!p.requires_grad() && p.dim() == 2) p.mul_(0.5);
    }
    const auto changed_cached = run().first;
    model->set_low_precision_cache(false);
    const auto changed_plain = run().first;
    EXPECT_TRUE(all_close(changed_cached, changed_plain, 1e-6));
    EXPECT_FALSE(all_close(changed_cached, cached_logits, 1e-3));

    // The checkpoint loaded again (bytes written straight into the weights): the copies follow it too.
    model->set_low_precision_cache(true);
    (void)run();  // copies of the halved weights
    xpo::models::load_weights(*model, xpo::io::TensorStore::open(folder), folder.string(),
                              c.tie_word_embeddings ? std::set<std::string>{"lm_head.weight"} : std::set<std::string>{});
    EXPECT_TRUE(all_close(run().first, cached_logits, 1e-6));
  }
}

// Full fine-tuning under bf16: a trainable weight is cast once per generation, not at every decoding step. Under
// InferenceMode (generation) every linear weight's copy is kept and the logits equal autocast's cast at each call
// (1e-6: the same bfloat16 operands); a forward that records gradients multiplies the float32 weights themselves
// (their gradients equal the uncached run's, 1e-5) and drops the trainable copies, and so does a forward without
// gradients outside InferenceMode (gradient checkpointing's first pass keeps no copy).
TEST(MixedPrecisionCache, TrainableWeightsCastOncePerGenerationAndNotForGradients) {
  for (const auto& folder : xpo::test::causal_lm_fixture_folders()) {
    SCOPED_TRACE(folder.filename().string());
    auto model = xpo::models::load_causal_lm(folder);
    model->eval();
    const int steps = 5;
    const std::int64_t b = 2, p = 4;
    torch::manual_seed(7);
    const auto [ids, mask, positions] = random_inputs(model, b, p);
    const bool grouped = !model->config().fused_projections;  // separate q/k/v and gate/up: one copy per group
    // Every linear weight has a copy (its own or its group's), and no weight has both.
    const auto all_held = [&] {
      const auto held = copies_held(model);
      return !held.empty() && std::all_of(held.begin(), held.end(), [](auto h) { return h.first != h.second; });
    };
    const auto none_held = [&] {
      const auto held = copies_held(model);
      return !held.empty() && std::none_of(held.begin(), held.end(), [](auto h) { return h.first || h.second; });
    };
    const auto decode = [&] {
      xpo::models::KVCache cache;
      {
        xpo::compat::AutocastGuard bf16(c10::DeviceType::CPU, torch::kBFloat16);
        cache = model->make_cache(b, p + steps);
      }
      c10::InferenceMode inference;
      return decode_logits(model, ids, cache, steps);
    };
    const auto gradients = [&] {
      model->zero_grad();
      xpo::compat::AutocastGuard bf16(c10::DeviceType::CPU, torch::kBFloat16);
      model->forward_window(ids, mask, positions, 0, p).sum().backward();
      std::vector<torch::Tensor> grads;
      for (const auto& param : model->parameters()) grads.push_back(param.grad().defined() ? param.grad().clone() : torch::Tensor());
      return grads;
    };
    const auto plain_logits = decode();
    const auto plain_grads = gradients();
    ASSERT_TRUE(none_held());

    model->set_low_precision_cache(true);
    const auto cached_logits = decode();
    // The same bfloat16 operands (a q/k/v or gate/up group multiplied in one product): the same logits.
    EXPECT_TRUE(all_close(cached_logits, plain_logits, 1e-6));
    EXPECT_TRUE(all_held());  // made once, kept through decoding
    if (grouped) {  // and the groups' copies are the concatenated ones
      const auto held = copies_held(model);
      EXPECT_TRUE(std::any_of(held.begin(), held.end(), [](auto h) { return h.second; }));
    }

    {  // a forward without gradients but outside InferenceMode (a checkpointed forward's first pass)
      torch::NoGradGuard no_grad;
      xpo::compat::AutocastGuard bf16(c10::DeviceType::CPU, torch::kBFloat16);
      const auto logits = model->forward_window(ids, mask, positions, 0, p);
      EXPECT_TRUE(none_held());
    }
    (void)decode();
    ASSERT_TRUE(all_held());
    const auto cached_grads = gradients();
    EXPECT_TRUE(none_held());  // trainable: dropped by the forward
    ASSERT_EQ(cached_grads.size(), plain_grads.size());
    for (std::size_t i = 0; i < plain_grads.size(); ++i) {
      ASSERT_EQ(cached_grads[i].defined(), plain_grads[i].defined());
      if (plain_grads[i].defined()) {
        EXPECT_TRUE(all_close(cached_grads[i], plain_grads[i], 1e-5));
      }
    }

    // An optimizer-like in-place update between generations: the next generation casts the new weights.
    {
      torch::NoGradGuard no_grad;
      for (auto& param : model->parameters())
        if (param.dim() == 2) param.mul_(0.5);
    }
    const auto updated_cached = decode();
    model->set_low_precision_cache(false);
    EXPECT_TRUE(none_held());  // switching the cache off drops every copy
    const auto updated_plain = decode();
    EXPECT_TRUE(all_close(updated_cached, updated_plain, 1e-6));
    EXPECT_FALSE(all_close(updated_cached, cached_logits, 1e-3));
  }
}

}  // namespace
