// One XPO optimizer step at real size (issue 18): a random model with Qwen2.5-0.5B's exact config (hidden 896,
// 24 layers, 14 heads / 2 KV heads, intermediate 4864, vocab 151936, tied embeddings), Qwen's tokenizer from the
// fixtures, a reward model of the same shape; B = 4 prompts of ~100-200 tokens, 64 new tokens (a random model
// rarely emits EOS, so every completion is 64 tokens).
//
// Selected by filter, never by default: `xpo_benchmarks --benchmark_filter='qwen0p5b/step/bf16:0/ckpt:0/lora:0'` (one
// configuration per process, so each peak RSS is its own). The arguments: bf16 (0 float32, 1 --bf16 mixed
// precision), gradient_checkpointing (0/1), LoRA (0 full training, 1 r=16 on q/v as TRL's example).
//
// Counters: the step time split (generation, scoring, forward-backward, optimizer), completion tokens/s, the
// process's peak resident memory during the step (VmHWM) above what was resident before the models were built,
// and the stated resident sum it is compared with (resident_MB, peak_over_resident):
//   policy weights (float32 master) + gradients + AdamW's two moments (of the trainable parameters)
//   + the reference copy (float32; bfloat16 under --bf16; none under LoRA: the policy with adapters off)
//   + the reward model (float32; bfloat16 under --bf16)
//   + under --bf16 the autocast copy of the policy's weights in bfloat16 (2 bytes per weight: cast once per
//     forward and held by autograd for backward)
//   + activations kept for backward: per layer and position 10*H + 4*I + heads*(P+T) values (float32), or with
//     gradient checkpointing the layer's input (H values) per layer plus one layer's activations while it is
//     recomputed; plus the [2B, T, V] completion logits and their gradient (float32).
// The AdamW state is allocated before the timed step (one zero-gradient AdamW step, which leaves the weights as
// they are), so the measured step is a steady-state one without paying for a second full step on 2 cores.
//
// BM_Bf16Linear: autocast (weights cast to bfloat16 in each forward) against a low-precision compute copy (weights
// kept in bfloat16) and float32, for one MLP projection of this model, forward + backward.
#include <benchmark/benchmark.h>

#include <xpo/training/trainer.hpp>

#include <cstdlib>

#include <unistd.h>

#include "support/machine.hpp"
#include "support/memory.hpp"
#include "support/qwen.hpp"

namespace {

constexpr std::int64_t kBatch = 4, kNewTokens = 64;

std::filesystem::path fixtures_dir() {
  const char* env = std::getenv("XPO_FIXTURES_DIR");
  return env != nullptr ? std::filesystem::path(env) : std::filesystem::path(XPO_DEFAULT_FIXTURES_DIR);
}

xpo::io::ModelConfig qwen05b_config(bool reward_model) { return xpo::bench::qwen2_0p5b_config(reward_model); }

// Four prompts of about 100, 133, 166 and 200 tokens (Qwen's tokenizer), from a seeded word list.
xpo::PromptDataset bench_prompts(const xpo::text::Tokenizer& tokenizer, double* mean_tokens) {
  return xpo::bench::prompts_of_length(tokenizer, kBatch, 100, 200, 11, mean_tokens);
}

double bytes_of(const std::vector<torch::Tensor>& ts) {
  double b = 0;
  for (const auto& t : ts) b += static_cast<double>(t.numel() * t.element_size());
  return b;
}

void BM_Qwen05BStep(benchmark::State& state) {
  const bool bf16 = state.range(0) != 0, checkpointing = state.range(1) != 0, lora = state.range(2) != 0;
  const std::int64_t rss_before = xpo::bench::read_status_kib("VmRSS") * 1024;
  auto tokenizer = xpo::text::Tokenizer::from_pretrained(fixtures_dir() / "tokenizers" / "qwen");
  double prompt_tokens = 0;
  auto prompts = bench_prompts(tokenizer, &prompt_tokens);

  torch::manual_seed(0);
  xpo::models::CausalLM policy(qwen05b_config(false));
  xpo::models::init_weights(*policy);
  if (lora) policy->enable_lora({.r = 16, .alpha = 32, .dropout = 0.0, .target_modules = {"q_proj", "v_proj"}});
  xpo::models::SequenceClassifier rm(qwen05b_config(true));
  xpo::models::init_weights(*rm);
  if (bf16) rm->to(torch::kBFloat16);  // no optimizer state: held once, in the low precision (as xpo-train)
  for (auto& p : rm->parameters()) p.set_requires_grad(false);

  xpo::XPOConfig config;
  config.output_dir = (std::filesystem::temp_directory_path() / ("xpo-0p5b-bench-" + std::to_string(::getpid()))).string();
  config.per_device_train_batch_size = kBatch;
  config.max_new_tokens = kNewTokens;
  config.max_steps = 1000;
  config.learning_rate = 5e-7;
  config.bf16 = bf16;
  config.gradient_checkpointing = checkpointing;
  config.missing_eos_penalty = 1.0;
  xpo::XPOTrainer trainer(policy, std::nullopt, xpo::scoring::RewardModelScorer(rm), tokenizer, config, prompts);
  {  // AdamW's moments allocated up front: one step on zero gradients (the weights do not move)
    std::vector<torch::Tensor> trainable = policy->trainable_parameters();
    for (auto& p : trainable) p.mutable_grad() = torch::zeros_like(p);
    trainer.optimizer().step();
    trainer.optimizer().zero_grad();
  }

  std::int64_t peak = 0;
  xpo::XPOTrainer::StepTiming timing;
  for (auto _ : state) {
    // The step's high-water mark above what was resident before anything was built: (peak - RSS at the step's
    // start) + (RSS at the step's start - RSS before the models).
    const std::int64_t rss_start = xpo::bench::read_status_kib("VmRSS") * 1024;
    peak = xpo::bench::peak_extra_bytes([&] { trainer.optimizer_step(); }) + (rss_start - rss_before);
    timing = trainer.last_step_timing();
    state.SetIterationTime(timing.total);
  }
  state.counters["generation_s"] = timing.generation;
  state.counters["scoring_s"] = timing.scoring;
  state.counters["forward_backward_s"] = timing.forward_backward;
  state.counters["optimizer_s"] = timing.optimizer;
  state.counters["step_s"] = timing.total;
  state.counters["prompt_tokens_mean"] = prompt_tokens;
  // Completion tokens of both samples (the policy's and the reference's) per second of the step.
  state.counters["tokens_per_s"] = 2.0 * kBatch * kNewTokens / timing.total;

  const auto& c = policy->config();
  const auto all = policy->parameters();
  const auto trainable = policy->trainable_parameters();
  double params = 0;
  for (const auto& p : all) params += static_cast<double>(p.numel());
  double rm_params = 0;
  for (const auto& p : rm->parameters()) rm_params += static_cast<double>(p.numel());
  const double weights = bytes_of(all), train_bytes = bytes_of(trainable);
  const double reference = lora ? 0.0 : params * (bf16 ? 2 : 4);
  const double reward = rm_params * (bf16 ? 2 : 4);
  const double autocast_copy = bf16 ? params * 2 : 0.0;
  const double positions = 2.0 * kBatch * (prompt_tokens + kNewTokens);  // rows x positions of one forward
  const double per_layer = positions * (10.0 * c.hidden_size + 4.0 * c.intermediate_size +
                                        static_cast<double>(c.num_attention_heads) * (prompt_tokens + kNewTokens)) * 4;
  const double layers = static_cast<double>(c.num_hidden_layers);
  const double activations = checkpointing ? positions * c.hidden_size * 4 * layers + per_layer : per_layer * layers;
  const double logits = 2.0 * (2.0 * kBatch * kNewTokens * static_cast<double>(c.vocab_size) * 4);
  const double resident = weights + 3 * train_bytes + reference + reward + autocast_copy + activations + logits;
  state.counters["peak_MB"] = static_cast<double>(peak) / 1e6;
  state.counters["resident_MB"] = resident / 1e6;
  state.counters["activations_MB"] = activations / 1e6;
  state.counters["peak_over_resident"] = static_cast<double>(peak) / resident;
  std::filesystem::remove_all(config.output_dir);
}

// One MLP up-projection of the model, [2B*(P+T), H] x [H, I], forward + backward: float32 (mode 0), autocast to
// bfloat16 with float32 weights (mode 1), a bfloat16 compute copy of the weights (mode 2).
void BM_Bf16Linear(benchmark::State& state) {
  const auto mode = state.range(0);
  const std::int64_t rows = 2 * kBatch * 214, h = 896, i = 4864;
  torch::manual_seed(0);
  auto x = torch::randn({rows, h});
  auto w = (torch::randn({i, h}) * 0.02).requires_grad_(true);
  auto w16 = w.detach().to(torch::kBFloat16).requires_grad_(true);
  for (auto _ : state) {
    if (mode == 0) {
      torch::nn::functional::linear(x, w).sum().backward();
    } else if (mode == 1) {
      torch::Tensor y;
      {
        xpo::compat::AutocastGuard low(c10::DeviceType::CPU, torch::kBFloat16);
        y = torch::nn::functional::linear(x, w);
      }
      y.to(torch::kFloat).sum().backward();
    } else {
      torch::nn::functional::linear(x.to(torch::kBFloat16), w16).to(torch::kFloat).sum().backward();
    }
  }
  state.counters["gflops"] = benchmark::Counter(6.0 * rows * h * i / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void args_0p5b(benchmark::internal::Benchmark* b) {
  b->ArgNames({"bf16", "ckpt", "lora"});
  for (int bf16 : {0, 1})
    for (int ckpt : {0, 1})
      for (int lora : {0, 1}) b->Args({bf16, ckpt, lora});
}

BENCHMARK(BM_Qwen05BStep)->Name("qwen0p5b/step")->Apply(args_0p5b)->UseManualTime()->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK(BM_Bf16Linear)->Name("qwen0p5b/linear")->ArgName("mode")->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Bf16Linear)->Name("smoke/Bf16Linear")->Arg(1)->Iterations(1);

}  // namespace
