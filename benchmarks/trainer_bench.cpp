// One full XPO optimizer step of xpo::Trainer on the Qwen2-shaped model (support/machine.hpp: hidden 512, 8 layers,
// vocab 32768), B = 8 prompts of 32 tokens, max_new_tokens 64 (no early EOS: a random model rarely emits it):
//  - the step time split into generation / scoring / forward-backward / optimizer;
//  - the process's peak resident memory during a step (after a warm-up step has allocated the AdamW state), above
//    what was resident before the models were built, against the memory the step needs in principle:
//    policy weights + gradients + AdamW's two moments + the reference copy (5 x parameter bytes) + activations
//    (2 x the [2B, T, V] completion logits: the policy's and their gradient — the reference's are freed before
//    the policy's forward; plus per layer and position 10*H + 4*I + heads*(P+T) float32 values saved for
//    backward). Target <= 1.3x.
//  - data parallel (c10d, Gloo on loopback): the same global batch of 8 prompts as 1 process x batch 8 (2 BLAS
//    threads) and as 2 processes x batch 4 (1 thread each), measured in one run: the step-time ratio and the
//    share of the 2-process step spent in the gradient all-reduce.
#include <benchmark/benchmark.h>

#include <xpo/distributed/world.hpp>
#include <xpo/training/trainer.hpp>

#include <chrono>
#include <cstdlib>
#include <random>

#include <sys/wait.h>
#include <unistd.h>

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

xpo::PromptDataset bench_prompts(std::int64_t length = kPrompt) {
  std::mt19937 rng(7);
  xpo::PromptDataset rows;
  for (std::int64_t i = 0; i < kBatch; ++i) {
    std::string text;
    for (std::int64_t k = 0; k < length; ++k) text += static_cast<char>('a' + rng() % 26);
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

// ---- each lever of the faster step (issue 23), switched off one at a time ---------------------------------------
// The same trainer and model as BM_XPOStep (float32 full fine-tuning, B = 8, 64 new tokens, no early EOS: every
// step does the same work), prompts of range(0) tokens. Each iteration runs one optimizer step per StepOptions
// setting, in rotating order (interleaved, so drift of the machine hits every setting alike): both levers on (the
// default), record_reference_logps off, shared_prompt_forward off, both off. Counters: each setting's mean step
// and forward-backward seconds, and each lever's own saving as the ratio step(lever off) / step(default):
//   lever1_off_over_on   record_reference_logps (the reference's loss forward over B rows instead of 2B);
//   lever2_off_over_on   shared_prompt_forward (each prompt once per model in the loss forward);
//   both_off_over_on     the two together.
// Iteration time = the default setting's step.
void BM_XPOStepLevers(benchmark::State& state) {
  const std::int64_t prompt = state.range(0);
  torch::manual_seed(0);
  xpo::models::CausalLM policy(xpo::bench::qwen2_bench_config());
  xpo::models::init_weights(*policy);
  xpo::XPOConfig config;
  config.output_dir = (std::filesystem::temp_directory_path() / "xpo-trainer-levers-bench").string();
  config.per_device_train_batch_size = kBatch;
  config.max_new_tokens = kNewTokens;
  config.max_steps = 1000;
  config.learning_rate = 1e-6;
  xpo::scoring::FunctionScorer scorer([](const std::string&, const std::string& completion) { return static_cast<double>(completion.size()); });
  BenchTrainer trainer(policy, std::nullopt, std::move(scorer), byte_tokenizer(), config, bench_prompts(prompt));
  trainer.optimizer_step();  // warm-up: allocates AdamW's state

  struct Setting {
    const char* name;
    xpo::training::StepOptions options;
    double step = 0, forward_backward = 0, generation = 0;
  };
  std::vector<Setting> settings = {{"default", {}},
                                   {"lever1_off", {.record_reference_logps = false, .shared_prompt_forward = true}},
                                   {"lever2_off", {.record_reference_logps = true, .shared_prompt_forward = false}},
                                   {"both_off", {.record_reference_logps = false, .shared_prompt_forward = false}}};
  std::size_t rotation = 0;
  for (auto _ : state) {
    double default_step = 0;
    for (std::size_t k = 0; k < settings.size(); ++k) {
      auto& setting = settings[(rotation + k) % settings.size()];
      trainer.set_step_options(setting.options);
      trainer.optimizer_step();
      const auto& t = trainer.last_step_timing();
      setting.step += t.total;
      setting.forward_backward += t.forward_backward;
      setting.generation += t.generation;
      if (&setting == &settings.front()) default_step = t.total;
    }
    ++rotation;
    state.SetIterationTime(default_step);
  }
  const auto n = static_cast<double>(state.iterations());
  for (const auto& setting : settings) {
    state.counters[std::string(setting.name) + "_step_s"] = setting.step / n;
    state.counters[std::string(setting.name) + "_forward_backward_s"] = setting.forward_backward / n;
    state.counters[std::string(setting.name) + "_generation_s"] = setting.generation / n;
  }
  state.counters["lever1_off_over_on"] = settings[1].step / settings[0].step;
  state.counters["lever2_off_over_on"] = settings[2].step / settings[0].step;
  state.counters["both_off_over_on"] = settings[3].step / settings[0].step;
  state.counters["lever1_fb_off_over_on"] = settings[1].forward_backward / settings[0].forward_backward;
  state.counters["lever2_fb_off_over_on"] = settings[2].forward_backward / settings[0].forward_backward;
  std::filesystem::remove_all(config.output_dir);
}

// ---- data parallel ------------------------------------------------------------------------------------------------
constexpr std::int64_t kDpNewTokens = 16, kDpSteps = 3;

// `steps` timed optimizer steps (after one warm-up step) of rank `rank` in a world of `world` ranks, with the
// global batch of kBatch prompts split over the ranks. Returns the mean step seconds, the mean all-reduce wait
// that backward did not hide, and (with 2 ranks) the time of the same all-reduce run blocking after the steps.
struct DpTiming {
  double step = 0, exposed_all_reduce = 0, blocking_all_reduce = 0;
};
DpTiming data_parallel_steps(int rank, int world, int port, std::int64_t steps) {
  torch::set_num_threads(std::max(1, 2 / world));  // the machine's 2 cores, shared by the ranks
  torch::manual_seed(0);
  xpo::models::CausalLM policy(xpo::bench::qwen2_bench_config());
  xpo::models::init_weights(*policy);
  xpo::XPOConfig config;
  config.output_dir = (std::filesystem::temp_directory_path() / ("xpo-dp-bench-" + std::to_string(::getpid()))).string();
  config.per_device_train_batch_size = kBatch / world;
  config.max_new_tokens = kDpNewTokens;
  config.max_steps = 1000;
  config.learning_rate = 1e-6;
  xpo::scoring::FunctionScorer scorer([](const std::string&, const std::string& completion) { return static_cast<double>(completion.size()); });
  BenchTrainer trainer(policy, std::nullopt, std::move(scorer), byte_tokenizer(), config, bench_prompts());
  if (world > 1) {
    xpo::distributed::LaunchEnvironment env;
    env.rank = rank;
    env.world_size = world;
    env.master_port = port;
    trainer.distribute(xpo::distributed::World::join(env, torch::kCPU, std::chrono::minutes(5)));
  }
  trainer.optimizer_step();  // warm-up: AdamW's state
  DpTiming t;
  for (std::int64_t i = 0; i < steps; ++i) {
    trainer.optimizer_step();
    t.step += trainer.last_step_timing().total;
    t.exposed_all_reduce += trainer.last_step_timing().all_reduce;
  }
  if (world > 1) {  // the same gradients' all-reduce without backward to hide it
    auto w = trainer.world();
    std::vector<torch::Tensor> grads;
    for (const auto& p : policy->parameters()) grads.push_back(torch::zeros_like(p));
    for (std::int64_t i = 0; i < steps; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      w.all_reduce_mean(grads);
      t.blocking_all_reduce += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
  }
  std::filesystem::remove_all(config.output_dir);
  const auto n = static_cast<double>(steps);
  return {t.step / n, t.exposed_all_reduce / n, t.blocking_all_reduce / n};
}

// Rank 1 of the 2-process measurement is this executable started again with XPO_DP_BENCH_PORT set: it runs its
// steps here, during static initialisation (before Google Benchmark's main), and exits.
[[maybe_unused]] const bool kIsDataParallelWorker = [] {
  const char* port = std::getenv("XPO_DP_BENCH_PORT");
  if (port == nullptr) return false;
  (void)data_parallel_steps(1, 2, std::atoi(port), kDpSteps);
  std::_Exit(0);
}();

void BM_DataParallelStep(benchmark::State& state) {
  const int port = xpo::distributed::free_local_port();
  for (auto _ : state) {
    const auto one = data_parallel_steps(0, 1, 0, kDpSteps);
    std::vector<std::string> env_text{"XPO_DP_BENCH_PORT=" + std::to_string(port)};
    for (char** e = environ; *e != nullptr; ++e) env_text.emplace_back(*e);
    std::vector<char*> envp;
    for (auto& e : env_text) envp.push_back(e.data());
    envp.push_back(nullptr);
    char* argv[] = {const_cast<char*>("xpo_benchmarks"), nullptr};
    const pid_t child = ::fork();  // the child only execs: nothing of LibTorch runs between fork and exec
    if (child == 0) {
      ::execve("/proc/self/exe", argv, envp.data());
      ::_exit(127);
    }
    const auto two = data_parallel_steps(0, 2, port, kDpSteps);
    int status = 0;
    ::waitpid(child, &status, 0);
    torch::set_num_threads(2);
    state.SetIterationTime(two.step);
    state.counters["one_process_step_s"] = one.step;
    state.counters["two_process_step_s"] = two.step;
    state.counters["speedup"] = one.step / two.step;
    state.counters["all_reduce_blocking_s"] = two.blocking_all_reduce;  // the all-reduce alone
    state.counters["all_reduce_exposed_s"] = two.exposed_all_reduce;    // what the step waited for after backward
    state.counters["all_reduce_share"] = two.exposed_all_reduce / two.step;
    state.counters["hidden_share"] = 1.0 - two.exposed_all_reduce / two.blocking_all_reduce;
    state.counters["worker_ok"] = WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 1 : 0;
  }
}

BENCHMARK(BM_XPOStep)->Arg(kNewTokens)->UseManualTime()->Iterations(3)->Unit(benchmark::kSecond);
BENCHMARK(BM_XPOStep)->Name("smoke/XPOStep")->Arg(2)->UseManualTime()->Iterations(1);
// Prompts of BM_XPOStep's 32 tokens and of 256 (real prompts are 100-500 tokens: the shared prompt saves more).
BENCHMARK(BM_XPOStepLevers)->ArgName("prompt")->Arg(kPrompt)->Arg(256)->UseManualTime()->Iterations(2)->Unit(benchmark::kSecond);

BENCHMARK(BM_DataParallelStep)->UseManualTime()->Iterations(1)->Unit(benchmark::kSecond);

// ---- the LoRA reference decoded with the policy (issue 23, lever 3) -----------------------------------------------
// BM_XPOStep's trainer and batch under LoRA (PEFT's defaults: r 8, alpha 16, q_proj and v_proj), where the reference
// is the policy with adapters off. Each iteration runs one optimizer step with StepOptions::fused_lora_decode on
// (both samples in one decode of 2B rows, the base weights read once) and one with it off (two decodes of B rows),
// in alternating order. Counters: each setting's mean step and generation seconds, and
//   generation_fused_over_separate, step_fused_over_separate   (< 1: the lever saves).
// Iteration time = the fused step.
void BM_XPOStepFusedLoRA(benchmark::State& state) {
  torch::manual_seed(0);
  xpo::models::CausalLM policy(xpo::bench::qwen2_bench_config());
  xpo::models::init_weights(*policy);
  policy->enable_lora(xpo::models::LoRAOptions{});
  xpo::XPOConfig config;
  config.output_dir = (std::filesystem::temp_directory_path() / "xpo-trainer-fused-lora-bench").string();
  config.per_device_train_batch_size = kBatch;
  config.max_new_tokens = state.range(0);
  config.max_steps = 1000;
  config.learning_rate = 1e-6;
  xpo::scoring::FunctionScorer scorer([](const std::string&, const std::string& completion) { return static_cast<double>(completion.size()); });
  BenchTrainer trainer(policy, std::nullopt, std::move(scorer), byte_tokenizer(), config, bench_prompts());
  trainer.optimizer_step();  // warm-up: allocates AdamW's state
  double step[2] = {0, 0}, generation[2] = {0, 0};  // [0] separate, [1] fused
  std::int64_t k = 0;
  for (auto _ : state) {
    double fused_step = 0;
    for (int j = 0; j < 2; ++j) {
      const int fused = (j + k) % 2;
      auto options = trainer.step_options();
      options.fused_lora_decode = fused == 1;
      trainer.set_step_options(options);
      trainer.optimizer_step();
      const auto& t = trainer.last_step_timing();
      step[fused] += t.total;
      generation[fused] += t.generation;
      if (fused == 1) fused_step = t.total;
    }
    ++k;
    state.SetIterationTime(fused_step);
  }
  const auto n = static_cast<double>(state.iterations());
  state.counters["fused_step_s"] = step[1] / n;
  state.counters["separate_step_s"] = step[0] / n;
  state.counters["fused_generation_s"] = generation[1] / n;
  state.counters["separate_generation_s"] = generation[0] / n;
  state.counters["generation_fused_over_separate"] = generation[1] / generation[0];
  state.counters["step_fused_over_separate"] = step[1] / step[0];
  std::filesystem::remove_all(config.output_dir);
}
BENCHMARK(BM_XPOStepFusedLoRA)->Arg(kNewTokens)->UseManualTime()->Iterations(2)->Unit(benchmark::kSecond);
BENCHMARK(BM_XPOStepFusedLoRA)->Name("smoke/XPOStepFusedLoRA")->Arg(2)->UseManualTime()->Iterations(1);

}  // namespace
