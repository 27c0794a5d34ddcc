// The command line end to end, as a user runs it: xpo-train on the tiny fixture models (reward model, judge,
// rule judge with IPO, conversational prompts, LoRA, resume, Ctrl-C), the offline quick start on the embedded
// default, xpo-chat (--prompt and stdin), bad input (one clear message, a non-zero exit, nothing written over),
// faults (kill -9 during saves, a disk that fills up during a save), and data-parallel runs (--nproc, a lost rank).
#include <xpo/xpo.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <fstream>
#include <map>
#include <set>
#include <string_view>
#include <thread>

#include <sys/resource.h>

#include "support/fixtures.hpp"
#include "support/process.hpp"
#include "support/tfevents.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

std::string tiny_policy() { return xpo::test::fixture_path("models/tiny-qwen2").string(); }
std::string tiny_reward_model() { return xpo::test::fixture_path("models/tiny-qwen2-rm").string(); }

class CliTest : public xpo::test::ScratchDir {
 protected:
  xpo::test::ProcessResult train(std::vector<std::string> args, const std::function<void(pid_t)>& while_running = {}) {
    args.insert(args.begin(), XPO_TRAIN_EXE);
    return xpo::test::run_process(args, dir_, "", while_running);
  }
  xpo::test::ProcessResult chat(std::vector<std::string> args, const std::string& input = "") {
    args.insert(args.begin(), XPO_CHAT_EXE);
    return xpo::test::run_process(args, dir_, input);
  }
  // Standard prompts, or conversations (ending with a user turn) when `conversational`.
  std::string write_prompts(const std::string& name, std::size_t n, bool conversational) {
    std::ofstream out(dir_ / name);
    for (std::size_t i = 0; i < n; ++i) {
      const std::string text = "prompt number " + std::to_string(i) + " says";
      ordered_json row;
      if (conversational) row["prompt"] = ordered_json::array({{{"role", "user"}, {"content", text}}});
      else row["prompt"] = text;
      row["id"] = i;  // another column: kept and ignored
      out << row.dump() << "\n";
    }
    return (dir_ / name).string();
  }
  // The few-step run every fixture test shares.
  std::vector<std::string> tiny_run(const std::string& dataset, const fs::path& out) {
    return {"--model_name_or_path", tiny_policy(), "--dataset_name", dataset, "--output_dir", out.string(),
            "--per_device_train_batch_size", "2", "--max_steps", "2", "--max_new_tokens", "6", "--learning_rate", "1e-3",
            "--logging_steps", "1", "--save_steps", "2", "--missing_eos_penalty", "1.0", "--seed", "3"};
  }
  // Sets the value that follows `flag` in `args`.
  static void set_flag(std::vector<std::string>& args, const std::string& flag, const std::string& value) {
    args.at(static_cast<std::size_t>(std::find(args.begin(), args.end(), flag) - args.begin()) + 1) = value;
  }
  // Removes `flag` and its value from `args`.
  static void drop_flag(std::vector<std::string>& args, const std::string& flag) {
    const auto it = std::find(args.begin(), args.end(), flag);
    if (it != args.end()) args.erase(it, it + 2);
  }
  static std::vector<json> metrics(const fs::path& out) { return xpo::test::read_jsonl(out / "metrics.jsonl"); }
  // For the fault tests: a run over `--nproc 2` ranks that would go on for ever (one prompt per rank and step).
  std::vector<std::string> endless_two_rank_run(const fs::path& out, const std::string& dist_timeout) {
    auto args = tiny_run(write_prompts("p.jsonl", 8, false), out);
    set_flag(args, "--max_steps", "100000");
    set_flag(args, "--save_steps", "100000");
    set_flag(args, "--per_device_train_batch_size", "1");
    args.insert(args.end(), {"--reward_rule", "positivity", "--nproc", "2", "--dist_timeout", dist_timeout});
    return args;
  }
  // Once `out` has its first logged step, the launcher `pid`'s child processes: the ranks, in start order.
  static std::vector<pid_t> ranks_once_training(pid_t pid, const fs::path& out) {
    EXPECT_TRUE(xpo::test::wait_until([&] { return fs::exists(out / "metrics.jsonl") && fs::file_size(out / "metrics.jsonl") > 0; },
                                      std::chrono::seconds(120)));
    std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
    std::vector<pid_t> ranks;
    for (pid_t p; in >> p;) ranks.push_back(p);
    return ranks;
  }
  static fs::path only_event_file(const fs::path& out) {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(out / "runs")) files.push_back(e.path());
    EXPECT_EQ(files.size(), 1u);
    return files.at(0);
  }
};

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << "expected \"" << (needle) << "\" in:\n" << (haystack)

TEST_F(CliTest, RewardModelRunWritesMetricsTensorBoardAndALoadableModel) {
  const auto out = dir_ / "rm";
  auto args = tiny_run(write_prompts("p.jsonl", 8, false), out);
  args.insert(args.end(), {"--reward_model_path", tiny_reward_model(), "--eval_fraction", "0.25"});
  const auto r = train(args);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "6 training prompts, 2 held-out");
  const auto lines = metrics(out);
  ASSERT_EQ(lines.size(), 2u);
  for (const char* key : {"loss", "loss/dpo", "loss/xpo", "objective/kl", "objective/entropy", "objective/model_scores",
                          "objective/ref_scores", "objective/scores_margin", "rewards/chosen", "rewards/rejected",
                          "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected",
                          "val/model_contain_eos_token", "val/ref_contain_eos_token", "alpha", "beta", "grad_norm",
                          "learning_rate", "epoch"}) {
    EXPECT_TRUE(lines[1].contains(key)) << key;
  }
  // TensorBoard: every logged metric of step 2 is in the event file, with the same value.
  const auto scalars = xpo::test::tfevents::read_scalars(only_event_file(out));
  std::size_t found = 0;
  for (const auto& [tag, value, step] : scalars) {
    if (step != 2 || tag.rfind("train/", 0) != 0) continue;
    const auto key = tag.substr(6);
    ASSERT_TRUE(lines[1].contains(key)) << key;
    EXPECT_FLOAT_EQ(value, static_cast<float>(lines[1][key].get<double>())) << key;
    ++found;
  }
  EXPECT_EQ(found, lines[1].size() - 1) << "every metric but the step itself";
  // The output and the checkpoint load back; the held-out score is reported before and after.
  EXPECT_NO_THROW((void)xpo::models::load_causal_lm(out));
  EXPECT_NO_THROW((void)xpo::text::Tokenizer::from_pretrained(out));
  EXPECT_TRUE(fs::exists(out / "checkpoint-2" / "trainer_state.json"));
  const auto results = xpo::read_json_file(out / "eval_results.json", 1 << 20);
  EXPECT_TRUE(results.contains("before") && results.contains("after")) << results.dump();
  EXPECT_CONTAINS(r.out, "held-out prompts (2)");
}

TEST_F(CliTest, JudgeWithConversationalPromptsAndLoRA) {
  const auto out = dir_ / "judge";
  auto args = tiny_run(write_prompts("chat.jsonl", 6, true), out);
  drop_flag(args, "--missing_eos_penalty");  // a judge gives no scores to lower: the pair is refused
  args.insert(args.end(), {"--judge", tiny_reward_model(), "--use_peft", "--lora_r", "2", "--lora_alpha", "4",
                           "--lora_target_modules", "q_proj,v_proj", "--report_to", "jsonl"});
  const auto r = train(args);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto lines = metrics(out);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_TRUE(lines[1].contains("rewards/margins"));
  EXPECT_FALSE(lines[1].contains("objective/model_scores")) << "a judge gives no scores";
  EXPECT_FALSE(fs::exists(out / "runs")) << "--report_to jsonl writes no TensorBoard files";
  EXPECT_TRUE(fs::exists(out / "checkpoint-2" / "adapter_config.json")) << "a LoRA checkpoint holds the adapter";
  const auto base = xpo::models::load_causal_lm(tiny_policy());
  const auto merged = xpo::models::load_causal_lm(out);  // the final model has the adapters merged
  bool changed = false;
  for (const auto& p : base->named_parameters())
    if (!torch::equal(p.value(), merged->named_parameters()[p.key()])) changed = true;
  EXPECT_TRUE(changed) << "merged LoRA weights differ from the base";
}

TEST_F(CliTest, RuleJudgeWithIpoAndNoReports) {
  const auto out = dir_ / "rule";
  auto args = tiny_run(write_prompts("p.jsonl", 4, false), out);
  drop_flag(args, "--missing_eos_penalty");
  args.insert(args.end(), {"--judge", "concise", "--loss_type", "ipo", "--report_to", "none", "--beta", "0.5"});
  const auto r = train(args);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(fs::exists(out / "metrics.jsonl"));
  EXPECT_FALSE(fs::exists(out / "runs"));
  EXPECT_TRUE(fs::exists(out / "config.json"));
}

// ---- faults real runs hit (issue 17): each recipe as a user meets it ----------------------------------------------

// A copy of a fixture folder that the test may change (the fixtures themselves are never edited).
fs::path copy_fixture(const std::string& relative, const fs::path& to) {
  fs::copy(xpo::test::fixture_path(relative), to, fs::copy_options::recursive);
  return to;
}

void write_json_to(const fs::path& file, const ordered_json& j, int indent = -1) {
  std::ofstream(file) << j.dump(indent) << "\n";
}

// Prompts of different lengths (so batches are left-padded), standard or conversational.
std::string write_varied_prompts(const fs::path& file, std::size_t n, bool conversational) {
  std::ofstream out(file);
  for (std::size_t i = 0; i < n; ++i) {
    std::string text = "prompt " + std::to_string(i);
    for (std::size_t k = 0; k < (i * 7) % 11; ++k) text += " and more words";
    ordered_json row;
    if (conversational) row["prompt"] = ordered_json::array({{{"role", "user"}, {"content", text}}});
    else row["prompt"] = text;
    out << row.dump() << "\n";
  }
  return file.string();
}

// 1. pad = eos in the policy, pad 0 in the reward model: a completion's held-out score must not depend on the
// evaluation batch size (greedy, so the completions are the same), and a reward model without pad_token_id runs.
TEST_F(CliTest, RewardModelScoreDoesNotDependOnTheBatchWhenPadIdsDisagree) {
  const auto policy = copy_fixture("models/tiny-qwen2", dir_ / "policy");
  auto tokenizer_config = xpo::test::read_json(policy / "tokenizer_config.json");
  tokenizer_config.erase("pad_token");  // pad = eos, as for Llama 3 and many base models
  write_json_to(policy / "tokenizer_config.json", tokenizer_config);
  const auto prompts = write_varied_prompts(dir_ / "p.jsonl", 8, false);
  const auto eval = write_varied_prompts(dir_ / "eval.jsonl", 8, false);
  std::map<std::string, double> before;
  for (const std::string batch : {"1", "8"}) {
    const auto out = dir_ / ("eval-batch-" + batch);
    const auto r = train({"--model_name_or_path", policy.string(), "--dataset_name", prompts, "--eval_dataset", eval,
                          "--output_dir", out.string(), "--reward_model_path", tiny_reward_model(), "--temperature", "0",
                          "--max_steps", "1", "--per_device_train_batch_size", "4", "--max_new_tokens", "8",
                          "--num_eval_samples", "1", "--per_device_eval_batch_size", batch, "--report_to", "none",
                          "--save_steps", "100"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_CONTAINS(r.err, "shares the policy's tokenizer");
    before[batch] = xpo::read_json_file(out / "eval_results.json", 1 << 20).at("before").get<double>();
  }
  EXPECT_NEAR(before["1"], before["8"], 1e-5 * (1 + std::abs(before["8"]))) << "the same greedy completions";

  const auto rm = copy_fixture("models/tiny-qwen2-rm", dir_ / "rm-without-pad");
  auto rm_config = xpo::test::read_json(rm / "config.json");
  rm_config.erase("pad_token_id");
  write_json_to(rm / "config.json", rm_config);
  const auto r = train({"--model_name_or_path", policy.string(), "--dataset_name", prompts, "--output_dir",
                        (dir_ / "no-pad").string(), "--reward_model_path", rm.string(), "--max_steps", "1",
                        "--per_device_train_batch_size", "4", "--max_new_tokens", "6", "--report_to", "jsonl"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(std::isfinite(metrics(dir_ / "no-pad").at(0).at("objective/model_scores").get<double>()));
}

// 2. A reward-model folder whose tokenizer.json is the policy's, re-saved with indentation, is the same tokenizer:
// the same scores as the original folder, on the shared-ids path.
TEST_F(CliTest, ReindentedRewardTokenizerIsTheSameTokenizer) {
  const auto rm = copy_fixture("models/tiny-qwen2-rm", dir_ / "rm-indented");
  write_json_to(rm / "tokenizer.json", xpo::test::read_json(rm / "tokenizer.json"), 2);
  const auto prompts = write_varied_prompts(dir_ / "chat.jsonl", 4, true);
  std::map<std::string, double> scores;
  for (const auto& [name, folder] : {std::pair<std::string, std::string>{"original", tiny_reward_model()}, {"indented", rm.string()}}) {
    const auto out = dir_ / name;
    const auto r = train({"--model_name_or_path", tiny_policy(), "--dataset_name", prompts, "--output_dir", out.string(),
                          "--reward_model_path", folder, "--temperature", "0", "--max_steps", "1",
                          "--per_device_train_batch_size", "4", "--max_new_tokens", "6", "--report_to", "jsonl"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_CONTAINS(r.err, "shares the policy's tokenizer");
    scores[name] = metrics(out).at(0).at("objective/model_scores").get<double>();
  }
  EXPECT_NEAR(scores["original"], scores["indented"], 1e-6 * (1 + std::abs(scores["original"])));
}

// 3. generation_config.json (an eos_token_id list, sampling defaults) reaches every checkpoint and the output
// folder unchanged, and xpo-chat on the output still stops at both ids.
TEST_F(CliTest, SavingKeepsTheGenerationConfig) {
  const auto policy = copy_fixture("models/tiny-qwen2", dir_ / "policy");
  auto generation = xpo::test::read_json(policy / "generation_config.json");
  generation["eos_token_id"] = json::array({2, 0});
  generation["top_k"] = 7;
  generation["repetition_penalty"] = 1.05;
  write_json_to(policy / "generation_config.json", generation);
  const auto out = dir_ / "out";
  auto args = tiny_run(write_prompts("p.jsonl", 4, false), out);
  set_flag(args, "--model_name_or_path", policy.string());
  set_flag(args, "--save_steps", "1");
  args.insert(args.end(), {"--reward_rule", "positivity", "--report_to", "none"});
  const auto r = train(args);
  ASSERT_EQ(r.status, 0) << r.err;
  for (const auto& folder : {out, out / "checkpoint-1", out / "checkpoint-2"}) {
    ASSERT_TRUE(fs::exists(folder / "generation_config.json")) << folder;
    EXPECT_EQ(xpo::test::read_json(folder / "generation_config.json"), generation) << folder;
  }
  EXPECT_EQ(xpo::text::Tokenizer::from_pretrained(out).special_tokens().generation_eos_ids, (std::vector<std::int64_t>{2, 0}));
}

// xpo-chat takes the model's generation_config.json sampling defaults for the flags not given (as generate does):
// do_sample false answers greedily; and a greedy --temperature 0 with a sampling flag is refused.
TEST_F(CliTest, ChatTakesSamplingDefaultsFromTheGenerationConfig) {
  const auto policy = copy_fixture("models/tiny-qwen2", dir_ / "greedy-policy");
  auto generation = xpo::test::read_json(policy / "generation_config.json");
  generation["do_sample"] = false;
  generation["max_new_tokens"] = 12;
  write_json_to(policy / "generation_config.json", generation);
  const auto by_file = chat({"--model_name_or_path", policy.string(), "--prompt", "hello there", "--seed", "1"});
  const auto by_flag = chat({"--model_name_or_path", tiny_policy(), "--prompt", "hello there", "--temperature", "0",
                             "--max_new_tokens", "12", "--seed", "2"});
  ASSERT_EQ(by_file.status, 0) << by_file.err;
  ASSERT_EQ(by_flag.status, 0) << by_flag.err;
  EXPECT_EQ(by_file.out, by_flag.out);
  const auto refused = chat({"--model_name_or_path", tiny_policy(), "--prompt", "hi", "--temperature", "0", "--top_p", "0.5"});
  EXPECT_EQ(refused.status, 2);
  EXPECT_CONTAINS(refused.err, "--top_p has no effect with --temperature 0");
  // A sampling default of the wrong type is an error naming the file.
  generation["temperature"] = "hot";
  write_json_to(policy / "generation_config.json", generation);
  const auto malformed = chat({"--model_name_or_path", policy.string(), "--prompt", "hi"});
  EXPECT_NE(malformed.status, 0);
  EXPECT_CONTAINS(malformed.err, "generation_config.json");
  EXPECT_CONTAINS(malformed.err, "temperature must be a number");
}

// A row's tools/documents columns and --chat_template_kwargs reach the policy's chat template (the row's own
// chat_template_kwargs win over the flag's); a flag that is not a JSON object is refused.
TEST_F(CliTest, ToolsColumnsAndChatTemplateKwargsReachTheTemplate) {
  const auto policy = copy_fixture("models/tiny-qwen2", dir_ / "tools-policy");
  auto config = xpo::test::read_json(policy / "tokenizer_config.json");
  config["chat_template"] =
      "{% if tools %}[tools:{% for t in tools %}{{ t.name }}{% endfor %}]{% endif %}[mode:{{ mode }}]"
      "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
  write_json_to(policy / "tokenizer_config.json", config);
  {
    std::ofstream out(dir_ / "tools.jsonl");
    for (int i = 0; i < 4; ++i) {
      ordered_json row = {{"prompt", ordered_json::array({{{"role", "user"}, {"content", "add " + std::to_string(i)}}})},
                          {"tools", ordered_json::array({{{"name", "calc"}}})}};
      if (i == 3) row["chat_template_kwargs"] = {{"mode", "slow"}};
      out << row.dump() << "\n";
    }
  }
  const auto out = dir_ / "tools-run";
  const auto r = train({"--model_name_or_path", policy.string(), "--dataset_name", (dir_ / "tools.jsonl").string(),
                        "--eval_dataset", (dir_ / "tools.jsonl").string(), "--output_dir", out.string(),
                        "--reward_rule", "positivity", "--max_steps", "1", "--per_device_train_batch_size", "2",
                        "--max_new_tokens", "4", "--log_completions_steps", "1", "--report_to", "none",
                        "--chat_template_kwargs", R"({"mode": "fast"})"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto rows = xpo::test::read_jsonl(out / "completions.jsonl");
  ASSERT_EQ(rows.size(), 4u);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto prompt = rows[i].at("prompt").get<std::string>();
    EXPECT_CONTAINS(prompt, "[tools:calc]");
    EXPECT_CONTAINS(prompt, i == 3 ? "[mode:slow]" : "[mode:fast]");
  }
  const auto refused = train({"--model_name_or_path", policy.string(), "--dataset_name", (dir_ / "tools.jsonl").string(),
                              "--output_dir", (dir_ / "refused").string(), "--reward_rule", "positivity",
                              "--chat_template_kwargs", "[1, 2]"});
  EXPECT_EQ(refused.status, 2);
  EXPECT_CONTAINS(refused.err, "--chat_template_kwargs: expected a JSON object");
}

// 4. An output_dir holding an earlier sharded save: the new single file wins, and the stale shards and index go.
TEST_F(CliTest, AStaleShardedIndexDoesNotWinOverTheNewModel) {
  const auto out = dir_ / "out";
  fs::create_directories(out);
  auto old = xpo::models::load_causal_lm(tiny_policy());
  std::vector<std::pair<std::string, torch::Tensor>> first, second;
  ordered_json weight_map = ordered_json::object();
  std::size_t i = 0;
  for (const auto& p : old->named_parameters()) {
    const bool in_first = i++ % 2 == 0;
    (in_first ? first : second).emplace_back(p.key(), p.value().detach() + 1.0);  // other weights
    weight_map[p.key()] = in_first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  xpo::io::save_safetensors(out / "model-00001-of-00002.safetensors", first);
  xpo::io::save_safetensors(out / "model-00002-of-00002.safetensors", second);
  write_json_to(out / "model.safetensors.index.json", {{"metadata", ordered_json::object()}, {"weight_map", weight_map}});
  auto args = tiny_run(write_prompts("p.jsonl", 4, false), out);
  set_flag(args, "--save_steps", "100");
  args.insert(args.end(), {"--reward_rule", "positivity", "--report_to", "none"});
  const auto r = train(args);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(fs::exists(out / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(out / "model-00001-of-00002.safetensors"));
  EXPECT_FALSE(fs::exists(out / "model-00002-of-00002.safetensors"));
  const auto loaded = xpo::models::load_causal_lm(out);
  const auto file = xpo::io::SafetensorsFile::open(out / "model.safetensors");
  for (const auto& p : loaded->named_parameters()) {
    if (!file.contains(p.key())) continue;  // a tied lm_head
    EXPECT_TRUE(torch::equal(p.value(), file.load(p.key()).to(p.value().scalar_type()))) << p.key();
  }
}

// 5. A reused output_dir: a new run refuses another run's checkpoints; with --overwrite_output_dir it trains beside
// them and rotation keeps its own newest checkpoint and never touches theirs; resuming a checkpoint past this
// run's max_steps is refused with both numbers, and the saved model is left as it was.
TEST_F(CliTest, AReusedOutputFolderNeitherLosesCheckpointsNorResumesAnotherRun) {
  const auto out = dir_ / "out";
  const auto prompts = write_prompts("p.jsonl", 4, false);
  auto args = tiny_run(prompts, out);
  set_flag(args, "--save_steps", "1");
  args.insert(args.end(), {"--reward_rule", "positivity", "--report_to", "none"});
  ASSERT_EQ(train(args).status, 0);
  // Make checkpoint-2 look like step 1000 of a longer run.
  fs::rename(out / "checkpoint-2", out / "checkpoint-1000");
  auto state = xpo::test::read_json(out / "checkpoint-1000" / "trainer_state.json");
  state["global_step"] = 1000;
  state["max_steps"] = 1200;
  write_json_to(out / "checkpoint-1000" / "trainer_state.json", state);
  fs::remove_all(out / "checkpoint-1");

  auto again = args;
  again.insert(again.end(), {"--save_total_limit", "1"});
  const auto refused = train(again);
  EXPECT_NE(refused.status, 0);
  EXPECT_CONTAINS(refused.err, "checkpoint-1000");
  EXPECT_CONTAINS(refused.err, "overwrite_output_dir");

  again.push_back("--overwrite_output_dir");
  const auto r = train(again);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(fs::exists(out / "checkpoint-2")) << "the checkpoint just written is kept";
  EXPECT_FALSE(fs::exists(out / "checkpoint-1")) << "rotated among this run's checkpoints";
  EXPECT_TRUE(fs::exists(out / "checkpoint-1000")) << "another run's checkpoint is never rotated";

  const auto model_bytes = xpo::read_text_file(out / "model.safetensors", 1 << 30);
  auto resume = again;
  resume.insert(resume.end(), {"--resume_from_checkpoint", "latest"});
  const auto stale = train(resume);
  EXPECT_NE(stale.status, 0);
  EXPECT_CONTAINS(stale.err, "step 1000");
  EXPECT_CONTAINS(stale.err, "max_steps = 2");
  EXPECT_EQ(xpo::read_text_file(out / "model.safetensors", 1 << 30), model_bytes) << "the saved model is untouched";
}

// 6. Settings that cannot both take effect are refused, one message per pair, before anything is loaded.
TEST_F(CliTest, ConflictingFlagsAreRefused) {
  const auto prompts = write_prompts("p.jsonl", 4, false);
  const auto out = dir_ / "out";
  struct Case {
    std::vector<std::string> flags;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--judge", "positivity", "--missing_eos_penalty", "1.0"}, "--missing_eos_penalty has no effect with --judge"},
      {{"--reward_rule", "positivity", "--reward_model_path", tiny_reward_model()}, "give only one of"},
      {{"--reward_rule", "positivity", "--lora_r", "4"}, "--lora_r has no effect without --use_peft"},
      {{"--reward_rule", "positivity", "--lora_target_modules", "q_proj"}, "--lora_target_modules has no effect without --use_peft"},
      {{"--reward_rule", "positivity", "--warmup_steps", "2", "--warmup_ratio", "0.1"}, "give --warmup_steps or --warmup_ratio"},
      {{"--reward_rule", "positivity", "--lr_scheduler_type", "constant", "--warmup_steps", "2"}, "constant has no warm-up"},
      {{"--reward_rule", "positivity", "--num_train_epochs", "2"}, "give --max_steps or --num_train_epochs"},
      {{"--reward_rule", "positivity", "--torch_dtype", "bfloat16", "--dtype", "float32"}, "--torch_dtype bfloat16 conflicts with --dtype float32"},
      {{"--reward_rule", "positivity", "--bf16", "--torch_dtype", "float16"}, "--bf16 conflicts with --torch_dtype float16"},
      {{"--reward_rule", "positivity", "--bf16", "--fp16"}, "fp16 = true: must be false when bf16 is true"},
      {{"--reward_rule", "positivity", "--fp16"}, "fp16 = true: must be used with a cuda device"},
      {{"--reward_rule", "positivity", "--temperature", "0", "--top_k", "5"}, "--top_k has no effect with --temperature 0"},
      {{"--reward_rule", "positivity", "--num_eval_samples", "3"}, "--num_eval_samples has no effect without held-out prompts"},
      {{"--reward_rule", "positivity", "--log_completions_steps", "1"}, "--log_completions_steps has no effect without held-out prompts"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.message);
    fs::remove_all(out);
    auto args = tiny_run(prompts, out);
    drop_flag(args, "--missing_eos_penalty");
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    const auto r = train(args);
    EXPECT_EQ(r.status, 2);
    EXPECT_CONTAINS(r.err, c.message);
    EXPECT_FALSE(fs::exists(out));
  }
  // The same pair in a --config file counts as given.
  write_json_to(dir_ / "c.json", {{"missing_eos_penalty", 0.5}, {"judge", "positivity"}});
  auto args = tiny_run(prompts, out);
  drop_flag(args, "--missing_eos_penalty");
  args.insert(args.end(), {"--config", (dir_ / "c.json").string()});
  const auto r = train(args);
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "--missing_eos_penalty has no effect with --judge");
}

// --bf16 is mixed precision (float32 master weights, bfloat16 compute) and trains at TRL's learning rate without a
// warning; --torch_dtype bfloat16 alone trains pure bfloat16 weights, and the run says once, at the start, that
// AdamW's updates at that rate round away. The float32 input is saved as float32, and as bfloat16 when asked.
TEST_F(CliTest, Bf16IsMixedPrecisionAndPureBfloat16WarnsAboutTheLearningRate) {
  const auto prompts = write_prompts("p.jsonl", 4, false);
  auto mixed = tiny_run(prompts, dir_ / "mixed");
  set_flag(mixed, "--learning_rate", "5e-7");
  mixed.insert(mixed.end(), {"--reward_rule", "positivity", "--bf16", "--gradient_checkpointing"});
  const auto a = train(mixed);
  ASSERT_EQ(a.status, 0) << a.err;
  EXPECT_EQ(a.err.find("round away"), std::string::npos) << a.err;
  EXPECT_EQ(xpo::io::SafetensorsFile::open(dir_ / "mixed" / "model.safetensors").entries().front().dtype.type, torch::kFloat);

  auto pure = tiny_run(prompts, dir_ / "pure");
  set_flag(pure, "--learning_rate", "5e-7");
  pure.insert(pure.end(), {"--reward_rule", "positivity", "--torch_dtype", "bfloat16"});
  const auto b = train(pure);
  ASSERT_EQ(b.status, 0) << b.err;
  const auto warning = b.err.find("below the bfloat16 resolution");
  EXPECT_NE(warning, std::string::npos) << b.err;
  EXPECT_EQ(b.err.find("below the bfloat16 resolution", warning + 1), std::string::npos) << "warned once";
  EXPECT_EQ(xpo::io::SafetensorsFile::open(dir_ / "pure" / "model.safetensors").entries().front().dtype.type, torch::kBFloat16);
}

// The dtypes a saved folder stores its weights in, and what its config.json says.
std::set<torch::ScalarType> stored_dtypes(const fs::path& folder) {
  std::set<torch::ScalarType> out;
  const auto file = xpo::io::SafetensorsFile::open(folder / "model.safetensors");
  for (const auto& e : file.entries()) out.insert(e.dtype.type);
  return out;
}
std::string config_dtype(const fs::path& folder) {
  return xpo::test::read_json(folder / "config.json").at("torch_dtype").get<std::string>();
}

// A copy of the tiny policy stored in bfloat16 (weights and config.json), as most hub checkpoints are.
fs::path bf16_policy(const fs::path& to) {
  copy_fixture("models/tiny-qwen2", to);
  auto model = xpo::models::load_causal_lm(to);
  xpo::models::save_pretrained(model, to, torch::kBFloat16);
  return to;
}

// Saved models keep the input's dtype unless --torch_dtype asks for another: a bfloat16-stored policy trained with
// --bf16 (float32 master weights) is saved as bfloat16, LoRA merged too; a float32 one stays float32; a given
// --torch_dtype decides (float32 out of a bfloat16 input; bfloat16 out of a float32 one). config.json's torch_dtype
// always names what is stored. Checkpoints are resume points: they hold the float32 master weights, and the final
// bfloat16 model is exactly those weights rounded.
TEST_F(CliTest, SavedModelsKeepTheInputsDtypeUnlessTorchDtypeAsks) {
  const auto bf16_input = bf16_policy(dir_ / "bf16-policy");
  ASSERT_EQ(stored_dtypes(bf16_input), std::set<torch::ScalarType>{torch::kBFloat16});
  ASSERT_EQ(config_dtype(bf16_input), "bfloat16");
  const auto prompts = write_prompts("p.jsonl", 4, false);
  struct Case {
    std::string name, input;
    std::vector<std::string> flags;
    torch::ScalarType saved;
  };
  const std::vector<Case> cases = {
      {"bf16-in-bf16", bf16_input.string(), {"--bf16"}, torch::kBFloat16},
      {"bf16-in-lora", bf16_input.string(), {"--bf16", "--use_peft", "--lora_r", "2"}, torch::kBFloat16},
      {"bf16-in-fp32-trained", bf16_input.string(), {}, torch::kBFloat16},
      {"fp32-in-bf16", tiny_policy(), {"--bf16"}, torch::kFloat},
      {"bf16-in-asks-fp32", bf16_input.string(), {"--bf16", "--torch_dtype", "float32"}, torch::kFloat},
      {"fp32-in-asks-bf16", tiny_policy(), {"--torch_dtype", "bfloat16"}, torch::kBFloat16},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const auto out = dir_ / c.name;
    auto args = tiny_run(prompts, out);
    set_flag(args, "--model_name_or_path", c.input);
    args.insert(args.end(), {"--reward_rule", "positivity"});
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    const auto r = train(args);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(stored_dtypes(out), std::set<torch::ScalarType>{c.saved});
    EXPECT_EQ(config_dtype(out), xpo::models::hf_dtype_name(c.saved));
    EXPECT_CONTAINS(r.err, "model saved to " + out.string() + " in " + xpo::models::hf_dtype_name(c.saved));
    const auto loaded = xpo::models::load_causal_lm(out);
    EXPECT_EQ(loaded->config().torch_dtype, xpo::models::hf_dtype_name(c.saved));
    if (c.name == "bf16-in-bf16") {  // the checkpoint: float32 master weights; the final model: them, rounded
      const auto checkpoint = out / "checkpoint-2";
      EXPECT_EQ(stored_dtypes(checkpoint), std::set<torch::ScalarType>{torch::kFloat});
      EXPECT_EQ(config_dtype(checkpoint), "float32");
      const auto master = xpo::io::SafetensorsFile::open(checkpoint / "model.safetensors");
      const auto saved = xpo::io::SafetensorsFile::open(out / "model.safetensors");
      for (const auto& e : master.entries())
        EXPECT_TRUE(torch::equal(master.load(e.name).to(torch::kBFloat16), saved.load(e.name))) << e.name;
    }
  }
}

// A checkpoint.json that says float32 over bfloat16 weights: the weights are what is stored, so they decide.
TEST_F(CliTest, TheStoredDtypeIsTheWeightsEvenWhenConfigJsonDisagrees) {
  const auto folder = bf16_policy(dir_ / "policy");
  auto config = xpo::test::read_json(folder / "config.json");
  config["torch_dtype"] = "float32";
  write_json_to(folder / "config.json", config, 2);
  EXPECT_EQ(xpo::models::load_causal_lm(folder)->config().torch_dtype, "bfloat16");
  EXPECT_EQ(xpo::models::load_causal_lm(tiny_policy())->config().torch_dtype, "float32");
}

// Resume under mixed precision, as a user runs it: a bfloat16-stored policy with --bf16, 2 steps + resume + 2 steps
// equals 4 steps straight bit for bit (the checkpoints hold the float32 master weights and AdamW state), in the
// checkpoint at step 4 and in the final bfloat16 model.
TEST_F(CliTest, ResumeUnderBf16FromABfloat16InputIsBitIdentical) {
  const auto input = bf16_policy(dir_ / "bf16-policy");
  const auto prompts = write_prompts("p.jsonl", 6, false);
  const auto run = [&](const fs::path& out, const std::string& steps, bool resume) {
    auto args = tiny_run(prompts, out);
    set_flag(args, "--model_name_or_path", input.string());
    set_flag(args, "--max_steps", steps);
    // A constant learning rate: a linear decay would differ between a 2-step and a 4-step run.
    args.insert(args.end(), {"--reward_rule", "positivity", "--bf16", "--lr_scheduler_type", "constant"});
    if (resume) args.insert(args.end(), {"--resume_from_checkpoint", "latest"});
    return train(args);
  };
  const auto straight = run(dir_ / "straight", "4", false);
  ASSERT_EQ(straight.status, 0) << straight.err;
  const auto first = run(dir_ / "resumed", "2", false);
  ASSERT_EQ(first.status, 0) << first.err;
  const auto second = run(dir_ / "resumed", "4", true);
  ASSERT_EQ(second.status, 0) << second.err;
  EXPECT_CONTAINS(second.err, "resumed at step 2");
  for (const auto* sub : {"checkpoint-4", ""}) {
    const auto a = xpo::io::SafetensorsFile::open(dir_ / "straight" / sub / "model.safetensors");
    const auto b = xpo::io::SafetensorsFile::open(dir_ / "resumed" / sub / "model.safetensors");
    ASSERT_EQ(a.entries().size(), b.entries().size());
    for (const auto& e : a.entries()) EXPECT_TRUE(torch::equal(a.load(e.name), b.load(e.name))) << sub << " " << e.name;
  }
  const auto moved = xpo::io::SafetensorsFile::open(dir_ / "straight" / "checkpoint-4" / "model.safetensors");
  const auto base = xpo::io::SafetensorsFile::open(input / "model.safetensors");
  const auto name = moved.entries().front().name;
  EXPECT_FALSE(torch::equal(moved.load(name).to(torch::kBFloat16), base.load(name))) << "the run must have trained";
}

TEST_F(CliTest, ResumeContinuesTheRunAndItsLog) {
  const auto out = dir_ / "resume";
  const auto prompts = write_prompts("p.jsonl", 6, false);
  auto first = tiny_run(prompts, out);
  first.insert(first.end(), {"--reward_rule", "positivity"});
  ASSERT_EQ(train(first).status, 0);
  auto second = first;
  set_flag(second, "--max_steps", "4");
  second.insert(second.end(), {"--resume_from_checkpoint", "latest"});
  const auto r = train(second);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "resumed at step 2");
  const auto lines = metrics(out);
  ASSERT_EQ(lines.size(), 4u);
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(lines[i]["step"], i + 1);
  EXPECT_TRUE(fs::exists(out / "checkpoint-4"));
}

// Ctrl-C: the step in flight finishes, a checkpoint is saved, the exit status is 130, and the run resumes from it.
TEST_F(CliTest, InterruptSavesACheckpointThatResumes) {
  const auto out = dir_ / "interrupt";
  auto args = tiny_run(write_prompts("p.jsonl", 6, false), out);
  set_flag(args, "--max_steps", "100000");
  set_flag(args, "--save_steps", "100000");
  args.insert(args.end(), {"--reward_rule", "positivity"});
  bool logged = false;
  const auto r = train(args, [&](pid_t pid) {
    logged = xpo::test::wait_until([&] { return fs::exists(out / "metrics.jsonl") && fs::file_size(out / "metrics.jsonl") > 0; },
                                   std::chrono::seconds(120));
    ::kill(pid, SIGINT);
  });
  ASSERT_TRUE(logged) << r.err;
  EXPECT_EQ(r.status, 130) << r.err;
  EXPECT_CONTAINS(r.err, "checkpoint saved to");
  const auto checkpoints = xpo::training::list_checkpoints(out);
  ASSERT_EQ(checkpoints.size(), 1u);
  EXPECT_FALSE(fs::exists(out / "config.json")) << "no final model after an interrupt";
  const auto step = checkpoints.front().first;
  auto resume = args;
  set_flag(resume, "--max_steps", std::to_string(step + 1));
  resume.insert(resume.end(), {"--resume_from_checkpoint", "latest"});
  const auto again = train(resume);
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_CONTAINS(again.err, "resumed at step " + std::to_string(step));
  EXPECT_TRUE(fs::exists(out / "config.json"));
}

// kill -9 at arbitrary moments while checkpoints are being written and rotated (one per step): what is left
// always has a complete latest checkpoint, and the run resumes from it.
TEST_F(CliTest, KilledWhileSavingLeavesALoadableLatestCheckpoint) {
  const auto out = dir_ / "killed";
  auto args = tiny_run(write_prompts("p.jsonl", 6, false), out);
  set_flag(args, "--max_steps", "100000");
  set_flag(args, "--save_steps", "1");
  args.insert(args.end(), {"--reward_rule", "positivity", "--save_total_limit", "2", "--logging_steps", "1000"});
  std::int64_t reached = 0;
  for (const int delay_ms : {0, 3, 11, 29}) {  // different points of the save/rotate sequence
    auto run = args;
    if (reached > 0) run.insert(run.end(), {"--resume_from_checkpoint", "latest"});
    const auto r = train(run, [&](pid_t pid) {
      const auto first = reached;
      EXPECT_TRUE(xpo::test::wait_until(
          [&] {
            const auto all = xpo::training::list_checkpoints(out);
            return !all.empty() && all.back().first >= first + 2;
          },
          std::chrono::seconds(120)));
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      ::kill(pid, SIGKILL);
    });
    EXPECT_EQ(r.status, 128 + SIGKILL);
    const auto latest = xpo::training::resolve_checkpoint("latest", out);
    for (const char* file : {"model.safetensors", "config.json", "optimizer.pt", "rng_state.pt", "tokenizer.json"})
      EXPECT_TRUE(fs::exists(latest / file)) << latest / file;
    EXPECT_NO_THROW((void)xpo::models::load_causal_lm(latest)) << latest;
    const auto step = xpo::training::list_checkpoints(out).back().first;
    EXPECT_GE(step, reached + 2);
    reached = step;
  }
  auto finish = args;
  set_flag(finish, "--max_steps", std::to_string(reached + 1));
  finish.insert(finish.end(), {"--resume_from_checkpoint", "latest"});
  const auto r = train(finish);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "resumed at step " + std::to_string(reached));
}

// A disk that fills up during a checkpoint save (simulated with RLIMIT_FSIZE: no file may grow past half the size
// of the model's weights, so the run's logs still fit but the next checkpoint cannot): a clear error naming the
// checkpoint, the earlier checkpoint byte for byte as it was, no half-written folder, and the run resumes from it.
TEST_F(CliTest, FullDiskDuringASaveIsAClearErrorAndKeepsTheLastCheckpoint) {
  const auto out = dir_ / "full";
  auto args = tiny_run(write_prompts("p.jsonl", 6, false), out);
  set_flag(args, "--save_steps", "1");
  args.insert(args.end(), {"--reward_rule", "positivity"});
  ASSERT_EQ(train(args).status, 0);
  const auto snapshot = [](const fs::path& folder) {
    std::map<std::string, std::string> files;
    for (const auto& e : fs::recursive_directory_iterator(folder))
      if (e.is_regular_file()) files[fs::relative(e.path(), folder).string()] = xpo::test::detail::slurp(e.path());
    return files;
  };
  const auto before = snapshot(out / "checkpoint-2");
  const auto limit = static_cast<rlim_t>(fs::file_size(out / "checkpoint-2" / "model.safetensors") / 2);
  ASSERT_LT(fs::file_size(out / "metrics.jsonl") * 8, limit) << "the logs must fit under the limit";

  auto resume = args;
  set_flag(resume, "--max_steps", "4");
  resume.insert(resume.end(), {"--resume_from_checkpoint", "latest"});
  const auto r = xpo::test::run_process([&] { auto a = resume; a.insert(a.begin(), XPO_TRAIN_EXE); return a; }(), dir_, "", {},
                                        [limit] {
                                          ::signal(SIGXFSZ, SIG_IGN);  // a write past the limit fails with EFBIG
                                          const rlimit l{limit, limit};
                                          ::setrlimit(RLIMIT_FSIZE, &l);
                                        });
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_CONTAINS(r.err, (out / "checkpoint-3").string() + ": saving the checkpoint failed");
  EXPECT_CONTAINS(r.err, "disk full?");
  EXPECT_EQ(snapshot(out / "checkpoint-2"), before);
  for (const auto& e : fs::directory_iterator(out))
    EXPECT_NE(e.path().filename().string().rfind(".tmp-", 0), 0u) << "left behind: " << e.path();
  const auto checkpoints = xpo::training::list_checkpoints(out);
  ASSERT_FALSE(checkpoints.empty());
  EXPECT_EQ(checkpoints.back().first, 2);

  const auto again = train(resume);
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_CONTAINS(again.err, "resumed at step 2");
  EXPECT_TRUE(fs::exists(out / "checkpoint-4"));
}

TEST_F(CliTest, BadInputIsOneClearMessageAndWritesNothing) {
  const auto out = dir_ / "out";
  const auto prompts = write_prompts("p.jsonl", 4, false);
  const auto expect_refused = [&](std::vector<std::string> extra, const std::string& message, const std::string& dataset) {
    auto args = tiny_run(dataset, out);
    args.insert(args.end(), {"--reward_rule", "positivity"});
    args.insert(args.end(), extra.begin(), extra.end());
    const auto r = train(args);
    EXPECT_NE(r.status, 0) << message;
    EXPECT_CONTAINS(r.err, message);
    EXPECT_FALSE(fs::exists(out)) << "nothing written for: " << message;
  };
  expect_refused({}, "no such file or folder", (dir_ / "missing.jsonl").string());
  {
    std::ofstream bad(dir_ / "bad.jsonl");
    bad << R"({"prompt": "fine"})" << "\n" << R"({"prompt": "broken)" << "\n";
  }
  expect_refused({}, "bad.jsonl:2", (dir_ / "bad.jsonl").string());
  expect_refused({"--learning_rat", "1e-3"}, "did you mean --learning_rate", prompts);
  expect_refused({"--beta", "-0.1"}, "beta", prompts);
  expect_refused({"--lora_target_modules", "qproj"}, "unknown module \"qproj\"", prompts);
  fs::create_directories(dir_ / "not-a-model");
  expect_refused({"--model_name_or_path", (dir_ / "not-a-model").string()}, "no config.json", prompts);
  expect_refused({"--judge", "nonsense"}, "built-in rules: positivity, concise", prompts);
  // resource bounds on untrusted files, each configurable
  expect_refused({"--max_dataset_line_bytes", "16"}, "p.jsonl:1", prompts);
  expect_refused({"--max_chat_template_bytes", "16"}, "more than the limit of 16", prompts);
  expect_refused({"--max_tokenizer_file_bytes", "1000"}, "tokenizer.json: the file has", prompts);
  // data-parallel flags, and a launcher environment that does not parse
  expect_refused({"--nproc", "0"}, "--nproc: must be in [1, 1024]", prompts);
  expect_refused({"--dist_timeout", "0"}, "--dist_timeout: must be > 0 seconds", prompts);
  {
    auto args = tiny_run(prompts, out);
    args.insert(args.end(), {"--reward_rule", "positivity"});
    args.insert(args.begin(), XPO_TRAIN_EXE);
    const auto r = xpo::test::run_process(args, dir_, "", {}, [] {
      ::setenv("WORLD_SIZE", "2", 1);
      ::setenv("RANK", "first", 1);
    });
    EXPECT_NE(r.status, 0);
    EXPECT_CONTAINS(r.err, "RANK=first: expected an integer in [0, 1]");
    EXPECT_FALSE(fs::exists(out));
  }
  {  // the embedded default checks a given dataset before it builds anything
    const auto r = train({"--output_dir", out.string(), "--dataset_name", (dir_ / "missing.jsonl").string()});
    EXPECT_EQ(r.status, 2);
    EXPECT_CONTAINS(r.err, "no such file or folder");
    EXPECT_FALSE(fs::exists(out));
  }
  // Several problems: all of them in one report.
  {
    auto args = tiny_run(prompts, out);
    args.insert(args.end(), {"--reward_rule", "positivity", "--beta", "0", "--top_p", "2"});
    const auto r = train(args);
    EXPECT_EQ(r.status, 2);
    EXPECT_CONTAINS(r.err, "2 problems");
  }
  // An output_dir that is a file: refused and left as it was.
  {
    std::ofstream(dir_ / "a-file") << "keep me";
    auto args = tiny_run(prompts, dir_ / "a-file");
    args.insert(args.end(), {"--reward_rule", "positivity"});
    const auto r = train(args);
    EXPECT_EQ(r.status, 2);
    EXPECT_CONTAINS(r.err, "is not a folder");
    std::ifstream in(dir_ / "a-file");
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(content, "keep me");
    // ... and one that would have to be created inside that file: refused before anything is loaded.
    auto inside = tiny_run(prompts, dir_ / "a-file" / "run");
    inside.insert(inside.end(), {"--reward_rule", "positivity"});
    const auto r2 = train(inside);
    EXPECT_EQ(r2.status, 2);
    EXPECT_CONTAINS(r2.err, (dir_ / "a-file").string() + " is not a folder");
  }
  // --skip_bad_rows trains on the good lines and says how many it skipped.
  {
    auto args = tiny_run((dir_ / "bad.jsonl").string(), out);
    args.insert(args.end(), {"--reward_rule", "positivity", "--skip_bad_rows", "--max_steps", "1", "--per_device_train_batch_size", "1"});
    const auto r = train(args);
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_CONTAINS(r.err, "skipped 1 malformed rows");
  }
  const auto help = train({"--help"});
  EXPECT_EQ(help.status, 0);
  for (const char* flag : {"--model_name_or_path", "--reward_model_path", "--judge", "--dataset_name", "--use_peft",
                           "--lora_target_modules", "--resume_from_checkpoint", "--report_to", "--bf16", "--config",
                           "--learning_rate", "--missing_eos_penalty", "--beta", "--alpha", "--loss_type"}) {
    EXPECT_CONTAINS(help.out, flag);
  }
}

// Data parallel (c10d, Gloo): 2 ranks with per-device batch 2 end with the same weights and the same logged
// metrics as 1 rank with batch 4 fed the same prompts (every global batch is the same 4 prompts: the epoch order
// is shared and each rank takes its half). The samples are identical by seeding: each prompt samples (at the
// default temperature 0.9) from its own streams, keyed by the seed, the micro-step and its position in the global
// batch, so rank 1's two prompts draw what the single process's prompts 3 and 4 draw. Then the 2-rank run resumes
// from its checkpoint with the same world size.
TEST_F(CliTest, TwoRanksMatchOneRankWithTheGlobalBatchAndResume) {
  const auto prompts = write_prompts("p.jsonl", 12, false);
  const auto common = [&](const fs::path& out, const std::string& batch) {
    auto a = tiny_run(prompts, out);
    set_flag(a, "--per_device_train_batch_size", batch);
    set_flag(a, "--max_steps", "3");
    set_flag(a, "--save_steps", "3");
    a.insert(a.end(), {"--reward_rule", "positivity", "--alpha", "0.1", "--dist_timeout", "60"});
    return a;
  };
  const auto one = train(common(dir_ / "one", "4"));
  ASSERT_EQ(one.status, 0) << one.err;
  auto two_args = common(dir_ / "two", "2");
  two_args.insert(two_args.end(), {"--nproc", "2"});
  const auto two = train(two_args);
  ASSERT_EQ(two.status, 0) << two.err;
  EXPECT_CONTAINS(two.err, "started 2 ranks");
  const auto a = xpo::io::SafetensorsFile::open(dir_ / "one" / "model.safetensors");
  const auto b = xpo::io::SafetensorsFile::open(dir_ / "two" / "model.safetensors");
  ASSERT_EQ(a.entries().size(), b.entries().size());
  // The gradients differ only by float32 summation order (all-reduce vs one batch). AdamW divides by sqrt(v), so a
  // weight whose gradient is ~0 can move by a fraction of lr (1e-3) on rounding alone: the worst weight may differ
  // by up to 1e-4 (a tenth of one step), the typical one must agree to 1e-7.
  double worst = 0, total = 0;
  std::int64_t count = 0;
  for (const auto& e : a.entries()) {
    const auto d = (a.load(e.name) - b.load(e.name)).abs();
    worst = std::max(worst, d.max().item<double>());
    total += d.sum().item<double>();
    count += d.numel();
  }
  EXPECT_LT(worst, 1e-4);
  EXPECT_LT(total / static_cast<double>(count), 1e-7);
  const auto moved = (xpo::io::SafetensorsFile::open(fs::path(tiny_policy()) / "model.safetensors").load(a.entries().front().name) -
                      a.load(a.entries().front().name)).abs().max().item<double>();
  EXPECT_GT(moved, 1e-4) << "the runs must have trained for the comparison to mean anything";
  const auto m1 = metrics(dir_ / "one"), m2 = metrics(dir_ / "two");
  ASSERT_EQ(m1.size(), 3u);
  ASSERT_EQ(m2.size(), 3u) << "only rank 0 writes the log";
  // Metrics to 1e-5 of their size at the first step (the same weights); the log-probs (sums over the completion:
  // identical samples or not shows here first) too. The KL is a difference of such sums (~30 here), so its size for
  // rounding is theirs. Later steps start from weights that differ as much as the bound above allows (up to 1e-4
  // on the worst weight), so their metrics get 5e-5 (LibTorch 2.6's kernels put grad_norm at step 2 1.3e-5 apart).
  for (std::size_t i = 0; i < 3; ++i) {
    const double logp_size = std::abs(m1[i]["logps/chosen"].get<double>()) + std::abs(m1[i]["logps/rejected"].get<double>());
    const double tol = i == 0 ? 1e-5 : 5e-5;
    for (const char* key : {"loss", "loss/xpo", "rewards/margins", "logps/chosen", "logps/rejected", "objective/kl", "grad_norm"}) {
      const double size = std::string_view(key) == "objective/kl" ? logp_size : std::abs(m1[i][key].get<double>());
      EXPECT_NEAR(m2[i][key].get<double>(), m1[i][key].get<double>(), tol * (1 + size)) << key << " at step " << i + 1;
    }
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_ / "two" / "runs"), fs::directory_iterator{}), 1) << "one TensorBoard file";
  auto resume = two_args;
  set_flag(resume, "--max_steps", "4");
  resume.insert(resume.end(), {"--resume_from_checkpoint", "latest"});
  const auto again = train(resume);
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_CONTAINS(again.err, "resumed at step 3");
  EXPECT_EQ(metrics(dir_ / "two").size(), 4u);
}

// --gradient_checkpointing under data parallel: the reducer's gradient hooks fire inside each layer's recompute
// (a backward within backward), and every parameter must still be averaged once. 2 ranks (Gloo, loopback) with
// checkpointing end with the same weights and metrics as 2 ranks without, for full training, LoRA and --bf16:
// the recompute runs the same kernels on the same inputs, so |a - e| <= 1e-6 (1 + |e|) for every weight and the
// logged loss and grad_norm (on this CPU they agree bit for bit). Two ranks without it match one rank with the
// global batch (TwoRanksMatchOneRankWithTheGlobalBatchAndResume).
TEST_F(CliTest, GradientCheckpointingUnderDataParallelGivesTheSameWeights) {
  const auto prompts = write_prompts("p.jsonl", 8, false);
  const std::vector<std::vector<std::string>> variants = {{}, {"--use_peft", "--lora_r", "2"}, {"--bf16"}};
  for (const auto& variant : variants) {
    SCOPED_TRACE(variant.empty() ? "full" : variant.front());
    const auto run = [&](const fs::path& out, bool checkpointing) {
      fs::remove_all(out);
      auto a = tiny_run(prompts, out);
      a.insert(a.end(), {"--reward_rule", "positivity", "--alpha", "0.1", "--nproc", "2", "--dist_timeout", "60"});
      a.insert(a.end(), variant.begin(), variant.end());
      if (checkpointing) a.push_back("--gradient_checkpointing");
      return train(a);
    };
    const auto plain = run(dir_ / "plain", false);
    ASSERT_EQ(plain.status, 0) << plain.err;
    const auto ckpt = run(dir_ / "ckpt", true);
    ASSERT_EQ(ckpt.status, 0) << ckpt.err;
    EXPECT_CONTAINS(ckpt.err, "started 2 ranks");
    EXPECT_EQ(xpo::test::read_json(dir_ / "ckpt" / "checkpoint-2" / "trainer_state.json").at("config").at("gradient_checkpointing"), true);
    const auto e = xpo::io::SafetensorsFile::open(dir_ / "plain" / "model.safetensors");
    const auto a = xpo::io::SafetensorsFile::open(dir_ / "ckpt" / "model.safetensors");
    ASSERT_EQ(a.entries().size(), e.entries().size());
    for (const auto& entry : e.entries())
      EXPECT_TRUE(xpo::test::all_close(a.load(entry.name), e.load(entry.name), 1e-6)) << entry.name;
    const auto base = xpo::io::SafetensorsFile::open(fs::path(tiny_policy()) / "model.safetensors");
    double moved = 0;
    for (const auto& entry : e.entries())
      moved = std::max(moved, (e.load(entry.name) - base.load(entry.name)).abs().max().item<double>());
    EXPECT_GT(moved, 1e-4) << "the runs must have trained for the comparison to mean anything";
    const auto m1 = metrics(dir_ / "plain"), m2 = metrics(dir_ / "ckpt");
    ASSERT_EQ(m1.size(), 2u);
    ASSERT_EQ(m2.size(), 2u);
    for (std::size_t i = 0; i < 2; ++i)
      for (const char* key : {"loss", "grad_norm"})
        EXPECT_NEAR(m2[i][key].get<double>(), m1[i][key].get<double>(), 1e-6 * (1 + std::abs(m1[i][key].get<double>())))
            << key << " at step " << i + 1;
  }
}

// A rank that dies ends the job: under --nproc the launcher names the lost rank and stops the others; under a
// launcher of the user's (torchrun's environment variables), the surviving rank fails its next collective with
// an error instead of waiting, well within --dist_timeout.
TEST_F(CliTest, ALostRankEndsTheJobWithAClearError) {
  const auto out = dir_ / "lost";
  const auto args = endless_two_rank_run(out, "30");
  auto start = std::chrono::steady_clock::now();
  const auto r = train(args, [&](pid_t pid) {
    const auto ranks = ranks_once_training(pid, out);
    ASSERT_EQ(ranks.size(), 2u);
    start = std::chrono::steady_clock::now();
    ::kill(ranks[1], SIGKILL);
  });
  EXPECT_NE(r.status, 0);
  EXPECT_CONTAINS(r.err, "rank 1 (pid ");
  EXPECT_CONTAINS(r.err, "was killed by signal 9; stopping the other ranks");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));

  // torchrun-style: each rank started with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; kill rank 1 mid-run.
  auto direct = args;
  direct.resize(direct.size() - 4);  // no --nproc
  direct.insert(direct.end(), {"--dist_timeout", "30"});
  set_flag(direct, "--output_dir", (dir_ / "direct").string());
  const auto env = [](int rank) {
    return [rank] {
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("WORLD_SIZE", "2", 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", "29617", 1);
    };
  };
  direct.insert(direct.begin(), XPO_TRAIN_EXE);
  std::atomic<pid_t> rank1{-1};
  std::thread second([&] {
    (void)xpo::test::run_process(direct, dir_, "", [&](pid_t pid) { rank1 = pid; }, env(1));
  });
  const auto r0 = xpo::test::run_process(direct, dir_, "", [&](pid_t) {
    EXPECT_TRUE(xpo::test::wait_until([&] { return fs::exists(dir_ / "direct" / "metrics.jsonl") && fs::file_size(dir_ / "direct" / "metrics.jsonl") > 0; },
                                      std::chrono::seconds(120)));
    start = std::chrono::steady_clock::now();
    ::kill(rank1, SIGKILL);
  }, env(0));
  second.join();
  EXPECT_NE(r0.status, 0);
  EXPECT_CONTAINS(r0.err, "rank 0 of 2: ");
  EXPECT_CONTAINS(r0.err, "failed (another rank died, hung or cannot be reached");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

// A rank that hangs (SIGSTOP: alive, connected, silent) ends the job too: the other rank's next collective gives up
// after --dist_timeout, and the launcher stops the hung one. Without the timeout this run would never end.
TEST_F(CliTest, AHungRankEndsTheJobWithinTheTimeout) {
  const auto out = dir_ / "hung";
  auto stopped = std::chrono::steady_clock::now();
  const auto r = train(endless_two_rank_run(out, "5"), [&](pid_t pid) {
    const auto ranks = ranks_once_training(pid, out);
    ASSERT_EQ(ranks.size(), 2u);
    stopped = std::chrono::steady_clock::now();
    ::kill(ranks[1], SIGSTOP);
  });
  EXPECT_NE(r.status, 0);
  EXPECT_CONTAINS(r.err, "rank 0 of 2: ");
  EXPECT_CONTAINS(r.err, "failed (another rank died, hung or cannot be reached; timeout 5");
  EXPECT_CONTAINS(r.err, "xpo-train: rank 0 (pid ");
  EXPECT_CONTAINS(r.err, "stopping the other ranks");
  // the timeout, plus at most one step of rank 0 before its next collective, plus exiting: far below a minute
  EXPECT_LT(std::chrono::steady_clock::now() - stopped, std::chrono::seconds(60));
}

// --temperature 0 answers greedily: exactly what the library's greedy decoding of the chat-formatted prompt gives.
TEST_F(CliTest, ChatPromptAnswersLikeGreedyGeneration) {
  const auto r = chat({"--model_name_or_path", tiny_policy(), "--prompt", "hello there", "--temperature", "0", "--max_new_tokens", "12"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto tokenizer = xpo::text::Tokenizer::from_pretrained(tiny_policy());
  auto model = xpo::models::load_causal_lm(tiny_policy());
  const auto chat_template = xpo::text::ChatTemplate::of(tokenizer);
  const auto prompt = xpo::text::prepare_prompt(
      tokenizer, ordered_json::array({{{"role", "user"}, {"content", "hello there"}}}), &chat_template);
  const auto ids = torch::tensor(prompt.ids, torch::kLong).unsqueeze(0);
  xpo::generation::SamplingOptions o;
  o.max_new_tokens = 12;
  o.temperature = 0;
  o.eos_token_ids = tokenizer.special_tokens().generation_eos_ids;
  o.pad_token_id = *tokenizer.special_tokens().pad_id;
  auto gen = xpo::compat::make_generator(torch::kCPU, 0);
  const auto g = xpo::generation::generate(model, ids, torch::ones_like(ids), o, gen);
  std::vector<std::int64_t> answer;
  for (std::int64_t t = 0; t < g.completion_ids.size(1); ++t)
    if (g.completion_mask[0][t].item<std::int64_t>() == 1) answer.push_back(g.completion_ids[0][t].item<std::int64_t>());
  const std::string expected(xpo::text::strip_whitespace(tokenizer.decode(answer, true)));
  EXPECT_EQ(std::string(xpo::text::strip_whitespace(r.out)), expected);
}

TEST_F(CliTest, ChatInteractiveCommandsFromStdin) {
  const auto saved = dir_ / "conversation.json";
  const auto r = chat({"--model_name_or_path", tiny_policy(), "--max_new_tokens", "5", "--system_prompt", "Be brief."},
                      "/help\nfirst question\n/save " + saved.string() + "\n/clear\n/nonsense\nsecond question\n/exit\nnever read\n");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.out, "commands: /clear");
  EXPECT_CONTAINS(r.out, "(conversation cleared)");
  EXPECT_CONTAINS(r.out, "unknown command /nonsense");
  const auto conversation = xpo::read_json_file(saved, 1 << 20);
  const auto& messages = conversation.at("messages");
  ASSERT_EQ(messages.size(), 3u) << conversation.dump();
  EXPECT_EQ(messages[0]["role"], "system");
  EXPECT_EQ(messages[1]["content"], "first question");
  EXPECT_EQ(messages[2]["role"], "assistant");
  const auto missing = chat({"--model_name_or_path", (dir_ / "nowhere").string(), "--prompt", "hi"});
  EXPECT_NE(missing.status, 0);
  EXPECT_CONTAINS(missing.err, "config.json");
}

// The README's main job: the embedded default learns its rule. Stated margin: the held-out mean positivity score
// rises by at least 1.0 (it is measured at about -0.1 -> 1.8 on 2 cores; the score range is [-3, 3]).
TEST_F(CliTest, QuickStartRaisesTheHeldOutScoreAndChatOpensTheResult) {
  const auto out = dir_ / "quickstart";
  const auto r = train({"--output_dir", out.string()});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto results = xpo::read_json_file(out / "eval_results.json", 1 << 20);
  const double before = results.at("before"), after = results.at("after");
  EXPECT_GE(after - before, 1.0) << results.dump(1);
  EXPECT_CONTAINS(r.out, "mean score");
  const auto tokenizer = xpo::text::Tokenizer::from_pretrained(out / "base-model");
  const std::string text = "It is lovely. Ça va? 你好 <|im_end|>";
  EXPECT_EQ(tokenizer.decode(tokenizer.encode(text, false)), text) << "the byte-level tokenizer round-trips any UTF-8";
  const auto answer = chat({"--model_name_or_path", out.string(), "--prompt", "Tell me about kites.", "--temperature", "0"});
  ASSERT_EQ(answer.status, 0) << answer.err;
  EXPECT_FALSE(answer.out.empty());
}

// Issue 20: a few-step xpo-train run per fixture architecture (models/ and new-models/: qwen2, llama, qwen3,
// mistral, gemma3_text, phi3, smollm3, qwen2 + yarn), scored by the fixture reward models in turn; every other run
// trains LoRA on all of the architecture's linear layers (phi3: its fused qkv_proj and gate_up_proj). The saved
// model loads back with the same model_type and the same tensor names as the original checkpoint.
TEST_F(CliTest, EveryArchitectureTrainsAFewSteps) {
  std::vector<fs::path> policies, reward_models;
  for (const auto& folder : xpo::test::model_fixture_folders())
    (xpo::io::ModelConfig::load(folder).is_sequence_classifier() ? reward_models : policies).push_back(folder);
  ASSERT_FALSE(policies.empty());
  ASSERT_FALSE(reward_models.empty());
  const auto prompts = write_prompts("p.jsonl", 4, false);
  for (std::size_t i = 0; i < policies.size(); ++i) {
    SCOPED_TRACE(policies[i].string());
    const auto config = xpo::io::ModelConfig::load(policies[i]);
    const auto out = dir_ / ("run-" + std::to_string(i));
    const auto& reward_model = reward_models[i % reward_models.size()];
    // A fixture without tokenizer files (tiny-llama) borrows the reward model's (the same 384-token vocabulary).
    auto policy = policies[i];
    if (!fs::exists(policy / "tokenizer.json")) {
      policy = dir_ / ("policy-" + std::to_string(i));
      fs::create_directories(policy);
      for (const auto& e : fs::directory_iterator(policies[i])) fs::create_symlink(e.path(), policy / e.path().filename());
      for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) fs::create_symlink(reward_model / name, policy / name);
    }
    auto args = tiny_run(prompts, out);
    set_flag(args, "--model_name_or_path", policy.string());
    args.insert(args.end(), {"--reward_model_path", reward_model.string(), "--report_to", "jsonl"});
    if (i % 2 == 1) {
      std::string targets;
      for (const auto& name : config.linear_layer_names()) targets += (targets.empty() ? "" : ",") + name;
      args.insert(args.end(), {"--use_peft", "--lora_r", "2", "--lora_alpha", "4", "--lora_target_modules", targets});
    }
    const auto r = train(args);
    ASSERT_EQ(r.status, 0) << r.err;
    const auto lines = metrics(out);
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_TRUE(std::isfinite(lines[1].at("loss").get<double>()));
    const auto saved = xpo::models::load_causal_lm(out);
    EXPECT_EQ(saved->config().model_type, config.model_type);
    EXPECT_EQ(xpo::io::TensorStore::open(out).names(), xpo::io::TensorStore::open(policies[i]).names());
  }
}


// TRL's quick-start judge, PairRM (the tiny fixture): by name with its folder (standard prompts) and by folder
// alone (conversational prompts), a few steps each; a missing folder is refused with where to download it.
TEST_F(CliTest, PairRMJudgeRunsWithStandardAndConversationalPrompts) {
  const auto pair_rm = xpo::test::fixture_path("judges/tiny-pairrm").string();
  for (const bool conversational : {false, true}) {
    SCOPED_TRACE(conversational ? "conversational" : "standard");
    const auto out = dir_ / (conversational ? "pairrm-chat" : "pairrm");
    auto args = tiny_run(write_prompts(conversational ? "chat.jsonl" : "p.jsonl", 4, conversational), out);
    drop_flag(args, "--missing_eos_penalty");  // a judge gives no scores to lower
    if (conversational) args.insert(args.end(), {"--judge", pair_rm, "--report_to", "jsonl"});
    else args.insert(args.end(), {"--judge", "pair_rm", "--judge_model_path", pair_rm, "--judge_dtype", "float32", "--report_to", "jsonl"});
    const auto r = train(args);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_CONTAINS(r.err, "judging with PairRM");
    const auto lines = metrics(out);
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_TRUE(lines[1].contains("rewards/margins"));
    EXPECT_FALSE(lines[1].contains("objective/model_scores")) << "a judge gives no scores";
    // PairRM's mean probability that the policy's sample is the better one (a judge metric of xpo's own).
    for (const auto& line : lines) {
      ASSERT_TRUE(line.contains("objective/judge_policy_prob")) << line.dump();
      const double p = line.at("objective/judge_policy_prob").get<double>();
      EXPECT_TRUE(p >= 0 && p <= 1) << p;
    }
  }
  auto args = tiny_run(write_prompts("q.jsonl", 4, false), dir_ / "refused");
  drop_flag(args, "--missing_eos_penalty");
  args.insert(args.end(), {"--judge", "pair_rm", "--judge_model_path", (dir_ / "nowhere").string()});
  const auto missing = train(args);
  EXPECT_EQ(missing.status, 2);
  EXPECT_CONTAINS(missing.err, "huggingface-cli download llm-blender/PairRM");
  drop_flag(args, "--judge_model_path");
  args.insert(args.end(), {"--judge_model_path", pair_rm, "--judge_dtype", "float16"});
  const auto half = train(args);
  EXPECT_EQ(half.status, 2);
  EXPECT_CONTAINS(half.err, "--judge_dtype float16 needs --device cuda");
}

}  // namespace
