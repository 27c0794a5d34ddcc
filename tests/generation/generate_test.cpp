// xpo/generation: greedy decoding equals transformers' generate() on every fixture model; sampling is seeded,
// reduces to greedy in the limits, and draws from softmax(logits / temperature) (a chi-square test), from one
// generator or from one counter-based stream per row (a row's sample then does not depend on its batch).
#include <gtest/gtest.h>

#include <xpo/generation/generate.hpp>
#include <xpo/models/pretrained.hpp>

#include <cmath>

#include "support/fixtures.hpp"

namespace {

using nlohmann::json;
using xpo::test::to_tensor;

xpo::generation::SamplingOptions greedy_options(const json& g) {
  xpo::generation::SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = g.at("max_new_tokens").get<std::int64_t>();
  o.eos_token_ids = {g.at("eos_token_id").get<std::int64_t>()};
  o.pad_token_id = g.at("pad_token_id").get<std::int64_t>();
  return o;
}

// The generated tokens right-padded to max_new_tokens (decoding stops early when every row is done).
torch::Tensor padded(const torch::Tensor& ids, std::int64_t width, std::int64_t pad) { return xpo::pad_right_to(ids, width, pad); }

TEST(Generate, GreedyEqualsTransformersWithAndWithoutCache) {
  for (const auto& folder : xpo::test::causal_lm_fixture_folders()) {
    SCOPED_TRACE(folder.string());
    auto model = xpo::models::load_causal_lm(folder);
    const auto reference = xpo::test::read_json(folder / "reference.json");
    const auto& g = reference.at("greedy");
    auto options = greedy_options(g);
    options.output_token_logprobs = true;
    auto gen = xpo::compat::make_generator(torch::kCPU, 0);
    for (bool use_cache : {true, false}) {
      SCOPED_TRACE(use_cache ? "KV cache" : "full recompute");
      options.use_cache = use_cache;
      const auto out = xpo::generation::generate(model, to_tensor(g.at("input_ids"), torch::kLong),
                                                 to_tensor(g.at("attention_mask"), torch::kLong), options, gen);
      const auto expected = to_tensor(g.at("new_tokens"), torch::kLong);
      EXPECT_TRUE(padded(out.completion_ids, options.max_new_tokens, options.pad_token_id).equal(expected))
          << out.completion_ids << "\nvs\n" << expected;
      // Log-probs of the chosen tokens where the reference has them (|a - e| <= 1e-4 (1 + |e|), the model parity
      // tolerance), and every EOS row flagged.
      const auto ref_logps = xpo::test::to_holed_tensor(g.at("new_token_logprobs"));
      const auto ours = padded(out.token_logprobs, options.max_new_tokens, 0).unsqueeze(-1);
      EXPECT_TRUE(xpo::test::all_close(ours.index({ref_logps.present}), ref_logps.values.index({ref_logps.present}), 1e-4));
      EXPECT_TRUE(out.contains_eos.equal(expected.eq(options.eos_token_ids[0]).any(-1)));
      EXPECT_TRUE(out.completion_mask.sum(-1).equal(ref_logps.present.sum(-1).to(torch::kLong)))
          << "mask covers exactly the tokens up to and including EOS";
    }
  }
}

// The log-probs generation records (output_token_logprobs; the trainer's reference uses them instead of a second
// forward) are log_softmax of the RAW logits at the drawn tokens, whatever temperature/top-k/top-p shaped the draw,
// and equal a forward over [prompt; completion] to float summation order: |a - e| <= 1e-5 (1 + |e|), on left-padded
// prompts of different lengths, with the KV cache (rows dropped as they finish) and without. Off: not computed.
TEST(Generate, RecordedTokenLogprobsEqualAForwardOverPromptAndCompletion) {
  for (const auto& folder : xpo::test::causal_lm_fixture_folders()) {
    SCOPED_TRACE(folder.string());
    auto model = xpo::models::load_causal_lm(folder);
    const auto reference = xpo::test::read_json(folder / "reference.json");
    const auto& g = reference.at("greedy");
    auto options = greedy_options(g);
    options.temperature = 0.7;
    options.top_k = 5;
    options.top_p = 0.9;
    const auto ids = to_tensor(g.at("input_ids"), torch::kLong), mask = to_tensor(g.at("attention_mask"), torch::kLong);
    ASSERT_GT(mask.sum(-1).max().item<std::int64_t>(), mask.sum(-1).min().item<std::int64_t>()) << "prompts of different lengths";
    xpo::generation::RowStreams streams;
    for (std::int64_t i = 0; i < ids.size(0); ++i) streams.keys.push_back(xpo::generation::RowStreams::key({5, static_cast<std::uint64_t>(i)}));
    EXPECT_FALSE(xpo::generation::generate(model, ids, mask, options, streams).token_logprobs.defined()) << "not asked for";
    options.output_token_logprobs = true;
    for (bool use_cache : {true, false}) {
      SCOPED_TRACE(use_cache ? "KV cache" : "full recompute");
      options.use_cache = use_cache;
      const auto out = xpo::generation::generate(model, ids, mask, options, streams);
      ASSERT_TRUE(out.token_logprobs.defined());
      EXPECT_EQ(out.token_logprobs.scalar_type(), torch::kFloat);
      const auto full_mask = torch::cat({mask, out.completion_mask}, 1);
      torch::Tensor expected;
      {
        torch::NoGradGuard no_grad;
        const auto logits = model->forward(torch::cat({ids, out.completion_ids}, 1), full_mask, xpo::position_ids_from_mask(full_mask));
        expected = xpo::completion_token_logps(logits, out.completion_ids, out.completion_mask, ids.size(1));
      }
      EXPECT_TRUE(xpo::test::all_close(out.token_logprobs, expected, 1e-5));
      EXPECT_TRUE(out.token_logprobs.masked_select(out.completion_mask.eq(0)).eq(0).all().item<bool>()) << "0 after EOS";
    }
  }
}

TEST(Generate, SeededSamplingRepeatsAndSeparateStreamsDiffer) {
  const auto folder = xpo::test::causal_lm_fixture_folders().front();
  auto model = xpo::models::load_causal_lm(folder);
  const auto reference = xpo::test::read_json(folder / "reference.json");
  const auto& g = reference.at("greedy");
  auto options = greedy_options(g);
  options.temperature = 1.0;
  const auto ids = to_tensor(g.at("input_ids"), torch::kLong), mask = to_tensor(g.at("attention_mask"), torch::kLong);
  auto run = [&](std::uint64_t seed) {
    auto gen = xpo::compat::make_generator(torch::kCPU, seed);
    return xpo::generation::generate(model, ids, mask, options, gen).completion_ids;
  };
  EXPECT_TRUE(run(7).equal(run(7)));
  EXPECT_FALSE(run(7).equal(run(8))) << "two seeds giving identical samples over all rows is vanishingly unlikely";
  // A private stream leaves the global generator alone.
  torch::manual_seed(3);
  const auto before = torch::rand({4});
  torch::manual_seed(3);
  (void)run(11);
  EXPECT_TRUE(torch::rand({4}).equal(before));
}

TEST(Generate, TemperatureToZeroAndTopKOneAreGreedy) {
  for (const auto& folder : xpo::test::causal_lm_fixture_folders()) {
    SCOPED_TRACE(folder.string());
    auto model = xpo::models::load_causal_lm(folder);
    const auto reference = xpo::test::read_json(folder / "reference.json");
    const auto& g = reference.at("greedy");
    const auto ids = to_tensor(g.at("input_ids"), torch::kLong), mask = to_tensor(g.at("attention_mask"), torch::kLong);
    auto options = greedy_options(g);
    auto gen = xpo::compat::make_generator(torch::kCPU, 5);
    const auto greedy = xpo::generation::generate(model, ids, mask, options, gen).completion_ids;
    // The smallest top-2 logit gap in the fixture divided by 1e-5 makes the runner-up e^-400 times less likely.
    options.temperature = 1e-5;
    EXPECT_TRUE(xpo::generation::generate(model, ids, mask, options, gen).completion_ids.equal(greedy));
    options.temperature = 1.5;
    options.top_k = 1;
    EXPECT_TRUE(xpo::generation::generate(model, ids, mask, options, gen).completion_ids.equal(greedy));
  }
}

// Wilson–Hilferty approximation of the chi-square quantile with `df` degrees of freedom at upper tail z.
double chi_square_quantile(double df, double z) {
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1 - a + z * std::sqrt(a), 3);
}

// Counts of the first sampled token vs the expected multinomial: chi-square over bins with expected count >= 5
// (the rest pooled). False-alarm rate per check: 1e-4 (z = 3.719); six checks, so below 6e-4 per run.
void expect_distribution(const torch::Tensor& samples, const torch::Tensor& probs, const std::string& what) {
  const auto n = static_cast<double>(samples.numel());
  const auto counts = torch::bincount(samples, {}, probs.size(0)).to(torch::kDouble);
  const auto expected = probs.to(torch::kDouble) * n;
  const auto big = expected.ge(5.0);
  const auto pooled_expected = expected.masked_select(big.logical_not()).sum();
  const auto pooled_count = counts.masked_select(big.logical_not()).sum();
  auto chi2 = ((counts.masked_select(big) - expected.masked_select(big)).square() / expected.masked_select(big)).sum().item<double>();
  double bins = big.sum().item<double>();
  if (pooled_expected.item<double>() >= 5.0) {
    chi2 += std::pow(pooled_count.item<double>() - pooled_expected.item<double>(), 2) / pooled_expected.item<double>();
    bins += 1;
  }
  EXPECT_EQ(counts.masked_select(probs.eq(0)).sum().item<double>(), 0.0) << what << ": a filtered token was drawn";
  ASSERT_GE(bins, 3) << what;
  EXPECT_LT(chi2, chi_square_quantile(bins - 1, 3.719)) << what << ": chi2 " << chi2 << " over " << bins << " bins";
}

TEST(Generate, SamplesFollowTheProcessedDistribution) {
  auto model = xpo::models::load_causal_lm(xpo::test::causal_lm_fixture_folders().front());
  const std::int64_t copies = 12000;
  const auto prompt = torch::tensor({{5, 17, 42, 9}}, torch::kLong);
  const auto ids = prompt.expand({copies, 4}).contiguous();
  const auto mask = torch::ones_like(ids);
  torch::Tensor logits;
  {
    torch::NoGradGuard no_grad;
    logits = model->forward(prompt, torch::ones_like(prompt), xpo::position_ids_from_mask(torch::ones_like(prompt))).select(1, -1);
  }
  xpo::generation::SamplingOptions options;
  options.max_new_tokens = 1;
  options.eos_token_ids = {2};
  auto gen = xpo::compat::make_generator(torch::kCPU, 1234);
  for (auto [temperature, top_k, top_p] : {std::tuple{0.7, std::int64_t{0}, 1.0}, std::tuple{1.3, std::int64_t{20}, 1.0},
                                           std::tuple{1.0, std::int64_t{0}, 0.8}}) {
    options.temperature = temperature;
    options.top_k = top_k;
    options.top_p = top_p;
    // The expected distribution, built independently of process_logits: softmax(logits / T), restricted to the
    // k most likely tokens, or to the most likely tokens whose preceding mass is below top_p, renormalised.
    const auto base = (logits.squeeze(0).to(torch::kDouble) / temperature).softmax(-1);  // [V]
    auto keep = torch::ones_like(base, torch::kBool);
    if (top_k > 0) keep = torch::zeros_like(keep).index_fill(0, std::get<1>(base.topk(top_k)), true);
    if (top_p < 1) {
      const auto [sorted, order] = base.sort(-1, /*descending=*/true);
      const auto mass_before = sorted.cumsum(0) - sorted;
      keep = torch::zeros_like(keep).index_fill(0, order.masked_select(mass_before.lt(top_p)), true);
    }
    const auto expected = base * keep / (base * keep).sum();
    // Probabilities in [0, 1] from float32 logits against a float64 computation: 1e-6 in the relative form.
    EXPECT_TRUE(xpo::test::all_close(xpo::generation::process_logits(logits, options).softmax(-1).squeeze(0), expected, 1e-6))
        << "process_logits";
    const auto what = "temperature " + std::to_string(temperature) + " top_k " + std::to_string(top_k) + " top_p " + std::to_string(top_p);
    const auto out = xpo::generation::generate(model, ids, mask, options, gen);
    expect_distribution(out.completion_ids.select(1, 0), expected, what + " (one generator)");
    // The same with one counter-based stream per row (what the trainer uses): sampling by inversion.
    xpo::generation::RowStreams streams;
    for (std::int64_t i = 0; i < copies; ++i) streams.keys.push_back(xpo::generation::RowStreams::key({99, temperature > 1 ? 1u : 0u, static_cast<std::uint64_t>(i)}));
    const auto by_row = xpo::generation::generate(model, ids, mask, options, streams);
    expect_distribution(by_row.completion_ids.select(1, 0), expected, what + " (row streams)");
  }
}

// With row streams a row's sample is a function of its prompt and its key only: the same in any batch (here:
// alone, or in the batch reversed), with or without the KV cache, and repeatable; other keys give other samples.
TEST(Generate, RowStreamsMakeARowsSampleIndependentOfItsBatch) {
  for (const auto& folder : xpo::test::causal_lm_fixture_folders()) {
    SCOPED_TRACE(folder.string());
    auto model = xpo::models::load_causal_lm(folder);
    const auto reference = xpo::test::read_json(folder / "reference.json");
    const auto& g = reference.at("greedy");
    auto options = greedy_options(g);
    options.temperature = 1.0;
    const auto ids = to_tensor(g.at("input_ids"), torch::kLong), mask = to_tensor(g.at("attention_mask"), torch::kLong);
    const auto b = ids.size(0);
    ASSERT_GE(b, 2) << "the fixture's greedy batch must have several rows";
    xpo::generation::RowStreams streams, reversed, others;
    for (std::int64_t i = 0; i < b; ++i) {
      streams.keys.push_back(xpo::generation::RowStreams::key({7, static_cast<std::uint64_t>(i)}));
      others.keys.push_back(xpo::generation::RowStreams::key({8, static_cast<std::uint64_t>(i)}));
    }
    reversed.keys.assign(streams.keys.rbegin(), streams.keys.rend());
    const auto width = options.max_new_tokens;
    const auto run = [&](const torch::Tensor& i, const torch::Tensor& m, const xpo::generation::RowStreams& s) {
      return padded(xpo::generation::generate(model, i, m, options, s).completion_ids, width, options.pad_token_id);
    };
    const auto all = run(ids, mask, streams);
    EXPECT_TRUE(run(ids, mask, streams).equal(all)) << "repeatable";
    EXPECT_FALSE(run(ids, mask, others).equal(all)) << "other keys, other samples (all rows equal is vanishingly unlikely)";
    const auto flip = torch::arange(b - 1, -1, -1, torch::kLong);
    EXPECT_TRUE(run(ids.index_select(0, flip), mask.index_select(0, flip), reversed).equal(all.index_select(0, flip))) << "batch reversed";
    options.use_cache = false;
    EXPECT_TRUE(run(ids, mask, streams).equal(all)) << "full recompute";
    options.use_cache = true;
    for (std::int64_t i = 0; i < b; ++i) {
      const auto length = mask[i].sum().item<std::int64_t>();
      const auto alone = ids[i].narrow(0, ids.size(1) - length, length).unsqueeze(0);  // left padding removed
      EXPECT_TRUE(run(alone, torch::ones_like(alone), xpo::generation::RowStreams{{streams.keys[i]}}).equal(all.narrow(0, i, 1)))
          << "row " << i << " alone";
    }
  }
  auto model = xpo::models::load_causal_lm(xpo::test::causal_lm_fixture_folders().front());
  xpo::generation::SamplingOptions options;
  options.eos_token_ids = {2};
  const auto ids = torch::full({2, 3}, 5, torch::kLong);
  EXPECT_THROW((void)xpo::generation::generate(model, ids, torch::ones_like(ids), options, xpo::generation::RowStreams{{1}}), xpo::Error)
      << "one key per row";
}

TEST(Generate, StreamingCallbackSeesEveryStep) {
  const auto folder = xpo::test::causal_lm_fixture_folders().front();
  auto model = xpo::models::load_causal_lm(folder);
  const auto reference = xpo::test::read_json(folder / "reference.json");
  const auto& g = reference.at("greedy");
  auto options = greedy_options(g);
  auto gen = xpo::compat::make_generator(torch::kCPU, 0);
  std::vector<torch::Tensor> streamed;
  const auto out = xpo::generation::generate(model, to_tensor(g.at("input_ids"), torch::kLong), to_tensor(g.at("attention_mask"), torch::kLong),
                                             options, gen, [&](std::int64_t step, const torch::Tensor& tokens, const torch::Tensor&) {
                                               EXPECT_EQ(step, static_cast<std::int64_t>(streamed.size()));
                                               streamed.push_back(tokens);
                                             });
  ASSERT_EQ(static_cast<std::int64_t>(streamed.size()), out.completion_ids.size(1));
  EXPECT_TRUE(torch::stack(streamed, 1).equal(out.completion_ids));
}

TEST(Generate, PromptThatLeavesNoRoomIsAnErrorNamingTheRow) {
  auto model = xpo::models::load_causal_lm(xpo::test::causal_lm_fixture_folders().front());
  const auto context = model->config().max_position_embeddings;
  const auto ids = torch::full({2, 8}, 5, torch::kLong);
  auto mask = torch::ones_like(ids);
  mask[0].narrow(0, 0, 4).zero_();  // row 0 is shorter
  xpo::generation::SamplingOptions options;
  options.eos_token_ids = {2};
  options.max_new_tokens = context - 7;  // row 1 (8 tokens) needs context + 1 positions
  auto gen = xpo::compat::make_generator(torch::kCPU, 0);
  try {
    (void)xpo::generation::generate(model, ids, mask, options, gen);
    FAIL() << "must throw";
  } catch (const xpo::Error& e) {
    EXPECT_NE(std::string(e.what()).find("prompt row 1 has 8 tokens"), std::string::npos) << e.what();
  }
  options.max_new_tokens = context - 8;
  EXPECT_NO_THROW((void)xpo::generation::generate(model, ids, mask, options, gen));
}

// The LoRA policy's and its reference's (adapters off) samples in one batched decode of 2B rows
// (generate_adapted_and_base) are those of two decodes from the same row streams: the same tokens, masks and
// widths, and log-probs equal to float summation order (|a - e| <= 1e-5 (1 + |e|)); greedy and sampled (with
// top-k/top-p), with the KV cache and without, on every fixture model with adapters on all its linear layers and
// B initialised non-zero (N(0, 0.1): the adapters change samples). As for RowStreamsMakeARowsSampleIndependentOfItsBatch,
// the tokens are equal as long as the BLAS's rounding of a row in a batch of another size (about 1e-6 of the
// logits here) moves no draw across a token boundary.
TEST(Generate, FusedLoRADecodeEqualsTwoSeparateDecodes) {
  bool adapters_changed_something = false;
  for (const auto& folder : xpo::test::causal_lm_fixture_folders()) {
    SCOPED_TRACE(folder.string());
    auto model = xpo::models::load_causal_lm(folder);
    torch::manual_seed(11);
    model->enable_lora({.r = 2, .alpha = 4, .dropout = 0.0, .target_modules = model->config().linear_layer_names()});
    {
      torch::NoGradGuard no_grad;
      for (const auto& p : model->named_parameters())
        if (p.key().find("lora_B") != std::string::npos) p.value().normal_(0.0, 0.1);
    }
    const auto reference = xpo::test::read_json(folder / "reference.json");
    const auto& g = reference.at("greedy");
    auto options = greedy_options(g);
    options.output_token_logprobs = true;
    const auto ids = to_tensor(g.at("input_ids"), torch::kLong), mask = to_tensor(g.at("attention_mask"), torch::kLong);
    xpo::generation::RowStreams policy_streams, reference_streams;
    for (std::int64_t i = 0; i < ids.size(0); ++i) {
      policy_streams.keys.push_back(xpo::generation::RowStreams::key({3, 1, static_cast<std::uint64_t>(i)}));
      reference_streams.keys.push_back(xpo::generation::RowStreams::key({3, 2, static_cast<std::uint64_t>(i)}));
    }
    for (auto [temperature, top_k, top_p] : {std::tuple{0.0, std::int64_t{0}, 1.0}, std::tuple{1.0, std::int64_t{0}, 1.0},
                                             std::tuple{0.8, std::int64_t{7}, 0.9}}) {
      options.temperature = temperature;
      options.top_k = top_k;
      options.top_p = top_p;
      for (bool use_cache : {true, false}) {
        SCOPED_TRACE("temperature " + std::to_string(temperature) + (use_cache ? ", KV cache" : ", full recompute"));
        options.use_cache = use_cache;
        const auto policy = xpo::generation::generate(model, ids, mask, options, policy_streams);
        const auto base = [&] {
          xpo::models::AdaptersDisabled off(model->adapter_switch());
          return xpo::generation::generate(model, ids, mask, options, reference_streams);
        }();
        const auto [fused_policy, fused_base] =
            xpo::generation::generate_adapted_and_base(model, ids, mask, options, policy_streams, reference_streams);
        EXPECT_FALSE(model->adapter_switch()->leading_rows.has_value()) << "the switch is restored";
        for (const auto& [fused, separate, what] : {std::tuple{&fused_policy, &policy, "policy rows"}, std::tuple{&fused_base, &base, "reference rows"}}) {
          SCOPED_TRACE(what);
          EXPECT_TRUE(fused->completion_ids.equal(separate->completion_ids)) << fused->completion_ids << "\nvs\n" << separate->completion_ids;
          EXPECT_TRUE(fused->completion_mask.equal(separate->completion_mask));
          EXPECT_TRUE(fused->contains_eos.equal(separate->contains_eos));
          EXPECT_TRUE(xpo::test::all_close(fused->token_logprobs, separate->token_logprobs, 1e-5));
        }
        // Without adapters the reference's greedy tokens; a fused decode that ran every row adapted (or none) would
        // differ from the separate ones somewhere once the adapters change a sample.
        const auto width = options.max_new_tokens;
        if (!padded(policy.completion_ids, width, options.pad_token_id).equal(padded(base.completion_ids, width, options.pad_token_id)) &&
            temperature == 0)
          adapters_changed_something = true;
      }
    }
  }
  EXPECT_TRUE(adapters_changed_something) << "the adapters changed no greedy sample: the test would not see them applied to the wrong rows";
  auto model = xpo::models::load_causal_lm(xpo::test::causal_lm_fixture_folders().front());
  model->enable_lora({.r = 2, .alpha = 4, .dropout = 0.0, .target_modules = {"q_proj"}});
  xpo::generation::SamplingOptions options;
  options.eos_token_ids = {2};
  const auto ids = torch::full({2, 3}, 5, torch::kLong);
  const xpo::generation::RowStreams two{{1, 2}}, one{{1}};
  EXPECT_THROW((void)xpo::generation::generate_adapted_and_base(model, ids, torch::ones_like(ids), options, two, one), xpo::Error)
      << "one key per row";
  xpo::models::AdaptersDisabled off(model->adapter_switch());
  EXPECT_THROW((void)xpo::generation::generate_adapted_and_base(model, ids, torch::ones_like(ids), options, two, two), xpo::Error)
      << "adapters off";
}

}  // namespace
