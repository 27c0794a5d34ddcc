// Test support for the CUDA trainer tests: an XPOTrainer on the tiny fixture models (models/tiny-qwen2 and its
// reward model) with both models on a given device, and the comparison of a device's parameters or gradients with
// the CPU's.
#pragma once

#include <xpo/xpo.hpp>

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "support/fixtures.hpp"

namespace xpo::test {

inline std::filesystem::path tiny_policy() { return fixture_path("models/tiny-qwen2"); }
inline std::filesystem::path tiny_reward_model() { return fixture_path("models/tiny-qwen2-rm"); }

// Six prompts, standard strings and conversations (the tiny tokenizer has a ChatML template).
inline xpo::PromptDataset tiny_prompts() {
  xpo::PromptDataset rows;
  const char* words[] = {"hello", "the sky", "write a", "once upon", "why is", "tell me"};
  for (std::size_t i = 0; i < 6; ++i) {
    if (i % 3 == 2) {
      rows.push_back({{"prompt", nlohmann::ordered_json::array({{{"role", "user"}, {"content", words[i]}}})}});
    } else {
      rows.push_back({{"prompt", std::string(words[i]) + " " + std::to_string(i)}});
    }
  }
  return rows;
}

// A trainer with policy, reference (a frozen copy) and reward model on `device`: two prompts per micro-batch,
// one micro-batch per optimizer step, 6 new tokens, lr 1e-3 (large enough that a step visibly moves the tiny
// model). `edit` adjusts the config.
inline std::unique_ptr<xpo::XPOTrainer> tiny_trainer(torch::Device device, const std::filesystem::path& out,
                                                     const std::function<void(xpo::XPOConfig&)>& edit = {}) {
  xpo::XPOConfig c;
  c.output_dir = out.string();
  c.overwrite_output_dir = true;
  c.device = device.str();
  c.per_device_train_batch_size = 2;
  c.gradient_accumulation_steps = 1;
  c.max_steps = 4;
  c.max_new_tokens = 6;
  c.learning_rate = 1e-3;
  c.logging_steps = 1;
  c.save_steps = 1000;
  c.alpha = {0.1};
  c.missing_eos_penalty = 1.0;
  if (edit) edit(c);
  auto policy = xpo::models::load_causal_lm(tiny_policy(), device);
  xpo::scoring::RewardModelScorer scorer(xpo::models::load_reward_model(tiny_reward_model(), device));
  return std::make_unique<xpo::XPOTrainer>(policy, std::nullopt, std::move(scorer),
                                           xpo::text::Tokenizer::from_pretrained(tiny_policy()), c, tiny_prompts());
}

// The policy's gradients after one micro-batch (Trainer::step on micro-batch 0, the samples keyed by step 0 as
// the first optimizer step keys them), on the CPU.
inline std::map<std::string, torch::Tensor> first_gradients(xpo::XPOTrainer& t, xpo::training::Metrics* metrics = nullptr) {
  const auto m = t.step(t.micro_batch_rows(0), t.current_weights());
  if (metrics != nullptr) *metrics = m;
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : t.policy()->named_parameters())
    if (p.value().grad().defined()) out[p.key()] = p.value().grad().detach().cpu();
  return out;
}

// Every parameter of `actual` against `expected` (both on the CPU after .cpu()), |a - e| <= tol (1 + |e|), on the
// elements where the CPU gradient `grads` has magnitude above `min_grad`: AdamW's first update is about
// lr x g / (|g| + eps), so a gradient at rounding level (either sign) moves a weight by up to lr either way and is
// no statement about the step's precision. Returns the number of elements compared.
inline std::int64_t expect_parameters_close(xpo::models::CausalLM& actual, xpo::models::CausalLM& expected,
                                            const std::map<std::string, torch::Tensor>& grads, double min_grad, double tol) {
  std::int64_t compared = 0;
  auto theirs = expected->named_parameters();
  for (const auto& p : actual->named_parameters()) {
    const auto e = theirs[p.key()].detach().cpu();
    const auto a = p.value().detach().cpu();
    const auto g = grads.find(p.key());
    if (g == grads.end()) {
      EXPECT_TRUE(a.equal(e)) << p.key() << ": no gradient, so it must not move";
      continue;
    }
    const auto significant = g->second.abs().gt(min_grad);
    compared += significant.sum().item<std::int64_t>();
    EXPECT_TRUE(all_close(a.index({significant}), e.index({significant}), tol)) << p.key();
  }
  return compared;
}

// Records each logged loss (logging_steps = 1: one per optimizer step; a step that fp16's scaler skipped logs none).
struct LossRecorder {
  std::vector<double> losses;
  template <class T>
  void on_log(T&, const xpo::training::Metrics& m) {
    if (const auto it = m.find("loss"); it != m.end()) losses.push_back(it->second);
  }
};

}  // namespace xpo::test
