// xpo/training/trainer.hpp — xpo::Trainer<Model, Scorer, Loss, Schedule>: the online XPO loop of ALGORITHM.md §1.
//
//   for each optimizer step:                                       (gradient_accumulation_steps micro-batches)
//     prompts ─► policy samples y_m, reference samples y_r          generation/, no grad, a stream per prompt
//             ─► truncate after EOS ─► Scorer: rewards or judgement  scoring/
//             ─► [prompt; y_m] and [prompt; y_r] as ONE 2B batch: policy forward (grad), reference forward
//                (each prompt once per model; the reference's log-probs of y_r recorded while sampling: StepOptions)
//             ─► Loss(alpha, beta from the Schedule at floor(epoch)) ─► backward(loss / GA)
//     clip grad norm, AdamW, the learning-rate schedule (linear warmup/decay by default); metrics averaged
//     since the last log; checkpoints
//
// The Trainer owns the loop and nothing else: every decision is a policy's. A type that does not fit a slot
// fails here, with the slot's concept named in the first error.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "xpo/core/compat.hpp"
#include "xpo/core/concepts.hpp"
#include "xpo/core/config.hpp"
#include "xpo/core/errors.hpp"
#include "xpo/core/json_file.hpp"
#include "xpo/core/tensor_ops.hpp"
#include "xpo/core/types.hpp"
#include "xpo/distributed/reducer.hpp"
#include "xpo/distributed/world.hpp"
#include "xpo/generation/generate.hpp"
#include "xpo/io/prompt_dataset.hpp"
#include "xpo/io/safetensors.hpp"
#include "xpo/losses/xpo.hpp"
#include "xpo/models/causal_lm.hpp"
#include "xpo/models/lora.hpp"
#include "xpo/models/pretrained.hpp"
#include "xpo/schedules/per_epoch.hpp"
#include "xpo/scoring/function.hpp"
#include "xpo/scoring/reward_model.hpp"
#include "xpo/text/chat.hpp"
#include "xpo/text/tokenizer.hpp"
#include "xpo/training/callbacks.hpp"
#include "xpo/training/mixed_precision.hpp"
#include "xpo/training/state.hpp"
#include "xpo/training/step.hpp"

namespace xpo {

// Dataset rows as read from JSONL (io::load_prompt_dataset): {"prompt": "text" | [{"role", "content"}, ...],
// "chat_template_kwargs"?: {...}, "tools"?: [...], "documents"?: [...]} (the last three reach the chat template).
using PromptDataset = io::PromptRows;

// One completion of LogCompletionsCallback / Trainer::complete.
struct CompletionSample {
  std::string prompt;
  std::string completion;
  std::optional<double> score;  // reward (reward scorer), or 1/0 = beat / lost to the reference's (judge)
};

template <CausalLanguageModel Model, PreferenceScorer Scorer, PreferenceLoss Loss = losses::XPO<losses::Sigmoid>,
          WeightSchedule Schedule = schedules::PerEpoch<>>
class Trainer {
 public:
  using model_type = Model;
  using scorer_type = Scorer;
  using loss_type = Loss;
  using schedule_type = Schedule;

  // `reference`: the frozen reference model. When absent: the policy with its LoRA adapters switched off (no
  // second copy), or a frozen copy of the policy (models::CausalLM). `schedule`: when absent, built from
  // config.alpha / config.beta (Schedule must then have a static checked(alphas, betas)).
  Trainer(Model policy, std::optional<Model> reference, Scorer scorer, text::Tokenizer tokenizer, XPOConfig config,
          PromptDataset train_dataset, PromptDataset eval_dataset = {}, Loss loss = Loss{},
          std::optional<Schedule> schedule = std::nullopt)
      : policy_(std::move(policy)), scorer_(std::move(scorer)), tokenizer_(std::move(tokenizer)),
        config_(validated(std::move(config))), loss_(std::move(loss)), schedule_(make_schedule(config_, std::move(schedule))) {
    torch::manual_seed(static_cast<std::uint64_t>(config_.seed));  // as the HF Trainer's set_seed (dropout, if on)
    if constexpr (requires { Loss::dpo_loss::name; }) {  // a built-in DPO loss must be the one the config names
      const std::string_view name = Loss::dpo_loss::name;
      if ((name == "sigmoid" || name == "ipo") && name != config_.loss_type) {
        throw ConfigError("loss_type: the config says \"" + config_.loss_type + "\" but the trainer's Loss is \"" +
                          std::string(Loss::dpo_loss::name) + "\"");
      }
    }
    if constexpr (!RewardScorer<Scorer>) {  // TRL's OnlineDPO refuses it too: a judge gives no score to lower
      if (config_.missing_eos_penalty) {
        throw ConfigError("missing_eos_penalty: a pairwise judge gives no scores for it to lower, so it would have no "
                          "effect; unset it, or score with a reward model");
      }
    }
    device_ = first_device(policy_);
    if (config_.fp16 && !device_.is_cuda())  // config.device may say cuda while the policy is elsewhere
      throw ConfigError("fp16: fp16 mixed precision requires a GPU, but the policy is on " + device_.str() +
                        " (LibTorch's CPU autocast runs bfloat16 only; use bf16)");
    autocast_dtype_ = training::autocast_dtype(config_);
    if (config_.fp16) scaler_.emplace();
    if (config_.gradient_checkpointing) enable_gradient_checkpointing();
    setup_reference(std::move(reference));
    setup_tokens();
    if constexpr (requires { scorer_.vocab_size(); scorer_.has_own_tokenizer(); }) {
      if (!scorer_.has_own_tokenizer() && scorer_.vocab_size() != unwrap(policy_).vocab_size()) {
        throw ConfigError("reward model: its vocabulary (" + std::to_string(scorer_.vocab_size()) +
                          ") differs from the policy's (" + std::to_string(unwrap(policy_).vocab_size()) +
                          "); give the reward model its own tokenizer");
      }
    }
    if (tokenizer_.chat_template()) chat_ = text::ChatTemplate::of(tokenizer_);
    train_ = prepare(train_dataset, "train_dataset", &train_messages_);
    eval_ = prepare(eval_dataset, "eval_dataset");
    eval_rows_ = std::move(eval_dataset);
    if (train_.empty()) throw ConfigError("train_dataset is empty");
    plan_steps();
    state_.run_id = new_run_id();
    params_ = trainable_parameters();
    if (params_.empty()) throw ConfigError("the policy has no trainable parameters");
    optimizer_ = std::make_unique<torch::optim::AdamW>(
        params_, torch::optim::AdamWOptions(config_.learning_rate)
                     .betas({config_.adam_beta1, config_.adam_beta2})
                     .eps(config_.adam_epsilon)
                     .weight_decay(config_.weight_decay));
  }

  // ---- the loop -----------------------------------------------------------------------------------------------
  // Runs optimizer steps until state().max_steps, calling each callback's hooks; saves checkpoints every
  // save_steps and the final model to output_dir. After request_stop() (from a callback, e.g. on Ctrl-C) it
  // finishes the current optimizer step, logs the open metric window, saves a checkpoint and returns without
  // writing the final model; stopped_early() then says so.
  template <class... Callbacks>
  void train(Callbacks&... callbacks) {
    static_assert((training::Callback<Callbacks, Trainer> && ...),
                  "every argument of Trainer::train must be a callback: a type with on_train_begin, on_step_end, "
                  "on_log, on_save or on_train_end (see training/callbacks.hpp)");
    if (world_.is_main()) {
      std::error_code ec;
      std::filesystem::create_directories(config_.output_dir, ec);
      if (ec || !std::filesystem::is_directory(config_.output_dir))
        throw FileError(config_.output_dir, "cannot create the output folder" + (ec ? ": " + ec.message() : std::string()));
    }
    if (state_.global_step == 0 && !config_.overwrite_output_dir) {  // rank 0 decides for all
      std::string problem = world_.is_main() ? another_runs_checkpoints() : std::string();
      if (world_.size() > 1 && world_.sum(problem.empty() ? 0.0 : 1.0, "checking output_dir") > 0 && problem.empty())
        problem = "output_dir " + config_.output_dir + " already holds checkpoints of another run (see rank 0)";
      if (!problem.empty()) throw ConfigError(problem);
    }
    stop_requested_ = stopped_early_ = false;
    if (state_.global_step == 0 && world_.is_main()) warn_if_updates_round_away();
    (call_train_begin(callbacks), ...);
    while (state_.global_step < state_.max_steps && !stop_requested_) {
      optimizer_step();
      (call_step_end(callbacks), ...);
      if (world_.size() > 1) stop_requested_ = world_.sum(stop_requested_ ? 1.0 : 0.0, "agreeing on a stop") > 0;
      const bool last = state_.global_step == state_.max_steps;
      if (state_.global_step % config_.logging_steps == 0 || last || stop_requested_) {
        const auto metrics = flush_metrics();
        state_.log_history.push_back(training::log_line(state_.global_step, metrics));
        if (world_.is_main()) (call_log(callbacks, metrics), ...);
      }
      if (state_.global_step % config_.save_steps == 0 || (stop_requested_ && !last)) {
        const auto folder = save_checkpoint();
        if (world_.is_main()) (call_save(callbacks, folder), ...);
      }
    }
    // A stop asked before the first step (in on_train_begin) has nothing new to save.
    stopped_early_ = stop_requested_ && state_.global_step < state_.max_steps;
    if (!stopped_early_) save_model(config_.output_dir);
    (call_train_end(callbacks), ...);
  }

  // Makes train() stop after the current optimizer step (see train). Call it from a callback; a signal handler
  // should only set a flag that a callback reads.
  void request_stop() noexcept { stop_requested_ = true; }
  // Whether the last train() returned before max_steps because of request_stop().
  [[nodiscard]] bool stopped_early() const noexcept { return stopped_early_; }

  // Data-parallel training in `world` (distributed/world.hpp); call it on every rank before train() or
  // resume_from_checkpoint(). The policy's parameters are broadcast from rank 0; each optimizer step's global
  // batch is per_device_train_batch_size x world size prompts, split evenly over the ranks (the epoch's order is
  // the same on every rank; a short last batch wraps to the epoch's first prompts so no rank is idle); each
  // prompt's samples come from its own streams, keyed by its place in the global batch (see sample_streams), so
  // the ranks sample exactly what one process with the global batch would; gradients are averaged over ranks
  // before clipping;
  // logged metrics are averaged over ranks (tokens_per_second is the job's total); only rank 0 calls on_log and
  // on_save and writes checkpoints and the final model, the others wait for it.
  void distribute(distributed::World world) {
    world_ = std::move(world);
    plan_steps();
    std::vector<torch::Tensor> all = unwrap(policy_).parameters();
    world_.broadcast(all);
    reducer_.reset();
    if (world_.communicates()) reducer_ = distributed::GradientReducer::attach(world_, params_);
  }
  [[nodiscard]] const distributed::World& world() const noexcept { return world_; }

  // The step's performance switches (training/step.hpp): each saves work without changing results beyond float
  // summation order; all on by default. Takes effect from the next micro-batch.
  void set_step_options(const training::StepOptions& options) noexcept { step_options_ = options; }
  [[nodiscard]] const training::StepOptions& step_options() const noexcept { return step_options_; }

  // One optimizer step: gradient_accumulation_steps micro-batches, clipping, AdamW, the LR schedule.
  // A non-finite loss or gradient norm skips the update: the weights and AdamW's moments are left as they were,
  // the step is counted in state().skipped_steps (logged as `skipped_steps`) and its metrics stay out of the
  // logs; more than config.max_skipped_steps such steps end the run with xpo::Error.
  void optimizer_step() {
    const auto t0 = Clock::now();
    last_timing_ = {};
    const auto ga = config_.gradient_accumulation_steps;
    const LossWeights weights = current_weights();
    const Window window_before = window_;
    bool finite_loss = true;
    for (std::int64_t k = 0; k < ga; ++k) {
      const auto rows = micro_batch_rows(state_.micro_step);
      // The last micro-batch's backward also averages the gradients over the ranks, bucket by bucket as they
      // are ready (distributed/reducer.hpp): the mean over ranks of the mean over each rank's rows = the global
      // batch's mean.
      if (reducer_ && k + 1 == ga) reducer_->arm();
      training::Metrics metrics;
      try {
        metrics = step(rows, weights);
      } catch (...) {
        if (reducer_) reducer_->disarm();
        throw;
      }
      finite_loss = finite_loss && std::isfinite(metrics.at("loss"));
      ++state_.micro_step;
    }
    if (reducer_) {  // what backward did not hide: the wait for the last buckets
      last_timing_.all_reduce = reducer_->finish();
      window_.all_reduce_seconds += last_timing_.all_reduce;
    }
    const auto t1 = Clock::now();
    const double lr = training::scheduled_learning_rate(config_, state_.global_step, state_.max_steps);
    for (auto& group : optimizer_->param_groups()) group.options().set_lr(lr);
    // fp16: the gradients back to their true size before clipping (GradScaler.unscale_), overflow noted.
    const bool found_inf = scaler_ && finite_loss && scaler_->unscale(params_);
    // LibTorch's clip_grad_norm_ (PyTorch's formula); max_grad_norm 0 = no clipping, the norm is still logged.
    const double grad_norm = torch::nn::utils::clip_grad_norm_(
        params_, config_.max_grad_norm > 0 ? config_.max_grad_norm : std::numeric_limits<double>::infinity());
    // One mechanism per skipped step (training/mixed_precision.hpp): the non-finite guard or the scaler's overflow.
    const auto verdict = training::step_verdict(finite_loss, std::isfinite(grad_norm), found_inf, scaler_.has_value());
    const bool skip = verdict == training::StepVerdict::skip_non_finite;
    if (verdict == training::StepVerdict::apply) optimizer_->step();
    if (scaler_ && finite_loss) scaler_->update(verdict == training::StepVerdict::skip_overflow);
    optimizer_->zero_grad();
    ++state_.global_step;
    state_.epoch = static_cast<double>(state_.micro_step) / static_cast<double>(state_.micro_batches_per_epoch);
    if (skip) {
      window_ = window_before;  // the skipped step's (non-finite) metrics stay out of the logs
      ++state_.skipped_steps;
      if (state_.skipped_steps > config_.max_skipped_steps) {
        throw Error("step " + std::to_string(state_.global_step) + ": non-finite " + (finite_loss ? "gradient" : "loss") +
                    "; " + std::to_string(state_.skipped_steps) + " optimizer steps skipped, more than max_skipped_steps = " +
                    std::to_string(config_.max_skipped_steps) +
                    ". No weight was updated with non-finite values; the last checkpoint in " + config_.output_dir +
                    " is intact (lower learning_rate, check the reward/judge and the data)");
      }
    } else if (verdict == training::StepVerdict::skip_overflow) {
      window_ = window_before;  // as a skipped step: its metrics stay out of the logs
    } else {
      window_.grad_norm = grad_norm;
    }
    window_.learning_rate = lr;
    last_timing_.optimizer = seconds(t1, Clock::now());
    last_timing_.total = seconds(t0, Clock::now());
    window_.optimizer_seconds += last_timing_.optimizer;
    window_.step_seconds += last_timing_.total;
    ++window_.optimizer_steps;
  }

  // One micro-batch (ALGORITHM.md §1.1–§1.7 up to backward): dataset rows -> gradients accumulated in the policy
  // (scaled by 1/gradient_accumulation_steps) and the micro-step's metrics added to the log window. The samples
  // are drawn from streams keyed by state().micro_step (optimizer_step advances it after each micro-batch).
  training::Metrics step(const std::vector<std::size_t>& rows, LossWeights weights) {
    const auto t0 = Clock::now();
    const Batch batch = make_batch(rows);
    // 2. both samples, no grad, dropout off, each prompt from its own random streams (one for the policy, one
    //    for the reference)
    const auto sampling = sampling_options();
    generation::Generation model_gen, ref_gen;
    // Under LoRA both samples in one decode of 2B rows that reads the base weights once (the same samples).
    const bool fused = reference_is_base_ && step_options_.fused_lora_decode;
    if constexpr (generation::SwitchableAdapterModel<Model>) {
      if (fused) {
        compat::AutocastGuard low_precision = autocast();
        auto both = sampling;
        both.output_token_logprobs = step_options_.record_reference_logps && decode_logps_equal_forward(batch);
        std::tie(model_gen, ref_gen) = generation::generate_adapted_and_base(
            policy_, batch.ids, batch.mask, both, sample_streams(kPolicyStream, rows.size()), sample_streams(kReferenceStream, rows.size()));
        model_gen.token_logprobs = torch::Tensor();  // only the reference's are used
      }
    }
    if (!fused) {
      compat::AutocastGuard low_precision = autocast();
      model_gen = generation::generate(policy_, batch.ids, batch.mask, sampling, sample_streams(kPolicyStream, rows.size()));
    }
    if (!fused) {
      compat::AutocastGuard low_precision = autocast();
      ReferenceScope scope(*this);
      // The reference's log-probs of its own sample, recorded as it draws it: its loss forward then skips that half.
      auto ref_sampling = sampling;
      ref_sampling.output_token_logprobs = step_options_.record_reference_logps && decode_logps_equal_forward(batch);
      ref_gen = generation::generate(reference(), batch.ids, batch.mask, ref_sampling, sample_streams(kReferenceStream, rows.size()));
    }
    const auto t1 = Clock::now();
    // 3. truncate after the first EOS (generate already pads after it; this pins the mask rule)
    const auto model_c = truncate_after_eos(model_gen.completion_ids, eos_ids_, pad_id_);
    const auto ref_c = truncate_after_eos(ref_gen.completion_ids, eos_ids_, pad_id_);
    const auto model_eos = contains_any_of(model_c.ids, eos_ids_);
    const auto ref_eos = contains_any_of(ref_c.ids, eos_ids_);
    // 4. score and pick the winner
    const CompletionBatch model_batch{batch.ids, batch.mask, model_c.ids, model_c.mask, batch.texts, decode_rows(model_c), batch.messages};
    const CompletionBatch ref_batch{batch.ids, batch.mask, ref_c.ids, ref_c.mask, batch.texts, decode_rows(ref_c), batch.messages};
    training::Preference preference;
    std::optional<double> judge_policy_prob;  // the judge's mean probability that the policy's sample is better
    if constexpr (RewardScorer<Scorer>) {
      const auto model_scores = scorer_.score(model_batch).to(device_).to(torch::kFloat);
      const auto ref_scores = scorer_.score(ref_batch).to(device_).to(torch::kFloat);
      preference = training::preference_from_scores(model_scores, ref_scores, model_eos, ref_eos, config_.missing_eos_penalty);
    } else {
      std::vector<CompletionPair> pairs;
      for (std::size_t i = 0; i < rows.size(); ++i) pairs.push_back({model_batch.completions[i], ref_batch.completions[i]});
      preference = training::preference_from_judgements(scorer_.judge(batch.texts, pairs), device_);
      if constexpr (requires { scorer_.last_first_probabilities(); }) {  // a judge with probabilities (PairRM)
        const auto& p = scorer_.last_first_probabilities();
        if (!p.empty()) judge_policy_prob = std::accumulate(p.begin(), p.end(), 0.0) / static_cast<double>(p.size());
      }
    }
    const auto t2 = Clock::now();
    // 5.–7. log-probs (the policy over ONE 2B batch, the reference over B or 2B rows), loss, backward
    const auto token_logps = completion_logps(batch, model_c, ref_c, ref_gen.token_logprobs);
    const auto result = training::loss_and_metrics(loss_, token_logps, preference, model_eos, ref_eos, weights);
    const auto micro_loss = result.loss.loss / static_cast<double>(config_.gradient_accumulation_steps);
    (scaler_ ? scaler_->scale(micro_loss) : micro_loss).backward();  // fp16: scaled, unscaled in optimizer_step
    const auto t3 = Clock::now();

    auto metrics = result.metrics;
    metrics["loss"] = result.loss.loss.detach().template item<double>();
    if (judge_policy_prob) metrics["objective/judge_policy_prob"] = *judge_policy_prob;
    const auto tokens = model_c.mask.sum().template item<double>() + ref_c.mask.sum().template item<double>();
    window_.add(metrics);
    window_.tokens += tokens;
    last_timing_.generation += seconds(t0, t1);
    last_timing_.scoring += seconds(t1, t2);
    last_timing_.forward_backward += seconds(t2, t3);
    window_.generation_seconds += seconds(t0, t1);
    window_.scoring_seconds += seconds(t1, t2);
    window_.forward_backward_seconds += seconds(t2, t3);
    return metrics;
  }

  // ---- checkpoints ----------------------------------------------------------------------------------------------
  // output_dir/checkpoint-N: the model (HF folder; under LoRA the PEFT adapter), the tokenizer files, optimizer
  // state, the CPU generator's state (dropout's stream; sampling streams are keyed by the step, see
  // sample_streams, and need no state) and trainer_state.json. Written to a temporary folder and renamed, so an interrupted save
  // never becomes the latest checkpoint; a failed one (disk full, folder unwritable) is an xpo::FileError that
  // leaves every earlier checkpoint as it was.
  std::filesystem::path save_checkpoint() {
    const std::filesystem::path out(config_.output_dir);
    const auto folder = training::checkpoint_folder(out, state_.global_step);
    if (!world_.is_main()) {
      world_.barrier("waiting for rank 0 to save " + folder.string());
      return folder;
    }
    const auto saved = write_checkpoint(out, folder);
    world_.barrier("saving " + folder.string());
    return saved;
  }

  std::filesystem::path write_checkpoint(const std::filesystem::path& out, const std::filesystem::path& folder) {
    const auto tmp = out / (".tmp-" + folder.filename().string());
    std::error_code ec;
    std::filesystem::remove_all(tmp, ec);
    std::filesystem::create_directories(tmp, ec);
    if (ec) throw FileError(tmp.string(), "cannot create the checkpoint folder: " + ec.message());
    try {
      save_weights(tmp, /*for_resume=*/true);
      copy_tokenizer_files(tmp);
      torch::save(*optimizer_, (tmp / "optimizer.pt").string());
      std::vector<torch::Tensor> rng = {compat::default_cpu_generator_state()};
      torch::save(rng, (tmp / "rng_state.pt").string());
      if (scaler_) {
        std::vector<torch::Tensor> scaler_state = {scaler_->state()};
        torch::save(scaler_state, (tmp / "scaler.pt").string());
      }
      auto state_json = state_.to_json();
      state_json["config"] = config_.to_json();
      write_json_file(tmp / "trainer_state.json", state_json);
    } catch (const std::exception& e) {
      std::filesystem::remove_all(tmp, ec);
      std::string what = e.what();
      what = what.substr(0, what.find('\n'));  // LibTorch's errors carry a backtrace after the first line
      throw FileError(folder.string(), "saving the checkpoint failed (earlier checkpoints are untouched): " + what);
    }
    const auto fail_move = [&](const std::error_code& why) {
      std::error_code ignored;
      std::filesystem::remove_all(tmp, ignored);
      throw FileError(folder.string(), "cannot move the checkpoint into place (earlier checkpoints are untouched): " + why.message());
    };
    if (std::filesystem::exists(folder)) {  // the same step saved again (e.g. a stop right after a save)
      const auto old = out / (".old-" + folder.filename().string());
      std::filesystem::remove_all(old, ec);
      std::filesystem::rename(folder, old, ec);
      if (ec) fail_move(ec);
      std::filesystem::rename(tmp, folder, ec);
      if (ec) {
        std::error_code ignored;
        std::filesystem::rename(old, folder, ignored);  // put the previous version back
        fail_move(ec);
      }
      std::filesystem::remove_all(old, ec);
    } else {
      std::filesystem::rename(tmp, folder, ec);
      if (ec) fail_move(ec);
    }
    training::rotate_checkpoints(out, config_.save_total_limit, state_.run_id, folder);
    return folder;
  }

  // Continues from a checkpoint folder (or "latest" in output_dir): weights, optimizer, the CPU generator,
  // position in the data. On the CPU, N steps + resume + N steps equals 2N steps bit for bit.
  void resume_from_checkpoint(const std::string& which) {
    const auto folder = training::resolve_checkpoint(which, config_.output_dir);
    const auto saved = read_json_file(folder / "trainer_state.json");
    auto state = training::TrainerState::from_json(saved, (folder / "trainer_state.json").string());
    if (state.micro_batches_per_epoch != micro_batches_per_epoch()) {
      throw ConfigError((folder / "trainer_state.json").string() + ": the checkpoint has " +
                        std::to_string(state.micro_batches_per_epoch) + " micro-batches per epoch, this run " +
                        std::to_string(micro_batches_per_epoch()) + " (different dataset, batch size or world size)");
    }
    load_weights(folder);
    torch::load(*optimizer_, (folder / "optimizer.pt").string());
    std::vector<torch::Tensor> rng;
    torch::load(rng, (folder / "rng_state.pt").string());
    if (rng.size() != 1) throw FileError((folder / "rng_state.pt").string(), "expected one generator state (the CPU's)");
    compat::set_default_cpu_generator_state(rng[0]);  // dropout's stream, when dropout is on
    if (scaler_) {  // fp16: the loss scale and its growth tracker, so the resumed steps scale as the run did
      const auto file = folder / "scaler.pt";
      if (!std::filesystem::exists(file))
        throw FileError(file.string(), "missing: the checkpoint was saved without fp16's loss scaler (resume with the "
                                       "run's own mixed-precision settings)");
      std::vector<torch::Tensor> scaler_state;
      torch::load(scaler_state, file.string());
      if (scaler_state.size() != 1) throw FileError(file.string(), "expected one tensor (the loss scaler's state)");
      scaler_->load_state(scaler_state[0], file.string());
    }
    if (state.global_step > state_.max_steps) {
      throw ConfigError(folder.string() + ": the checkpoint is at step " + std::to_string(state.global_step) +
                        ", past this run's max_steps = " + std::to_string(state_.max_steps) +
                        " (a checkpoint of another, longer run? resume a checkpoint of this run, raise max_steps, or "
                        "use another output_dir)");
    }
    state.max_steps = state_.max_steps;  // the run's length comes from this run's config
    state_ = std::move(state);
    window_ = {};
  }

  // The trained model as a Hugging Face folder (LoRA merged) plus the tokenizer files, in the dtype the input
  // checkpoint is stored in unless the caller asked for another (see save_weights).
  void save_model(const std::filesystem::path& folder) {
    if (world_.is_main()) {
      std::filesystem::create_directories(folder);
      save_weights(folder, /*for_resume=*/false);
      copy_tokenizer_files(folder);
    }
    world_.barrier("saving the model to " + folder.string());
  }

  // ---- sampling for logs and evaluation ---------------------------------------------------------------------
  // Completes dataset rows with the policy (the run's sampling settings, its own RNG stream so training is not
  // perturbed) and scores them. The stream is fixed by the seed, the global step and `draw`: the same call at the
  // same step gives the same samples; pass a different `draw` for independent samples of the same prompts.
  std::vector<CompletionSample> complete(const PromptDataset& rows, std::uint64_t draw = 0) {
    std::vector<nlohmann::ordered_json> messages;
    auto prepared = prepare(rows, "prompts", &messages);
    std::vector<std::size_t> all(prepared.size());
    std::iota(all.begin(), all.end(), std::size_t{0});
    const Batch batch = make_batch_from(prepared, messages, all);
    auto gen = compat::make_generator(device_, static_cast<std::uint64_t>(config_.seed) + 7919 +
                                                   static_cast<std::uint64_t>(state_.global_step) + draw * 1000003);
    generation::Generation g;
    {
      compat::AutocastGuard low_precision = autocast();
      g = generation::generate(policy_, batch.ids, batch.mask, sampling_options(), gen);
    }
    const auto c = truncate_after_eos(g.completion_ids, eos_ids_, pad_id_);
    const CompletionBatch cb{batch.ids, batch.mask, c.ids, c.mask, batch.texts, decode_rows(c), batch.messages};
    std::vector<CompletionSample> out;
    std::vector<double> scores(all.size(), std::nan(""));
    if constexpr (RewardScorer<Scorer>) {
      const auto s = scorer_.score(cb).to(torch::kCPU).to(torch::kDouble);
      for (std::size_t i = 0; i < all.size(); ++i) scores[i] = s[static_cast<std::int64_t>(i)].template item<double>();
    } else {
      generation::Generation rg;
      {
        compat::AutocastGuard low_precision = autocast();
        ReferenceScope scope(*this);
        auto ref_stream = compat::make_generator(device_, static_cast<std::uint64_t>(config_.seed) + 104729);
        rg = generation::generate(reference(), batch.ids, batch.mask, sampling_options(), ref_stream);
      }
      const auto rc = truncate_after_eos(rg.completion_ids, eos_ids_, pad_id_);
      const auto ref_texts = decode_rows(rc);
      std::vector<CompletionPair> pairs;
      for (std::size_t i = 0; i < all.size(); ++i) pairs.push_back({cb.completions[i], ref_texts[i]});
      const auto ranks = scorer_.judge(batch.texts, pairs);
      for (std::size_t i = 0; i < all.size(); ++i) scores[i] = ranks[i] == 0 ? 1.0 : 0.0;
    }
    for (std::size_t i = 0; i < all.size(); ++i) out.push_back({batch.texts[i], cb.completions[i], scores[i]});
    return out;
  }

  // Wall-clock seconds of the last optimizer step, by stage (summed over its micro-batches). all_reduce is the
  // wait for the gradient all-reduce after the last backward, the part of it that backward did not hide.
  struct StepTiming {
    double generation = 0, scoring = 0, forward_backward = 0, all_reduce = 0, optimizer = 0, total = 0;
  };
  [[nodiscard]] const StepTiming& last_step_timing() const noexcept { return last_timing_; }

  // ---- access -------------------------------------------------------------------------------------------------
  [[nodiscard]] const XPOConfig& config() const noexcept { return config_; }
  [[nodiscard]] const training::TrainerState& state() const noexcept { return state_; }
  [[nodiscard]] Model& policy() noexcept { return policy_; }
  [[nodiscard]] Scorer& scorer() noexcept { return scorer_; }
  [[nodiscard]] const text::Tokenizer& tokenizer() const noexcept { return tokenizer_; }
  [[nodiscard]] torch::optim::AdamW& optimizer() noexcept { return *optimizer_; }
  // fp16's loss scaler (training/mixed_precision.hpp); null without fp16.
  [[nodiscard]] const training::GradScaler* loss_scaler() const noexcept { return scaler_ ? &*scaler_ : nullptr; }
  [[nodiscard]] const std::vector<text::PreparedPrompt>& train_prompts() const noexcept { return train_; }
  [[nodiscard]] const std::vector<text::PreparedPrompt>& eval_prompts() const noexcept { return eval_; }
  [[nodiscard]] const PromptDataset& eval_dataset() const noexcept { return eval_rows_; }
  [[nodiscard]] std::int64_t pad_token_id() const noexcept { return pad_id_; }
  [[nodiscard]] const std::vector<std::int64_t>& eos_token_ids() const noexcept { return eos_ids_; }

  // alpha and beta in force for the next optimizer step: the schedule at floor(epoch) (ALGORITHM.md §2).
  [[nodiscard]] LossWeights current_weights() const {
    const double epoch = std::floor(state_.epoch);
    return {schedule_.alpha(epoch), schedule_.beta(epoch)};
  }

  // Dataset rows of micro-batch k: epochs are consecutive shuffles of the prompts (seeded by seed and epoch).
  [[nodiscard]] std::vector<std::size_t> micro_batch_rows(std::int64_t k) const {
    const auto per_epoch = state_.micro_batches_per_epoch;
    const auto epoch = k / per_epoch;
    const auto j = k % per_epoch;
    if (epoch != order_epoch_) {  // one shuffle per epoch
      order_.resize(train_.size());
      std::iota(order_.begin(), order_.end(), std::size_t{0});
      std::mt19937_64 rng(static_cast<std::uint64_t>(config_.seed) * 1000003ULL + static_cast<std::uint64_t>(epoch));
      std::shuffle(order_.begin(), order_.end(), rng);
      order_epoch_ = epoch;
    }
    const auto& order = order_;
    const auto world = static_cast<std::size_t>(world_.size());
    const auto global = static_cast<std::size_t>(config_.per_device_train_batch_size) * world;
    const auto begin = static_cast<std::size_t>(j) * global;
    auto size = std::min(order.size() - begin, global);
    size = (size + world - 1) / world * world;  // a short last batch wraps around so every rank has rows
    const auto share = size / world, first = begin + static_cast<std::size_t>(world_.rank()) * share;
    std::vector<std::size_t> rows;
    for (std::size_t i = first; i < first + share; ++i) rows.push_back(order[i % order.size()]);
    return rows;
  }

 private:
  using Clock = std::chrono::steady_clock;
  static double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

  struct Batch {
    torch::Tensor ids, mask;                          // [B, P] left-padded
    std::vector<std::string> texts;                   // [B]
    std::vector<nlohmann::ordered_json> messages;     // [B] the conversation, null for a standard prompt
  };

  // Averages of the micro-step metrics since the last log, plus step-level values.
  struct Window {
    std::map<std::string, double> sums;
    std::map<std::string, std::int64_t> counts;
    double tokens = 0, generation_seconds = 0, scoring_seconds = 0, forward_backward_seconds = 0, all_reduce_seconds = 0,
           optimizer_seconds = 0, step_seconds = 0, grad_norm = 0, learning_rate = 0;
    std::int64_t optimizer_steps = 0;
    void add(const training::Metrics& m) {
      for (const auto& [k, v] : m) {
        sums[k] += v;
        ++counts[k];
      }
    }
  };

  training::Metrics flush_metrics() {
    training::Metrics m;
    for (const auto& [k, v] : window_.sums) m[k] = v / static_cast<double>(window_.counts[k]);
    const double steps = static_cast<double>(std::max<std::int64_t>(1, window_.optimizer_steps));
    m["grad_norm"] = window_.grad_norm;
    m["learning_rate"] = window_.learning_rate;
    m["epoch"] = state_.epoch;
    m["skipped_steps"] = static_cast<double>(state_.skipped_steps);
    m["tokens_per_second"] = window_.step_seconds > 0 ? window_.tokens / window_.step_seconds : 0.0;
    m["time/step"] = window_.step_seconds / steps;
    m["time/generation"] = window_.generation_seconds / steps;
    m["time/scoring"] = window_.scoring_seconds / steps;
    m["time/forward_backward"] = window_.forward_backward_seconds / steps;
    m["time/all_reduce"] = window_.all_reduce_seconds / steps;  // the wait backward did not hide; 0 in one process
    m["time/optimizer"] = window_.optimizer_seconds / steps;
    window_ = {};
    if (world_.size() > 1) {
      m = world_.average(m);
      m["tokens_per_second"] *= world_.size();  // the job's throughput
    }
    return m;
  }

  template <class C> void call_train_begin(C& c) { if constexpr (training::HasTrainBegin<C, Trainer>) c.on_train_begin(*this); }
  template <class C> void call_step_end(C& c) { if constexpr (training::HasStepEnd<C, Trainer>) c.on_step_end(*this); }
  template <class C> void call_log(C& c, const training::Metrics& m) { if constexpr (training::HasLog<C, Trainer>) c.on_log(*this, m); }
  template <class C> void call_save(C& c, const std::filesystem::path& p) { if constexpr (training::HasSave<C, Trainer>) c.on_save(*this, p); }
  template <class C> void call_train_end(C& c) { if constexpr (training::HasTrainEnd<C, Trainer>) c.on_train_end(*this); }

  // A fresh run's id: 16 hex digits from the OS's entropy source and the clock (not from `seed`: two runs with the
  // same seed in one output_dir are still two runs).
  static std::string new_run_id() {
    std::random_device device;
    const auto now = static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
    const std::uint64_t bits = (static_cast<std::uint64_t>(device()) << 32 ^ device()) ^ now;
    char text[17];
    std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(bits));
    return text;
  }

  // A new run (not resumed) in an output_dir that already holds checkpoints of another run: resuming it, or
  // rotating beside it, would mix the two runs. transformers' example scripts refuse the same way.
  // The refusal's message, or "" when output_dir holds no checkpoint of another run.
  [[nodiscard]] std::string another_runs_checkpoints() const {
    std::string found;
    for (const auto& [step, folder] : training::list_checkpoints(config_.output_dir)) {
      if (training::checkpoint_run_id(folder) == state_.run_id) continue;
      if (!found.empty()) found += ", ";
      found += folder.filename().string();
    }
    if (found.empty()) return {};
    return "output_dir " + config_.output_dir + " already holds checkpoints of another run (" + found +
           "): continue that run with resume_from_checkpoint, start beside it with overwrite_output_dir "
           "(its checkpoints are kept, never rotated), or choose another output_dir";
  }

  static XPOConfig validated(XPOConfig config) {
    config.validate();  // every bad field at once, before anything is built from them
    return config;
  }

  static Schedule make_schedule(const XPOConfig& config, std::optional<Schedule> given) {
    if (given) return std::move(*given);
    if constexpr (requires { Schedule::checked(config.alpha, config.beta); }) {
      return Schedule::checked(config.alpha, config.beta);
    } else {
      throw ConfigError("this Trainer's Schedule cannot be built from config.alpha/config.beta: pass one");
    }
  }

  // Autocast for the run's device while alive under bf16/fp16; does nothing otherwise.
  [[nodiscard]] compat::AutocastGuard autocast() const {
    return compat::AutocastGuard(device_.type(), autocast_dtype_.value_or(torch::kBFloat16), autocast_dtype_.has_value());
  }

  // Pure low-precision training (bfloat16/float16 weights, e.g. --dtype bfloat16): AdamW's update (about
  // learning_rate per step) rounds away on a weight w when learning_rate < |w| x epsilon / 2; said once, at the start.
  void warn_if_updates_round_away() const {
    if (warned_resolution_ || params_.empty()) return;
    const auto type = params_.front().scalar_type();
    if (type != torch::kBFloat16 && type != torch::kHalf) return;
    warned_resolution_ = true;
    double sum = 0, count = 0;
    {
      torch::NoGradGuard no_grad;
      for (const auto& p : params_) {
        sum += p.abs().sum(torch::kDouble).template item<double>();
        count += static_cast<double>(p.numel());
      }
    }
    const double mean = count > 0 ? sum / count : 0.0;
    const double resolution = mean * training::dtype_epsilon(type) / 2;
    if (config_.learning_rate < resolution) {
      std::fprintf(stderr,
                   "xpo: warning: learning_rate %g is below the %s resolution of the weights (%g at their mean "
                   "magnitude %g): most AdamW updates will round away. Keep the weights in float32 (dtype float32) "
                   "and train with bf16 (mixed precision), as transformers' Trainer does.\n",
                   config_.learning_rate, type == torch::kBFloat16 ? "bfloat16" : "float16", resolution, mean);
    }
  }

  // gradient_checkpointing: the policy recomputes each decoder layer in backward (HF's
  // model.gradient_checkpointing_enable()); a Model without the switch is refused rather than run without it.
  void enable_gradient_checkpointing() {
    if constexpr (requires { unwrap(policy_).set_gradient_checkpointing(true); }) {
      unwrap(policy_).set_gradient_checkpointing(true);
    } else {
      throw ConfigError("gradient_checkpointing: this Model type has no set_gradient_checkpointing(bool)");
    }
  }

  static torch::Device first_device(Model& m) {
    const auto params = unwrap(m).parameters();
    return params.empty() ? torch::Device(torch::kCPU) : params.front().device();
  }

  std::vector<torch::Tensor> trainable_parameters() {
    std::vector<torch::Tensor> out;
    for (const auto& p : unwrap(policy_).parameters()) {
      if (p.requires_grad()) out.push_back(p);
    }
    return out;
  }

  // ---- the reference ------------------------------------------------------------------------------------------
  static constexpr bool kIsCausalLM = std::is_same_v<Model, models::CausalLM>;

  void setup_reference(std::optional<Model> reference) {
    if constexpr (kIsCausalLM) {
      // bf16/fp16: frozen weights (LoRA's base) are cast to the low precision once, trainable ones once per
      // generation, not at every call (CausalLM::set_low_precision_cache; the same values).
      if (autocast_dtype_) policy_->set_low_precision_cache(true);
    }
    if (reference) {
      reference_ = std::move(reference);
      for (auto& p : unwrap(*reference_).parameters()) p.set_requires_grad(false);
      unwrap(*reference_).train(false);
      if constexpr (kIsCausalLM) {
        if (autocast_dtype_) (*reference_)->set_low_precision_cache(true);  // a float32 reference: cast once
      }
      return;
    }
    if constexpr (kIsCausalLM) {
      if (policy_->lora()) {
        reference_is_base_ = true;  // [fix] the policy with adapters off, not a second copy
      } else {
        reference_ = models::frozen_copy(policy_);
        // bf16/fp16: the reference has no optimizer state, so it is held once, in the low precision.
        if (autocast_dtype_) unwrap(*reference_).to(*autocast_dtype_);
      }
    } else {
      throw ConfigError("Trainer: no reference model given, and this Model type has no way to copy itself");
    }
  }

  Model& reference() { return reference_is_base_ ? policy_ : *reference_; }

  // While alive, the reference is in effect: under LoRA-without-a-copy, the policy's adapters are off.
  struct ReferenceScope {
    explicit ReferenceScope(Trainer& t) {
      if constexpr (kIsCausalLM) {
        if (t.reference_is_base_) guard.emplace(t.policy_->adapter_switch());
      }
    }
    std::optional<models::AdaptersDisabled> guard;
  };

  // ---- tokens and prompts -----------------------------------------------------------------------------------
  void setup_tokens() {
    const auto& special = tokenizer_.special_tokens();
    eos_ids_.assign(special.generation_eos_ids.begin(), special.generation_eos_ids.end());
    if constexpr (requires { unwrap(policy_).config().eos_token_ids; }) {
      if (eos_ids_.empty()) eos_ids_ = unwrap(policy_).config().eos_token_ids;
    }
    if (eos_ids_.empty()) throw ConfigError("no EOS token: neither the tokenizer nor the model config names one");
    if (special.pad_id) pad_id_ = *special.pad_id;
    else pad_id_ = special.eos_id.value_or(eos_ids_.front());  // TRL: pad = eos when the tokenizer has none
  }

  // The number of micro-batches per epoch and the run's length, from the dataset, the batch size and the world.
  void plan_steps() {
    state_.micro_batches_per_epoch = micro_batches_per_epoch();
    state_.max_steps = config_.max_steps > 0
                           ? config_.max_steps
                           : std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(
                                                           config_.num_train_epochs * static_cast<double>(state_.micro_batches_per_epoch) /
                                                           static_cast<double>(config_.gradient_accumulation_steps))));
  }

  // The sampling streams of this rank's `rows` prompts in the current micro-batch: prompt i's key is (seed,
  // stream, micro-step, its position in the global batch = rank x rows + i). Every rank holds the same number of
  // rows, so the positions are those of one process with the global batch, and its samples are the same.
  static constexpr std::uint64_t kPolicyStream = 1, kReferenceStream = 2;
  [[nodiscard]] generation::RowStreams sample_streams(std::uint64_t stream, std::size_t rows) const {
    generation::RowStreams streams;
    const auto first = static_cast<std::uint64_t>(world_.rank()) * rows;
    for (std::size_t i = 0; i < rows; ++i) {
      streams.keys.push_back(generation::RowStreams::key({static_cast<std::uint64_t>(config_.seed), stream,
                                                          static_cast<std::uint64_t>(state_.micro_step), first + i}));
    }
    return streams;
  }

  std::int64_t micro_batches_per_epoch() const {
    const auto n = static_cast<std::int64_t>(train_.size());
    const auto b = config_.per_device_train_batch_size * world_.size();  // the global batch
    const auto count = config_.dataloader_drop_last ? n / b : (n + b - 1) / b;
    if (count < 1) {
      throw ConfigError("train_dataset has " + std::to_string(n) + " prompts, fewer than one batch of " + std::to_string(b) +
                        " with dataloader_drop_last");
    }
    return count;
  }

  // Dataset rows -> prompts ready for generation; `messages` (if given) receives each row's conversation (null
  // for a standard prompt), which a reward model with its own tokenizer re-renders.
  std::vector<text::PreparedPrompt> prepare(const PromptDataset& rows, const std::string& name,
                                            std::vector<nlohmann::ordered_json>* messages = nullptr) const {
    std::vector<text::PreparedPrompt> out;
    out.reserve(rows.size());
    std::optional<std::int64_t> context;
    if constexpr (requires { unwrap(policy_).config().max_position_embeddings; }) {
      context = unwrap(policy_).config().max_position_embeddings;
    }
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const std::string where = name + " row " + std::to_string(i);
      const auto& row = rows[i];
      if (!row.is_object() || !row.contains("prompt")) throw ConfigError(where + ": no \"prompt\"");
      // The row's chat_template_kwargs plus its tools/documents columns (text::row_template_kwargs).
      const auto kwargs = text::row_template_kwargs(row, where);
      auto p = text::prepare_prompt(tokenizer_, row["prompt"], chat_ ? &*chat_ : nullptr, kwargs, where);
      if (p.ids.empty()) throw ConfigError(where + ": the prompt is empty after tokenisation");
      if (context && static_cast<std::int64_t>(p.ids.size()) + config_.max_new_tokens > *context) {
        throw ConfigError(where + ": the prompt has " + std::to_string(p.ids.size()) + " tokens; with max_new_tokens = " +
                          std::to_string(config_.max_new_tokens) + " it exceeds the model's context of " + std::to_string(*context));
      }
      out.push_back(std::move(p));
      if (messages != nullptr) messages->push_back(row["prompt"].is_array() ? row["prompt"] : nlohmann::ordered_json());
    }
    return out;
  }

  Batch make_batch_from(const std::vector<text::PreparedPrompt>& prompts, const std::vector<nlohmann::ordered_json>& messages,
                        const std::vector<std::size_t>& rows) const {
    std::vector<std::vector<std::int64_t>> ids;
    Batch b;
    for (const auto r : rows) {
      ids.push_back(prompts.at(r).ids);
      b.texts.push_back(prompts.at(r).text);
      b.messages.push_back(messages.at(r));
    }
    auto padded = pad_sequences(ids, pad_id_, PaddingSide::left, device_);
    b.ids = padded.ids;
    b.mask = padded.mask;
    return b;
  }
  Batch make_batch(const std::vector<std::size_t>& rows) const { return make_batch_from(train_, train_messages_, rows); }

  generation::SamplingOptions sampling_options() const {
    return generation::SamplingOptions::from_config(config_, eos_ids_, pad_id_);
  }

  // Completions as scorers and judges see them: special tokens skipped, surrounding whitespace stripped.
  std::vector<std::string> decode_rows(const TruncatedCompletions& c) const {
    const auto ids = c.ids.to(torch::kCPU, torch::kLong).contiguous();
    const auto mask = c.mask.to(torch::kCPU, torch::kLong).contiguous();
    const auto id = ids.accessor<std::int64_t, 2>();
    const auto keep = mask.accessor<std::int64_t, 2>();
    std::vector<std::string> out;
    for (std::int64_t r = 0; r < ids.size(0); ++r) {
      std::vector<std::int64_t> row;
      for (std::int64_t t = 0; t < ids.size(1); ++t) {
        if (keep[r][t] != 0) row.push_back(id[r][t]);
      }
      out.emplace_back(text::strip_whitespace(tokenizer_.decode(row, /*skip_special_tokens=*/true)));
    }
    return out;
  }

  // Per-token log-probs of both samples under both models ([B, T_m] for y_m, [B, T_r] for y_r; 0 on masked
  // positions; the policy's carry grad). The policy runs over ONE batch of 2B rows, [prompt; y_m] and [prompt; y_r]
  // (completions right-padded to a common width). The reference runs over the same 2B rows, or only over the B rows
  // [prompt; y_m] when `ref_own_logps` [B, T_r] (its log-probs of y_r, recorded while it drew y_r:
  // StepOptions::record_reference_logps) is given. See logps_of for the shared prompt.
  training::TokenLogps completion_logps(const Batch& batch, const TruncatedCompletions& m, const TruncatedCompletions& r,
                                        const torch::Tensor& ref_own_logps) {
    const auto b = batch.ids.size(0);
    const auto tm = m.ids.size(1), tr = r.ids.size(1);
    const auto t = std::max(tm, tr);
    const auto completions = torch::cat({pad_right_to(m.ids, t, static_cast<double>(pad_id_)), pad_right_to(r.ids, t, static_cast<double>(pad_id_))});
    const auto completion_mask = torch::cat({pad_right_to(m.mask, t, 0), pad_right_to(r.mask, t, 0)});  // [2B, T]
    // The reference first: its logits are gone before the policy's graph (and its logits) is built.
    torch::Tensor ref_m, ref_r;
    {
      torch::NoGradGuard no_grad;
      ReferenceScope scope(*this);
      const bool was_training = unwrap(reference()).is_training();
      unwrap(reference()).train(false);
      if (ref_own_logps.defined()) {
        TORCH_CHECK(ref_own_logps.sizes() == r.ids.sizes(), "recorded reference log-probs ", ref_own_logps.sizes(),
                    " do not match its completions ", r.ids.sizes());
        ref_m = logps_of(reference(), batch, m.ids, m.mask);  // [B, T_m]
        ref_r = ref_own_logps.to(device_, torch::kFloat).masked_fill(r.mask.eq(0), 0.0);
      } else {
        const auto ref = logps_of(reference(), batch, completions, completion_mask);  // [2B, T]
        ref_m = ref.narrow(0, 0, b).narrow(1, 0, tm);
        ref_r = ref.narrow(0, b, b).narrow(1, 0, tr);
      }
      unwrap(reference()).train(was_training);
    }
    unwrap(policy_).train(!config_.disable_dropout);
    const auto policy = logps_of(policy_, batch, completions, completion_mask);  // [2B, T], carries grad
    unwrap(policy_).train(false);
    return {policy.narrow(0, 0, b).narrow(1, 0, tm), policy.narrow(0, b, b).narrow(1, 0, tr), ref_m, ref_r};
  }

  // Whether the reference's log-probs recorded while it samples equal those of its loss forward. Not for a LongRoPE
  // model whose sequences may reach past original_max_position_embeddings: its decode switches from the short to
  // the long factor set mid-sequence, while one forward over the whole sequence uses the long set at every position
  // (as transformers does), so the early tokens' log-probs differ. Then the reference recomputes them.
  bool decode_logps_equal_forward(const Batch& batch) {
    if constexpr (requires { unwrap(reference()).config().rope_scaling; }) {
      const auto& scaling = unwrap(reference()).config().rope_scaling;
      if (scaling && scaling->type == "longrope") {
        const auto longest = batch.mask.sum(-1).max().template item<std::int64_t>() + config_.max_new_tokens;
        return longest <= scaling->original_max_position_embeddings;
      }
    }
    return true;
  }

  // Per-token log-probs under `net` of completions [C B, T] (row c B + i continues prompt i of `batch`) -> [C B, T],
  // 0 where completion_mask is 0. With C >= 2, StepOptions::shared_prompt_forward and a Model that has
  // forward_shared_prompt, each prompt runs once and its C completions attend to its keys and values (same values
  // up to float summation order; dropout would draw one mask for the shared prompt instead of one per copy, so a
  // net in training mode runs the C B rows [prompt; completion]). Otherwise those rows, with logits only for the
  // completion's positions (forward_window) when the model can.
  // Under bf16/fp16 only the forward runs under autocast; the selective log-softmax reads the low-precision logits
  // and accumulates in float32 (core/tensor_ops.hpp), so log-probs and the loss are float32.
  torch::Tensor logps_of(Model& net, const Batch& batch, const torch::Tensor& completions, const torch::Tensor& completion_mask) {
    const auto b = batch.ids.size(0), p = batch.ids.size(1), t = completions.size(1);
    const auto copies = completions.size(0) / b;
    if constexpr (requires { unwrap(net).forward_shared_prompt(batch.ids, batch.mask, completions, completion_mask); }) {
      if (step_options_.shared_prompt_forward && copies > 1 && !unwrap(net).is_training()) {
        torch::Tensor logits;
        {
          compat::AutocastGuard low_precision = autocast();
          logits = unwrap(net).forward_shared_prompt(batch.ids, batch.mask, completions, completion_mask);
        }
        return aligned_token_logps(logits, completions, completion_mask);
      }
    }
    const auto ids = torch::cat({copies == 1 ? batch.ids : batch.ids.repeat({copies, 1}), completions}, 1);  // [C B, P+T]
    const auto mask = torch::cat({copies == 1 ? batch.mask : batch.mask.repeat({copies, 1}), completion_mask}, 1);
    const auto pos = position_ids_from_mask(mask);
    // Row t of the window predicts completion token t: logits of positions P-1 .. P+T-2 only, when the model can.
    torch::Tensor logits;
    if constexpr (requires { unwrap(net).forward_window(ids, mask, pos, p - 1, t); }) {
      {
        compat::AutocastGuard low_precision = autocast();
        logits = unwrap(net).forward_window(ids, mask, pos, p - 1, t);
      }
      return aligned_token_logps(logits, completions, completion_mask);
    } else {
      {
        compat::AutocastGuard low_precision = autocast();
        logits = unwrap(net).forward(ids, mask, pos);
      }
      return completion_token_logps(logits, completions, completion_mask, p);
    }
  }

  // ---- weights on disk ------------------------------------------------------------------------------------------
  // A checkpoint (for_resume) holds the weights as trained (the float32 master weights under bf16/fp16), so that a
  // resume is bit-identical; the final model is saved in the policy config's torch_dtype: the dtype the input
  // checkpoint is stored in (models::load_causal_lm), unless the caller set another (xpo-train: --torch_dtype).
  void save_weights(const std::filesystem::path& folder, bool for_resume) {
    if constexpr (kIsCausalLM) {
      if (for_resume && policy_->lora()) {
        models::save_lora_adapter(policy_, folder, tokenizer_.source_folder().string());
      } else {
        std::optional<torch::ScalarType> dtype;  // none: the parameters' own
        if (!for_resume) dtype = models::hf_dtype_from_name(policy_->config().torch_dtype);
        models::save_pretrained(policy_, folder, dtype);  // LoRA merged; config.json's torch_dtype = the saved dtype
      }
    } else {
      std::vector<torch::Tensor> params = unwrap(policy_).parameters();
      torch::save(params, (folder / "parameters.pt").string());
    }
  }

  void load_weights(const std::filesystem::path& folder) {
    torch::NoGradGuard no_grad;
    if constexpr (kIsCausalLM) {
      if (policy_->lora()) {
        const auto file = folder / "adapter_model.safetensors";
        auto sf = io::SafetensorsFile::open(file);
        auto named = policy_->named_parameters();
        std::size_t loaded = 0;
        for (auto& p : named) {
          if (!models::is_lora_parameter(p.key())) continue;
          const std::string name = "base_model.model." + p.key();
          if (!sf.contains(name)) throw FileError(file.string(), "lacks the LoRA tensor \"" + name + "\"");
          p.value().copy_(sf.load(name).to(p.value().device(), p.value().scalar_type()));
          ++loaded;
        }
        if (loaded == 0) throw FileError(file.string(), "no LoRA tensors for this model");
      } else {
        models::load_weights(*policy_, io::TensorStore::open(folder), folder.string());
      }
    } else {
      std::vector<torch::Tensor> saved;
      torch::load(saved, (folder / "parameters.pt").string());
      auto params = unwrap(policy_).parameters();
      if (saved.size() != params.size()) throw FileError((folder / "parameters.pt").string(), "parameter count differs from the model's");
      for (std::size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
    }
  }

  void copy_tokenizer_files(const std::filesystem::path& folder) const {
    for (const auto& f : tokenizer_.source_files()) {
      std::error_code ec;
      std::filesystem::copy_file(f, folder / f.filename(), std::filesystem::copy_options::overwrite_existing, ec);
      if (ec) throw FileError((folder / f.filename()).string(), "cannot copy the tokenizer file: " + ec.message());
    }
  }

  distributed::World world_ = distributed::World::single();
  Model policy_;
  std::optional<Model> reference_;
  bool reference_is_base_ = false;
  Scorer scorer_;
  text::Tokenizer tokenizer_;
  XPOConfig config_;
  Loss loss_;
  Schedule schedule_;
  torch::Device device_ = torch::kCPU;
  std::optional<text::ChatTemplate> chat_;
  std::vector<text::PreparedPrompt> train_, eval_;
  std::vector<nlohmann::ordered_json> train_messages_;  // [rows] each training prompt's conversation (null: standard)
  PromptDataset eval_rows_;
  std::vector<std::int64_t> eos_ids_;
  std::int64_t pad_id_ = 0;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  std::optional<torch::ScalarType> autocast_dtype_;  // bf16/fp16: the forward passes' dtype (autocast)
  std::optional<training::GradScaler> scaler_;       // fp16 only
  std::shared_ptr<distributed::GradientReducer> reducer_;  // set by distribute() when there are several ranks
  training::TrainerState state_;
  training::StepOptions step_options_;  // performance switches, see set_step_options
  mutable std::vector<std::size_t> order_;  // the shuffled prompt order of epoch order_epoch_
  mutable std::int64_t order_epoch_ = -1;
  Window window_;
  StepTiming last_timing_;
  bool stop_requested_ = false, stopped_early_ = false;
  mutable bool warned_resolution_ = false;
};

// TRL's XPOTrainer: a Qwen2/Llama policy, a reward model, XPO over the sigmoid DPO loss, alpha/beta from the
// config (one value or one per epoch).
using XPOTrainer = Trainer<models::CausalLM, scoring::RewardModelScorer, losses::XPO<losses::Sigmoid>, schedules::PerEpoch<>>;

}  // namespace xpo
