// Test support: where the reference fixtures are, and JSON -> tensor conversion.
// The fixture folder comes from $XPO_FIXTURES_DIR (default: ../shared/fixtures next to the repository), so the
// same tests run unchanged against another fixture set of the same schema. A missing fixture is a failure.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <xpo/io/hf_config.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

namespace xpo::test {

// A fresh, empty directory per test (named after the process and the test), removed afterwards.
class ScratchDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("xpo-test-" + std::to_string(::getpid()) + "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

inline std::filesystem::path fixtures_dir() {
  if (const char* env = std::getenv("XPO_FIXTURES_DIR"); env != nullptr && *env != '\0') return env;
  return XPO_DEFAULT_FIXTURES_DIR;
}

// Absolute path of a fixture file; throws (failing the test that asked) when it does not exist.
inline std::filesystem::path fixture_path(const std::string& relative) {
  const auto path = fixtures_dir() / relative;
  if (!std::filesystem::exists(path)) {
    throw std::runtime_error("fixture missing: " + path.string() +
                             " (set XPO_FIXTURES_DIR to the fixtures folder; default ../shared/fixtures)");
  }
  return path;
}

// Every non-empty line of a JSONL fixture, parsed.
inline std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  std::vector<nlohmann::json> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    rows.push_back(nlohmann::json::parse(line));
  }
  return rows;
}

namespace detail {
inline void flatten(const nlohmann::json& j, std::vector<double>& values, std::vector<std::int64_t>& shape,
                    std::size_t depth) {
  if (j.is_array()) {
    if (shape.size() == depth) shape.push_back(static_cast<std::int64_t>(j.size()));
    if (shape[depth] != static_cast<std::int64_t>(j.size())) throw std::runtime_error("ragged JSON array");
    for (const auto& e : j) flatten(e, values, shape, depth + 1);
  } else if (j.is_boolean()) {
    values.push_back(j.get<bool>() ? 1.0 : 0.0);
  } else if (j.is_null()) {
    values.push_back(std::nan(""));
  } else {
    values.push_back(j.get<double>());
  }
}
}  // namespace detail

// A (nested) JSON array of numbers or booleans -> tensor of `dtype` (null -> NaN).
inline torch::Tensor to_tensor(const nlohmann::json& j, torch::ScalarType dtype) {
  std::vector<double> values;
  std::vector<std::int64_t> shape;
  detail::flatten(j, values, shape, 0);
  return torch::tensor(values, torch::kDouble).reshape(shape).to(dtype);
}

// A [B][T] JSON array whose entries are either a [V] list or null (positions without a reference value) ->
// {values [B, T, V] float64 (NaN where null), present [B, T] bool}. V comes from the first non-null entry.
struct HoledTensor {
  torch::Tensor values;
  torch::Tensor present;
};
inline HoledTensor to_holed_tensor(const nlohmann::json& j) {
  std::int64_t inner = -1;
  for (const auto& row : j)
    for (const auto& e : row)
      if (!e.is_null()) {
        inner = static_cast<std::int64_t>(e.is_array() ? e.size() : 1);
        break;
      }
  if (inner < 0) throw std::runtime_error("holed array has no value at all");
  const auto b = static_cast<std::int64_t>(j.size()), t = static_cast<std::int64_t>(j.at(0).size());
  auto values = torch::full({b, t, inner}, std::nan(""), torch::kDouble);
  auto present = torch::zeros({b, t}, torch::kBool);
  for (std::int64_t r = 0; r < b; ++r) {
    for (std::int64_t c = 0; c < t; ++c) {
      const auto& e = j.at(static_cast<std::size_t>(r)).at(static_cast<std::size_t>(c));
      if (e.is_null()) continue;
      present[r][c] = true;
      values[r][c] = to_tensor(e.is_array() ? e : nlohmann::json::array({e}), torch::kDouble);
    }
  }
  return {values, present};
}

// |actual - expected| <= tol * (1 + |expected|) everywhere (an allclose with rtol = atol = tol), reported with
// the worst element.
inline ::testing::AssertionResult all_close(const torch::Tensor& actual, const torch::Tensor& expected, double tol) {
  const auto a = actual.detach().to(torch::kDouble).cpu();
  const auto e = expected.detach().to(torch::kDouble).cpu();
  if (a.sizes() != e.sizes()) {
    return ::testing::AssertionFailure() << "shape " << a.sizes() << " != expected " << e.sizes();
  }
  if (a.numel() == 0) return ::testing::AssertionSuccess();
  const auto excess = (a - e).abs() - tol * (1 + e.abs());
  const auto worst = excess.reshape({-1}).argmax().item<std::int64_t>();
  if (excess.reshape({-1})[worst].item<double>() <= 0 && !a.isnan().any().item<bool>()) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "worst element (flat index " << worst << "): actual "
                                       << a.reshape({-1})[worst].item<double>() << " vs expected "
                                       << e.reshape({-1})[worst].item<double>() << ", tolerance " << tol
                                       << " x (1 + |expected|)";
}

inline ::testing::AssertionResult all_close(const torch::Tensor& actual, const nlohmann::json& expected, double tol) {
  return all_close(actual, to_tensor(expected, torch::kDouble), tol);
}

// max |actual - expected| <= tol (absolute; the models fixture states its tolerances this way).
inline ::testing::AssertionResult max_abs_within(const torch::Tensor& actual, const torch::Tensor& expected, double tol) {
  const auto a = actual.detach().to(torch::kDouble).cpu();
  const auto e = expected.detach().to(torch::kDouble).cpu();
  if (a.sizes() != e.sizes()) return ::testing::AssertionFailure() << "shape " << a.sizes() << " != expected " << e.sizes();
  if (a.numel() == 0) return ::testing::AssertionFailure() << "nothing to compare";
  const double worst = (a - e).abs().max().item<double>();
  if (worst <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |difference| " << worst << " > tolerance " << tol;
}

// Subfolders of fixtures/models/ and fixtures/new-models/ (every model the fixture set ships: the Qwen2/Llama
// generation and the newer architectures), sorted; fails when either folder is missing or holds no model.
inline std::vector<std::filesystem::path> model_fixture_folders() {
  std::vector<std::filesystem::path> out;
  for (const char* group : {"models", "new-models"}) {
    const auto before = out.size();
    for (const auto& e : std::filesystem::directory_iterator(fixture_path(group)))
      if (e.is_directory() && std::filesystem::exists(e.path() / "reference.json")) out.push_back(e.path());
    if (out.size() == before)
      throw std::runtime_error("no model folder with reference.json under " + fixture_path(group).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The folders of model_fixture_folders() that hold causal LMs (the others hold reward models); fails when none does.
inline std::vector<std::filesystem::path> causal_lm_fixture_folders() {
  std::vector<std::filesystem::path> out;
  for (const auto& f : model_fixture_folders())
    if (!xpo::io::ModelConfig::load(f).is_sequence_classifier()) out.push_back(f);
  if (out.empty()) throw std::runtime_error("no causal LM among the fixture models");
  return out;
}

inline nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  return nlohmann::json::parse(in);
}

}  // namespace xpo::test
