// Encode throughput of xpo::text::Tokenizer (Qwen3's tokenizer.json from $XPO_FIXTURES_DIR/tokenizers/qwen) on
// 4 MB of generated mixed prose/code (support/corpus.hpp): MB/s single-threaded, and the batch encoder on every
// hardware thread. Target: >= 20 MB/s on one thread (the order of HF's Rust `tokenizers`). The merge cache is
// warm after the first iteration, as it is in training, where prompts repeat every epoch; the "cold" variant
// starts from a fresh tokenizer each iteration.
#include <benchmark/benchmark.h>

#include <xpo/text/tokenizer.hpp>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "support/corpus.hpp"

namespace {

std::filesystem::path qwen_folder() {
  const char* env = std::getenv("XPO_FIXTURES_DIR");
  const std::filesystem::path root = env != nullptr && *env != '\0' ? env : XPO_DEFAULT_FIXTURES_DIR;
  return root / "tokenizers" / "qwen";
}

const xpo::text::Tokenizer& tokenizer() {
  static const auto t = xpo::text::Tokenizer::from_pretrained(qwen_folder());
  return t;
}

std::size_t total_bytes(const std::vector<std::string>& docs) {
  std::size_t n = 0;
  for (const auto& d : docs) n += d.size();
  return n;
}

void encode_serial(benchmark::State& state, std::size_t bytes, bool cold) {
  const auto docs = xpo::bench::generate_corpus(bytes);
  std::size_t tokens = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const xpo::text::Tokenizer fresh = cold ? xpo::text::Tokenizer::from_pretrained(qwen_folder()) : tokenizer();
    state.ResumeTiming();
    const auto& tok = cold ? fresh : tokenizer();
    tokens = 0;
    for (const auto& d : docs) tokens += tok.encode(d, false).size();
    benchmark::DoNotOptimize(tokens);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * total_bytes(docs)));
  state.counters["bytes_per_token"] = static_cast<double>(total_bytes(docs)) / static_cast<double>(tokens);
}

void BM_EncodeSingleThread(benchmark::State& state) { encode_serial(state, 4 << 20, false); }
void BM_EncodeSingleThreadColdCache(benchmark::State& state) { encode_serial(state, 4 << 20, true); }

void BM_EncodeBatchAllThreads(benchmark::State& state) {
  const auto docs = xpo::bench::generate_corpus(4 << 20);
  xpo::text::BatchEncodeOptions options;
  options.pad = false;
  options.threads = std::max(1U, std::thread::hardware_concurrency());
  for (auto _ : state) benchmark::DoNotOptimize(tokenizer().encode_batch(docs, options));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * total_bytes(docs)));
  state.counters["threads"] = options.threads;
}

// Keeps the code path compiling and running under CTest (tiny corpus).
void BM_TokenizerSmoke(benchmark::State& state) { encode_serial(state, 16 << 10, false); }

BENCHMARK(BM_EncodeSingleThread)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_EncodeSingleThreadColdCache)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();
BENCHMARK(BM_EncodeBatchAllThreads)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_TokenizerSmoke)->Name("smoke/tokenizer_encode")->Iterations(1);

}  // namespace
