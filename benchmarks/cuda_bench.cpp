// CUDA benchmarks (issue 22), run by scripts/cuda-check.sh next to benchmarks/cuda/hf_reference.py, which does
// the same work with transformers on the same GPU and the same torch; the script's summary divides the two and
// relates both to the GPU's limits measured here:
//   cuda/peak/bf16_matmul    the bf16 matrix-multiply rate, 8192^3 products of random matrices (counter flops)
//   cuda/peak/copy           device memory bandwidth, a 2 GiB device-to-device copy, bytes read + written
//   cuda/decode/B:1|8|64     sampling (temperature 1, row streams: the trainer's path) from a random model of
//                            Qwen2.5-0.5B's shape in bf16, B prompts of 128 random tokens, 128 new tokens
//   cuda/xpo_step/B:8        one XPO optimizer step at that shape under --bf16 (float32 master weights and AdamW,
//                            a bf16 reference copy and a bf16 reward model of the same shape), B = 8 prompts of
//                            ~128 tokens (Qwen's tokenizer, $XPO_FIXTURES_DIR/tokenizers/qwen), 64 new tokens
// Every cuda/ benchmark reports skipped ("no CUDA device") where LibTorch sees no GPU. The smoke/ ones run the
// same code at a tiny size on the GPU if there is one, else on the CPU, so the code is checked everywhere.
// Counters hold the raw measurements (seconds, tokens, shapes); the fractions of the limits are computed in one
// place, benchmarks/cuda/summary.py, for this program's rows and transformers' alike.
#include <benchmark/benchmark.h>

#include <xpo/training/trainer.hpp>

#include <cstdlib>
#include <map>
#include <memory>

#include <unistd.h>

#include "support/device.hpp"
#include "support/qwen.hpp"

namespace {

constexpr std::int64_t kDecodePrompt = 128, kDecodeNew = 128;
constexpr std::int64_t kStepPrompt = 128, kStepNew = 64;

std::filesystem::path fixtures_dir() {
  const char* env = std::getenv("XPO_FIXTURES_DIR");
  return env != nullptr ? std::filesystem::path(env) : std::filesystem::path(XPO_DEFAULT_FIXTURES_DIR);
}

bool skip_without_cuda(benchmark::State& state) {
  if (torch::cuda::is_available()) return false;
  state.SkipWithError("skipped: no CUDA device (torch::cuda::is_available() is false); run scripts/cuda-check.sh on a GPU machine");
  return true;
}

// A tiny Qwen2-shaped model with Qwen's vocabulary (so the tokenizer's ids fit), for the smoke runs.
xpo::io::ModelConfig tiny_config(bool reward_model) {
  auto j = nlohmann::json{{"model_type", "qwen2"},
                          {"architectures", {reward_model ? "Qwen2ForSequenceClassification" : "Qwen2ForCausalLM"}},
                          {"vocab_size", 151936}, {"hidden_size", 64}, {"intermediate_size", 128},
                          {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                          {"max_position_embeddings", 4096}, {"rope_theta", 1000000.0}, {"rms_norm_eps", 1e-6},
                          {"tie_word_embeddings", true}, {"bos_token_id", 151643}, {"eos_token_id", 151645},
                          {"pad_token_id", 151643}};
  if (reward_model) j["num_labels"] = 1;
  return xpo::io::ModelConfig::from_json(j);
}

torch::Device smoke_device() { return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU); }

void shape_counters(benchmark::State& state, const xpo::io::ModelConfig& c) {
  state.counters["hidden"] = static_cast<double>(c.hidden_size);
  state.counters["layers"] = static_cast<double>(c.num_hidden_layers);
  state.counters["heads"] = static_cast<double>(c.num_attention_heads);
  state.counters["kv_heads"] = static_cast<double>(c.num_key_value_heads);
  state.counters["head_dim"] = static_cast<double>(c.head_dim);
  state.counters["intermediate"] = static_cast<double>(c.intermediate_size);
  state.counters["vocab"] = static_cast<double>(c.vocab_size);
}

// ---- the GPU's limits ------------------------------------------------------------------------------------------

void peak_matmul(benchmark::State& state, torch::Device device, std::int64_t n) {
  double flops = 0;
  for (auto _ : state) {
    flops = xpo::bench::measured_bf16_matmul_flops(device, n);
    state.SetIterationTime(2.0 * static_cast<double>(n) * n * n / flops);
  }
  state.counters["flops"] = flops;
  state.counters["n"] = static_cast<double>(n);
}

void peak_copy(benchmark::State& state, torch::Device device, std::int64_t bytes) {
  double bandwidth = 0;
  for (auto _ : state) {
    bandwidth = xpo::bench::measured_copy_bandwidth(device, bytes);
    state.SetIterationTime(2.0 * static_cast<double>(bytes) / bandwidth);
  }
  state.counters["bytes_per_s"] = bandwidth;
  state.counters["bytes"] = static_cast<double>(bytes);
}

void BM_PeakMatmul(benchmark::State& state) {
  if (skip_without_cuda(state)) return;
  peak_matmul(state, torch::Device(torch::kCUDA, 0), 8192);
}
void BM_PeakCopy(benchmark::State& state) {
  if (skip_without_cuda(state)) return;
  peak_copy(state, torch::Device(torch::kCUDA, 0), std::int64_t{2} << 30);
}
void BM_SmokePeaks(benchmark::State& state) {
  const auto device = smoke_device();
  if (state.range(0) == 0) peak_matmul(state, device, 256);
  else peak_copy(state, device, std::int64_t{16} << 20);
}

// ---- decoding --------------------------------------------------------------------------------------------------

// A random model of `config` in `dtype` on `device`, built once per process and configuration (benchmarks of
// several batch sizes share it).
xpo::models::CausalLM& random_model(const xpo::io::ModelConfig& config, torch::Device device, torch::ScalarType dtype) {
  // Never destroyed: freeing device memory after the CUDA runtime has shut down at exit would fail.
  static auto* models = new std::map<std::string, std::unique_ptr<xpo::models::CausalLM>>();
  const auto key = std::to_string(config.hidden_size) + "/" + device.str() + "/" + c10::toString(dtype);
  auto& slot = (*models)[key];
  if (!slot) {
    torch::manual_seed(0);
    slot = std::make_unique<xpo::models::CausalLM>(config);
    (*slot)->to(device, dtype);
    xpo::models::init_weights(**slot);  // on the device: normal(0, 0.02), as transformers initialises
    (*slot)->eval();
  }
  return *slot;
}

// B prompts of `prompt` random tokens, `new_tokens` sampled per row (temperature 1, no top-k/top-p: every
// token's probability is computed), each row from its own stream. Counters: generated tokens per second (the
// prefill included), the shapes, and the raw seconds and token count for the summary.
void decode(benchmark::State& state, const xpo::io::ModelConfig& config, torch::Device device, std::int64_t b,
            std::int64_t prompt, std::int64_t new_tokens) {
  auto& model = random_model(config, device, torch::kBFloat16);
  auto gen = xpo::compat::make_generator(torch::kCPU, 1234);
  const auto ids = torch::randint(0, config.vocab_size, {b, prompt}, gen, torch::kLong).to(device);
  const auto mask = torch::ones_like(ids);
  xpo::generation::SamplingOptions options;
  options.max_new_tokens = new_tokens;
  options.temperature = 1.0;
  options.eos_token_ids = config.eos_token_ids;
  options.pad_token_id = config.pad_token_id.value_or(0);
  xpo::generation::RowStreams streams;
  for (std::int64_t i = 0; i < b; ++i) streams.keys.push_back(xpo::generation::RowStreams::key({7, static_cast<std::uint64_t>(i)}));
  {  // warm-up: kernels loaded, cuBLAS handles and the allocator's blocks in place
    auto warm = options;
    warm.max_new_tokens = 4;
    (void)xpo::generation::generate(model, ids, mask, warm, streams);
  }
  double seconds = 0, tokens = 0;
  for (auto _ : state) {
    xpo::generation::Generation out;
    const double s = xpo::bench::device_seconds(device, [&] { out = xpo::generation::generate(model, ids, mask, options, streams); });
    state.SetIterationTime(s);
    seconds += s;
    tokens += out.completion_mask.sum().item<double>();
  }
  state.counters["tokens_per_s"] = seconds > 0 ? tokens / seconds : 0.0;
  state.counters["seconds"] = seconds;
  state.counters["tokens"] = tokens;
  state.counters["batch"] = static_cast<double>(b);
  state.counters["prompt_tokens"] = static_cast<double>(prompt);
  state.counters["new_tokens"] = static_cast<double>(new_tokens);
  shape_counters(state, config);
}

void BM_Decode(benchmark::State& state) {
  if (skip_without_cuda(state)) return;
  decode(state, xpo::bench::qwen2_0p5b_config(false), torch::Device(torch::kCUDA, 0), state.range(0), kDecodePrompt, kDecodeNew);
}
void BM_SmokeDecode(benchmark::State& state) { decode(state, tiny_config(false), smoke_device(), 2, 16, 4); }

// ---- one XPO step ----------------------------------------------------------------------------------------------

// One optimizer step of xpo::XPOTrainer with policy, reference and reward model of `config`'s shape on `device`:
// --bf16 (float32 master weights and AdamW state, the reference held in bf16 as xpo-train holds it, the reward
// model in bf16), B prompts of ~`prompt` tokens, `new_tokens` per sample (a random model rarely emits EOS, so
// nearly every sample has them all). One warm-up step first (it also allocates AdamW's state). Counters: the
// step's seconds by stage (the trainer's own split), completion tokens per second (both samples), the shapes.
void xpo_step(benchmark::State& state, const xpo::io::ModelConfig& policy_config, const xpo::io::ModelConfig& rm_config,
              torch::Device device, std::int64_t b, std::int64_t prompt, std::int64_t new_tokens) {
  const auto tokenizer = xpo::text::Tokenizer::from_pretrained(fixtures_dir() / "tokenizers" / "qwen");
  double prompt_mean = 0;
  auto prompts = xpo::bench::prompts_of_length(tokenizer, b, prompt, prompt, 11, &prompt_mean);
  torch::manual_seed(0);
  xpo::models::CausalLM policy(policy_config);
  policy->to(device);
  xpo::models::init_weights(*policy);
  xpo::models::SequenceClassifier rm(rm_config);
  rm->to(device, torch::kBFloat16);
  xpo::models::init_weights(*rm);
  for (auto& p : rm->parameters()) p.set_requires_grad(false);

  xpo::XPOConfig config;
  config.output_dir = (std::filesystem::temp_directory_path() / ("xpo-cuda-bench-" + std::to_string(::getpid()))).string();
  config.device = device.str();
  config.per_device_train_batch_size = b;
  config.max_new_tokens = new_tokens;
  config.max_steps = 1000;
  config.learning_rate = 5e-7;
  config.bf16 = true;
  config.missing_eos_penalty = 1.0;
  xpo::XPOTrainer trainer(policy, std::nullopt, xpo::scoring::RewardModelScorer(rm), tokenizer, config, prompts);
  trainer.optimizer_step();  // warm-up
  xpo::XPOTrainer::StepTiming timing;
  double seconds = 0;
  std::int64_t steps = 0;
  for (auto _ : state) {
    const double s = xpo::bench::device_seconds(device, [&] { trainer.optimizer_step(); });
    state.SetIterationTime(s);
    seconds += s;
    ++steps;
    timing = trainer.last_step_timing();
  }
  const double step_s = steps > 0 ? seconds / static_cast<double>(steps) : 0.0;
  state.counters["step_s"] = step_s;
  state.counters["generation_s"] = timing.generation;
  state.counters["scoring_s"] = timing.scoring;
  state.counters["forward_backward_s"] = timing.forward_backward;
  state.counters["optimizer_s"] = timing.optimizer;
  state.counters["tokens_per_s"] = step_s > 0 ? 2.0 * static_cast<double>(b * new_tokens) / step_s : 0.0;
  state.counters["batch"] = static_cast<double>(b);
  state.counters["prompt_tokens"] = prompt_mean;
  state.counters["new_tokens"] = static_cast<double>(new_tokens);
  shape_counters(state, policy_config);
  std::filesystem::remove_all(config.output_dir);
}

void BM_XpoStep(benchmark::State& state) {
  if (skip_without_cuda(state)) return;
  xpo_step(state, xpo::bench::qwen2_0p5b_config(false), xpo::bench::qwen2_0p5b_config(true), torch::Device(torch::kCUDA, 0),
           state.range(0), kStepPrompt, kStepNew);
}
void BM_SmokeXpoStep(benchmark::State& state) {
  xpo_step(state, tiny_config(false), tiny_config(true), smoke_device(), 2, 16, 4);
}

BENCHMARK(BM_PeakMatmul)->Name("cuda/peak/bf16_matmul")->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PeakCopy)->Name("cuda/peak/copy")->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Decode)->Name("cuda/decode")->ArgName("B")->Arg(1)->Arg(8)->Arg(64)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_XpoStep)->Name("cuda/xpo_step")->ArgName("B")->Arg(8)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SmokePeaks)->Name("smoke/cuda_peaks")->ArgName("copy")->Arg(0)->Arg(1)->UseManualTime()->Iterations(1);
BENCHMARK(BM_SmokeDecode)->Name("smoke/cuda_decode")->UseManualTime()->Iterations(1);
BENCHMARK(BM_SmokeXpoStep)->Name("smoke/cuda_xpo_step")->UseManualTime()->Iterations(1);

}  // namespace
