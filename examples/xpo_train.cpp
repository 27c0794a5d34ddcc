// xpo-train — TRL's examples/scripts/xpo.py for xpo: XPO on a local Hugging Face checkpoint with a JSONL prompt
// set, scored by a reward model, a judge or a built-in rule. Flags are TRL's names (`--help` lists them); every
// bad value is reported at once, before any model is loaded. Ctrl-C finishes the current step, saves a checkpoint
// and exits with status 130; `--resume_from_checkpoint latest` continues from it.
//
// With no --model_name_or_path it runs the embedded default (embedded_default.hpp): a small Qwen2 policy and a
// byte-level tokenizer produced on the spot, a shipped prompt set and the `positivity` rule, and reports the mean
// score on held-out prompts before and after training.
#include <xpo/xpo.hpp>
#include <xpo/scoring/pair_rm.hpp>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "embedded_default.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

// The script's own flags (TRL: ScriptArguments + ModelConfig); XPOConfig carries the training ones.
struct ScriptArgs {
  std::string model_name_or_path;
  std::string reward_model_path;
  std::string judge;
  std::string judge_model_path;      // --judge pair_rm: the llm-blender/PairRM (or PairRM-hf) folder
  std::string judge_dtype = "float32";  // the PairRM judge's own dtype
  std::string reward_rule;
  std::string dataset_name;
  std::string eval_dataset;
  std::string chat_template_kwargs;  // a JSON object: extra chat-template variables for every prompt (rows' own win)
  double eval_fraction = 0.0;
  bool skip_bad_rows = false;
  std::int64_t num_eval_samples = 4;
  bool use_peft = false;
  std::int64_t lora_r = 16;
  double lora_alpha = 32;
  double lora_dropout = 0.05;
  std::vector<std::string> lora_target_modules{"q_proj", "v_proj"};
  std::string resume_from_checkpoint;
  std::vector<std::string> report_to{"jsonl", "tensorboard"};
  std::string torch_dtype;  // TRL's model_init_kwargs torch_dtype: another name for --dtype
  std::int64_t log_completions_steps = 0;
  // bounds on untrusted input (defaults: the library's)
  std::int64_t max_dataset_line_bytes = static_cast<std::int64_t>(xpo::io::PromptDatasetOptions{}.max_line_bytes);
  std::int64_t max_tokenizer_file_bytes = static_cast<std::int64_t>(xpo::text::TokenizerLimits{}.max_file_bytes);
  std::int64_t max_chat_template_bytes = static_cast<std::int64_t>(xpo::text::TokenizerLimits{}.max_chat_template_bytes);
  // data parallel
  std::int64_t nproc = 1;
  double dist_timeout = 1800;

  [[nodiscard]] xpo::text::TokenizerLimits tokenizer_limits() const {
    return {.max_file_bytes = static_cast<std::uintmax_t>(max_tokenizer_file_bytes),
            .max_chat_template_bytes = static_cast<std::size_t>(max_chat_template_bytes)};
  }
};

// The PairRM folder the run judges with (TRL's PairRMJudge): --judge pair_rm --judge_model_path DIR, or --judge DIR
// when DIR holds a PairRM checkpoint; empty otherwise.
fs::path pair_rm_folder(const ScriptArgs& a) {
  if (a.judge == "pair_rm") return a.judge_model_path;
  if (!a.judge.empty() && xpo::scoring::is_pair_rm_folder(a.judge)) return a.judge;
  return {};
}

torch::ScalarType judge_dtype(const ScriptArgs& a) {
  if (a.judge_dtype == "bfloat16") return torch::kBFloat16;
  if (a.judge_dtype == "float16") return torch::kHalf;
  return torch::kFloat;
}

// The PairRM flags: the folder exists and is a PairRM checkpoint (no download: say where to get it), the dtype.
void check_pair_rm(const ScriptArgs& a, const xpo::XPOConfig& c, std::vector<std::string>& p) {
  const std::string get = "download llm-blender/PairRM on a machine with network (`huggingface-cli download "
                          "llm-blender/PairRM --local-dir DIR`) and copy DIR here; xpo does not download";
  if (a.judge == "pair_rm") {
    if (a.judge_model_path.empty()) p.push_back("--judge pair_rm needs --judge_model_path DIR, the PairRM folder: " + get);
    else if (!fs::is_directory(a.judge_model_path)) p.push_back("--judge_model_path " + a.judge_model_path + ": no such folder; " + get);
    else if (!xpo::scoring::is_pair_rm_folder(a.judge_model_path))
      p.push_back("--judge_model_path " + a.judge_model_path + ": not a PairRM folder (no ranker_config.json, and "
                  "config.json is neither llm-blender's RankerConfig nor DebertaV2PairRM's)");
  } else if (!a.judge_model_path.empty()) {
    p.push_back("--judge_model_path is read only with --judge pair_rm");
  }
  if (a.judge_dtype != "float32" && a.judge_dtype != "bfloat16" && a.judge_dtype != "float16")
    p.push_back("--judge_dtype " + a.judge_dtype + ": must be float32, bfloat16 or float16");
  else if (a.judge_dtype == "float16" && c.device.rfind("cuda", 0) != 0)
    p.push_back("--judge_dtype float16 needs --device cuda (LibTorch's CPU kernels lack float16 matmul); use float32 "
                "or bfloat16 on the CPU");
  if (a.judge_dtype != "float32" && pair_rm_folder(a).empty())
    p.push_back("--judge_dtype has an effect only with the PairRM judge (--judge pair_rm)");
}

// The embedded default's run: what the quick start trains with unless a flag says otherwise.
void apply_embedded_defaults(ScriptArgs& args, xpo::XPOConfig& c) {
  args.reward_rule = "positivity";
  c.output_dir = "xpo-quickstart-output";
  c.per_device_train_batch_size = 16;
  c.per_device_eval_batch_size = 64;
  c.max_steps = 120;
  c.learning_rate = 2e-4;
  c.warmup_ratio = 0.05;
  c.max_new_tokens = 48;
  c.temperature = 0.7;
  c.beta = {0.1};
  c.alpha = {1e-5};
  c.missing_eos_penalty = 1.0;
  c.logging_steps = 10;
  c.save_steps = 60;
  c.save_total_limit = 2;
  c.seed = 42;
  args.num_eval_samples = 4;
}

// This process's place in a data-parallel job (World::single() without a launcher).
xpo::distributed::World g_world = xpo::distributed::World::single();

volatile std::sig_atomic_t g_interrupted = 0;
extern "C" void on_interrupt(int) {
  g_interrupted = 1;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process at once
  std::signal(SIGTERM, SIG_DFL);
}

// Turns Ctrl-C / SIGTERM into Trainer::request_stop at the end of the current optimizer step.
struct StopOnSignal {
  template <class T>
  void on_step_end(T& trainer) {
    if (g_interrupted && !announced) {
      std::fprintf(stderr, "\nxpo-train: interrupted at step %lld: saving a checkpoint (Ctrl-C again to abort)\n",
                   static_cast<long long>(trainer.state().global_step));
      announced = true;
    }
    if (g_interrupted) trainer.request_stop();
  }
  template <class T>
  void on_train_begin(T& trainer) {
    if (g_interrupted) trainer.request_stop();
  }
  bool announced = false;
};

// --report_to: the loggers chosen at run time, behind one callback.
struct Reporters {
  std::optional<xpo::training::MetricsLogger> jsonl;
  std::optional<xpo::training::TensorBoardLogger> tensorboard;
  template <class T>
  void on_train_begin(T& t) {
    if (jsonl) jsonl->on_train_begin(t);
    if (tensorboard) tensorboard->on_train_begin(t);
  }
  template <class T>
  void on_log(T& t, const xpo::training::Metrics& m) {
    if (jsonl) jsonl->on_log(t, m);
    if (tensorboard) tensorboard->on_log(t, m);
  }
};

// Remembers the last checkpoint written, for the message after an interrupt.
struct SaveNotes {
  template <class T>
  void on_save(T&, const fs::path& folder) {
    last = folder;
  }
  fs::path last;
};

// Settings that cannot all take effect: each pair the user gave both of (on the command line or in --config) is
// refused with a message, never silently resolved (TRL refuses missing_eos_penalty with a judge the same way).
void check_conflicts(const ScriptArgs& a, const xpo::XPOConfig& c, const xpo::FlagParser& flags, bool embedded,
                     std::vector<std::string>& p) {
  const auto given = [&](const char* name) { return flags.given(name); };
  const int scorers = given("reward_model_path") + given("judge") + given("reward_rule");
  if (embedded && scorers > 1) p.push_back("give only one of --reward_model_path, --judge and --reward_rule");
  if (given("missing_eos_penalty") && c.missing_eos_penalty && !a.judge.empty())
    p.push_back("--missing_eos_penalty has no effect with --judge (a pairwise judge gives no scores to lower); drop one "
                "(TRL refuses this pair too)");
  for (const char* lora : {"lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"})
    if (given(lora) && !a.use_peft) p.push_back(std::string("--") + lora + " has no effect without --use_peft");
  if (given("warmup_steps") && given("warmup_ratio") && c.warmup_steps > 0 && c.warmup_ratio > 0)
    p.push_back("give --warmup_steps or --warmup_ratio, not both (warmup_steps would override warmup_ratio)");
  if (c.lr_scheduler_type == "constant" && ((given("warmup_steps") && c.warmup_steps > 0) || (given("warmup_ratio") && c.warmup_ratio > 0)))
    p.push_back("--lr_scheduler_type constant has no warm-up, so --warmup_steps/--warmup_ratio would be ignored; use "
                "constant_with_warmup");
  if (given("max_steps") && given("num_train_epochs") && c.max_steps > 0)
    p.push_back("give --max_steps or --num_train_epochs, not both (max_steps would override num_train_epochs)");
  if (given("torch_dtype") && given("dtype") && a.torch_dtype != c.dtype)
    p.push_back("--torch_dtype " + a.torch_dtype + " conflicts with --dtype " + c.dtype + " (the same setting); give one");
  if (given("torch_dtype") && a.torch_dtype != "float32" && a.torch_dtype != "bfloat16" && a.torch_dtype != "float16" &&
      a.torch_dtype != "float64")
    p.push_back("--torch_dtype " + a.torch_dtype + ": must be float32, bfloat16, float16 or float64");
  else if (given("torch_dtype") && ((c.bf16 && a.torch_dtype == "float16") || (c.fp16 && a.torch_dtype == "bfloat16")))
    p.push_back(std::string(c.bf16 ? "--bf16" : "--fp16") + " conflicts with --torch_dtype " + a.torch_dtype +
                " (compute in one 16-bit type, weights in the other)");
  if (c.temperature == 0)
    for (const char* sampling : {"top_k", "top_p", "min_p"})
      if (given(sampling)) p.push_back(std::string("--") + sampling + " has no effect with --temperature 0 (greedy decoding)");
  if (!embedded && a.eval_dataset.empty() && a.eval_fraction == 0)
    for (const char* eval : {"num_eval_samples", "log_completions_steps", "per_device_eval_batch_size"})
      if (given(eval)) p.push_back(std::string("--") + eval + " has no effect without held-out prompts (--eval_dataset or --eval_fraction)");
  if (given("nproc") && a.nproc > 1)
    if (const char* world = std::getenv("WORLD_SIZE"); world != nullptr && std::to_string(a.nproc) != world)
      p.push_back("--nproc " + std::to_string(a.nproc) + " conflicts with the launcher's WORLD_SIZE=" + world +
                  " (under torchrun the launcher decides the number of processes)");
}

// Every problem with the script flags, found without loading anything.
std::vector<std::string> check(const ScriptArgs& a, const xpo::XPOConfig& c, const xpo::FlagParser& flags, bool embedded) {
  std::vector<std::string> p;
  check_conflicts(a, c, flags, embedded, p);
  const auto need_dir = [&](const std::string& flag, const std::string& path, bool model) {
    if (path.empty()) return;
    if (!fs::is_directory(path)) p.push_back("--" + flag + " " + path + ": no such folder");
    else if (model && !fs::exists(fs::path(path) / "config.json")) p.push_back("--" + flag + " " + path + ": no config.json in it (not a Hugging Face model folder)");
  };
  if (!embedded) {
    need_dir("model_name_or_path", a.model_name_or_path, true);
    if (a.dataset_name.empty()) p.push_back("--dataset_name: required (a JSONL file or a folder of them)");
    const int scorers = !a.reward_model_path.empty() + !a.judge.empty() + !a.reward_rule.empty();
    if (scorers == 0) p.push_back("give one of --reward_model_path, --judge or --reward_rule");
    if (scorers > 1) p.push_back("give only one of --reward_model_path, --judge and --reward_rule");
  }
  if (!a.dataset_name.empty() && !fs::exists(a.dataset_name)) p.push_back("--dataset_name " + a.dataset_name + ": no such file or folder");
  need_dir("reward_model_path", a.reward_model_path, true);
  check_pair_rm(a, c, p);
  if (!a.judge.empty() && fs::is_directory(a.judge)) {
    need_dir("judge", a.judge, true);
  } else if (!a.judge.empty() && a.judge != "pair_rm") {
    try {
      (void)xpo::scoring::rules::rule(a.judge);
    } catch (const xpo::ConfigError& e) {
      p.push_back("--judge " + a.judge + ": not a reward-model folder, and " + e.what());
    }
  }
  if (!a.reward_rule.empty()) {
    try {
      (void)xpo::scoring::rules::rule(a.reward_rule);
    } catch (const xpo::ConfigError& e) {
      p.push_back(std::string("--reward_rule: ") + e.what());
    }
  }
  if (!a.chat_template_kwargs.empty()) {
    const auto j = ordered_json::parse(a.chat_template_kwargs, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) p.push_back("--chat_template_kwargs: expected a JSON object, e.g. '{\"enable_thinking\": false}'");
  }
  if (!a.eval_dataset.empty() && !fs::exists(a.eval_dataset)) p.push_back("--eval_dataset " + a.eval_dataset + ": no such file or folder");
  if (!(a.eval_fraction >= 0 && a.eval_fraction < 1)) p.push_back("--eval_fraction: must be in [0, 1)");
  if (!a.eval_dataset.empty() && a.eval_fraction > 0) p.push_back("give --eval_dataset or --eval_fraction, not both");
  if (a.num_eval_samples < 1) p.push_back("--num_eval_samples: must be >= 1");
  if (a.lora_r < 1) p.push_back("--lora_r: must be >= 1");
  if (!(a.lora_alpha > 0)) p.push_back("--lora_alpha: must be > 0");
  if (!(a.lora_dropout >= 0 && a.lora_dropout < 1)) p.push_back("--lora_dropout: must be in [0, 1)");
  for (const auto& m : a.lora_target_modules)
    if (!xpo::models::lora_target_names().contains(m)) p.push_back("--lora_target_modules: unknown module \"" + m + "\"");
  for (const auto& r : a.report_to)
    if (r != "jsonl" && r != "tensorboard" && r != "none" && r != "all") p.push_back("--report_to " + r + ": expected tensorboard, jsonl, all or none");
  if (a.log_completions_steps < 0) p.push_back("--log_completions_steps: must be >= 0");
  if (a.nproc < 1 || a.nproc > 1024) p.push_back("--nproc: must be in [1, 1024]");
  if (!(a.dist_timeout > 0)) p.push_back("--dist_timeout: must be > 0 seconds");
  for (const auto& [flag, value] : {std::pair{"max_dataset_line_bytes", a.max_dataset_line_bytes},
                                    {"max_tokenizer_file_bytes", a.max_tokenizer_file_bytes},
                                    {"max_chat_template_bytes", a.max_chat_template_bytes}})
    if (value < 1) p.push_back(std::string("--") + flag + ": must be >= 1");
  if (fs::exists(c.output_dir) && !fs::is_directory(c.output_dir)) {
    p.push_back("--output_dir " + c.output_dir + ": exists and is not a folder");
  } else {  // the folder, or the nearest existing ancestor it will be created in, must be a writable folder
    auto where = fs::absolute(c.output_dir);
    while (!fs::exists(where) && where.has_relative_path()) where = where.parent_path();
    if (!fs::is_directory(where)) p.push_back("--output_dir " + c.output_dir + ": " + where.string() + " is not a folder");
    else if (::access(where.c_str(), W_OK | X_OK) != 0)
      p.push_back("--output_dir " + c.output_dir + ": " + where.string() + " is not writable (" + std::strerror(errno) + ")");
  }
  if (!a.resume_from_checkpoint.empty() && a.resume_from_checkpoint != "latest" && !fs::is_directory(a.resume_from_checkpoint))
    p.push_back("--resume_from_checkpoint " + a.resume_from_checkpoint + ": not \"latest\" and no such folder");
  return p;
}

bool wants(const ScriptArgs& a, const std::string& what) {
  for (const auto& r : a.report_to)
    if (r == what || r == "all") return true;
  return false;
}

// `repeats` independent samples of every eval prompt, in batches of per_device_eval_batch_size, each batch from
// its own sampling stream (Trainer::complete's `draw`): repeated prompts must not get repeated samples.
template <class Trainer>
std::vector<xpo::CompletionSample> sample_eval(Trainer& trainer, const xpo::PromptDataset& eval, std::int64_t repeats) {
  xpo::PromptDataset rows;
  for (std::int64_t r = 0; r < repeats; ++r) rows.insert(rows.end(), eval.begin(), eval.end());
  std::vector<xpo::CompletionSample> all;
  const auto batch = static_cast<std::size_t>(trainer.config().per_device_eval_batch_size);
  for (std::size_t i = 0; i < rows.size(); i += batch) {
    const xpo::PromptDataset part(rows.begin() + static_cast<std::ptrdiff_t>(i),
                                  rows.begin() + static_cast<std::ptrdiff_t>(std::min(rows.size(), i + batch)));
    auto out = trainer.complete(part, /*draw=*/i / batch);
    all.insert(all.end(), out.begin(), out.end());
  }
  return all;
}

double mean_score(const std::vector<xpo::CompletionSample>& samples) {
  double sum = 0;
  for (const auto& s : samples) sum += s.score.value_or(0.0);
  return samples.empty() ? 0.0 : sum / static_cast<double>(samples.size());
}

// What the user wrote: the string prompt, or the last message of a conversation.
std::string shown_prompt(const ordered_json& row) {
  const auto& p = row.at("prompt");
  return p.is_string() ? p.get<std::string>() : p.back().at("content").get<std::string>();
}

std::string one_line(std::string s) {
  for (auto& c : s)
    if (c == '\n') c = ' ';
  return s;
}

template <class Trainer>
int run(Trainer& trainer, const ScriptArgs& args, bool judge) {
  const auto& config = trainer.config();
  if (!args.resume_from_checkpoint.empty()) {
    trainer.resume_from_checkpoint(args.resume_from_checkpoint);
    std::fprintf(stderr, "xpo-train: resumed at step %lld\n", static_cast<long long>(trainer.state().global_step));
  }
  const bool main_rank = trainer.world().is_main();
  static const xpo::PromptDataset no_eval;
  const auto& eval = main_rank ? trainer.eval_dataset() : no_eval;  // rank 0 evaluates (a reference, not a copy)
  const char* score_name = judge ? "win rate vs reference" : "mean score";
  std::optional<double> before;
  if (!eval.empty() && trainer.state().global_step == 0) {
    before = mean_score(sample_eval(trainer, eval, args.num_eval_samples));
    std::fprintf(stderr, "xpo-train: %s on %zu held-out prompts x %lld samples before training: %.3f\n", score_name,
                 eval.size(), static_cast<long long>(args.num_eval_samples), *before);
  }
  Reporters reporters;  // only rank 0 writes logs
  if (main_rank && wants(args, "jsonl")) reporters.jsonl.emplace();
  if (main_rank && wants(args, "tensorboard")) reporters.tensorboard.emplace();
  std::FILE* quiet = main_rank ? nullptr : std::fopen("/dev/null", "w");
  xpo::training::ProgressBar progress(main_rank || quiet == nullptr ? stderr : quiet);
  StopOnSignal stop;
  SaveNotes saves;
  if (args.log_completions_steps > 0 && !eval.empty()) {
    xpo::training::LogCompletionsCallback completions(args.log_completions_steps, 8);
    trainer.train(reporters, progress, stop, saves, completions);
  } else {
    trainer.train(reporters, progress, stop, saves);
  }
  if (trainer.stopped_early()) {
    if (saves.last.empty()) std::fprintf(stderr, "xpo-train: stopped before the first step ended; nothing to save\n");
    else
      std::fprintf(stderr, "xpo-train: checkpoint saved to %s; continue with --resume_from_checkpoint latest\n",
                   saves.last.string().c_str());
    return 130;
  }
  if (!main_rank) return 0;
  std::fprintf(stderr, "xpo-train: model saved to %s in %s (open it with: xpo-chat --model_name_or_path %s)\n",
               config.output_dir.c_str(), trainer.policy()->config().torch_dtype.c_str(), config.output_dir.c_str());
  if (eval.empty()) return 0;
  const auto after_samples = sample_eval(trainer, eval, args.num_eval_samples);
  const double after = mean_score(after_samples);
  ordered_json results = {{"metric", score_name}, {"eval_prompts", eval.size()}, {"samples_per_prompt", args.num_eval_samples},
                          {"after", after}, {"global_step", trainer.state().global_step}};
  if (before) results["before"] = *before;
  std::printf("\n%-28s %10s %10s\n", score_name, "before", "after");
  char before_text[32] = "-";
  if (before) std::snprintf(before_text, sizeof before_text, "%.3f", *before);
  std::printf("%-28s %10s %10.3f\n", ("held-out prompts (" + std::to_string(eval.size()) + ")").c_str(), before_text, after);
  std::printf("\nsample completions after training:\n");
  ordered_json samples = ordered_json::array();
  for (std::size_t i = 0; i < eval.size() && i < 4; ++i) {  // four different prompts, spread over the set
    const auto k = i * eval.size() / std::min<std::size_t>(4, eval.size());
    const auto& s = after_samples[k];
    std::printf("  [%5.2f] %s -> %s\n", s.score.value_or(0.0), one_line(shown_prompt(eval[k])).c_str(), one_line(s.completion).c_str());
    samples.push_back({{"prompt", s.prompt}, {"completion", s.completion}, {"score", s.score.value_or(0.0)}});
  }
  results["samples"] = samples;
  xpo::write_json_file(fs::path(config.output_dir) / "eval_results.json", results);
  return 0;
}

template <class Scorer, class Loss>
int build_and_run(xpo::models::CausalLM policy, Scorer scorer, xpo::text::Tokenizer tokenizer, const xpo::XPOConfig& config,
                  xpo::PromptDataset train, xpo::PromptDataset eval, const ScriptArgs& args) {
  xpo::Trainer<xpo::models::CausalLM, Scorer, Loss> trainer(std::move(policy), std::nullopt, std::move(scorer), std::move(tokenizer),
                                                           config, std::move(train), std::move(eval));
  trainer.distribute(g_world);
  return run(trainer, args, xpo::PairwiseJudge<Scorer>);
}

template <class Scorer>
int dispatch_loss(xpo::models::CausalLM policy, Scorer scorer, xpo::text::Tokenizer tokenizer, const xpo::XPOConfig& config,
                  xpo::PromptDataset train, xpo::PromptDataset eval, const ScriptArgs& args) {
  using namespace xpo::losses;
  if (config.loss_type == "ipo")
    return build_and_run<Scorer, XPO<IPO>>(std::move(policy), std::move(scorer), std::move(tokenizer), config, std::move(train), std::move(eval), args);
  return build_and_run<Scorer, XPO<Sigmoid>>(std::move(policy), std::move(scorer), std::move(tokenizer), config, std::move(train), std::move(eval), args);
}

// --nproc N without a launcher: runs this same command as N local processes (ranks 0..N-1, RANK/WORLD_SIZE/
// LOCAL_RANK/LOCAL_WORLD_SIZE/MASTER_ADDR/MASTER_PORT set as torchrun would) and waits for them. Ctrl-C is forwarded. When a rank
// fails, the launcher names it and stops the others; its exit status is the first failure's (130 after Ctrl-C).
int launch_local(int argc, char** argv, std::int64_t nproc) {
  int port = 0;
  try {  // a free port for the rendezvous
    port = xpo::distributed::free_local_port();
  } catch (const xpo::Error& e) {
    throw xpo::Error(std::string("--nproc: ") + e.what());
  }
  std::vector<pid_t> pids;
  for (std::int64_t r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) throw xpo::Error(std::string("--nproc: fork failed: ") + std::strerror(errno));
    if (pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      std::signal(SIGINT, SIG_DFL);
      std::signal(SIGTERM, SIG_DFL);
      std::vector<char*> args(argv, argv + argc);
      args.push_back(nullptr);
      ::execv("/proc/self/exe", args.data());
      std::fprintf(stderr, "xpo-train: cannot start rank %lld: %s\n", static_cast<long long>(r), std::strerror(errno));
      ::_exit(127);
    }
    pids.push_back(pid);
  }
  std::string list;
  for (const auto p : pids) {
    if (!list.empty()) list += ' ';
    list += std::to_string(p);
  }
  std::fprintf(stderr, "xpo-train: started %lld ranks (pids %s) on 127.0.0.1:%d\n", static_cast<long long>(nproc), list.c_str(), port);
  int result = 0;
  bool forwarded = false;
  std::size_t running = pids.size();
  while (running > 0) {
    if (g_interrupted && !forwarded) {  // Ctrl-C: every rank stops after its current step and saves
      for (const auto p : pids)
        if (p > 0) ::kill(p, SIGINT);
      forwarded = true;
    }
    int status = 0;
    const pid_t done = ::waitpid(-1, &status, WNOHANG);
    if (done <= 0) {
      ::usleep(50'000);
      continue;
    }
    const auto it = std::find(pids.begin(), pids.end(), done);
    if (it == pids.end()) continue;
    const auto rank = it - pids.begin();
    *it = -1;
    --running;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0 && result == 0) {
      result = code;
      if (code != 130) {
        if (WIFSIGNALED(status))
          std::fprintf(stderr, "xpo-train: rank %lld (pid %d) was killed by signal %d; stopping the other ranks\n",
                       static_cast<long long>(rank), static_cast<int>(done), WTERMSIG(status));
        else
          std::fprintf(stderr, "xpo-train: rank %lld (pid %d) failed with exit status %d; stopping the other ranks\n",
                       static_cast<long long>(rank), static_cast<int>(done), code);
        for (const auto p : pids)
          if (p > 0) ::kill(p, SIGKILL);  // their collectives cannot complete without the lost rank
      }
    }
  }
  return result;
}

int main_impl(int argc, char** argv) {
  ScriptArgs args;
  xpo::XPOConfig config;
  bool embedded = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::replace(a.begin(), a.end(), '-', '_');
    if (a.rfind("__model_name_or_path", 0) == 0) embedded = false;
  }
  if (embedded) apply_embedded_defaults(args, config);

  xpo::FlagParser flags("xpo-train",
                        "XPO (online DPO with an exploration bonus) on a local Hugging Face checkpoint.\n"
                        "Without --model_name_or_path: the embedded default (a small Qwen2 policy built on the spot,\n"
                        "shipped prompts, the positivity rule), whose defaults are shown below.");
  flags.add("model_name_or_path", args.model_name_or_path, "policy: a local Hugging Face folder (config.json, model.safetensors, tokenizer.json); empty = the embedded default");
  flags.add("reward_model_path", args.reward_model_path, "a sequence-classification reward model folder (scores both samples)");
  flags.add("judge", args.judge, "pairwise judge: pair_rm (llm-blender's PairRM, TRL's PairRMJudge; with --judge_model_path), a "
                                 "PairRM or reward-model folder, or a built-in rule (positivity, concise)");
  flags.add("judge_model_path", args.judge_model_path, "--judge pair_rm: the llm-blender/PairRM or PairRM-hf folder (no download)");
  flags.add("judge_dtype", args.judge_dtype, "the PairRM judge's dtype: float32, bfloat16 or float16 (CUDA; as llm-blender runs it on GPU)");
  flags.add("reward_rule", args.reward_rule, "a built-in rule used as the reward: positivity or concise");
  flags.add("dataset_name", args.dataset_name, "prompt set: a JSONL file or a folder of *.jsonl with a \"prompt\" column");
  flags.add("eval_dataset", args.eval_dataset, "held-out prompts (JSONL file or folder)");
  flags.add("chat_template_kwargs", args.chat_template_kwargs,
            "a JSON object of extra chat-template variables for every prompt, e.g. '{\"enable_thinking\": false}' "
            "(a row's own chat_template_kwargs win; rows' tools/documents columns reach the template as well)");
  flags.add("eval_fraction", args.eval_fraction, "hold out this fraction of the prompt set instead (seeded)");
  flags.add("skip_bad_rows", args.skip_bad_rows, "skip and count malformed JSONL lines instead of stopping");
  flags.add("num_eval_samples", args.num_eval_samples, "samples per held-out prompt for the before/after score");
  flags.add("log_completions_steps", args.log_completions_steps, "log eval completions every N steps (0 = off)");
  flags.add("use_peft", args.use_peft, "train LoRA adapters instead of every weight");
  flags.add("lora_r", args.lora_r, "LoRA rank");
  flags.add("lora_alpha", args.lora_alpha, "LoRA alpha (scaling = alpha / r)");
  flags.add("lora_dropout", args.lora_dropout, "LoRA dropout");
  flags.add("lora_target_modules", args.lora_target_modules, "LoRA targets among q_proj k_proj v_proj o_proj gate_proj up_proj down_proj qkv_proj gate_up_proj (default: PEFT's for the model type, phi3: qkv_proj,o_proj,gate_up_proj,down_proj)");
  flags.add("resume_from_checkpoint", args.resume_from_checkpoint, "\"latest\" or a checkpoint folder of this output_dir");
  flags.add("report_to", args.report_to, "where metrics go: jsonl (metrics.jsonl), tensorboard (runs/), all, none");
  flags.add("torch_dtype", args.torch_dtype, "TRL's model_init_kwargs torch_dtype: the dtype the policy is loaded "
                                             "and trained in, and the final model saved in (same as --dtype; not "
                                             "given: loaded in float32, saved in the input's stored dtype)");
  flags.add("nproc", args.nproc, "train data-parallel in N local processes (CPU: Gloo); under a launcher (WORLD_SIZE set) it must match WORLD_SIZE");
  flags.add("dist_timeout", args.dist_timeout, "seconds a rank waits for the others (joining, each collective) before failing");
  flags.add("max_dataset_line_bytes", args.max_dataset_line_bytes, "refuse a JSONL line longer than this");
  flags.add("max_tokenizer_file_bytes", args.max_tokenizer_file_bytes, "refuse a tokenizer file (tokenizer.json, ...) larger than this");
  flags.add("max_chat_template_bytes", args.max_chat_template_bytes, "refuse a chat template larger than this");
  flags.add_config(config);
  try {
    if (!flags.parse(argc, argv, std::cout)) return 0;
  } catch (const xpo::ConfigError& e) {
    std::fprintf(stderr, "xpo-train: %zu problem%s:\n", e.problems().size(), e.problems().size() == 1 ? "" : "s");
    for (const auto& p : e.problems()) std::fprintf(stderr, "  %s\n", p.c_str());
    std::fprintf(stderr, "(xpo-train --help lists every flag)\n");
    return 2;
  }
  if (embedded && (flags.given("judge") || flags.given("reward_model_path"))) args.reward_rule.clear();  // the user's scorer
  // The embedded default's penalty is a default, not the user's: a judge the user chose runs without it.
  if (!args.judge.empty() && !flags.given("missing_eos_penalty")) config.missing_eos_penalty.reset();
  if (const auto problems = check(args, config, flags, embedded); !problems.empty()) {
    std::fprintf(stderr, "xpo-train: %zu problem%s:\n", problems.size(), problems.size() == 1 ? "" : "s");
    for (const auto& p : problems) std::fprintf(stderr, "  %s\n", p.c_str());
    return 2;
  }
  if (flags.given("torch_dtype")) config.dtype = args.torch_dtype;  // after the checks: a conflict is refused there
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);

  const auto launch = xpo::distributed::LaunchEnvironment::from_environment();
  if (!launch && args.nproc > 1) return launch_local(argc, argv, args.nproc);
  if (launch) {
    g_world = xpo::distributed::World::join(*launch, xpo::torch_device(config),
                                            std::chrono::milliseconds(static_cast<std::int64_t>(args.dist_timeout * 1000)));
    if (!g_world.is_main()) std::freopen("/dev/null", "w", stdout);  // one results table, from rank 0
    std::fprintf(stderr, "xpo-train: rank %d of %d joined\n", g_world.rank(), g_world.size());
  }
  {  // one pool of this machine's cores for the BLAS and LibTorch's own kernels, split among local ranks
    int local = 1;
    if (const char* n = std::getenv("LOCAL_WORLD_SIZE"); n != nullptr && launch) local = std::max(1, std::atoi(n));
    const auto threads = xpo::configure_threads(std::nullopt, local);
    if (g_world.is_main()) std::fprintf(stderr, "xpo-train: %s\n", threads.describe().c_str());
  }

  // Data first: a malformed line stops the run before a model is loaded or anything is written.
  const fs::path out(config.output_dir);
  if (embedded && args.dataset_name.empty()) {  // the shipped prompt set (written by rank 0)
    if (g_world.is_main()) {
      xpo_examples::embedded::write_jsonl(out / "prompts" / "train.jsonl", xpo_examples::embedded::prompt_rows(xpo_examples::embedded::kTrainTopics));
      xpo_examples::embedded::write_jsonl(out / "prompts" / "eval.jsonl", xpo_examples::embedded::prompt_rows(xpo_examples::embedded::kEvalTopics));
    }
    g_world.barrier("waiting for rank 0 to write the prompt set");
    args.dataset_name = (out / "prompts" / "train.jsonl").string();
    if (args.eval_fraction == 0 && args.eval_dataset.empty()) args.eval_dataset = (out / "prompts" / "eval.jsonl").string();
  }
  xpo::io::PromptDatasetOptions data_options;
  data_options.skip_bad_rows = args.skip_bad_rows;
  data_options.max_line_bytes = static_cast<std::size_t>(args.max_dataset_line_bytes);
  auto loaded = xpo::io::load_prompt_dataset(args.dataset_name, data_options);
  if (loaded.skipped_rows > 0) std::fprintf(stderr, "xpo-train: skipped %zu malformed rows\n", loaded.skipped_rows);
  xpo::PromptDataset train = std::move(loaded.rows), eval;
  if (!args.eval_dataset.empty()) eval = xpo::io::load_prompt_dataset(args.eval_dataset, data_options).rows;
  else if (args.eval_fraction > 0) std::tie(train, eval) = xpo::io::split_eval(train, args.eval_fraction, static_cast<std::uint64_t>(config.seed));
  if (!args.chat_template_kwargs.empty()) {  // every row's template variables: these, then the row's own
    const auto defaults = ordered_json::parse(args.chat_template_kwargs);
    for (auto* rows : {&train, &eval})
      for (auto& row : *rows) {
        auto merged = defaults;
        if (row.contains("chat_template_kwargs") && row["chat_template_kwargs"].is_object())
          for (auto it = row["chat_template_kwargs"].begin(); it != row["chat_template_kwargs"].end(); ++it) merged[it.key()] = it.value();
        row["chat_template_kwargs"] = std::move(merged);
      }
  }
  std::fprintf(stderr, "xpo-train: %zu training prompts, %zu held-out\n", train.size(), eval.size());
  if (embedded) {  // the embedded default policy, built once per output_dir (by rank 0)
    const auto base = out / "base-model";
    if (g_world.is_main()) {
      if (!fs::exists(base / "model.safetensors")) xpo_examples::embedded::build(base);
      else std::fprintf(stderr, "embedded default: reusing %s\n", base.string().c_str());
    }
    g_world.barrier("waiting for rank 0 to build the embedded default");
    args.model_name_or_path = base.string();
  }

  const fs::path model_path(args.model_name_or_path);
  auto tokenizer = xpo::text::Tokenizer::from_pretrained(model_path, args.tokenizer_limits());
  auto policy = xpo::models::load_causal_lm(model_path, xpo::torch_device(config), xpo::torch_dtype(config));
  // The final model keeps the dtype the input is stored in, unless --torch_dtype (or --dtype) asks for one.
  if (flags.given("torch_dtype") || flags.given("dtype")) policy->set_config_torch_dtype(config.dtype);
  if (args.use_peft) {
    // Not given: PEFT's default targets for this model type (phi3 adapts its fused layers).
    const auto targets = flags.given("lora_target_modules") ? args.lora_target_modules
                                                            : xpo::models::default_lora_targets(policy->config().model_type);
    torch::manual_seed(static_cast<std::uint64_t>(config.seed));  // the adapters' random init follows --seed (set_seed)
    policy->enable_lora({.r = args.lora_r, .alpha = args.lora_alpha, .dropout = args.lora_dropout, .target_modules = targets});
  }
  // Under --bf16/--fp16 the reward model (no optimizer state) is held once, in the low precision.
  const auto scorer_dtype = xpo::training::autocast_dtype(config).value_or(xpo::torch_dtype(config));
  const auto load_rm = [&](const fs::path& p) { return xpo::models::load_reward_model(p, xpo::torch_device(config), scorer_dtype); };
  if (!args.reward_model_path.empty()) {
    auto rm_tokenizer = xpo::scoring::reward_tokenizer(args.reward_model_path, model_path, args.tokenizer_limits());
    if (g_world.is_main()) {
      if (rm_tokenizer)
        std::fprintf(stderr, "xpo-train: the reward model has its own tokenizer: each prompt + completion is re-rendered "
                             "(conversations through its chat template) and re-tokenised for it\n");
      else
        std::fprintf(stderr, "xpo-train: the reward model shares the policy's tokenizer: it scores the policy's ids, "
                             "read at each completion's last real token\n");
    }
    xpo::scoring::RewardModelScorer scorer(load_rm(args.reward_model_path), std::move(rm_tokenizer));
    return dispatch_loss(std::move(policy), std::move(scorer), std::move(tokenizer), config, std::move(train), std::move(eval), args);
  }
  if (const auto pair_rm = pair_rm_folder(args); !pair_rm.empty()) {
    // Batched (8 prompts per forward, as TRL), under inference mode, in --judge_dtype on the training device.
    auto judge = xpo::scoring::load_pair_rm_judge(pair_rm, {.device = xpo::torch_device(config), .dtype = judge_dtype(args)});
    if (g_world.is_main())
      std::fprintf(stderr, "xpo-train: judging with PairRM from %s (%s, %lld prompts per forward)\n", pair_rm.string().c_str(),
                   args.judge_dtype.c_str(), static_cast<long long>(judge.options().batch_size));
    return dispatch_loss(std::move(policy), std::move(judge), std::move(tokenizer), config, std::move(train), std::move(eval), args);
  }
  if (!args.judge.empty() && fs::is_directory(args.judge)) {
    auto judge_tokenizer = xpo::scoring::reward_tokenizer(args.judge, model_path, args.tokenizer_limits());
    xpo::scoring::RewardModelJudge judge(load_rm(args.judge), judge_tokenizer ? *judge_tokenizer : tokenizer);
    return dispatch_loss(std::move(policy), std::move(judge), std::move(tokenizer), config, std::move(train), std::move(eval), args);
  }
  if (!args.judge.empty()) {
    return dispatch_loss(std::move(policy), xpo::scoring::rules::rule_judge(args.judge), std::move(tokenizer), config,
                         std::move(train), std::move(eval), args);
  }
  return dispatch_loss(std::move(policy), xpo::scoring::rules::rule_scorer(args.reward_rule), std::move(tokenizer), config,
                       std::move(train), std::move(eval), args);
}

}  // namespace

int main(int argc, char** argv) {
  xpo::use_passive_openmp_wait(argc, argv);  // idle OpenMP threads sleep (core/threads.hpp); re-executes once
  try {
    return main_impl(argc, argv);
  } catch (const xpo::ConfigError& e) {
    std::fprintf(stderr, "xpo-train: %s\n", e.what());
  } catch (const xpo::Error& e) {
    std::fprintf(stderr, "xpo-train: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xpo-train: error: %s\n", e.what());
  }
  return 1;
}
