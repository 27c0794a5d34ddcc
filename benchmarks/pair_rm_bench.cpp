// The PairRM judge's throughput (issue 21): pairs judged per second on a PairRM-large-shaped random model
// (deberta-v3-large: hidden 1024, 24 layers, 16 heads, 256 buckets, vocab 128005) at source 256 / candidates 128
// tokens (rows of 512 tokens, two orders per pair), and the achieved FLOP/s over the sgemm rate measured in the
// same run. FLOPs counted: 2 x (encoder weights) per token, the attention products (q.k, p.v, c2p, p2c) per
// row, the rel_embeddings projections per forward, and the head.
#include <benchmark/benchmark.h>

#include <xpo/scoring/pair_rm.hpp>

#include "support/machine.hpp"

namespace {

// Tokens of a random text of `n` ids (no specials), avoiding the special and marker ids.
std::vector<xpo::text::TokenId> random_tokens(std::int64_t n, std::int64_t vocab) {
  const auto t = torch::randint(5, vocab - 5, {n}, torch::kLong);
  return std::vector<xpo::text::TokenId>(t.data_ptr<std::int64_t>(), t.data_ptr<std::int64_t>() + n);
}

void run_judge_bench(benchmark::State& state, const xpo::models::DebertaV2Config& config, std::int64_t source_len,
                     std::int64_t candidate_len) {
  const std::int64_t pairs = state.range(0);
  torch::manual_seed(0);
  xpo::scoring::PairRMSettings settings;
  settings.source_maxlength = source_len;
  settings.candidate_maxlength = candidate_len;
  settings.source_prefix_id = config.vocab_size - 4;
  settings.cand1_prefix_id = config.vocab_size - 3;
  settings.cand2_prefix_id = config.vocab_size - 2;
  settings.cand_prefix_id = config.vocab_size - 1;
  xpo::scoring::PairRM model(config, settings);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.normal_(0, 0.02);
  }
  xpo::scoring::PairRMJudge judge(model, [](const std::string&) { return std::vector<xpo::text::TokenId>{}; },
                                  {.batch_size = pairs});
  std::vector<std::vector<xpo::text::TokenId>> sources;
  std::vector<std::array<std::vector<xpo::text::TokenId>, 2>> candidates;
  for (std::int64_t i = 0; i < pairs; ++i) {
    auto s = random_tokens(source_len - 2, config.vocab_size);
    s.front() = settings.source_prefix_id;
    auto a = random_tokens(candidate_len - 2, config.vocab_size), b = random_tokens(candidate_len - 2, config.vocab_size);
    a.front() = b.front() = settings.cand_prefix_id;
    sources.push_back(std::move(s));
    candidates.push_back({std::move(a), std::move(b)});
  }
  (void)judge.compare_tokens(sources, candidates);  // warm-up
  const double sgemm = xpo::bench::measured_sgemm_flops();
  const double t = static_cast<double>(source_len + 2 * candidate_len), h = static_cast<double>(config.hidden_size);
  const double layers = static_cast<double>(config.num_hidden_layers), span2 = 2.0 * static_cast<double>(config.attention_span());
  const double per_layer_weights = 4 * h * h + 2 * h * static_cast<double>(config.intermediate_size);
  const double rows = 2.0 * static_cast<double>(pairs);
  const double flops = rows * layers * (2 * per_layer_weights * t + 2 * 2 * t * t * h + 2 * 2 * t * span2 * h) +
                       layers * 2 * 2 * span2 * h * h + rows * 2 * 2 * (2 * h * h + h);
  double seconds = 0;
  for (auto _ : state) {
    seconds = xpo::bench::best_seconds(1, [&] { benchmark::DoNotOptimize(judge.compare_tokens(sources, candidates)); });
    state.SetIterationTime(seconds);
  }
  state.counters["pairs_per_s"] = static_cast<double>(pairs) / seconds;
  state.counters["sgemm_GFLOPs"] = sgemm / 1e9;
  state.counters["achieved_GFLOPs"] = flops / seconds / 1e9;
  state.counters["achieved_over_sgemm"] = flops / seconds / sgemm;
}

void BM_PairRMJudgeLarge(benchmark::State& state) {
  run_judge_bench(state, xpo::models::deberta_v3_large_config(), 256, 128);
}
BENCHMARK(BM_PairRMJudgeLarge)->ArgNames({"pairs"})->Arg(2)->UseManualTime()->Iterations(1)->Unit(benchmark::kSecond);

void BM_PairRMJudgeSmoke(benchmark::State& state) {
  auto c = xpo::models::deberta_v3_large_config();
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.intermediate_size = 64;
  c.position_buckets = 16;
  c.max_position_embeddings = 32;
  run_judge_bench(state, c, 24, 8);
}
BENCHMARK(BM_PairRMJudgeSmoke)->Name("smoke/PairRMJudge")->Arg(2)->UseManualTime()->Iterations(1);

}  // namespace
