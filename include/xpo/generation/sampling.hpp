// xpo/generation/sampling.hpp — from next-token logits to a token, as transformers' `generate(do_sample=True)`
// does: temperature, then top-k, then top-p, then min-p, then one draw from the softmax. temperature 0 = greedy.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "xpo/core/config.hpp"
#include "xpo/core/errors.hpp"

namespace xpo::generation {

struct SamplingOptions {
  std::int64_t max_new_tokens = 64;
  double temperature = 0.9;  // 0 = greedy
  std::int64_t top_k = 0;    // 0 = off
  double top_p = 1.0;        // 1 = off
  std::optional<double> min_p;
  std::vector<std::int64_t> eos_token_ids;  // a row ends at the first of any of these
  std::int64_t pad_token_id = 0;            // emitted by finished rows
  bool use_cache = true;                    // false: recompute the whole sequence at every step (reference path)
  // Record Generation::token_logprobs, the raw model's log-probability of each drawn token: log_softmax of the
  // logits before temperature/top-k/top-p/min-p, as transformers' output_logits gives them. Off: nothing computed.
  bool output_token_logprobs = false;

  // The generation fields of an XPO config, with the tokenizer's special ids.
  static SamplingOptions from_config(const XPOConfig& c, std::vector<std::int64_t> eos_token_ids, std::int64_t pad_token_id) {
    SamplingOptions o;
    o.max_new_tokens = c.max_new_tokens;
    o.temperature = c.temperature;
    o.top_k = c.top_k;
    o.top_p = c.top_p;
    o.min_p = c.min_p;
    o.eos_token_ids = std::move(eos_token_ids);
    o.pad_token_id = pad_token_id;
    o.validate();
    return o;
  }

  void validate() const {
    std::vector<std::string> problems;
    if (max_new_tokens < 1) problems.push_back("max_new_tokens = " + std::to_string(max_new_tokens) + ": must be >= 1");
    if (!(temperature >= 0) || !std::isfinite(temperature)) problems.push_back("temperature: must be finite and >= 0");
    if (top_k < 0) problems.push_back("top_k: must be >= 0");
    if (!(top_p > 0 && top_p <= 1)) problems.push_back("top_p: must be in (0, 1]");
    if (min_p && !(*min_p >= 0 && *min_p <= 1)) problems.push_back("min_p: must be in [0, 1]");
    if (eos_token_ids.empty()) problems.push_back("eos_token_ids: at least one end-of-sequence id is needed");
    if (!problems.empty()) throw ConfigError(std::move(problems));
  }
};

// Apply temperature, top-k, top-p and min-p (in transformers' order) to raw logits: [B, V] -> [B, V] float32,
// with -inf on filtered tokens. Always keeps at least the most likely token.
inline torch::Tensor process_logits(const torch::Tensor& logits, const SamplingOptions& o) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  auto scores = logits.to(torch::kFloat);
  if (o.temperature > 0 && o.temperature != 1.0) scores = scores / o.temperature;
  if (o.top_k > 0 && o.top_k < scores.size(-1)) {
    const auto kth = std::get<0>(scores.topk(o.top_k, -1)).narrow(-1, o.top_k - 1, 1);  // [B, 1]
    scores = scores.masked_fill(scores.lt(kth), neg_inf);
  }
  if (o.top_p < 1.0) {
    const auto [sorted, order] = scores.sort(-1, /*descending=*/false);
    const auto cumulative = sorted.softmax(-1).cumsum(-1);
    auto remove = cumulative.le(1.0 - o.top_p);
    remove.narrow(-1, remove.size(-1) - 1, 1).fill_(false);  // keep the most likely token
    scores = scores.masked_fill(remove.scatter(-1, order, remove), neg_inf);
  }
  if (o.min_p && *o.min_p > 0) {
    const auto probs = scores.softmax(-1);
    const auto threshold = probs.amax(-1, /*keepdim=*/true) * *o.min_p;
    scores = scores.masked_fill(probs.lt(threshold), neg_inf);
  }
  return scores;
}

// One token per row: logits [B, V] -> [B] int64 (argmax when temperature is 0).
inline torch::Tensor sample_next(const torch::Tensor& logits, const SamplingOptions& o, at::Generator& gen) {
  if (o.temperature == 0) return logits.argmax(-1);
  const auto probs = process_logits(logits, o).softmax(-1);
  return torch::multinomial(probs, 1, /*replacement=*/false, gen).squeeze(-1);
}

// One token per row by inversion: row i takes the first token whose cumulative probability exceeds
// uniforms[i] (in [0, 1), [B] on the logits' device). Filtered tokens (probability 0) are never taken. The
// cumulative sum is float32, as torch::multinomial's own on the CPU: each token's share of [0, 1) is exact to
// about 1e-7.
inline torch::Tensor sample_next(const torch::Tensor& logits, const SamplingOptions& o, const torch::Tensor& uniforms) {
  if (o.temperature == 0) return logits.argmax(-1);
  const auto probs = process_logits(logits, o).softmax(-1);  // [B, V] float32
  const auto cdf = probs.cumsum(-1);
  const auto last = probs.size(-1) - 1;
  // u truncated to 24 bits is exact in float32 and at most 1 - 2^-24, so the target stays below the total mass.
  const auto u = (uniforms.to(torch::kDouble) * 0x1.0p24).floor_() * 0x1.0p-24;
  const auto target = u.to(probs.scalar_type()).unsqueeze(-1) * cdf.narrow(-1, last, 1);
  const auto token = cdf.le(target).sum(-1).clamp_max(last);                                 // [B]
  // Rounding can only land on a zero-probability token at the very end of the range: take the most likely then.
  const auto usable = probs.gather(-1, token.unsqueeze(-1)).squeeze(-1).gt(0);
  return torch::where(usable, token, probs.argmax(-1));
}

// Counter-based random streams, one per row: the uniform row i draws at decoding step s is a pure function of
// (keys[i], s). A row's sample therefore does not depend on which rows share its batch, on the batch's order, or
// on which process samples it — what data-parallel training needs for a rank's samples to equal the single-process
// run's. Build a key from anything that identifies the draw (seed, stream, step, position) with RowStreams::key.
struct RowStreams {
  std::vector<std::uint64_t> keys;  // one per row of the batch

  // SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijection of 64-bit words with full avalanche.
  static constexpr std::uint64_t mix(std::uint64_t x) noexcept {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
  }
  // A key from a sequence of integers; different sequences give unrelated keys.
  static constexpr std::uint64_t key(std::initializer_list<std::uint64_t> parts) noexcept {
    std::uint64_t h = 0x6A09E667F3BCC909ULL;
    for (const auto part : parts) h = mix(h ^ mix(part));
    return h;
  }
  // Uniform in [0, 1) with 53 random bits, for row `row` at step `step`.
  [[nodiscard]] double uniform(std::size_t row, std::int64_t step) const {
    return static_cast<double>(mix(keys.at(row) ^ mix(static_cast<std::uint64_t>(step))) >> 11) * 0x1.0p-53;
  }
  // Every row's uniform at `step`: [B] float64 on `device`.
  [[nodiscard]] torch::Tensor uniforms(std::int64_t step, torch::Device device) const {
    std::vector<double> u(keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) u[i] = uniform(i, step);
    return torch::tensor(u, torch::kDouble).to(device);
  }
};

}  // namespace xpo::generation
