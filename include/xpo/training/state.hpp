// xpo/training/state.hpp — where a run is (steps, epoch, log history), the learning-rate schedule, and the
// checkpoint-folder conventions (checkpoint-N, written under a temporary name, rotated by save_total_limit).
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "xpo/core/config.hpp"
#include "xpo/core/errors.hpp"
#include "xpo/core/json_file.hpp"

namespace xpo::training {

using Metrics = std::map<std::string, double>;

// One log entry as trainer_state.json's log_history and metrics.jsonl hold it: {"step": N, <every metric>}.
inline nlohmann::json log_line(std::int64_t step, const Metrics& metrics) {
  nlohmann::json line = {{"step", step}};
  for (const auto& [k, v] : metrics) line[k] = v;
  return line;
}

struct TrainerState {
  std::int64_t global_step = 0;  // optimizer steps done
  std::int64_t micro_step = 0;   // micro-batches consumed
  std::int64_t max_steps = 0;    // optimizer steps of the whole run
  std::int64_t micro_batches_per_epoch = 1;
  double epoch = 0.0;            // fractional: micro_step / micro_batches_per_epoch
  std::int64_t skipped_steps = 0;  // optimizer steps not applied: non-finite loss or gradient
  std::vector<nlohmann::json> log_history;
  // Names the run (random, kept across resumes): rotation deletes only this run's checkpoints, so a reused
  // output_dir never loses another run's, nor this run's newest. Empty in checkpoints written before it existed.
  std::string run_id;

  [[nodiscard]] nlohmann::json to_json() const {
    return {{"global_step", global_step}, {"micro_step", micro_step}, {"max_steps", max_steps},
            {"micro_batches_per_epoch", micro_batches_per_epoch}, {"epoch", epoch},
            {"skipped_steps", skipped_steps}, {"log_history", log_history}, {"run_id", run_id}};
  }
  static TrainerState from_json(const nlohmann::json& j, const std::string& source) {
    TrainerState s;
    try {
      s.global_step = j.at("global_step").get<std::int64_t>();
      s.micro_step = j.at("micro_step").get<std::int64_t>();
      s.max_steps = j.at("max_steps").get<std::int64_t>();
      s.micro_batches_per_epoch = j.at("micro_batches_per_epoch").get<std::int64_t>();
      s.epoch = j.at("epoch").get<double>();
      s.skipped_steps = j.value("skipped_steps", std::int64_t{0});
      s.log_history = j.at("log_history").get<std::vector<nlohmann::json>>();
      s.run_id = j.value("run_id", std::string());
    } catch (const nlohmann::json::exception& e) {
      throw FileError(source, std::string("not a trainer state: ") + e.what());
    }
    return s;
  }
};

// The learning rate of optimizer step `step` (0-based) under config.lr_scheduler_type, as transformers'
// get_scheduler computes it: constant; constant_with_warmup; linear (warmup, then linear decay to 0); cosine
// (warmup, then half a cosine down to 0).
inline double scheduled_learning_rate(const XPOConfig& c, std::int64_t step, std::int64_t total_steps) {
  const auto& type = c.lr_scheduler_type;
  if (type == "constant") return c.learning_rate;
  const std::int64_t warmup = c.warmup_steps > 0 ? c.warmup_steps
                                                 : static_cast<std::int64_t>(std::ceil(c.warmup_ratio * static_cast<double>(total_steps)));
  if (step < warmup) return c.learning_rate * static_cast<double>(step) / static_cast<double>(std::max<std::int64_t>(1, warmup));
  if (type == "constant_with_warmup") return c.learning_rate;
  const double progress = static_cast<double>(step - warmup) / static_cast<double>(std::max<std::int64_t>(1, total_steps - warmup));
  if (type == "linear") return c.learning_rate * std::max(0.0, 1.0 - progress);
  if (type == "cosine") return c.learning_rate * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
  throw ConfigError("lr_scheduler_type \"" + type + "\" is not one of linear, constant, constant_with_warmup, cosine");
}

// ---- checkpoint folders -----------------------------------------------------------------------------------------
inline constexpr const char* kCheckpointPrefix = "checkpoint-";

inline std::filesystem::path checkpoint_folder(const std::filesystem::path& output_dir, std::int64_t step) {
  return output_dir / (kCheckpointPrefix + std::to_string(step));
}

// Every complete checkpoint-N folder of output_dir (temporary folders of interrupted saves are not), by step.
inline std::vector<std::pair<std::int64_t, std::filesystem::path>> list_checkpoints(const std::filesystem::path& output_dir) {
  std::vector<std::pair<std::int64_t, std::filesystem::path>> out;
  std::error_code ec;
  if (!std::filesystem::is_directory(output_dir, ec)) return out;
  for (const auto& e : std::filesystem::directory_iterator(output_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || name.rfind(kCheckpointPrefix, 0) != 0) continue;
    const std::string digits = name.substr(std::string(kCheckpointPrefix).size());
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 15) continue;
    if (!std::filesystem::exists(e.path() / "trainer_state.json")) continue;
    out.emplace_back(std::stoll(digits), e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// "latest" -> the newest complete checkpoint of output_dir; anything else is a folder path.
inline std::filesystem::path resolve_checkpoint(const std::string& which, const std::filesystem::path& output_dir) {
  if (which == "latest") {
    const auto all = list_checkpoints(output_dir);
    if (all.empty()) throw FileError(output_dir.string(), "resume_from_checkpoint latest: no complete checkpoint-N folder here");
    return all.back().second;
  }
  const std::filesystem::path folder(which);
  if (!std::filesystem::exists(folder / "trainer_state.json")) {
    throw FileError(folder.string(), "not a checkpoint folder (no trainer_state.json)");
  }
  return folder;
}

// The run_id recorded in a checkpoint folder's trainer_state.json ("" when it has none or cannot be read).
inline std::string checkpoint_run_id(const std::filesystem::path& folder) {
  try {
    const auto j = read_json_file(folder / "trainer_state.json");
    return j.is_object() ? j.value("run_id", std::string()) : std::string();
  } catch (const std::exception&) {
    return {};
  }
}

// Keeps the newest `limit` checkpoints of the run `run_id` in output_dir; checkpoints of other runs are never
// touched, and neither is `keep` (the checkpoint just written), whatever its step. limit = nullopt keeps all.
// (transformers' _rotate_checkpoints deletes by step across runs, so a reused output_dir lost the new run's
// checkpoints to an old run's larger step numbers.)
inline void rotate_checkpoints(const std::filesystem::path& output_dir, std::optional<std::int64_t> limit,
                               const std::string& run_id, const std::filesystem::path& keep = {}) {
  if (!limit) return;
  std::vector<std::pair<std::int64_t, std::filesystem::path>> ours;
  for (auto& [step, folder] : list_checkpoints(output_dir))
    if (checkpoint_run_id(folder) == run_id) ours.emplace_back(step, folder);
  std::size_t count = ours.size();
  for (const auto& [step, folder] : ours) {
    if (static_cast<std::int64_t>(count) <= *limit) break;
    std::error_code same_ec;
    if (!keep.empty() && std::filesystem::equivalent(folder, keep, same_ec)) continue;
    // Renamed first, so a process killed while deleting never leaves a half-deleted folder that still looks
    // like a complete checkpoint.
    std::error_code ec;
    const auto doomed = folder.parent_path() / (".old-" + folder.filename().string());
    std::filesystem::remove_all(doomed, ec);
    std::filesystem::rename(folder, doomed, ec);
    std::filesystem::remove_all(ec ? folder : doomed, ec);
    --count;
  }
}

}  // namespace xpo::training
