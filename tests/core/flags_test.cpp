// Command-line flags: every XPOConfig field under TRL's name, program flags, --config with flags overriding it,
// and all problems reported at once before anything is loaded.
#include <xpo/core/flags.hpp>

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "support/fixtures.hpp"

namespace {

struct Cli {
  xpo::XPOConfig config;
  std::string model;
  bool use_peft = false;
  std::vector<std::string> targets{"q_proj", "v_proj"};
  std::optional<std::int64_t> nproc;
  xpo::FlagParser parser{"xpo-train", "Train with XPO."};
  Cli() {
    parser.add_config(config);
    parser.add("model_name_or_path", model, "a local Hugging Face checkpoint folder");
    parser.add("use_peft", use_peft, "train LoRA adapters");
    parser.add("lora_target_modules", targets, "modules that get adapters");
    parser.add("nproc", nproc, "local worker processes");
  }
  bool parse(std::vector<const char*> args) {
    args.insert(args.begin(), "xpo-train");
    std::ostringstream help;
    return parser.parse(static_cast<int>(args.size()), args.data(), help);
  }
};

TEST(Flags, ParseEveryKind) {
  Cli cli;
  ASSERT_TRUE(cli.parse({"--model_name_or_path", "m", "--learning_rate=1e-6", "--max_steps", "20", "--use_peft",
                         "--beta", "0.1", "0.2", "--alpha", "1e-5,0", "--missing_eos_penalty", "1.5", "--min_p", "null",
                         "--lora-target-modules", "q_proj,k_proj", "o_proj", "--disable_dropout", "false", "--nproc", "2",
                         "--temperature", "0.7"}));
  EXPECT_EQ(cli.model, "m");
  EXPECT_DOUBLE_EQ(cli.config.learning_rate, 1e-6);
  EXPECT_EQ(cli.config.max_steps, 20);
  EXPECT_TRUE(cli.use_peft);
  EXPECT_EQ(cli.config.beta, (std::vector<double>{0.1, 0.2}));
  EXPECT_EQ(cli.config.alpha, (std::vector<double>{1e-5, 0.0}));
  EXPECT_EQ(cli.config.missing_eos_penalty, 1.5);
  EXPECT_FALSE(cli.config.min_p.has_value());
  EXPECT_EQ(cli.targets, (std::vector<std::string>{"q_proj", "k_proj", "o_proj"}));
  EXPECT_FALSE(cli.config.disable_dropout);
  EXPECT_EQ(cli.nproc, 2);
  EXPECT_DOUBLE_EQ(cli.config.temperature, 0.7);
}

// given(): what the user set, on the command line or in --config, as opposed to a default (what conflict checks
// ask: a default never conflicts).
TEST(Flags, GivenTellsSetFlagsFromDefaults) {
  Cli cli;
  const auto file = std::filesystem::temp_directory_path() / ("xpo-flags-given-" + std::to_string(::getpid()) + ".json");
  std::ofstream(file) << R"({"warmup_ratio": 0.1, "model_name_or_path": "m"})";
  ASSERT_TRUE(cli.parse({"--config", file.c_str(), "--max_steps", "3", "--use_peft"}));
  std::filesystem::remove(file);
  for (const char* name : {"warmup_ratio", "model_name_or_path", "max_steps", "use_peft"}) EXPECT_TRUE(cli.parser.given(name)) << name;
  for (const char* name : {"warmup_steps", "learning_rate", "nproc", "config"}) EXPECT_FALSE(cli.parser.given(name)) << name;
}

TEST(Flags, AllProblemsAtOnce) {
  Cli cli;
  try {
    (void)cli.parse({"--learning_rat", "1e-5", "--max_steps", "ten", "--beta", "-0.1", "stray", "--top_k"});
    ADD_FAILURE();
  } catch (const xpo::ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("unknown flag --learning_rat (did you mean --learning_rate?)"), std::string::npos) << what;
    EXPECT_NE(what.find("--max_steps \"ten\": expected an integer"), std::string::npos) << what;
    EXPECT_NE(what.find("--top_k: needs a value"), std::string::npos) << what;
    EXPECT_NE(what.find("\"stray\""), std::string::npos) << what;
  }
  Cli second;  // the config's own rules, once the flags parse
  try {
    (void)second.parse({"--beta", "-0.1", "--per_device_train_batch_size", "0"});
    ADD_FAILURE();
  } catch (const xpo::ConfigError& e) {
    EXPECT_EQ(e.problems().size(), 2U) << e.what();
    EXPECT_NE(std::string(e.what()).find("beta"), std::string::npos) << e.what();
  }
}

class FlagsFile : public xpo::test::ScratchDir {};

TEST_F(FlagsFile, ConfigFileThenFlagsOverride) {
  const auto file = dir_ / "run.json";
  std::ofstream(file) << R"({"learning_rate": 3e-6, "max_steps": 7, "beta": [0.2]})";
  Cli cli;
  ASSERT_TRUE(cli.parse({"--max_steps", "9", "--config", file.c_str()}));
  EXPECT_DOUBLE_EQ(cli.config.learning_rate, 3e-6);  // from the file
  EXPECT_EQ(cli.config.max_steps, 9);                 // the flag wins, wherever it stands
  EXPECT_EQ(cli.config.beta, std::vector<double>{0.2});
  std::ofstream(file) << R"({"learning_rat": 3e-6})";
  Cli bad;
  EXPECT_THROW((void)bad.parse({"--config", file.c_str()}), xpo::ConfigError);
}

// A TRL-style file holds script arguments too: they set the program's flags, and the command line still wins.
TEST_F(FlagsFile, ConfigFileMaySetProgramFlags) {
  const auto file = dir_ / "run.json";
  std::ofstream(file) << R"({"model_name_or_path": "/models/a", "use_peft": true, "lora_target_modules": ["q_proj", "o_proj"],
                            "nproc": 2, "beta": 0.3})";
  Cli cli;
  ASSERT_TRUE(cli.parse({"--config", file.c_str(), "--nproc", "4"}));
  EXPECT_EQ(cli.model, "/models/a");
  EXPECT_TRUE(cli.use_peft);
  EXPECT_EQ(cli.targets, (std::vector<std::string>{"q_proj", "o_proj"}));
  EXPECT_EQ(cli.nproc, 4);
  EXPECT_EQ(cli.config.beta, std::vector<double>{0.3});
  std::ofstream(file) << R"({"use_peft": "maybe"})";
  Cli bad;
  try {
    (void)bad.parse({"--config", file.c_str()});
    ADD_FAILURE();
  } catch (const xpo::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--use_peft"), std::string::npos) << e.what();
  }
}

TEST(Flags, HelpListsEveryFlagWithItsDefault) {
  Cli cli;
  std::ostringstream out;
  const char* argv[] = {"xpo-train", "--help"};
  EXPECT_FALSE(cli.parser.parse(2, argv, out));
  const std::string help = out.str();
  xpo::visit_fields(cli.config, [&](const char* name, const auto&, const char*) {
    EXPECT_NE(help.find(std::string("--") + name), std::string::npos) << name;
  });
  EXPECT_NE(help.find("--learning_rate V"), std::string::npos);
  EXPECT_NE(help.find("[5e-07]"), std::string::npos);
  EXPECT_NE(help.find("--config"), std::string::npos);
  EXPECT_NE(help.find("--lora_target_modules V[,V...]"), std::string::npos);
}

}  // namespace
