// xpo-quickstart — the README's main job. Until the trainer lands, it runs the XPO loss path of ALGORITHM.md §1
// on a toy policy: a learnable [T, V] table of next-token logits sampled position by position, a frozen copy as
// the reference, and a rule reward that prefers one token. Each step: sample both completions, truncate after
// EOS, score with the missing-EOS penalty, pick chosen/rejected, XPO loss, AdamW. The share of the rewarded token
// in the policy's samples rises; TRL's metrics are printed every few steps.
#include <xpo/xpo.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

constexpr std::int64_t kVocab = 12, kWidth = 8, kBatch = 16, kPad = 0, kEos = 2, kRewarded = 7;

// Sample one completion per row from the position-wise table: logits [T, V] -> ids [B, T].
torch::Tensor sample(const torch::Tensor& table, double temperature, at::Generator& gen) {
  const auto probs = torch::softmax(table.detach() / temperature, -1);                       // [T, V]
  return torch::multinomial(probs, kBatch, /*replacement=*/true, gen).transpose(0, 1).contiguous();  // [B, T]
}

// The rule reward: how many rewarded tokens the completion holds (before EOS): ids, mask [B, T] -> [B].
torch::Tensor rule_reward(const xpo::TruncatedCompletions& c) {
  return (c.ids.eq(kRewarded).to(torch::kLong) * c.mask).sum(-1).to(torch::kFloat);
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 150;
  torch::manual_seed(0);
  auto gen = at::detail::createCPUGenerator(0);
  xpo::XPOConfig config;
  config.learning_rate = 0.05;  // a toy table learns fast; real models use TRL's 5e-7
  config.missing_eos_penalty = 1.0;
  config.validate();
  const auto schedule = xpo::schedules::PerEpoch<>::checked(config.alpha, config.beta);
  const xpo::losses::XPO<xpo::losses::Sigmoid> loss_fn;

  auto policy = torch::zeros({kWidth, kVocab}).requires_grad_();  // uniform start
  const auto reference = policy.detach().clone();
  torch::optim::AdamW optimizer({policy}, torch::optim::AdamWOptions(config.learning_rate).weight_decay(0.0));

  std::printf("xpo %s on LibTorch %s — toy XPO run: %d steps, B=%lld, T=%lld, V=%lld, reward = count of token %lld\n",
              xpo::version, xpo::compat::torch_version().c_str(), steps, static_cast<long long>(kBatch),
              static_cast<long long>(kWidth), static_cast<long long>(kVocab), static_cast<long long>(kRewarded));
  std::printf("%6s %10s %10s %12s %12s %16s\n", "step", "loss", "loss/xpo", "rewards/marg", "objective/kl",
              "share(rewarded)");
  double first_share = 0, last_share = 0;
  for (int step = 0; step < steps; ++step) {
    const double epoch = 0.0;  // one pass of a prompt-less toy
    const xpo::LossWeights weights{schedule.alpha(epoch), schedule.beta(epoch)};
    // 2-3. sample both completions (no grad), truncate after the first EOS
    const auto model = xpo::truncate_after_eos(sample(policy, config.temperature, gen), kEos, kPad);
    const auto ref = xpo::truncate_after_eos(sample(reference, config.temperature, gen), kEos, kPad);
    // 4. score with the completion-only missing-EOS penalty; a tie goes to the policy
    const std::array<std::int64_t, 1> eos{kEos};
    const auto model_eos = xpo::contains_any_of(model.ids, eos), ref_eos = xpo::contains_any_of(ref.ids, eos);
    const auto model_scores = xpo::scoring::apply_missing_eos_penalty(rule_reward(model), model_eos, config.missing_eos_penalty);
    const auto ref_scores = xpo::scoring::apply_missing_eos_penalty(rule_reward(ref), ref_eos, config.missing_eos_penalty);
    const auto chosen = xpo::scoring::chosen_mask_from_scores(model_scores, ref_scores);
    // 5. per-token log-probs from raw logits (every row shares the table: expand it to [B, T, V])
    const auto policy_logits = policy.unsqueeze(0).expand({kBatch, kWidth, kVocab});
    const auto reference_logits = reference.unsqueeze(0).expand({kBatch, kWidth, kVocab});
    const xpo::PreferenceLogps logps{xpo::aligned_token_logps(policy_logits, model.ids, model.mask).sum(-1),
                                     xpo::aligned_token_logps(policy_logits, ref.ids, ref.mask).sum(-1),
                                     xpo::aligned_token_logps(reference_logits, model.ids, model.mask).sum(-1),
                                     xpo::aligned_token_logps(reference_logits, ref.ids, ref.mask).sum(-1), chosen};
    // 6-7. loss, backward, clip, AdamW
    const auto out = loss_fn.compute(logps, weights);
    optimizer.zero_grad();
    out.loss.backward();
    torch::nn::utils::clip_grad_norm_(std::vector<torch::Tensor>{policy}, config.max_grad_norm);
    optimizer.step();

    const double share = (model.ids.eq(kRewarded).to(torch::kLong) * model.mask).sum().item<double>() /
                         model.mask.sum().item<double>();
    if (step == 0) first_share = share;
    last_share = share;
    if (step % 15 == 0 || step + 1 == steps) {
      const auto m = xpo::losses::step_metrics({logps, out, weights, model_eos, ref_eos, model_scores, ref_scores});
      std::printf("%6d %10.4f %10.2e %12.4f %12.4f %16.3f\n", step, out.loss.item<double>(), m.at("loss/xpo"),
                  m.at("rewards/margins"), m.at("objective/kl"), share);
    }
  }
  std::printf("share of the rewarded token in policy samples: %.3f -> %.3f (uniform start: %.3f)\n", first_share,
              last_share, 1.0 / kVocab);
  return last_share > first_share ? 0 : 1;
}
