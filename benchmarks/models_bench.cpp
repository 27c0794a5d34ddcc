// The decoder's training throughput and checkpoint loading, as ratios to the machine's own limits.
//  - forward + backward of a Qwen2-shaped model (support/machine.hpp) at B=8, T=256: achieved FLOP/s, counted as
//    6 x parameters x tokens, over the sgemm rate measured in the same run (target >= 0.5);
//  - loading a checkpoint (load_causal_lm) over reading the file's bytes (target <= 2x).
#include <benchmark/benchmark.h>

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

}  // namespace
