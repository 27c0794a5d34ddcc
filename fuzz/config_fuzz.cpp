// Fuzz target: the configuration readers. The first input byte picks the reader, the rest is its input:
//   '0'  an XPOConfig JSON file (XPOConfig::load); what loads must validate and survive to_json/from_json
//   '1'  a model's config.json (io::ModelConfig::load); what loads must survive to_json/from_json
//   else a command line for FlagParser: lines are arguments; after a NUL byte comes a --config file's text
// Needs LibTorch (config.hpp names torch dtypes); see fuzz/CMakeLists.txt.
#include <xpo/core/config.hpp>
#include <xpo/core/flags.hpp>
#include <xpo/io/hf_config.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

namespace {

std::filesystem::path write_file(const std::string& suffix, std::string_view text) {
  const auto path = std::filesystem::temp_directory_path() / ("xpo-fuzz-" + std::to_string(::getpid()) + suffix);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  return path;
}

void xpo_config(std::string_view text) {
  xpo::XPOConfig config;
  try {
    config = xpo::XPOConfig::load(write_file("-config.json", text));
  } catch (const xpo::Error&) {
    return;
  }
  if (!config.problems().empty()) __builtin_trap();  // load validates
  const auto j = config.to_json();
  if (xpo::XPOConfig::from_json(j, "round trip").to_json() != j) __builtin_trap();
}

void model_config(std::string_view text) {
  xpo::io::ModelConfig config;
  try {
    config = xpo::io::ModelConfig::load(write_file("-model.json", text));
  } catch (const xpo::Error&) {
    return;
  }
  const auto j = config.to_json();
  if (xpo::io::ModelConfig::from_json(j, "round trip").to_json() != j) __builtin_trap();
}

void command_line(std::string_view text) {
  const auto nul = text.find('\0');
  std::vector<std::string> args{"xpo-fuzz"};
  std::istringstream lines(std::string(text.substr(0, nul)));
  for (std::string line; std::getline(lines, line);) args.push_back(line);
  if (nul != std::string_view::npos) {
    args.emplace_back("--config");
    args.push_back(write_file("-flags.json", text.substr(nul + 1)).string());
  }
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());

  xpo::XPOConfig config;
  std::string name = "x";
  bool flag = false;
  std::int64_t count = 3;
  std::optional<double> rate;
  std::vector<std::string> names;
  std::vector<double> weights;
  xpo::FlagParser parser("xpo-fuzz", "fuzzing the flag parser");
  parser.add("name", name, "a string");
  parser.add("flag", flag, "a bool");
  parser.add("count", count, "an integer");
  parser.add("rate", rate, "an optional float");
  parser.add("names", names, "a list of strings");
  parser.add("weights", weights, "a list of floats");
  parser.add_config(config);
  std::ostringstream help;
  try {
    if (!parser.parse(static_cast<int>(argv.size()), argv.data(), help) && help.str().empty()) __builtin_trap();
  } catch (const xpo::Error&) {
    return;
  }
  if (!config.problems().empty()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0]) {
    case '0': xpo_config(text); break;
    case '1': model_config(text); break;
    default: command_line(text); break;
  }
  return 0;
}
