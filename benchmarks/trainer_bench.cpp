// One full XPO optimizer step of xpo::Trainer on the Qwen2-shaped model (support/machine.hpp: hidden 512, 8 layers,
// vocab 32768), B = 8 prompts of 32 tokens, max_new_tokens 64 (no early EOS: a random model rarely emits it):
//  - the step time split into generation / scoring / forward-backward / optimizer;
//  - the process's peak resident memory during a step (after a warm-up step has allocated the AdamW state), above
//    what was resident before the models were built, against the memory the step needs in principle:
//    policy weights + gradients + AdamW's two moments + the reference copy (5 x parameter bytes) + activations
//    (2 x the [2B, T, V] completion logits: the policy's and their gradient — the reference's are freed before
//    the policy's forward; plus per layer and position 10*H + 4*I + heads*(P+T) float32 values saved for
//    backward). Target <= 1.3x.
#include <benchmark/benchmark.h>

#include <xpo/training/trainer.hpp>

#include <random>

#include "support/machine.hpp"
#include "support/memory.hpp"

namespace {

constexpr std::int64_t kBatch = 8, kPrompt = 32, kNewTokens = 64;

// A byte-level tokenizer (256 byte tokens): prompts are bytes, ids < 256 < the model's vocabulary.
xpo::text::Tokenizer byte_tokenizer() {
  nlohmann::json vocab = nlohmann::json::object();
  const auto& alphabet = xpo::text::ByteAlphabet::get();
  for (int b = 0; b < 256; ++b) vocab[alphabet.utf8_of_byte[static_cast<std::size_t>(b)]] = b;
  return xpo::text::Tokenizer::from_json(
      {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
       {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
       {"decoder", {{"type", "ByteLevel"}}}});
}

xpo::PromptDataset bench_prompts() {
  std::mt19937 rng(7);
  xpo::PromptDataset rows;
  for (std::int64_t i = 0; i < kBatch; ++i) {
    std::string text;
    for (std::int64_t k = 0; k < kPrompt; ++k) text += static_cast<char>('a' + rng() % 26);
    rows.push_back({{"prompt", text}});
  }
  return rows;
}

using BenchTrainer = xpo::Trainer<xpo::models::CausalLM, xpo::scoring::FunctionScorer>;

void BM_XPOStep(benchmark::State& state) {
  const std::int64_t new_tokens = state.range(0);
  const std::int64_t rss_before = xpo::bench::read_status_kib("VmRSS") * 1024;
  torch::manual_seed(0);
  xpo::models::CausalLM policy(xpo::bench::qwen2_bench_config());
  xpo::models::init_weights(*policy);
  xpo::XPOConfig config;
  config.output_dir = (std::filesystem::temp_directory_path() / "xpo-trainer-bench").string();
  config.per_device_train_batch_size = kBatch;
  config.max_new_tokens = new_tokens;
  config.max_steps = 1000;
  config.learning_rate = 1e-6;
  xpo::scoring::FunctionScorer scorer([](const std::string&, const std::string& completion) { return static_cast<double>(completion.size()); });
  BenchTrainer trainer(policy, std::nullopt, std::move(scorer), byte_tokenizer(), config, bench_prompts());
  trainer.optimizer_step();  // warm-up: allocates AdamW's state

  BenchTrainer::StepTiming sum;
  std::int64_t peak = 0;
  for (auto _ : state) {
    peak = std::max(peak, xpo::bench::peak_extra_bytes([&] { trainer.optimizer_step(); }) +
                              (xpo::bench::read_status_kib("VmRSS") * 1024 - rss_before));
    const auto& t = trainer.last_step_timing();
    sum.generation += t.generation;
    sum.scoring += t.scoring;
    sum.forward_backward += t.forward_backward;
    sum.optimizer += t.optimizer;
    sum.total += t.total;
    state.SetIterationTime(t.total);
  }
  const auto n = static_cast<double>(state.iterations());
  state.counters["generation_s"] = sum.generation / n;
  state.counters["scoring_s"] = sum.scoring / n;
  state.counters["forward_backward_s"] = sum.forward_backward / n;
  state.counters["optimizer_s"] = sum.optimizer / n;
  state.counters["generation_share"] = sum.generation / sum.total;

  const auto& c = policy->config();
  double params = 0;
  for (const auto& p : policy->parameters()) params += static_cast<double>(p.numel());
  const double tokens = 2.0 * kBatch * static_cast<double>(kPrompt + new_tokens);  // rows x positions of one forward
  const double logits = 2.0 * kBatch * static_cast<double>(new_tokens) * static_cast<double>(c.vocab_size) * 4;
  const double per_layer = tokens * (10.0 * c.hidden_size + 4.0 * c.intermediate_size +
                                     static_cast<double>(c.num_attention_heads * (kPrompt + new_tokens))) * 4;
  const double needed = 5 * params * 4 + 2 * logits + per_layer * static_cast<double>(c.num_hidden_layers);
  state.counters["peak_MB"] = static_cast<double>(peak) / 1e6;
  state.counters["needed_MB"] = needed / 1e6;
  state.counters["peak_over_needed"] = static_cast<double>(peak) / needed;
  std::filesystem::remove_all(config.output_dir);
}

BENCHMARK(BM_XPOStep)->Arg(kNewTokens)->UseManualTime()->Iterations(3)->Unit(benchmark::kSecond);
BENCHMARK(BM_XPOStep)->Name("smoke/XPOStep")->Arg(2)->UseManualTime()->Iterations(1);

}  // namespace
