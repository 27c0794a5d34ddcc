// The machine's own limits, measured in the same run as the benchmark that is compared against them, so the
// reported ratios do not depend on which machine or how loaded it is.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <chrono>

#include "xpo/core/threads.hpp"
#include "xpo/io/hf_config.hpp"

namespace xpo::bench {

// Every benchmark runs with the threads xpo's programs use (core/threads.hpp), set once before main.
inline const ThreadSetup kThreads = configure_threads();

template <class F>
double best_seconds(int repeats, F&& f) {
  double best = 1e300;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

// float32 matrix-multiply rate of LibTorch's BLAS on this machine (FLOP/s), n x n x n.
inline double measured_sgemm_flops(std::int64_t n = 2048) {
  torch::manual_seed(0);
  const auto a = torch::randn({n, n}), b = torch::randn({n, n});
  auto c = torch::empty({n, n});
  torch::mm_out(c, a, b);  // warm-up
  const double seconds = best_seconds(3, [&] { torch::mm_out(c, a, b); });
  return 2.0 * static_cast<double>(n) * n * n / seconds;
}

// The same n x n x n product in bfloat16 (FLOP/s): LibTorch runs it through oneDNN, on AMX / AVX-512 BF16 where
// the CPU has them (this machine's does), accumulating in float32.
inline double measured_bf16_gemm_flops(std::int64_t n = 2048) {
  torch::manual_seed(0);
  const auto a = torch::randn({n, n}).to(torch::kBFloat16), b = torch::randn({n, n}).to(torch::kBFloat16);
  auto c = torch::empty({n, n}, torch::kBFloat16);
  torch::mm_out(c, a, b);  // warm-up (oneDNN builds its kernel here)
  const double seconds = best_seconds(3, [&] { torch::mm_out(c, a, b); });
  return 2.0 * static_cast<double>(n) * n * n / seconds;
}

// Bytes per second that a large tensor copy moves (each byte read once and written once), 256 MB.
inline double measured_copy_bandwidth(std::int64_t bytes = std::int64_t{256} << 20) {
  const auto src = torch::ones({bytes / 4});
  auto dst = torch::empty_like(src);
  dst.copy_(src);
  const double seconds = best_seconds(5, [&] { dst.copy_(src); });
  return static_cast<double>(bytes) / seconds;
}

// A Qwen2-shaped model for benchmarks: hidden 512, 8 layers, 8 heads (2 KV heads, head_dim 64), SwiGLU 1408,
// vocab 32768, tied embeddings, q/k/v biases.
inline io::ModelConfig qwen2_bench_config() {
  return io::ModelConfig::from_json({{"model_type", "qwen2"}, {"architectures", {"Qwen2ForCausalLM"}},
                                     {"vocab_size", 32768}, {"hidden_size", 512}, {"intermediate_size", 1408},
                                     {"num_hidden_layers", 8}, {"num_attention_heads", 8}, {"num_key_value_heads", 2},
                                     {"max_position_embeddings", 4096}, {"rope_theta", 1000000.0},
                                     {"rms_norm_eps", 1e-6}, {"tie_word_embeddings", true}, {"eos_token_id", 2},
                                     {"pad_token_id", 0}});
}

}  // namespace xpo::bench
