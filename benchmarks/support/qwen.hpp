// Real-size shapes for benchmarks: Qwen2.5-0.5B's config (random weights are enough for timing) and prompts of
// chosen token lengths built with Qwen's tokenizer from a seeded word list.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <iterator>
#include <random>
#include <string>

#include "xpo/io/hf_config.hpp"
#include "xpo/io/prompt_dataset.hpp"
#include "xpo/text/tokenizer.hpp"

namespace xpo::bench {

// Qwen2.5-0.5B's exact config: hidden 896, 24 layers, 14 heads / 2 KV heads (head_dim 64), intermediate 4864,
// vocab 151936, tied embeddings, q/k/v biases. `reward_model`: the same body with a one-label score head
// (Qwen2ForSequenceClassification).
inline io::ModelConfig qwen2_0p5b_config(bool reward_model) {
  nlohmann::json j = {{"model_type", "qwen2"},
                      {"architectures", {reward_model ? "Qwen2ForSequenceClassification" : "Qwen2ForCausalLM"}},
                      {"vocab_size", 151936}, {"hidden_size", 896}, {"intermediate_size", 4864},
                      {"num_hidden_layers", 24}, {"num_attention_heads", 14}, {"num_key_value_heads", 2},
                      {"max_position_embeddings", 32768}, {"rope_theta", 1000000.0}, {"rms_norm_eps", 1e-6},
                      {"tie_word_embeddings", true}, {"bos_token_id", 151643}, {"eos_token_id", 151645},
                      {"pad_token_id", 151643}};
  if (reward_model) j["num_labels"] = 1;
  return io::ModelConfig::from_json(j);
}

// `count` prompts whose lengths under `tokenizer` grow evenly from `shortest` to `longest` tokens (each the first
// word-list text reaching its target, so a prompt may pass it by a token or two), from a word list shuffled by
// `seed`. `mean_tokens` receives their mean length.
inline io::PromptRows prompts_of_length(const text::Tokenizer& tokenizer, std::int64_t count, std::int64_t shortest,
                                        std::int64_t longest, unsigned seed, double* mean_tokens) {
  static const char* words[] = {"the", "model", "explains", "why", "river", "mountains", "quietly", "answer",
                                "question", "carefully", "history", "of", "science", "and", "music", "in",
                                "a", "short", "poem", "about", "weather", "tomorrow", "students", "learn"};
  std::mt19937 rng(seed);
  io::PromptRows rows;
  double total = 0;
  for (std::int64_t i = 0; i < count; ++i) {
    const auto target = static_cast<std::size_t>(shortest + (count > 1 ? (longest - shortest) * i / (count - 1) : 0));
    std::string text = "Write about";
    while (tokenizer.encode(text).size() < target) text += std::string(" ") + words[rng() % std::size(words)];
    total += static_cast<double>(tokenizer.encode(text).size());
    rows.push_back({{"prompt", text}});
  }
  if (mean_tokens != nullptr) *mean_tokens = total / static_cast<double>(count);
  return rows;
}

}  // namespace xpo::bench
