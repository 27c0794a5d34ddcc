// Golden XPO steps ($XPO_FIXTURES_DIR/golden/xpo_step_golden.jsonl, schema in ALGORITHM.md §5): the golden ids
// and aligned logits go through the Trainer's own step functions (training/step.hpp: log-probs, scoring rules,
// loss, metrics); every intermediate, the loss, every metric and the gradients w.r.t. both policy logit tensors
// must match.
// Tolerances (ALGORITHM.md §5), as |actual - expected| <= tol * (1 + |expected|):
//   float64: 1e-9 everywhere;  float32: 1e-5 for the loss, log-probs and metrics, 1e-4 for gradients.
// [fix] rules: the completion-only EOS penalty (`expected_completion_only_eos_penalty` when present), and
// `logps/*` from the policy sums only (checked against intermediate.chosen/rejected_policy_logps).
#include <gtest/gtest.h>

#include <xpo/xpo.hpp>

#include "support/fixtures.hpp"

namespace {

using nlohmann::json;
using xpo::test::all_close;
using xpo::test::to_tensor;

struct Tolerances {
  double values;     // loss, log-probs, metrics, every other float
  double gradients;  // d loss / d policy logits
};

struct GoldenRun {
  std::map<std::string, torch::Tensor> intermediate;
  torch::Tensor loss;
  std::map<std::string, double> metrics;
  torch::Tensor grad_policy_logits_model_data;
  torch::Tensor grad_policy_logits_ref_data;
};

// The tensor path of one XPO step, from raw completions and aligned logits to loss, metrics and gradients.
GoldenRun run_step(const json& golden, torch::ScalarType dtype) {
  const auto& config = golden.at("config");
  const auto& in = golden.at("inputs");
  const std::int64_t eos = config.at("eos_token_id").get<std::int64_t>();
  const std::int64_t pad = config.at("pad_token_id").get<std::int64_t>();
  const xpo::LossWeights weights{config.at("alpha").get<double>(), config.at("beta").get<double>()};
  std::optional<double> penalty;
  if (!config.at("missing_eos_penalty").is_null()) penalty = config.at("missing_eos_penalty").get<double>();

  GoldenRun run;
  auto& im = run.intermediate;
  // 3. truncate after the first EOS
  const auto model = xpo::truncate_after_eos(to_tensor(in.at("model_completion_ids_raw"), torch::kLong), eos, pad);
  const auto ref = xpo::truncate_after_eos(to_tensor(in.at("ref_completion_ids_raw"), torch::kLong), eos, pad);
  im["model_completion_ids"] = model.ids;
  im["model_completion_mask"] = model.mask;
  im["ref_completion_ids"] = ref.ids;
  im["ref_completion_mask"] = ref.mask;

  // 5. per-token log-probs from raw logits; the policy's carry grad
  auto policy_logits_model = to_tensor(in.at("policy_logits_model_data"), dtype).requires_grad_();
  auto policy_logits_ref = to_tensor(in.at("policy_logits_ref_data"), dtype).requires_grad_();
  const auto ref_logits_model = to_tensor(in.at("ref_logits_model_data"), dtype);
  const auto ref_logits_ref = to_tensor(in.at("ref_logits_ref_data"), dtype);
  im["policy_logps_model_data_unmasked"] = xpo::selective_log_softmax(policy_logits_model, model.ids);
  im["policy_logps_ref_data_unmasked"] = xpo::selective_log_softmax(policy_logits_ref, ref.ids);
  im["ref_logps_model_data_unmasked"] = xpo::selective_log_softmax(ref_logits_model, model.ids);
  im["ref_logps_ref_data_unmasked"] = xpo::selective_log_softmax(ref_logits_ref, ref.ids);
  // From here on the Trainer's own step functions (training/step.hpp), fed the golden logits.
  const auto lp = xpo::training::token_logps_from_aligned_logits(policy_logits_model, policy_logits_ref,
                                                                 ref_logits_model, ref_logits_ref, model, ref);
  im["policy_logps_model_data"] = lp.policy_model_data;
  im["policy_logps_ref_data"] = lp.policy_ref_data;
  im["ref_logps_model_data"] = lp.ref_model_data;
  im["ref_logps_ref_data"] = lp.ref_ref_data;

  // 4. score and pick the winner
  const std::array<std::int64_t, 1> eos_ids{eos};
  const auto model_eos = xpo::contains_any_of(model.ids, eos_ids);
  const auto ref_eos = xpo::contains_any_of(ref.ids, eos_ids);
  im["model_contain_eos_completion"] = model_eos;
  im["ref_contain_eos_completion"] = ref_eos;
  xpo::training::Preference preference;
  if (config.at("scorer") == "reward") {
    preference = xpo::training::preference_from_scores(to_tensor(in.at("model_scores_raw"), dtype),
                                                       to_tensor(in.at("ref_scores_raw"), dtype), model_eos, ref_eos, penalty);
    im["model_scores"] = preference.model_scores;
    im["ref_scores"] = preference.ref_scores;
  } else {
    preference = xpo::training::preference_from_judgements(in.at("judge_ranks").get<std::vector<int>>(), torch::kCPU);
  }
  im["chosen_mask"] = preference.chosen_mask;

  // 6. loss and metrics
  const auto result = config.at("loss_type") == "sigmoid"
                          ? xpo::training::loss_and_metrics(xpo::losses::XPO<xpo::losses::Sigmoid>{}, lp, preference, model_eos, ref_eos, weights)
                          : xpo::training::loss_and_metrics(xpo::losses::XPO<xpo::losses::IPO>{}, lp, preference, model_eos, ref_eos, weights);
  const auto& logps = result.logps;
  im["policy_logps_model_data_sum"] = logps.policy_model_data;
  im["policy_logps_ref_data_sum"] = logps.policy_ref_data;
  im["ref_logps_model_data_sum"] = logps.ref_model_data;
  im["ref_logps_ref_data_sum"] = logps.ref_ref_data;
  const auto& out = result.loss;
  im["chosen_policy_logps"] = out.chosen_policy_logps;
  im["rejected_policy_logps"] = out.rejected_policy_logps;
  im["chosen_ref_logps"] = out.chosen_ref_logps;
  im["rejected_ref_logps"] = out.rejected_ref_logps;
  im["chosen_log_ratios"] = out.chosen_log_ratios;
  im["rejected_log_ratios"] = out.rejected_log_ratios;
  im["logits"] = out.logits;
  im["dpo_losses"] = out.dpo_losses;
  im["xpo_losses"] = out.xpo_losses;
  im["chosen_rewards"] = out.chosen_rewards;
  im["rejected_rewards"] = out.rejected_rewards;
  run.loss = out.loss;
  run.metrics = result.metrics;

  // 7. gradients of the loss w.r.t. both policy logit tensors (GA = 1 here)
  out.loss.backward();
  run.grad_policy_logits_model_data = policy_logits_model.grad();
  run.grad_policy_logits_ref_data = policy_logits_ref.grad();
  return run;
}

// Intermediates that follow TRL's own rule rather than xpo's (checked separately below).
bool is_trl_only(const std::string& key) { return key.find("prompt_and_completion") != std::string::npos; }

void check_case(const json& golden, torch::ScalarType dtype, Tolerances tol) {
  const std::string name = golden.at("name").get<std::string>();
  SCOPED_TRACE("golden case '" + name + "' in " + std::string(c10::toString(dtype)));
  const bool fixed_rule = golden.contains("expected_completion_only_eos_penalty") &&
                          !golden.at("expected_completion_only_eos_penalty").is_null();
  const json& expected = fixed_rule ? golden.at("expected_completion_only_eos_penalty") : golden.at("expected");
  const GoldenRun run = run_step(golden, dtype);

  std::size_t compared = 0;
  for (const auto& [key, value] : expected.at("intermediate").items()) {
    if (is_trl_only(key)) continue;
    if (value.is_null()) {
      EXPECT_EQ(run.intermediate.count(key), 0u) << key << " is null in the fixture (no reward model) but xpo computed it";
      continue;
    }
    ASSERT_EQ(run.intermediate.count(key), 1u) << "xpo does not produce intermediate '" << key << "'";
    EXPECT_TRUE(all_close(run.intermediate.at(key), value, tol.values)) << "intermediate " << key;
    ++compared;
  }
  EXPECT_GE(compared, 30u) << "the fixture lists fewer intermediates than the schema promises";

  EXPECT_TRUE(all_close(run.loss, expected.at("loss"), tol.values)) << "loss";
  for (const auto& [key, value] : expected.at("metrics").items()) {
    if (value.is_null()) {
      EXPECT_EQ(run.metrics.count(key), 0u) << "metric " << key << " must be absent (null in the fixture)";
      continue;
    }
    ASSERT_EQ(run.metrics.count(key), 1u) << "metric " << key << " is missing";
    // [fix] logps/* are the policy's sums only; TRL's metric adds the reference sums.
    const json& want = key == "logps/chosen"     ? json(expected.at("intermediate").at("chosen_policy_logps"))
                       : key == "logps/rejected" ? json(expected.at("intermediate").at("rejected_policy_logps"))
                                                 : value;
    const auto want_value = want.is_array() ? to_tensor(want, torch::kDouble).mean()
                                            : torch::tensor(want.get<double>(), torch::kDouble);
    EXPECT_TRUE(all_close(torch::tensor(run.metrics.at(key), torch::kDouble), want_value, tol.values)) << "metric " << key;
  }
  EXPECT_EQ(run.metrics.size(), [&] {
    std::size_t n = 0;
    for (const auto& [key, value] : expected.at("metrics").items()) n += value.is_null() ? 0 : 1;
    return n;
  }()) << "xpo logs a metric the fixture does not have";

  EXPECT_TRUE(all_close(run.grad_policy_logits_model_data, expected.at("grad_policy_logits_model_data"), tol.gradients))
      << "d loss / d policy_logits_model_data";
  EXPECT_TRUE(all_close(run.grad_policy_logits_ref_data, expected.at("grad_policy_logits_ref_data"), tol.gradients))
      << "d loss / d policy_logits_ref_data";
}

std::vector<json> golden_cases() {
  auto cases = xpo::test::read_jsonl(xpo::test::fixture_path("golden/xpo_step_golden.jsonl"));
  if (cases.empty()) throw std::runtime_error("golden/xpo_step_golden.jsonl holds no case");
  return cases;
}

TEST(GoldenXpoStep, EveryCaseMatchesInFloat64) {
  for (const auto& golden : golden_cases()) check_case(golden, torch::kDouble, {1e-9, 1e-9});
}

TEST(GoldenXpoStep, EveryCaseMatchesInFloat32) {
  for (const auto& golden : golden_cases()) check_case(golden, torch::kFloat, {1e-5, 1e-4});
}

// The [fix] EOS rule differs from TRL's exactly where the prompt holds EOS (pad == eos, or EOS inside prompts):
// there the fixture's TRL-rule flags say "contains EOS" for completions that have none.
TEST(GoldenXpoStep, CompletionOnlyEosRuleDiffersFromTrlOnlyThroughThePrompt) {
  std::size_t differing_cases = 0;
  for (const auto& golden : golden_cases()) {
    SCOPED_TRACE(golden.at("name").get<std::string>());
    const auto& im = golden.at("expected").at("intermediate");
    for (const std::string who : {"model", "ref"}) {
      const auto completion_only = to_tensor(im.at(who + "_contain_eos_completion"), torch::kBool);
      const auto trl_rule = to_tensor(im.at(who + "_contain_eos_prompt_and_completion"), torch::kBool);
      // TRL's rule can only add EOS (from the prompt), never remove one.
      EXPECT_TRUE(trl_rule.logical_or(completion_only).equal(trl_rule));
      if (!trl_rule.equal(completion_only)) ++differing_cases;
    }
  }
  EXPECT_GT(differing_cases, 0u) << "no golden case exercises the [fix] EOS-penalty rule";
}

}  // namespace
