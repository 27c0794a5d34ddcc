// Selective log-softmax (xpo::selective_log_softmax) vs autograd's log_softmax().gather(), forward + backward,
// at B=8, T=256 and V = 32768 (Llama-2-sized) / 151936 (Qwen2). Reported per method: time and the peak memory
// the step adds on top of the logits (the gradient it returns included: at least 1.0 x the logits); and, measured in
// the same run, the ratios naive / selective.
//   build/benchmarks/xpo_benchmarks --benchmark_filter='LogSoftmax|Ratio'
#include <benchmark/benchmark.h>

#include <xpo/core/tensor_ops.hpp>

#include <chrono>

#include "support/memory.hpp"

namespace {

enum class Method { selective, log_softmax_gather };

// One forward + backward of the per-token log-probs of a completion batch: logits [B, T, V] -> grad [B, T, V].
void logps_step(Method method, const torch::Tensor& logits, const torch::Tensor& index) {
  const auto logps = method == Method::selective
                         ? xpo::selective_log_softmax(logits, index)
                         : torch::log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1);
  logps.sum().backward();
}

struct Measurement {
  double seconds;
  double peak_extra_bytes;
};

Measurement measure(Method method, std::int64_t b, std::int64_t t, std::int64_t v) {
  torch::manual_seed(0);
  auto logits = torch::randn({b, t, v}).requires_grad_();
  const auto index = torch::randint(v, {b, t}, torch::kLong);
  logps_step(method, logits, index);  // warm-up
  logits.mutable_grad() = torch::Tensor();  // free it BEFORE the baseline: the region then starts from logits alone
  Measurement m{0, 0};
  m.peak_extra_bytes = static_cast<double>(xpo::bench::peak_extra_bytes([&] {
    const auto start = std::chrono::steady_clock::now();
    logps_step(method, logits, index);
    m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }));
  return m;
}

void report(benchmark::State& state, Method method) {
  const std::int64_t b = state.range(0), t = state.range(1), v = state.range(2);
  const double logits_bytes = static_cast<double>(b * t * v) * sizeof(float);
  Measurement last{0, 0};
  for (auto _ : state) {
    last = measure(method, b, t, v);
    state.SetIterationTime(last.seconds);
  }
  state.counters["peak_extra_MB"] = last.peak_extra_bytes / 1e6;
  state.counters["peak_extra_per_logits"] = last.peak_extra_bytes / logits_bytes;
}

void BM_SelectiveLogSoftmax(benchmark::State& state) { report(state, Method::selective); }
void BM_LogSoftmaxGather(benchmark::State& state) { report(state, Method::log_softmax_gather); }

// Both methods in one run, so the ratios compare like with like on this machine.
void BM_Ratio_NaiveOverSelective(benchmark::State& state) {
  const std::int64_t b = state.range(0), t = state.range(1), v = state.range(2);
  double time_ratio = 0, memory_ratio = 0;
  for (auto _ : state) {
    const auto naive = measure(Method::log_softmax_gather, b, t, v);
    const auto selective = measure(Method::selective, b, t, v);
    time_ratio = naive.seconds / selective.seconds;
    memory_ratio = naive.peak_extra_bytes / std::max(1.0, selective.peak_extra_bytes);
    state.SetIterationTime(naive.seconds + selective.seconds);
  }
  state.counters["time_naive_over_selective"] = time_ratio;
  state.counters["peak_memory_naive_over_selective"] = memory_ratio;
}

void sizes(benchmark::internal::Benchmark* bench) {
  bench->ArgNames({"B", "T", "V"})->Args({8, 256, 32768})->Args({8, 256, 151936});
  bench->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);
}
void smoke(benchmark::internal::Benchmark* bench) {
  bench->ArgNames({"B", "T", "V"})->Args({2, 16, 1024})->UseManualTime()->Iterations(1);
}

BENCHMARK(BM_SelectiveLogSoftmax)->Apply(sizes);
BENCHMARK(BM_LogSoftmaxGather)->Apply(sizes);
BENCHMARK(BM_Ratio_NaiveOverSelective)->Apply(sizes);
BENCHMARK(BM_Ratio_NaiveOverSelective)->Name("smoke/Ratio_NaiveOverSelective")->Apply(smoke);

}  // namespace
