// xpo/training/callbacks.hpp — hooks into Trainer::train(callbacks...), as a variadic pack (ensmallen's shape):
// zero cost when absent, any number when present. A callback is any type with at least one of
//   on_train_begin(trainer)   on_step_end(trainer)   on_log(trainer, const Metrics&)
//   on_save(trainer, const std::filesystem::path& checkpoint)   on_train_end(trainer)
// (each may be a template over the trainer type); a type with none of them is a compile error, never a silent
// no-op. Built in: MetricsLogger (output_dir/metrics.jsonl), TensorBoardLogger (output_dir/runs/), ProgressBar
// and LogCompletionsCallback (output_dir/completions.jsonl plus a TensorBoard text summary).
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "xpo/core/errors.hpp"
#include "xpo/logging/tensorboard.hpp"
#include "xpo/training/state.hpp"

namespace xpo::training {

template <class C, class T>
concept HasTrainBegin = requires(C& c, T& t) { c.on_train_begin(t); };
template <class C, class T>
concept HasStepEnd = requires(C& c, T& t) { c.on_step_end(t); };
template <class C, class T>
concept HasLog = requires(C& c, T& t, const Metrics& m) { c.on_log(t, m); };
template <class C, class T>
concept HasSave = requires(C& c, T& t, const std::filesystem::path& p) { c.on_save(t, p); };
template <class C, class T>
concept HasTrainEnd = requires(C& c, T& t) { c.on_train_end(t); };

// A callback for trainer type T: it implements at least one hook.
template <class C, class T>
concept Callback = HasTrainBegin<C, T> || HasStepEnd<C, T> || HasLog<C, T> || HasSave<C, T> || HasTrainEnd<C, T>;

// One JSON line per log to output_dir/metrics.jsonl: {"step": N, "epoch": e, <every metric>}. Appends, so a
// resumed run continues the same file.
class MetricsLogger {
 public:
  template <class T>
  void on_train_begin(T& trainer) {
    path_ = std::filesystem::path(trainer.config().output_dir) / "metrics.jsonl";
    std::filesystem::create_directories(path_.parent_path());
    out_.open(path_, std::ios::app);
    if (!out_) throw FileError(path_.string(), "cannot open the metrics log");
  }
  template <class T>
  void on_log(T& trainer, const Metrics& metrics) {
    out_ << log_line(trainer.state().global_step, metrics).dump() << '\n';
    out_.flush();
    if (!out_) throw FileError(path_.string(), "write failed (disk full?)");
  }

 private:
  std::filesystem::path path_;
  std::ofstream out_;
};

// Scalars under "train/<key>" in output_dir/runs/, readable by TensorBoard.
class TensorBoardLogger {
 public:
  template <class T>
  void on_train_begin(T& trainer) {
    writer_ = std::make_unique<logging::EventWriter>(std::filesystem::path(trainer.config().output_dir) / "runs");
  }
  template <class T>
  void on_log(T& trainer, const Metrics& metrics) {
    for (const auto& [k, v] : metrics) writer_->add_scalar("train/" + k, v, trainer.state().global_step);
  }
  [[nodiscard]] const logging::EventWriter* writer() const noexcept { return writer_.get(); }

 private:
  std::unique_ptr<logging::EventWriter> writer_;
};

// step/total, it/s, ETA and the latest reward margin: redrawn in place on a terminal, one plain line per log
// otherwise (files, CI logs).
class ProgressBar {
 public:
  explicit ProgressBar(std::FILE* out = stderr) : out_(out), tty_(::isatty(::fileno(out)) != 0) {}

  template <class T>
  void on_train_begin(T& trainer) {
    start_ = Clock::now();
    first_step_ = trainer.state().global_step;
  }
  template <class T>
  void on_step_end(T& trainer) {
    if (tty_) draw(trainer.state(), false);
  }
  template <class T>
  void on_log(T& trainer, const Metrics& metrics) {
    if (const auto it = metrics.find("rewards/margins"); it != metrics.end()) margin_ = it->second;
    if (const auto it = metrics.find("objective/model_scores"); it != metrics.end()) score_ = it->second;
    if (!tty_) draw(trainer.state(), true);
  }
  template <class T>
  void on_train_end(T& trainer) {
    if (tty_) {
      draw(trainer.state(), false);
      std::fputc('\n', out_);
    }
  }

 private:
  using Clock = std::chrono::steady_clock;
  void draw(const TrainerState& s, bool line) {
    const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    const auto done = s.global_step - first_step_;
    const double rate = done > 0 ? static_cast<double>(done) / elapsed : 0.0;
    const double eta = rate > 0 ? static_cast<double>(s.max_steps - s.global_step) / rate : 0.0;
    constexpr int kWidth = 24;
    const int filled = s.max_steps > 0 ? static_cast<int>(kWidth * s.global_step / s.max_steps) : 0;
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(kWidth, '.');
    char extra[96] = "";
    if (score_) std::snprintf(extra, sizeof extra, "  score %.4g", *score_);
    else if (margin_) std::snprintf(extra, sizeof extra, "  margin %.4g", *margin_);
    std::fprintf(out_, "%s[%s] %lld/%lld  %.2f it/s  ETA %02d:%02d  epoch %.2f%s%s", line ? "" : "\r", bar.c_str(),
                 static_cast<long long>(s.global_step), static_cast<long long>(s.max_steps), rate,
                 static_cast<int>(eta) / 60, static_cast<int>(eta) % 60, s.epoch, extra, line ? "\n" : "");
    std::fflush(out_);
  }

  std::FILE* out_;
  bool tty_;
  Clock::time_point start_{};
  std::int64_t first_step_ = 0;
  std::optional<double> margin_, score_;
};

// Every `every_steps` optimizer steps, completes a few fixed prompts with the policy and appends
// {"step", "prompt", "completion", "score"} rows to output_dir/completions.jsonl (score: the reward of the
// completion, or for a judge whether it beat the reference's), plus a TensorBoard text summary. The prompts are
// the given rows, or (as TRL's callback) the first `num_prompts` rows of the trainer's eval dataset.
class LogCompletionsCallback {
 public:
  LogCompletionsCallback(std::vector<nlohmann::ordered_json> prompt_rows, std::int64_t every_steps)
      : rows_(std::move(prompt_rows)), every_(every_steps) {
    if (every_ < 1) throw ConfigError("LogCompletionsCallback: every_steps must be >= 1");
    if (rows_.empty()) throw ConfigError("LogCompletionsCallback: no prompts");
  }
  explicit LogCompletionsCallback(std::int64_t every_steps, std::size_t num_prompts = 8)
      : every_(every_steps), from_eval_(num_prompts) {
    if (every_ < 1) throw ConfigError("LogCompletionsCallback: every_steps must be >= 1");
  }

  template <class T>
  void on_train_begin(T& trainer) {
    if (from_eval_ > 0) {
      const auto& eval = trainer.eval_dataset();
      if (eval.empty()) throw ConfigError("LogCompletionsCallback: the trainer has no eval dataset to take prompts from");
      rows_.assign(eval.begin(), eval.begin() + static_cast<std::ptrdiff_t>(std::min(from_eval_, eval.size())));
    }
    const std::filesystem::path dir(trainer.config().output_dir);
    std::filesystem::create_directories(dir);
    path_ = dir / "completions.jsonl";
    out_.open(path_, std::ios::app);
    if (!out_) throw FileError(path_.string(), "cannot open the completions log");
    writer_ = std::make_unique<logging::EventWriter>(dir / "runs");
  }
  template <class T>
  void on_step_end(T& trainer) {
    const auto step = trainer.state().global_step;
    if (step % every_ != 0) return;
    const auto samples = trainer.complete(rows_);
    std::string table = "| prompt | completion | score |\n|---|---|---|\n";
    for (const auto& s : samples) {
      nlohmann::json line = {{"step", step}, {"prompt", s.prompt}, {"completion", s.completion}};
      line["score"] = s.score ? nlohmann::json(*s.score) : nlohmann::json(nullptr);
      out_ << line.dump() << '\n';
      table += "| " + escape(s.prompt) + " | " + escape(s.completion) + " | " +
               (s.score ? std::to_string(*s.score) : std::string("-")) + " |\n";
    }
    out_.flush();
    if (!out_) throw FileError(path_.string(), "write failed (disk full?)");
    writer_->add_text("completions", table, step);
  }

 private:
  static std::string escape(const std::string& s) {
    std::string out;
    for (const char c : s) {
      if (c == '|') out += "\\|";
      else if (c == '\n') out += "<br>";
      else out += c;
    }
    return out;
  }
  std::vector<nlohmann::ordered_json> rows_;
  std::int64_t every_;
  std::size_t from_eval_ = 0;
  std::filesystem::path path_;
  std::ofstream out_;
  std::unique_ptr<logging::EventWriter> writer_;
};

}  // namespace xpo::training
