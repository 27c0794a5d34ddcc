// Decoding throughput of xpo::generation::generate on a Qwen2-shaped model (support/machine.hpp), 64 new tokens
// from 32-token prompts, at batch 1, 8 and 32:
//  - against the same without the KV cache (full recompute each step; target >= 5x at 64 new tokens);
//  - against the memory roofline: the weight bytes one decode step must read, divided by the copy bandwidth
//    measured in the same run (target >= 0.6 of it at batch 1).
#include <benchmark/benchmark.h>

#include <xpo/generation/generate.hpp>
#include <xpo/models/causal_lm.hpp>

#include "support/machine.hpp"

namespace {

constexpr std::int64_t kPrompt = 32, kNewTokens = 64;

struct DecodeRun {
  double seconds;
  std::int64_t tokens;
};

DecodeRun decode(xpo::models::CausalLM& model, std::int64_t batch, bool use_cache, std::int64_t new_tokens) {
  const auto ids = torch::randint(3, model->vocab_size(), {batch, kPrompt}, torch::kLong);
  xpo::generation::SamplingOptions o;
  o.max_new_tokens = new_tokens;
  o.eos_token_ids = {-1};  // never stops early: every run decodes exactly new_tokens per row
  o.use_cache = use_cache;
  auto gen = xpo::compat::make_generator(torch::kCPU, 0);
  DecodeRun run{0, 0};
  run.seconds = xpo::bench::best_seconds(1, [&] {
    run.tokens = xpo::generation::generate(model, ids, torch::ones_like(ids), o, gen).completion_mask.sum().item<std::int64_t>();
  });
  return run;
}

xpo::models::CausalLM bench_model() {
  torch::manual_seed(0);
  xpo::models::CausalLM model(xpo::bench::qwen2_bench_config());
  xpo::models::init_weights(*model);
  return model;
}

void BM_Decode(benchmark::State& state) {
  const std::int64_t batch = state.range(0);
  const std::int64_t new_tokens = state.range(1);
  auto model = bench_model();
  (void)decode(model, batch, true, 4);  // warm-up
  // Weights one decode step reads: every layer and the LM head (tied: the embedding matrix); the embedding
  // lookup itself reads one row per sequence.
  double weight_bytes = 0;
  for (const auto& p : model->parameters()) weight_bytes += static_cast<double>(p.nbytes());
  const double copy_bandwidth = xpo::bench::measured_copy_bandwidth();
  DecodeRun cached{0, 0};
  for (auto _ : state) {
    cached = decode(model, batch, true, new_tokens);
    state.SetIterationTime(cached.seconds);
  }
  const auto uncached = decode(model, batch, false, new_tokens);
  const double step_seconds = cached.seconds / static_cast<double>(new_tokens);  // prefill included: conservative
  state.counters["tokens_per_s"] = static_cast<double>(cached.tokens) / cached.seconds;
  state.counters["cache_speedup"] = uncached.seconds / cached.seconds;
  state.counters["copy_GBps"] = copy_bandwidth / 1e9;
  state.counters["weights_MB"] = weight_bytes / 1e6;
  state.counters["roofline_fraction"] = weight_bytes / step_seconds / copy_bandwidth;
}
BENCHMARK(BM_Decode)->ArgNames({"B", "new"})->Args({1, kNewTokens})->Args({8, kNewTokens})->Args({32, kNewTokens})
    ->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Decode)->Name("smoke/Decode")->Args({2, 3})->UseManualTime()->Iterations(1);

}  // namespace
