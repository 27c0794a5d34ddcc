// xpo/core/config.hpp: TRL's defaults, strict JSON in and out, and one clear message per bad field.
#include <gtest/gtest.h>

#include <xpo/core/config.hpp>
#include <xpo/core/config_torch.hpp>

#include "support/fixtures.hpp"

#include <filesystem>
#include <fstream>

#include <unistd.h>

namespace {

using nlohmann::json;

std::string error_of(const json& j) {
  try {
    (void)xpo::XPOConfig::from_json(j, "run.json");
  } catch (const xpo::ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(XPOConfig, DefaultsAreTrlsAndValid) {
  const xpo::XPOConfig c;
  EXPECT_NO_THROW(c.validate());
  // trl.XPOConfig / OnlineDPOConfig / TrainingArguments defaults (ALGORITHM.md §1-2).
  EXPECT_EQ(c.alpha, std::vector<double>{1e-5});
  EXPECT_EQ(c.beta, std::vector<double>{0.1});
  EXPECT_EQ(c.loss_type, "sigmoid");
  EXPECT_DOUBLE_EQ(c.learning_rate, 5e-7);
  EXPECT_DOUBLE_EQ(c.temperature, 0.9);
  EXPECT_EQ(c.max_new_tokens, 64);
  EXPECT_EQ(c.top_k, 0);
  EXPECT_DOUBLE_EQ(c.top_p, 1.0);
  EXPECT_FALSE(c.min_p.has_value());
  EXPECT_FALSE(c.missing_eos_penalty.has_value());
  EXPECT_DOUBLE_EQ(c.max_grad_norm, 1.0);
  EXPECT_DOUBLE_EQ(c.adam_beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.adam_beta2, 0.999);
  EXPECT_DOUBLE_EQ(c.adam_epsilon, 1e-8);
  EXPECT_DOUBLE_EQ(c.weight_decay, 0.0);
  EXPECT_EQ(c.lr_scheduler_type, "linear");
  EXPECT_TRUE(c.disable_dropout);
  EXPECT_EQ(xpo::torch_device(c), torch::Device(torch::kCPU));
  EXPECT_EQ(xpo::torch_dtype(c), torch::kFloat);
}

TEST(XPOConfig, DeviceStringsAcceptedWithoutLibTorchAreLibTorchDevices) {
  // config.hpp checks device strings without LibTorch; whatever it accepts must construct a torch::Device of the
  // same type and index, and what LibTorch refuses must be refused.
  for (const std::string s : {"cpu", "cuda", "cuda:0", "cuda:7", "cuda:127", "mps", "xpu:1", "hip:3", "meta", "xla:0"}) {
    EXPECT_TRUE(xpo::detail::is_device_string(s)) << s;
    xpo::XPOConfig c;
    c.device = s;
    const auto d = xpo::torch_device(c);
    EXPECT_EQ(d.str(), s) << "LibTorch reads \"" << s << "\" as " << d.str();
  }
  for (const std::string s : {"", "gpu", "CPU", "cuda:", "cuda:01", "cuda:-1", "cuda:0:1", " cpu", "cuda:x", "cuda:1000"}) {
    EXPECT_FALSE(xpo::detail::is_device_string(s)) << s;
    xpo::XPOConfig c;
    c.device = s;
    EXPECT_FALSE(c.problems().empty()) << s;
  }
  for (const std::string s : {"", "gpu", "CPU", "cuda:", "cuda:01", "cuda:-1", "cuda:0:1", " cpu", "cuda:x"})
    EXPECT_ANY_THROW((void)torch::Device(s)) << "LibTorch accepts \"" << s << "\" too";
}

TEST(XPOConfig, JsonRoundTripKeepsEveryField) {
  xpo::XPOConfig c;
  c.alpha = {1e-5, 1e-6};
  c.beta = {0.25};
  c.missing_eos_penalty = 1.5;
  c.min_p = 0.05;
  c.save_total_limit = 3;
  c.loss_type = "ipo";
  c.device = "cuda:1";
  c.dtype = "bfloat16";
  c.max_steps = 100;
  const json j = c.to_json();
  EXPECT_EQ(j.at("beta"), json(0.25)) << "a one-value list is written as a float, like TRL";
  EXPECT_EQ(j.at("alpha"), json({1e-5, 1e-6}));
  EXPECT_TRUE(j.at("top_k").is_number_integer());
  const auto back = xpo::XPOConfig::from_json(j);
  EXPECT_EQ(back.to_json(), j);
  EXPECT_EQ(xpo::torch_dtype(back), torch::kBFloat16);
  std::size_t fields = 0;
  xpo::visit_fields(c, [&](const char* name, const auto&, const char* help) {
    EXPECT_TRUE(j.contains(name)) << name;
    EXPECT_GT(std::string(help).size(), 5u) << "field " << name << " needs a help text";
    ++fields;
  });
  EXPECT_EQ(j.size(), fields);
}

TEST(XPOConfig, KeysNotGivenKeepTheirDefaultsAndIntegralFloatsAreIntegers) {
  const auto c = xpo::XPOConfig::from_json(json{{"beta", {0.1, 0.05}}, {"max_new_tokens", 32.0}});
  EXPECT_EQ(c.beta, (std::vector<double>{0.1, 0.05}));
  EXPECT_EQ(c.max_new_tokens, 32);
  EXPECT_EQ(c.alpha, std::vector<double>{1e-5});
}

TEST(XPOConfig, UnknownKeySuggestsTheNearestKnownKey) {
  const auto message = error_of(json{{"learning_rat", 1e-6}});
  EXPECT_NE(message.find("run.json: unknown key \"learning_rat\" (did you mean \"learning_rate\"?)"), std::string::npos)
      << message;
  const auto far = error_of(json{{"completely_unrelated", 1}});
  EXPECT_NE(far.find("unknown key \"completely_unrelated\""), std::string::npos) << far;
  EXPECT_EQ(far.find("did you mean"), std::string::npos) << far;
}

TEST(XPOConfig, WrongTypeNamesFieldExpectedAndGot) {
  const auto message = error_of(json{{"beta", "high"}});
  EXPECT_NE(message.find("run.json: beta: expected a number or a list of numbers, got string \"high\""),
            std::string::npos)
      << message;
  EXPECT_NE(error_of(json{{"max_new_tokens", 3.5}}).find("max_new_tokens: expected an integer"), std::string::npos);
  EXPECT_NE(error_of(json{{"min_p", true}}).find("min_p: expected a number or null"), std::string::npos);
  EXPECT_NE(error_of(json::array({1, 2})).find("expected a JSON object"), std::string::npos);
}

TEST(XPOConfig, NegativeBetaAndEveryOtherBadValueReportedTogether) {
  const auto message = error_of(json{{"beta", -0.1},
                                     {"alpha", {1e-5, -1.0}},
                                     {"loss_type", "hinge"},
                                     {"per_device_train_batch_size", 0},
                                     {"top_p", 0.0},
                                     {"device", "tpu:0"},
                                     {"dtype", "float8"},
                                     {"warmup_ratio", 1.5}});
  for (const char* expected : {"beta = -0.1: must be finite and > 0", "alpha[1] = -1: must be finite and >= 0",
                               "loss_type = \"hinge\": must be sigmoid or ipo", "per_device_train_batch_size = 0",
                               "top_p = 0: must be in (0, 1]", "device = \"tpu:0\"", "dtype = \"float8\"",
                               "warmup_ratio = 1.5"}) {
    EXPECT_NE(message.find(expected), std::string::npos) << "missing '" << expected << "' in:\n" << message;
  }
  try {
    (void)xpo::XPOConfig::from_json(json{{"beta", -0.1}, {"top_p", 0.0}});
    FAIL() << "must throw";
  } catch (const xpo::ConfigError& e) {
    EXPECT_EQ(e.problems().size(), 2u);
  }
}

TEST(XPOConfig, EmptyWeightListAndNonFiniteValuesAreErrors) {
  EXPECT_NE(error_of(json{{"alpha", json::array()}}).find("alpha: the list is empty"), std::string::npos);
  xpo::XPOConfig c;
  c.beta = {std::numeric_limits<double>::infinity()};
  c.temperature = std::nan("");
  const auto problems = c.problems();
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_EQ(problems[0], "temperature = nan: must be finite and >= 0 (0 = greedy)");
  EXPECT_EQ(problems[1], "beta = inf: must be finite and > 0");
}

TEST(XPOConfig, UpdateOverlaysAndLeavesTheConfigUntouchedOnError) {
  xpo::XPOConfig c;
  c.update_from_json(json{{"learning_rate", 1e-6}});
  EXPECT_DOUBLE_EQ(c.learning_rate, 1e-6);
  EXPECT_THROW(c.update_from_json(json{{"learning_rate", 2e-6}, {"beta", 0}}), xpo::ConfigError);
  EXPECT_DOUBLE_EQ(c.learning_rate, 1e-6) << "a rejected update must not apply half of itself";
}

using XPOConfigFile = xpo::test::ScratchDir;

TEST_F(XPOConfigFile, SaveAndLoadRoundTrip) {
  xpo::XPOConfig c;
  c.beta = {0.1, 0.2};
  c.output_dir = "somewhere";
  c.save(dir_ / "config.json");
  EXPECT_FALSE(std::filesystem::exists(dir_ / "config.json.tmp"));
  EXPECT_EQ(xpo::XPOConfig::load(dir_ / "config.json").to_json(), c.to_json());
}

TEST_F(XPOConfigFile, MalformedJsonNamesTheFile) {
  std::ofstream(dir_ / "bad.json") << "{\"beta\": 0.1,,}";
  try {
    (void)xpo::XPOConfig::load(dir_ / "bad.json");
    FAIL() << "must throw";
  } catch (const xpo::FileError& e) {
    EXPECT_NE(std::string(e.what()).find((dir_ / "bad.json").string() + ": not valid JSON"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW((void)xpo::XPOConfig::load(dir_ / "missing.json"), xpo::FileError);
}

TEST_F(XPOConfigFile, BadValueInFileNamesFileAndField) {
  std::ofstream(dir_ / "neg.json") << R"({"beta": -0.5})";
  try {
    (void)xpo::XPOConfig::load(dir_ / "neg.json");
    FAIL() << "must throw";
  } catch (const xpo::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), (dir_ / "neg.json").string() + ": beta = -0.5: must be finite and > 0");
  }
}

TEST_F(XPOConfigFile, SaveIntoAMissingDirectoryFailsAndKeepsNothingHalfWritten) {
  xpo::XPOConfig c;
  EXPECT_THROW(c.save(dir_ / "no-such-dir" / "config.json"), xpo::FileError);
  // An existing file is replaced whole, never truncated in place.
  std::ofstream(dir_ / "config.json") << "previous";
  c.save(dir_ / "config.json");
  EXPECT_NO_THROW((void)xpo::XPOConfig::load(dir_ / "config.json"));
}

}  // namespace
