// Decoding throughput of xpo::generation::generate on a Qwen2-shaped model (support/machine.hpp), 64 new tokens
// from 32-token prompts, at batch 1, 8 and 32, sampled from row streams (the trainer's path, temperature 0.9):
//  - against the same without the KV cache (full recompute each step; target >= 5x at 64 new tokens);
//  - one decode step (prefill excluded: (time of 64 new tokens - time of 1) / 63) against the machine's limits
//    measured in the same run:
//      roofline_fraction  bytes the step must read (every weight, the LM head included, plus the KV cache of every
//                         layer at the step's mean length) / step time / the measured copy bandwidth (target >= 0.6
//                         at batch 1, issue 23: >= 0.8 at batch 8 and 32);
//      flop_fraction      the step's matmul FLOPs (2 x weight elements x B, plus attention) / step time / the
//                         measured sgemm rate, or bf16 matmul rate under bf16 (near 1: compute-bound);
//  - where the step's time goes: linears_share = the same weight matrices multiplied alone (F.linear on B rows, in
//    the forward's order, the LM head included) / step time, linears_roofline_fraction = weight bytes / that time /
//    copy bandwidth (what the BLAS reaches on these shapes), sampling_share = sample_next on [B, V] / step time.
//  - bf16:1 runs the same float32 model the way the trainer decodes under --bf16: bfloat16 autocast with the
//    weights cast once per generation (CausalLM::set_low_precision_cache) and a bfloat16 KV cache; its bytes are
//    the bfloat16 copies' (2 per weight and cached value), and the matmuls alone run on those copies (oneDNN), with
//    q/k/v and gate/up each one product as the model multiplies them there (FusedProjection).
#include <benchmark/benchmark.h>

#include <set>

#include <xpo/generation/generate.hpp>
#include <xpo/models/causal_lm.hpp>

#include "support/machine.hpp"

namespace {

constexpr std::int64_t kPrompt = 32, kNewTokens = 64;

struct DecodeRun {
  double seconds;
  std::int64_t tokens;
};

xpo::generation::SamplingOptions decode_options(std::int64_t new_tokens, bool use_cache) {
  xpo::generation::SamplingOptions o;
  o.max_new_tokens = new_tokens;
  o.eos_token_ids = {-1};  // never stops early: every run decodes exactly new_tokens per row
  o.use_cache = use_cache;
  return o;
}

xpo::generation::RowStreams row_streams(std::int64_t batch) {
  xpo::generation::RowStreams streams;
  for (std::int64_t i = 0; i < batch; ++i) streams.keys.push_back(xpo::generation::RowStreams::key({0, static_cast<std::uint64_t>(i)}));
  return streams;
}

DecodeRun decode(xpo::models::CausalLM& model, std::int64_t batch, bool use_cache, std::int64_t new_tokens, int repeats = 1,
                 bool bf16 = false) {
  xpo::compat::AutocastGuard low_precision(c10::DeviceType::CPU, torch::kBFloat16, bf16);
  torch::manual_seed(1);
  const auto ids = torch::randint(3, model->vocab_size(), {batch, kPrompt}, torch::kLong);
  const auto o = decode_options(new_tokens, use_cache);
  const auto streams = row_streams(batch);
  DecodeRun run{0, 0};
  run.seconds = xpo::bench::best_seconds(repeats, [&] {
    run.tokens = xpo::generation::generate(model, ids, torch::ones_like(ids), o, streams).completion_mask.sum().item<std::int64_t>();
  });
  return run;
}

xpo::models::CausalLM bench_model() {
  torch::manual_seed(0);
  xpo::models::CausalLM model(xpo::bench::qwen2_bench_config());
  xpo::models::init_weights(*model);
  return model;
}

// The weight matrices one decode step multiplies, in the forward's order: every Linear of the decoder (`grouped`:
// q/k/v and gate/up each one concatenated matrix), then the LM head (tied: the embedding matrix).
std::vector<std::pair<torch::Tensor, torch::Tensor>> step_matrices(xpo::models::CausalLM& model, bool grouped) {
  std::vector<std::pair<torch::Tensor, torch::Tensor>> out;
  std::set<const xpo::models::LinearImpl*> done;
  // A group's weights and biases concatenated, as FusedProjection multiplies them.
  const auto group = [&](const std::vector<const xpo::models::LinearImpl*>& parts) {
    done.insert(parts.begin(), parts.end());
    out.push_back(xpo::models::FusedProjection::concatenate(parts, torch::kFloat));
  };
  for (const auto& m : model->model->modules(/*include_self=*/false)) {
    if (const auto* a = m->as<xpo::models::AttentionImpl>(); grouped && a && a->q_proj) group({a->q_proj.get(), a->k_proj.get(), a->v_proj.get()});
    if (const auto* mlp = m->as<xpo::models::MLPImpl>(); grouped && mlp && mlp->gate_proj) group({mlp->gate_proj.get(), mlp->up_proj.get()});
    if (const auto* linear = m->as<xpo::models::LinearImpl>(); linear && !done.count(linear)) out.emplace_back(linear->weight, linear->bias);
  }
  out.emplace_back(model->lm_head ? model->lm_head->weight : model->model->embed_tokens->weight, torch::Tensor());
  return out;
}

void BM_Decode(benchmark::State& state) {
  const std::int64_t batch = state.range(0);
  const std::int64_t new_tokens = state.range(1);
  const bool bf16 = state.range(2) != 0;
  auto model = bench_model();
  if (bf16) model->set_low_precision_cache(true);
  const auto& c = model->config();
  const double element_bytes = bf16 ? 2 : 4;
  (void)decode(model, batch, true, 4, 1, bf16);  // warm-up
  // Bytes one decode step reads: every parameter (the embedding lookup reads B rows, the tied LM head the whole
  // matrix) and each layer's keys and values at the step's cache length (mean over the decode steps).
  double weight_bytes = 0;
  for (const auto& p : model->parameters()) weight_bytes += static_cast<double>(p.numel()) * element_bytes;
  const double mean_length = static_cast<double>(kPrompt) + 1.0 + static_cast<double>(new_tokens) / 2.0;
  const double kv_bytes = 2.0 * static_cast<double>(c.num_hidden_layers * batch * c.num_key_value_heads * c.head_dim) * mean_length * element_bytes;
  // FLOPs: 2 per weight element of the matrices multiplied, per row; attention's QK^T and PV per query head.
  const auto matrices = step_matrices(model, /*grouped=*/bf16);  // under bf16 as FusedProjection groups them
  double matrix_elements = 0;
  for (const auto& [w, b] : matrices) matrix_elements += static_cast<double>(w.numel());
  const double flops = 2.0 * matrix_elements * static_cast<double>(batch) +
                       4.0 * static_cast<double>(c.num_hidden_layers * batch * c.num_attention_heads * c.head_dim) * mean_length;
  const double copy_bandwidth = xpo::bench::measured_copy_bandwidth();
  const double gemm_rate = bf16 ? xpo::bench::measured_bf16_gemm_flops() : xpo::bench::measured_sgemm_flops();

  DecodeRun cached{0, 0};
  for (auto _ : state) {
    cached = decode(model, batch, true, new_tokens, 1, bf16);
    state.SetIterationTime(cached.seconds);
  }
  const auto first = decode(model, batch, true, 1, 2, bf16);
  const auto uncached = decode(model, batch, false, new_tokens, 1, bf16);
  const double step_seconds = new_tokens > 1 ? (cached.seconds - first.seconds) / static_cast<double>(new_tokens - 1)
                                             : cached.seconds;

  // The same matrices multiplied alone on B rows, and the sampler alone on [B, V] logits.
  double linear_seconds = 0, sample_seconds = 0;
  {
    c10::InferenceMode inference;
    const auto type = bf16 ? torch::kBFloat16 : torch::kFloat;
    std::vector<torch::Tensor> inputs, weights, biases;
    for (const auto& [w, b] : matrices) {
      inputs.push_back(torch::randn({batch, w.size(1)}, type));
      weights.push_back(w.to(type));
      biases.push_back(b.defined() ? b.to(type) : b);
    }
    linear_seconds = xpo::bench::best_seconds(5, [&] {
      for (std::size_t i = 0; i < matrices.size(); ++i) (void)torch::nn::functional::linear(inputs[i], weights[i], biases[i]);
    });
    const auto logits = torch::randn({batch, model->vocab_size()}) * 3;
    const auto o = decode_options(new_tokens, true);
    const auto u = torch::rand({batch}, torch::kDouble);
    sample_seconds = xpo::bench::best_seconds(5, [&] { (void)xpo::generation::sample_next(logits, o, u); });
  }
  state.counters["tokens_per_s"] = static_cast<double>(cached.tokens) / cached.seconds;
  state.counters["cache_speedup"] = uncached.seconds / cached.seconds;
  state.counters["copy_GBps"] = copy_bandwidth / 1e9;
  state.counters["gemm_GFLOPs"] = gemm_rate / 1e9;  // sgemm's rate, or bf16's under bf16
  state.counters["weights_MB"] = weight_bytes / 1e6;
  state.counters["kv_MB"] = kv_bytes / 1e6;
  state.counters["step_ms"] = step_seconds * 1e3;
  state.counters["roofline_fraction"] = (weight_bytes + kv_bytes) / step_seconds / copy_bandwidth;
  state.counters["flop_fraction"] = flops / step_seconds / gemm_rate;
  state.counters["linears_share"] = linear_seconds / step_seconds;
  state.counters["linears_roofline_fraction"] = weight_bytes / linear_seconds / copy_bandwidth;
  state.counters["sampling_share"] = sample_seconds / step_seconds;
}
BENCHMARK(BM_Decode)->ArgNames({"B", "new", "bf16"})->Args({1, kNewTokens, 0})->Args({8, kNewTokens, 0})->Args({32, kNewTokens, 0})
    ->Args({1, kNewTokens, 1})->Args({8, kNewTokens, 1})->Args({32, kNewTokens, 1})
    ->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Decode)->Name("smoke/Decode")->Args({2, 3, 0})->Args({2, 3, 1})->UseManualTime()->Iterations(1);

}  // namespace
