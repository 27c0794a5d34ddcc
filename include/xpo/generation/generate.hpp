// xpo/generation/generate.hpp — batched sampling from left-padded prompts (ALGORITHM.md §1.2): one completion
// per prompt, under inference mode with dropout off, with a KV cache preallocated for prompt + max_new_tokens.
// Finished rows emit pad; once enough rows have finished, the batch is compacted so they stop costing work,
// and decoding stops when every row is done.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>
#include <string>
#include <vector>

#include "xpo/core/concepts.hpp"
#include "xpo/core/errors.hpp"
#include "xpo/core/tensor_ops.hpp"
#include "xpo/generation/sampling.hpp"

namespace xpo::generation {

template <class M>
using cache_t = decltype(unwrap(std::declval<M&>()).make_cache(std::int64_t{}, std::int64_t{}));

// A model the sampler can decode incrementally: make_cache(B, capacity) and forward(ids, mask, pos, cache, last).
// Other causal LMs are decoded by recomputing the whole sequence at every step.
template <class M>
concept IncrementalLanguageModel =
    CausalLanguageModel<M> && requires { typename cache_t<M>; } &&
    requires(M& m, const torch::Tensor& t, cache_t<M>& cache) {
      { unwrap(m).forward(t, t, t, cache, true) } -> std::same_as<torch::Tensor>;
      cache.select_rows(t);
    };

namespace detail {
// The model's KV-cache type, or a placeholder for models decoded by recomputation (evaluated lazily, so that
// cache_t is only named for models that have one).
template <class M, bool Incremental>
struct cache_slot {
  using type = int;
};
template <class M>
struct cache_slot<M, true> {
  using type = cache_t<M>;
};
}  // namespace detail

struct Generation {
  torch::Tensor completion_ids;   // [B, T] int64, pad after the first EOS (T <= max_new_tokens)
  torch::Tensor completion_mask;  // [B, T] int64, 1 up to and including the first EOS
  torch::Tensor contains_eos;     // [B] bool
  // [B, T] float32: the raw model's log-prob of each generated token (log_softmax of the untempered, unfiltered
  // logits; 0 where mask is 0). Only with SamplingOptions::output_token_logprobs; undefined otherwise.
  torch::Tensor token_logprobs;
};

// Called after every decoding step with that step's token per ORIGINAL row ([B] int64 on the CPU, pad for rows
// already finished) and which rows are finished ([B] bool, CPU). Used for streaming output.
using TokenCallback = std::function<void(std::int64_t step, const torch::Tensor& tokens, const torch::Tensor& finished)>;

namespace detail {
// The draw of a decode from row streams: temperature 0 is greedy, otherwise each active row inverts its own
// uniform for this step (sample_next).
inline auto row_stream_draw(const SamplingOptions& options, const RowStreams& streams, torch::Device device) {
  return [&options, &streams, device](const torch::Tensor& logits, std::int64_t step, const torch::Tensor& rows) {
    if (options.temperature == 0) return logits.argmax(-1);
    return sample_next(logits, options, streams.uniforms(step, device).index_select(0, rows));
  };
}

template <class M>
std::optional<std::int64_t> context_length(M& model) {
  if constexpr (requires { unwrap(model).config().max_position_embeddings; }) {
    return unwrap(model).config().max_position_embeddings;
  } else {
    return std::nullopt;
  }
}

// prompt_ids, prompt_mask [B, P] (left-padded) -> Generation. draw(logits [B', V], step, rows [B']) picks the
// active rows' tokens; rows maps them to the batch's original rows (ascending). on_rows(rows), if given, is called
// whenever finished rows are dropped, before the next forward.
template <CausalLanguageModel M, class Draw>
Generation generate_with(M& model, const torch::Tensor& prompt_ids, const torch::Tensor& prompt_mask,
                         const SamplingOptions& options, Draw&& draw, const TokenCallback& on_token,
                         const std::function<void(const torch::Tensor&)>& on_rows = {}) {
  options.validate();
  const auto b = prompt_ids.size(0), p = prompt_ids.size(1);
  const auto device = prompt_ids.device();
  const auto prompt_lengths = prompt_mask.sum(-1);  // [B]
  if (const auto context = detail::context_length(model)) {
    const auto longest = prompt_lengths.max().template item<std::int64_t>();
    if (longest + options.max_new_tokens > *context) {
      const auto row = prompt_lengths.argmax().template item<std::int64_t>();
      throw Error("prompt row " + std::to_string(row) + " has " + std::to_string(longest) + " tokens; with max_new_tokens = " +
                  std::to_string(options.max_new_tokens) + " it needs " + std::to_string(longest + options.max_new_tokens) +
                  " positions, more than the model's context of " + std::to_string(*context));
    }
  }
  auto& m = unwrap(model);
  struct RestoreMode {  // dropout off while sampling; the caller's mode back afterwards, even on error
    decltype(m)& module;
    bool was_training;
    ~RestoreMode() { module.train(was_training); }
  } restore{m, m.is_training()};
  m.train(false);
  constexpr bool incremental = IncrementalLanguageModel<M>;
  const bool cached = incremental && options.use_cache;
  std::vector<torch::Tensor> step_tokens, step_logprobs;  // each [B] in original row order
  {
    c10::InferenceMode inference;
    const auto eos = torch::tensor(options.eos_token_ids, torch::kLong).to(device);
    auto finished = torch::zeros({b}, torch::TensorOptions(device).dtype(torch::kBool));
    auto rows = torch::arange(b, torch::TensorOptions(device).dtype(torch::kLong));  // active row -> original row
    auto mask = prompt_mask.to(torch::kLong);                                         // [B', P + s]
    auto next_position = prompt_lengths.to(torch::kLong);  // [B'] position of the next token (n + s)
    auto all_ids = prompt_ids;                             // [B', P + s], the recompute path only

    // Prefill: the prompt in one pass; decoding then feeds one token per row per step.
    std::optional<typename detail::cache_slot<M, incremental>::type> cache;
    torch::Tensor logits;  // [B', V] next-token logits of the active rows
    const auto prompt_positions = position_ids_from_mask(mask);
    if constexpr (incremental) {
      if (cached) {
        cache.emplace(m.make_cache(b, p + options.max_new_tokens));
        logits = m.forward(prompt_ids, mask, prompt_positions, *cache, /*last_only=*/true).select(1, 0);
      }
    }
    if (!cached) logits = m.forward(prompt_ids, mask, prompt_positions).select(1, -1);

    for (std::int64_t step = 0; step < options.max_new_tokens; ++step) {
      auto token = draw(logits, step, rows);                    // [B']
      const auto done_before = finished.index_select(0, rows);  // [B']
      token = token.masked_fill(done_before, options.pad_token_id);
      const auto full_token = torch::full({b}, options.pad_token_id, token.options()).index_copy(0, rows, token);
      step_tokens.push_back(full_token);
      if (options.output_token_logprobs) {  // [B'] under the raw distribution
        const auto logprob = selective_log_softmax(logits, token).masked_fill(done_before, 0.0);
        step_logprobs.push_back(torch::zeros({b}, logprob.options()).index_copy(0, rows, logprob));
      }
      finished.index_copy_(0, rows, done_before.logical_or(torch::isin(token, eos)));
      if (on_token) on_token(step, full_token.cpu(), finished.cpu());
      if (step + 1 == options.max_new_tokens || finished.all().template item<bool>()) break;

      // Drop finished rows once they are a quarter of the active batch: they stop costing work.
      const auto active = finished.index_select(0, rows).logical_not();
      if (active.sum().template item<std::int64_t>() * 4 <= rows.size(0) * 3) {
        const auto keep = active.nonzero().squeeze(-1);
        rows = rows.index_select(0, keep);
        token = token.index_select(0, keep);
        mask = mask.index_select(0, keep);
        next_position = next_position.index_select(0, keep);
        all_ids = all_ids.index_select(0, keep);
        if constexpr (incremental) {
          if (cache) cache->select_rows(keep);
        }
        if (on_rows) on_rows(rows);
      }
      mask = torch::cat({mask, torch::ones({mask.size(0), 1}, mask.options())}, 1);
      bool decoded = false;
      if constexpr (incremental) {
        if (cache) {
          logits = m.forward(token.unsqueeze(1), mask, next_position.unsqueeze(1), *cache).select(1, 0);
          decoded = true;
        }
      }
      if (!decoded) {
        all_ids = torch::cat({all_ids, token.unsqueeze(1)}, 1);
        logits = m.forward(all_ids, mask, position_ids_from_mask(mask)).select(1, -1);
      }
      next_position = next_position + 1;
    }
  }

  // Outside inference mode, and cloned: the trainer uses these ids under autograd.
  const auto raw = torch::stack(step_tokens, 1).clone();  // [B, T]
  auto out = truncate_after_eos(raw, options.eos_token_ids, options.pad_token_id);
  Generation g;
  g.contains_eos = is_any_of(out.ids, options.eos_token_ids).logical_and(out.mask.ne(0)).any(-1);
  g.completion_ids = out.ids;
  g.completion_mask = out.mask;
  if (options.output_token_logprobs) g.token_logprobs = torch::stack(step_logprobs, 1).clone().masked_fill(out.mask.eq(0), 0.0);
  return g;
}
}  // namespace detail

// prompt_ids, prompt_mask [B, P] (left-padded) -> Generation. `gen` is this model's own random stream: the rows
// draw from it together, so a row's sample depends on the whole batch.
template <CausalLanguageModel M>
Generation generate(M& model, const torch::Tensor& prompt_ids, const torch::Tensor& prompt_mask,
                    const SamplingOptions& options, at::Generator& gen, const TokenCallback& on_token = {}) {
  return detail::generate_with(
      model, prompt_ids, prompt_mask, options,
      [&](const torch::Tensor& logits, std::int64_t, const torch::Tensor&) { return sample_next(logits, options, gen); }, on_token);
}

// The same with one counter-based stream per row (RowStreams): row i's sample depends only on its prompt and
// streams.keys[i], whatever else is in the batch. Used by the trainer, so that data-parallel ranks sample what
// one process with the global batch would.
template <CausalLanguageModel M>
Generation generate(M& model, const torch::Tensor& prompt_ids, const torch::Tensor& prompt_mask,
                    const SamplingOptions& options, const RowStreams& streams, const TokenCallback& on_token = {}) {
  if (static_cast<std::int64_t>(streams.keys.size()) != prompt_ids.size(0)) {
    throw Error("generate: " + std::to_string(streams.keys.size()) + " row streams for a batch of " +
                std::to_string(prompt_ids.size(0)) + " prompts");
  }
  return detail::generate_with(model, prompt_ids, prompt_mask, options, detail::row_stream_draw(options, streams, prompt_ids.device()),
                               on_token);
}

// A model with LoRA adapters behind one switch (models::CausalLM): adapter_switch()->leading_rows exists.
template <class M>
concept SwitchableAdapterModel = CausalLanguageModel<M> && requires(M& m) {
  unwrap(m).adapter_switch()->enabled;
  unwrap(m).adapter_switch()->leading_rows;
};

// The adapted model's and the base model's samples (the LoRA policy and its reference) in ONE batched decode of 2B
// rows that reads the base weights once: rows [0, B) carry the adapters, rows [B, 2B) do not
// (AdapterSwitch::leading_rows, kept equal to the number of active adapted rows as finished rows are dropped).
// prompt_ids, prompt_mask [B, P] -> {adapted, base}, each exactly what generate(model, prompt_ids, prompt_mask,
// options, streams) gives with the adapters on, resp. off (AdaptersDisabled): the same row streams, the same
// width T (the longest completion of that half), the same tokens and logits as far as the BLAS computes a row
// independently of the batch's size (as RowStreams' batch independence; otherwise equal to float rounding).
// The adapters must be on when called. Throws Error on a key count that is not B.
template <SwitchableAdapterModel M>
std::pair<Generation, Generation> generate_adapted_and_base(M& model, const torch::Tensor& prompt_ids,
                                                            const torch::Tensor& prompt_mask, const SamplingOptions& options,
                                                            const RowStreams& adapted_streams, const RowStreams& base_streams) {
  const auto b = prompt_ids.size(0);
  for (const auto* s : {&adapted_streams, &base_streams}) {
    if (static_cast<std::int64_t>(s->keys.size()) != b) {
      throw Error("generate_adapted_and_base: " + std::to_string(s->keys.size()) + " row streams for a batch of " +
                  std::to_string(b) + " prompts");
    }
  }
  const auto adapter_switch = unwrap(model).adapter_switch();
  if (!adapter_switch->enabled) throw Error("generate_adapted_and_base: the adapters are switched off");
  RowStreams streams = adapted_streams;
  streams.keys.insert(streams.keys.end(), base_streams.keys.begin(), base_streams.keys.end());
  // The adapters on the first rows only while decoding; the previous setting back afterwards, even on error.
  struct Restore {
    std::function<void()> undo;
    ~Restore() { undo(); }
  } restore{[adapter_switch, previous = adapter_switch->leading_rows] { adapter_switch->leading_rows = previous; }};
  adapter_switch->leading_rows = b;
  const auto both = detail::generate_with(
      model, torch::cat({prompt_ids, prompt_ids}), torch::cat({prompt_mask, prompt_mask}), options,
      detail::row_stream_draw(options, streams, prompt_ids.device()), {},
      [&](const torch::Tensor& rows) { adapter_switch->leading_rows = rows.lt(b).sum().template item<std::int64_t>(); });
  // Each half as its own decode returns it: its rows, and as many columns as its longest completion (a separate
  // decode stops when its last row has ended).
  const auto half = [&](std::int64_t first) {
    const auto mask = both.completion_mask.narrow(0, first, b);
    const auto t = mask.sum(-1).max().template item<std::int64_t>();
    Generation g;
    g.completion_ids = both.completion_ids.narrow(0, first, b).narrow(1, 0, t).clone();
    g.completion_mask = mask.narrow(1, 0, t).clone();
    g.contains_eos = both.contains_eos.narrow(0, first, b).clone();
    if (both.token_logprobs.defined()) g.token_logprobs = both.token_logprobs.narrow(0, first, b).narrow(1, 0, t).clone();
    return g;
  };
  return {half(0), half(b)};
}

}  // namespace xpo::generation
