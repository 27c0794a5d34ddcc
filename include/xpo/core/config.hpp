// xpo/core/config.hpp — XPOConfig: every setting of an XPO run, with TRL's names and defaults
// (trl.XPOConfig = OnlineDPOConfig + transformers.TrainingArguments, the fields xpo uses).
//
// One table (`visit_fields`) lists each field once with its help text; JSON load/save, unknown-key detection and
// the command line are all driven by it, so a new field cannot be forgotten in one of them.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xpo/core/errors.hpp"
#include "xpo/core/json_file.hpp"
#include "xpo/core/validation.hpp"

namespace xpo {

struct XPOConfig {
  // ---- run
  std::string output_dir = "xpo-output";
  bool overwrite_output_dir = false;  // train in an output_dir that holds another run's checkpoints (kept, never rotated)
  std::int64_t seed = 42;
  std::string device = "cpu";     // any torch::Device string: "cpu", "cuda", "cuda:1"
  std::string dtype = "float32";  // float32 | bfloat16 | float16 | float64: the policy's weights (TRL's torch_dtype)
  bool bf16 = false;  // mixed precision: compute in bfloat16 under autocast, weights and AdamW state stay in dtype
  bool fp16 = false;  // mixed precision in float16 with a dynamic loss scaler (CUDA only)
  bool gradient_checkpointing = false;  // recompute each decoder layer's activations in backward
  // ---- batching and length of training
  std::int64_t per_device_train_batch_size = 8;
  std::int64_t per_device_eval_batch_size = 8;
  std::int64_t gradient_accumulation_steps = 1;
  double num_train_epochs = 3.0;
  std::int64_t max_steps = -1;  // > 0 overrides num_train_epochs
  bool dataloader_drop_last = false;
  // ---- optimizer (AdamW) and learning-rate schedule
  double learning_rate = 5e-7;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;  // 0 disables clipping
  std::string lr_scheduler_type = "linear";
  double warmup_ratio = 0.0;
  std::int64_t warmup_steps = 0;  // > 0 overrides warmup_ratio
  // ---- logging and checkpoints
  std::int64_t logging_steps = 10;
  std::int64_t save_steps = 500;
  std::optional<std::int64_t> save_total_limit;  // null keeps every checkpoint
  // ---- generation (both samples of a step use the same parameters)
  std::int64_t max_new_tokens = 64;
  double temperature = 0.9;  // 0 = greedy
  std::int64_t top_k = 0;    // 0 = off
  double top_p = 1.0;
  std::optional<double> min_p;  // null = off
  // ---- XPO
  std::optional<double> missing_eos_penalty;  // subtracted from the score of a completion without EOS
  std::string loss_type = "sigmoid";          // sigmoid | ipo
  std::vector<double> alpha{1e-5};            // one value, or one per epoch
  std::vector<double> beta{0.1};              // one value, or one per epoch
  bool disable_dropout = true;
  // ---- safety
  std::int64_t max_skipped_steps = 10;  // optimizer steps with a non-finite loss or gradient tolerated (not applied)

  // One message per invalid field ("beta[1] = 0: must be finite and > 0"); empty when valid.
  [[nodiscard]] std::vector<std::string> problems() const;
  // Throws xpo::ConfigError listing every problem.
  void validate() const;

  // LibTorch's device and dtype of these fields: xpo::torch_device(config), xpo::torch_dtype(config) in
  // core/config_torch.hpp. This header needs no LibTorch, so that its parser can be fuzzed with clang (fuzz/).

  [[nodiscard]] nlohmann::json to_json() const;
  // Strict: unknown keys (with the nearest known key suggested), wrong JSON types and invalid values are all
  // reported together in one xpo::ConfigError whose lines start with `source`. Keys not given keep defaults.
  static XPOConfig from_json(const nlohmann::json& j, std::string_view source = "config");
  // Overlay `j` onto this config (used for "--config file, then flags override").
  void update_from_json(const nlohmann::json& j, std::string_view source = "config");

  static XPOConfig load(const std::filesystem::path& path);
  // Written to a temporary file and renamed, so an existing file is never left half-written.
  void save(const std::filesystem::path& path) const;
};

// Calls f(name, member, help) for every field, in file order. Works on const and non-const configs.
template <class Config, class F>
  requires std::same_as<std::remove_const_t<Config>, XPOConfig>
void visit_fields(Config& c, F&& f) {
  f("output_dir", c.output_dir, "where checkpoints, logs and the final model are written");
  f("overwrite_output_dir", c.overwrite_output_dir,
    "start a new run in an output_dir holding another run's checkpoints (they are kept and never rotated)");
  f("seed", c.seed, "random seed for sampling, shuffling and initialisation");
  f("device", c.device, "torch device: cpu, cuda, cuda:N");
  f("dtype", c.dtype, "the dtype the policy is loaded and trained in (TRL's torch_dtype): float32, bfloat16, "
    "float16, float64; xpo-train saves the final model in it when given, else in the input's stored dtype");
  f("bf16", c.bf16, "mixed precision: forward and backward in bfloat16 (autocast), float32 master weights and AdamW "
    "state when dtype is float32");
  f("fp16", c.fp16, "mixed precision in float16 with a dynamic loss scaler (CUDA only)");
  f("gradient_checkpointing", c.gradient_checkpointing,
    "recompute each decoder layer's activations in backward instead of keeping them (less memory, ~1 more forward)");
  f("per_device_train_batch_size", c.per_device_train_batch_size, "prompts per process per micro-batch");
  f("per_device_eval_batch_size", c.per_device_eval_batch_size, "prompts per process per evaluation batch");
  f("gradient_accumulation_steps", c.gradient_accumulation_steps, "micro-batches per optimizer step");
  f("num_train_epochs", c.num_train_epochs, "passes over the prompt set (fractional allowed)");
  f("max_steps", c.max_steps, "optimizer steps to run; > 0 overrides num_train_epochs, -1 = off");
  f("dataloader_drop_last", c.dataloader_drop_last, "drop the last incomplete batch of an epoch");
  f("learning_rate", c.learning_rate, "AdamW peak learning rate");
  f("weight_decay", c.weight_decay, "AdamW decoupled weight decay");
  f("adam_beta1", c.adam_beta1, "AdamW beta1");
  f("adam_beta2", c.adam_beta2, "AdamW beta2");
  f("adam_epsilon", c.adam_epsilon, "AdamW epsilon");
  f("max_grad_norm", c.max_grad_norm, "gradient clipping norm; 0 disables clipping");
  f("lr_scheduler_type", c.lr_scheduler_type, "linear, constant, constant_with_warmup or cosine");
  f("warmup_ratio", c.warmup_ratio, "fraction of the steps spent warming the learning rate up");
  f("warmup_steps", c.warmup_steps, "warm-up steps; > 0 overrides warmup_ratio");
  f("logging_steps", c.logging_steps, "optimizer steps between two metric logs");
  f("save_steps", c.save_steps, "optimizer steps between two checkpoints");
  f("save_total_limit", c.save_total_limit, "keep at most this many checkpoints (null = all)");
  f("max_new_tokens", c.max_new_tokens, "tokens generated per completion at most");
  f("temperature", c.temperature, "sampling temperature; 0 = greedy");
  f("top_k", c.top_k, "sample among the k most likely tokens; 0 = off");
  f("top_p", c.top_p, "nucleus sampling mass; 1 = off");
  f("min_p", c.min_p, "drop tokens below min_p x the top probability (null = off)");
  f("missing_eos_penalty", c.missing_eos_penalty, "subtracted from the score of a completion without EOS");
  f("loss_type", c.loss_type, "DPO loss under the XPO term: sigmoid or ipo");
  f("alpha", c.alpha, "weight of the exploration term; one value or one per epoch");
  f("beta", c.beta, "KL strength; one value or one per epoch");
  f("disable_dropout", c.disable_dropout, "turn dropout off in the policy and reference");
  f("max_skipped_steps", c.max_skipped_steps,
    "optimizer steps with a non-finite loss or gradient that are skipped (never applied) before the run stops");
}

namespace detail {

inline std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

inline std::string json_brief(const nlohmann::json& j) {
  auto text = j.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return std::string(j.type_name()) + " " + text;
}

// Readers: set `out` from `j` or return what was expected.
inline std::optional<std::string> read_json(const nlohmann::json& j, std::string& out) {
  if (!j.is_string()) return "a string";
  out = j.get<std::string>();
  return std::nullopt;
}
inline std::optional<std::string> read_json(const nlohmann::json& j, bool& out) {
  if (!j.is_boolean()) return "true or false";
  out = j.get<bool>();
  return std::nullopt;
}
inline std::optional<std::string> read_json(const nlohmann::json& j, std::int64_t& out) {
  if (j.is_number_integer()) {
    out = j.get<std::int64_t>();
    return std::nullopt;
  }
  if (j.is_number_float()) {  // 3.0 is an integer; 3.5 is not
    const double v = j.get<double>();
    if (is_finite(v) && v == static_cast<double>(static_cast<std::int64_t>(v))) {
      out = static_cast<std::int64_t>(v);
      return std::nullopt;
    }
  }
  return "an integer";
}
inline std::optional<std::string> read_json(const nlohmann::json& j, double& out) {
  if (!j.is_number()) return "a number";
  out = j.get<double>();
  return std::nullopt;
}
inline std::optional<std::string> read_json(const nlohmann::json& j, std::vector<double>& out) {
  if (j.is_number()) {
    out = {j.get<double>()};
    return std::nullopt;
  }
  if (j.is_array() && std::all_of(j.begin(), j.end(), [](const auto& e) { return e.is_number(); })) {
    out.clear();
    for (const auto& e : j) out.push_back(e.get<double>());
    return std::nullopt;
  }
  return "a number or a list of numbers";
}
template <class T>
std::optional<std::string> read_json(const nlohmann::json& j, std::optional<T>& out) {
  if (j.is_null()) {
    out.reset();
    return std::nullopt;
  }
  T value{};
  if (auto expected = read_json(j, value)) return *expected + " or null";
  out = value;
  return std::nullopt;
}

template <class T>
nlohmann::json write_json(const T& v) {
  return nlohmann::json(v);
}
template <class T>
nlohmann::json write_json(const std::optional<T>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}
inline nlohmann::json write_json(const std::vector<double>& v) {  // a one-entry list reads back as a float
  return v.size() == 1 ? nlohmann::json(v.front()) : nlohmann::json(v);
}

template <class T>
bool one_of(const T& value, std::initializer_list<T> allowed) {
  return std::find(allowed.begin(), allowed.end(), value) != allowed.end();
}


// A device string LibTorch parses (c10::Device's grammar "type[:index]", index without leading zeros), for the
// device types a trainer can run on. A test checks that every string accepted here constructs a torch::Device.
inline bool is_device_string(std::string_view s) {
  const auto colon = s.find(':');
  const auto type = s.substr(0, colon);
  if (!one_of<std::string_view>(type, {"cpu", "cuda", "hip", "mps", "xpu", "hpu", "xla", "meta", "privateuseone"}))
    return false;
  if (colon == std::string_view::npos) return true;
  const auto index = s.substr(colon + 1);
  if (index.empty() || index.size() > 3 || (index.size() > 1 && index[0] == '0')) return false;
  int value = 0;
  for (const char c : index) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + (c - '0');
  }
  return value <= 127;  // c10::DeviceIndex is 8 bits in LibTorch 1.x
}

}  // namespace detail

inline std::vector<std::string> XPOConfig::problems() const {
  std::vector<std::string> out;
  auto bad = [&out](std::string field, const std::string& value, const std::string& rule) {
    out.push_back(std::move(field) + " = " + value + ": must be " + rule);
  };
  auto num = [](double v) { return format_value(v); };
  auto integer = [](std::int64_t v) { return std::to_string(v); };

  if (output_dir.empty()) bad("output_dir", "\"\"", "a non-empty path");
  if (seed < 0) bad("seed", integer(seed), ">= 0");
  if (!detail::is_device_string(device))
    bad("device", "\"" + device + "\"", "a device such as cpu, cuda, cuda:0 or mps");
  if (!detail::one_of<std::string>(dtype, {"float32", "bfloat16", "float16", "float64"}))
    bad("dtype", "\"" + dtype + "\"", "one of float32, bfloat16, float16, float64");
  if (bf16 && fp16) bad("fp16", "true", "false when bf16 is true (one mixed-precision dtype)");
  if (fp16 && device.rfind("cuda", 0) != 0)
    bad("fp16", "true", "used with a cuda device, not \"" + device + "\": fp16 mixed precision requires a GPU "
        "(LibTorch's CPU autocast runs bfloat16 only; use bf16)");
  if (bf16 && dtype == "float16") bad("bf16", "true", "false with dtype float16 (use fp16)");
  if (fp16 && dtype == "bfloat16") bad("fp16", "true", "false with dtype bfloat16 (use bf16)");
  if (per_device_train_batch_size < 1)
    bad("per_device_train_batch_size", integer(per_device_train_batch_size), ">= 1");
  if (max_skipped_steps < 0) bad("max_skipped_steps", integer(max_skipped_steps), ">= 0");
  if (per_device_eval_batch_size < 1)
    bad("per_device_eval_batch_size", integer(per_device_eval_batch_size), ">= 1");
  if (gradient_accumulation_steps < 1)
    bad("gradient_accumulation_steps", integer(gradient_accumulation_steps), ">= 1");
  if (max_steps == 0 || max_steps < -1) bad("max_steps", integer(max_steps), "-1 (use num_train_epochs) or >= 1");
  if (max_steps == -1 && !(is_finite(num_train_epochs) && num_train_epochs > 0))
    bad("num_train_epochs", num(num_train_epochs), "finite and > 0 when max_steps is -1");
  if (!(is_finite(learning_rate) && learning_rate >= 0)) bad("learning_rate", num(learning_rate), "finite and >= 0");
  if (!(is_finite(weight_decay) && weight_decay >= 0)) bad("weight_decay", num(weight_decay), "finite and >= 0");
  if (!(adam_beta1 >= 0 && adam_beta1 < 1)) bad("adam_beta1", num(adam_beta1), "in [0, 1)");
  if (!(adam_beta2 >= 0 && adam_beta2 < 1)) bad("adam_beta2", num(adam_beta2), "in [0, 1)");
  if (!(is_finite(adam_epsilon) && adam_epsilon > 0)) bad("adam_epsilon", num(adam_epsilon), "finite and > 0");
  if (!(is_finite(max_grad_norm) && max_grad_norm >= 0))
    bad("max_grad_norm", num(max_grad_norm), "finite and >= 0 (0 disables clipping)");
  if (!detail::one_of<std::string>(lr_scheduler_type, {"linear", "constant", "constant_with_warmup", "cosine"}))
    bad("lr_scheduler_type", "\"" + lr_scheduler_type + "\"", "one of linear, constant, constant_with_warmup, cosine");
  if (!(warmup_ratio >= 0 && warmup_ratio <= 1)) bad("warmup_ratio", num(warmup_ratio), "in [0, 1]");
  if (warmup_steps < 0) bad("warmup_steps", integer(warmup_steps), ">= 0");
  if (logging_steps < 1) bad("logging_steps", integer(logging_steps), ">= 1");
  if (save_steps < 1) bad("save_steps", integer(save_steps), ">= 1");
  if (save_total_limit && *save_total_limit < 1)
    bad("save_total_limit", integer(*save_total_limit), ">= 1, or null to keep every checkpoint");
  if (max_new_tokens < 1) bad("max_new_tokens", integer(max_new_tokens), ">= 1");
  if (!(is_finite(temperature) && temperature >= 0)) bad("temperature", num(temperature), "finite and >= 0 (0 = greedy)");
  if (top_k < 0) bad("top_k", integer(top_k), ">= 0 (0 = off)");
  if (!(top_p > 0 && top_p <= 1)) bad("top_p", num(top_p), "in (0, 1]");
  if (min_p && !(*min_p >= 0 && *min_p <= 1)) bad("min_p", num(*min_p), "in [0, 1], or null for off");
  if (missing_eos_penalty && !(is_finite(*missing_eos_penalty) && *missing_eos_penalty >= 0))
    bad("missing_eos_penalty", num(*missing_eos_penalty), "finite and >= 0, or null for off");
  if (!detail::one_of<std::string>(loss_type, {"sigmoid", "ipo"}))
    bad("loss_type", "\"" + loss_type + "\"", "sigmoid or ipo");
  for (auto& p : alpha_problems(alpha)) out.push_back(std::move(p));
  for (auto& p : beta_problems(beta)) out.push_back(std::move(p));
  return out;
}

inline void XPOConfig::validate() const {
  if (auto p = problems(); !p.empty()) throw ConfigError(std::move(p));
}

inline nlohmann::json XPOConfig::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  visit_fields(*this, [&j](const char* name, const auto& member, const char*) { j[name] = detail::write_json(member); });
  return j;
}

inline void XPOConfig::update_from_json(const nlohmann::json& j, std::string_view source) {
  const std::string prefix = source.empty() ? std::string() : std::string(source) + ": ";
  if (!j.is_object()) throw ConfigError(prefix + "expected a JSON object of settings, got " + detail::json_brief(j));
  std::vector<std::string> problems;
  XPOConfig updated = *this;
  std::vector<std::string> known;
  visit_fields(updated, [&](const char* name, auto& member, const char*) {
    known.emplace_back(name);
    const auto it = j.find(name);
    if (it == j.end()) return;
    if (auto expected = detail::read_json(*it, member))
      problems.push_back(prefix + name + ": expected " + *expected + ", got " + detail::json_brief(*it));
  });
  for (const auto& [key, value] : j.items()) {
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    std::string message = prefix + "unknown key \"" + key + "\"";
    const auto nearest = std::min_element(known.begin(), known.end(), [&key = key](const auto& a, const auto& b) {
      return detail::edit_distance(key, a) < detail::edit_distance(key, b);
    });
    if (nearest != known.end() && detail::edit_distance(key, *nearest) <= std::max<std::size_t>(2, key.size() / 3))
      message += " (did you mean \"" + *nearest + "\"?)";
    problems.push_back(std::move(message));
  }
  for (auto& p : updated.problems()) problems.push_back(prefix + p);
  if (!problems.empty()) throw ConfigError(std::move(problems));
  *this = std::move(updated);
}

inline XPOConfig XPOConfig::from_json(const nlohmann::json& j, std::string_view source) {
  XPOConfig config;
  config.update_from_json(j, source);
  return config;
}

inline XPOConfig XPOConfig::load(const std::filesystem::path& path) {
  return from_json(read_json_file(path, std::uintmax_t{1} << 24), path.string());
}

inline void XPOConfig::save(const std::filesystem::path& path) const { write_json_file(path, to_json()); }

}  // namespace xpo
