// A custom trainer in a few lines: a keyword reward (a RewardScorer written here) and a hinge preference loss
// (a DPO loss function plugged into XPO) composed with the shipped Qwen2/Llama policy and per-epoch schedule.
//   custom_trainer <checkpoint folder with a tokenizer> [output folder]
#include <xpo/xpo.hpp>

#include <iostream>

// Rewards completions that mention "cat", and a little length up to 40 characters.
struct KeywordReward {
  torch::Tensor score(const xpo::CompletionBatch& batch) {
    std::vector<float> scores;
    for (const auto& text : batch.completions) {
      scores.push_back((text.find("cat") != std::string::npos ? 1.0F : 0.0F) + std::min<float>(text.size(), 40) / 40);
    }
    return torch::tensor(scores);
  }
};

// SLiC-style hinge on the DPO logits: max(0, 1 - beta * logits).
struct Hinge {
  static constexpr std::string_view name = "hinge";
  static torch::Tensor losses(const torch::Tensor& logits, double beta) { return torch::relu(1.0 - beta * logits); }
};

using CustomTrainer = xpo::Trainer<xpo::models::CausalLM, KeywordReward, xpo::losses::XPO<Hinge>>;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " <checkpoint folder> [output folder]\n";
    return 2;
  }
  xpo::XPOConfig config;
  config.output_dir = argc > 2 ? argv[2] : "custom-trainer-output";
  config.per_device_train_batch_size = 4;
  config.max_steps = 3;
  config.max_new_tokens = 12;
  config.logging_steps = 1;
  config.learning_rate = 1e-4;
  config.alpha = {1e-3, 0.0};  // exploration in epoch 0 only
  const xpo::PromptDataset prompts = {{{"prompt", "My pet is a"}}, {{"prompt", "Tell me about animals:"}},
                                      {{"prompt", nlohmann::ordered_json::array({{{"role", "user"}, {"content", "Name a pet."}}})}}};
  auto policy = xpo::models::load_causal_lm(argv[1]);
  CustomTrainer trainer(policy, std::nullopt, KeywordReward{}, xpo::text::Tokenizer::from_pretrained(argv[1]), config, prompts);
  xpo::training::MetricsLogger metrics;
  xpo::training::ProgressBar progress;
  trainer.train(metrics, progress);
  const auto& last = trainer.state().log_history.back();
  std::cout << "step " << last["step"] << ": loss " << last["loss"] << ", score " << last["objective/model_scores"] << "\n";
}
