// The decoder's training throughput and checkpoint loading, as ratios to the machine's own limits.
//  - forward + backward of a Qwen2-shaped model (support/machine.hpp) at B=8, T=256: achieved FLOP/s, counted as
//    6 x parameters x tokens, over the sgemm rate measured in the same run (target >= 0.5);
//  - loading a checkpoint (load_causal_lm) over reading the file's bytes (target <= 2x);
//  - the newer architectures at the same size (~40M): a Qwen3-shaped model (q/k norms, head_dim 64) and a
//    Gemma3-shaped one (sandwich norms, (1 + w) norms, gelu_tanh, 5 sliding layers of window 128 + 1 global one
//    with their own RoPE tables, embedding scale, 4 heads of 128), each timed against the Qwen2-shaped model in the
//    same run: forward + backward FLOP/s over sgemm, decode tokens/s at batch 1, and `cost_vs_qwen2` = (seconds
//    per counted FLOP) / (the Qwen2 model's), which should be ~1 (they cost what their FLOPs cost, no more).
#include <benchmark/benchmark.h>

#include <xpo/generation/generate.hpp>
#include <xpo/models/pretrained.hpp>

#include <unistd.h>

#include <fstream>

#include "support/machine.hpp"

namespace {

std::int64_t parameter_count(torch::nn::Module& m) {
  std::int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

void BM_DecoderForwardBackward(benchmark::State& state) {
  const std::int64_t b = state.range(0), t = state.range(1);
  torch::manual_seed(0);
  xpo::models::CausalLM model(xpo::bench::qwen2_bench_config());
  xpo::models::init_weights(*model);
  model->train(true);
  const auto ids = torch::randint(3, model->vocab_size(), {b, t}, torch::kLong);
  const auto mask = torch::ones_like(ids);
  const auto pos = xpo::position_ids_from_mask(mask);
  auto step = [&] {
    model->zero_grad();
    const auto logits = model->forward(ids, mask, pos);
    xpo::selective_log_softmax(logits.narrow(1, 0, t - 1), ids.narrow(1, 1, t - 1)).mean().neg().backward();
  };
  step();  // warm-up
  const double sgemm = xpo::bench::measured_sgemm_flops();
  const double flops = 6.0 * static_cast<double>(parameter_count(*model)) * static_cast<double>(b * t);
  double seconds = 0;
  for (auto _ : state) {
    seconds = xpo::bench::best_seconds(1, step);
    state.SetIterationTime(seconds);
  }
  state.counters["params_M"] = static_cast<double>(parameter_count(*model)) / 1e6;
  state.counters["sgemm_GFLOPs"] = sgemm / 1e9;
  state.counters["achieved_GFLOPs"] = flops / seconds / 1e9;
  state.counters["achieved_over_sgemm"] = flops / seconds / sgemm;
}
BENCHMARK(BM_DecoderForwardBackward)->ArgNames({"B", "T"})->Args({8, 256})->UseManualTime()->Iterations(2)->Unit(benchmark::kSecond);
BENCHMARK(BM_DecoderForwardBackward)->Name("smoke/DecoderForwardBackward")->Args({1, 8})->UseManualTime()->Iterations(1);

// The machine's float32 (OpenBLAS) and bfloat16 (oneDNN) matmul rates in one run, and their ratio: what --bf16
// can gain on this CPU where the step is compute-bound (issue 23, lever 4).
void BM_MatmulRates(benchmark::State& state) {
  double sgemm = 0, bf16 = 0;
  for (auto _ : state) {
    sgemm = xpo::bench::measured_sgemm_flops(state.range(0));
    bf16 = xpo::bench::measured_bf16_gemm_flops(state.range(0));
    state.SetIterationTime(1.0);
  }
  state.counters["sgemm_GFLOPs"] = sgemm / 1e9;
  state.counters["bf16_GFLOPs"] = bf16 / 1e9;
  state.counters["bf16_over_sgemm"] = bf16 / sgemm;
  state.counters["aten_threads"] = at::get_num_threads();
}
BENCHMARK(BM_MatmulRates)->ArgName("n")->Arg(2048)->UseManualTime()->Iterations(1);
BENCHMARK(BM_MatmulRates)->Name("smoke/MatmulRates")->Arg(64)->UseManualTime()->Iterations(1);

void BM_CheckpointLoad(benchmark::State& state) {
  const auto folder = std::filesystem::temp_directory_path() / ("xpo-bench-ckpt-" + std::to_string(::getpid()));
  {
    torch::manual_seed(0);
    xpo::models::CausalLM model(xpo::bench::qwen2_bench_config());
    xpo::models::init_weights(*model);
    xpo::models::save_pretrained(model, folder);
  }
  const auto file = folder / "model.safetensors";
  const auto bytes = std::filesystem::file_size(file);
  std::vector<char> buffer(bytes);
  auto read_file = [&] {
    std::ifstream in(file, std::ios::binary);
    in.read(buffer.data(), static_cast<std::streamsize>(bytes));
  };
  read_file();  // both measurements read from the page cache
  const double read_seconds = xpo::bench::best_seconds(3, read_file);
  double load_seconds = 0;
  for (auto _ : state) {
    load_seconds = xpo::bench::best_seconds(3, [&] { benchmark::DoNotOptimize(xpo::models::load_causal_lm(folder)); });
    state.SetIterationTime(load_seconds);
  }
  std::filesystem::remove_all(folder);
  state.counters["file_MB"] = static_cast<double>(bytes) / 1e6;
  state.counters["load_over_read"] = load_seconds / read_seconds;
}
BENCHMARK(BM_CheckpointLoad)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);

// Architecture 0: Qwen2 (support/machine.hpp), 1: Qwen3-shaped, 2: Gemma3-shaped, all ~40M parameters with the
// same vocabulary, width and depth.
xpo::io::ModelConfig architecture_config(std::int64_t which) {
  if (which == 0) return xpo::bench::qwen2_bench_config();
  nlohmann::json j = {{"vocab_size", 32768}, {"hidden_size", 512}, {"intermediate_size", 1408},
                      {"num_hidden_layers", 6}, {"max_position_embeddings", 4096}, {"rms_norm_eps", 1e-6},
                      {"eos_token_id", 2}, {"pad_token_id", 0}, {"tie_word_embeddings", true}};
  if (which == 1) {
    j.update(nlohmann::json{{"model_type", "qwen3"}, {"architectures", {"Qwen3ForCausalLM"}}, {"num_hidden_layers", 8},
              {"num_attention_heads", 8}, {"num_key_value_heads", 2}, {"head_dim", 64}, {"rope_theta", 1000000.0}});
  } else {
    j.update(nlohmann::json{{"model_type", "gemma3_text"}, {"architectures", {"Gemma3ForCausalLM"}}, {"num_hidden_layers", 6},
              {"num_attention_heads", 4}, {"num_key_value_heads", 1}, {"head_dim", 128}, {"intermediate_size", 1920},
              {"sliding_window", 128}, {"sliding_window_pattern", 6}, {"query_pre_attn_scalar", 128},
              {"rope_theta", 1000000.0}, {"rope_local_base_freq", 10000.0}, {"hidden_activation", "gelu_pytorch_tanh"}});
  }
  return xpo::io::ModelConfig::from_json(j);
}

const char* architecture_name(std::int64_t which) { return which == 0 ? "qwen2" : which == 1 ? "qwen3" : "gemma3"; }

xpo::models::CausalLM architecture_model(std::int64_t which) {
  torch::manual_seed(0);
  xpo::models::CausalLM model(architecture_config(which));
  xpo::models::init_weights(*model);
  return model;
}

// Seconds of one forward + backward at [b, t] (best of 2 after a warm-up) and its counted FLOPs.
std::pair<double, double> forward_backward(xpo::models::CausalLM& model, std::int64_t b, std::int64_t t) {
  model->train(true);
  const auto ids = torch::randint(3, model->vocab_size(), {b, t}, torch::kLong);
  const auto mask = torch::ones_like(ids);
  const auto pos = xpo::position_ids_from_mask(mask);
  auto step = [&] {
    model->zero_grad();
    const auto logits = model->forward(ids, mask, pos);
    xpo::selective_log_softmax(logits.narrow(1, 0, t - 1), ids.narrow(1, 1, t - 1)).mean().neg().backward();
  };
  step();
  const double flops = 6.0 * static_cast<double>(parameter_count(*model)) * static_cast<double>(b * t);
  return {xpo::bench::best_seconds(2, step), flops};
}

// Tokens per second of greedy decoding with the KV cache (32-token prompts, `new_tokens` each, never stopping).
double decode_tokens_per_second(xpo::models::CausalLM& model, std::int64_t batch, std::int64_t new_tokens) {
  model->eval();
  torch::NoGradGuard no_grad;
  const auto ids = torch::randint(3, model->vocab_size(), {batch, 32}, torch::kLong);
  xpo::generation::SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = new_tokens;
  o.eos_token_ids = {-1};
  auto gen = xpo::compat::make_generator(torch::kCPU, 0);
  (void)xpo::generation::generate(model, ids, torch::ones_like(ids), o, gen);  // warm-up
  std::int64_t tokens = 0;
  const double seconds = xpo::bench::best_seconds(1, [&] {
    tokens = xpo::generation::generate(model, ids, torch::ones_like(ids), o, gen).completion_mask.sum().item<std::int64_t>();
  });
  return static_cast<double>(tokens) / seconds;
}

void BM_ArchitectureCost(benchmark::State& state) {
  const auto which = state.range(0);
  const std::int64_t b = state.range(1), t = state.range(2), new_tokens = state.range(3);
  auto qwen2 = architecture_model(0);
  auto model = architecture_model(which);
  const double sgemm = xpo::bench::measured_sgemm_flops();
  std::pair<double, double> base{0, 0}, mine{0, 0};
  for (auto _ : state) {
    base = forward_backward(qwen2, b, t);
    mine = forward_backward(model, b, t);
    state.SetIterationTime(mine.first);
  }
  state.SetLabel(architecture_name(which));
  state.counters["params_M"] = static_cast<double>(parameter_count(*model)) / 1e6;
  state.counters["qwen2_params_M"] = static_cast<double>(parameter_count(*qwen2)) / 1e6;
  state.counters["sgemm_GFLOPs"] = sgemm / 1e9;
  state.counters["achieved_over_sgemm"] = mine.second / mine.first / sgemm;
  state.counters["qwen2_achieved_over_sgemm"] = base.second / base.first / sgemm;
  state.counters["cost_vs_qwen2"] = (mine.first / mine.second) / (base.first / base.second);
  const double decode = decode_tokens_per_second(model, 1, new_tokens);
  const double qwen2_decode = decode_tokens_per_second(qwen2, 1, new_tokens);
  state.counters["decode_tokens_per_s"] = decode;
  state.counters["qwen2_decode_tokens_per_s"] = qwen2_decode;
  // Decode reads every weight once per step: per-parameter speed relative to Qwen2's.
  state.counters["decode_cost_vs_qwen2"] =
      (qwen2_decode / decode) * (static_cast<double>(parameter_count(*qwen2)) / static_cast<double>(parameter_count(*model)));
}
BENCHMARK(BM_ArchitectureCost)->ArgNames({"arch", "B", "T", "new"})->Args({1, 8, 256, 64})->Args({2, 8, 256, 64})
    ->UseManualTime()->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK(BM_ArchitectureCost)->Name("smoke/ArchitectureCost")->Args({1, 1, 8, 2})->Args({2, 1, 8, 2})
    ->UseManualTime()->Iterations(1);

}  // namespace
