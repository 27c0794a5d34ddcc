// BM_XPOStep as issue 23 measures it, built twice by benchmarks/compare-step.sh: once against this tree's headers
// and once against an earlier commit's (installed) headers. It therefore uses only API that both have.
//
// One optimizer step of xpo::Trainer on the Qwen2-shaped model of support/machine.hpp (hidden 512, 8 layers,
// vocab 32768, 39M parameters), B = 8 prompts of 32 tokens, 64 new tokens (a random model rarely emits EOS), the
// reward a function of the completion (no reward model: the step's own work only). Variants (the first argument):
//   0  float32, full fine-tuning;
//   1  float32, LoRA r = 16 on q_proj/v_proj (the reference is the policy with adapters off);
//   2  --bf16 mixed precision (float32 master weights, bfloat16 autocast compute), full fine-tuning.
// Reported per step: total (the benchmark's time), generation / forward_backward / optimizer seconds.
#include <benchmark/benchmark.h>

#include <xpo/training/trainer.hpp>
#if __has_include(<xpo/core/threads.hpp>)
#include <xpo/core/threads.hpp>
#define XPO_COMPARE_HAS_THREADS 1
#endif

#include <filesystem>
#include <random>

namespace {

constexpr std::int64_t kBatch = 8, kPrompt = 32, kNewTokens = 64;

// support/machine.hpp's qwen2_bench_config, restated: this program includes nothing of the tree's benchmarks, so
// it builds against older headers too.
xpo::io::ModelConfig qwen2_bench_config() {
  return xpo::io::ModelConfig::from_json({{"model_type", "qwen2"}, {"architectures", {"Qwen2ForCausalLM"}},
                                          {"vocab_size", 32768}, {"hidden_size", 512}, {"intermediate_size", 1408},
                                          {"num_hidden_layers", 8}, {"num_attention_heads", 8}, {"num_key_value_heads", 2},
                                          {"max_position_embeddings", 4096}, {"rope_theta", 1000000.0},
                                          {"rms_norm_eps", 1e-6}, {"tie_word_embeddings", true}, {"eos_token_id", 2},
                                          {"pad_token_id", 0}});
}

xpo::text::Tokenizer byte_tokenizer() {
  nlohmann::json vocab = nlohmann::json::object();
  const auto& alphabet = xpo::text::ByteAlphabet::get();
  for (int b = 0; b < 256; ++b) vocab[alphabet.utf8_of_byte[static_cast<std::size_t>(b)]] = b;
  return xpo::text::Tokenizer::from_json(
      {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
       {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
       {"decoder", {{"type", "ByteLevel"}}}});
}

xpo::PromptDataset prompts() {
  std::mt19937 rng(7);
  xpo::PromptDataset rows;
  for (std::int64_t i = 0; i < kBatch; ++i) {
    std::string text;
    for (std::int64_t k = 0; k < kPrompt; ++k) text += static_cast<char>('a' + rng() % 26);
    rows.push_back({{"prompt", text}});
  }
  return rows;
}

using StepTrainer = xpo::Trainer<xpo::models::CausalLM, xpo::scoring::FunctionScorer>;

void BM_XPOStep(benchmark::State& state) {
  const int variant = static_cast<int>(state.range(0));
  torch::manual_seed(0);
  xpo::models::CausalLM policy(qwen2_bench_config());
  xpo::models::init_weights(*policy);
  if (variant == 1) policy->enable_lora({.r = 16, .alpha = 32, .dropout = 0.0, .target_modules = {"q_proj", "v_proj"}});
  xpo::XPOConfig config;
  config.output_dir = (std::filesystem::temp_directory_path() / "xpo-step-compare").string();
  config.per_device_train_batch_size = kBatch;
  config.max_new_tokens = kNewTokens;
  config.max_steps = 1000;
  config.learning_rate = 1e-6;
  config.bf16 = variant == 2;
  xpo::scoring::FunctionScorer scorer(
      [](const std::string&, const std::string& completion) { return static_cast<double>(completion.size()); });
  StepTrainer trainer(policy, std::nullopt, std::move(scorer), byte_tokenizer(), config, prompts());
  trainer.optimizer_step();  // warm-up: AdamW's state, the allocator's pools

  double generation = 0, forward_backward = 0, optimizer = 0;
  for (auto _ : state) {
    trainer.optimizer_step();
    const auto& t = trainer.last_step_timing();
    generation += t.generation;
    forward_backward += t.forward_backward;
    optimizer += t.optimizer;
    state.SetIterationTime(t.total);
  }
  const auto n = static_cast<double>(state.iterations());
  state.counters["generation_s"] = generation / n;
  state.counters["forward_backward_s"] = forward_backward / n;
  state.counters["optimizer_s"] = optimizer / n;
  state.counters["aten_threads"] = at::get_num_threads();
  std::filesystem::remove_all(config.output_dir);
}

// The process's threads as the build configures them for its programs (xpo-train calls the same).
[[maybe_unused]] const bool kThreadsConfigured = [] {
#ifdef XPO_COMPARE_HAS_THREADS
  (void)xpo::configure_threads();
#endif
  return true;
}();

}  // namespace

BENCHMARK(BM_XPOStep)->ArgName("variant")->DenseRange(0, 2)->UseManualTime()->Iterations(2)->Unit(benchmark::kSecond);
