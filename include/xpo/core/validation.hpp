// xpo/core/validation.hpp — the value rules shared by XPOConfig::validate() and the schedules, written once so
// a value accepted from a file is exactly a value accepted as a literal.
#pragma once

#include <cstddef>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace xpo {

constexpr bool is_finite(double v) {
  return v == v && v <= std::numeric_limits<double>::max() && v >= -std::numeric_limits<double>::max();
}

// alpha weighs the exploration term: finite and >= 0 (0 = online DPO).
constexpr bool valid_alpha(double v) { return is_finite(v) && v >= 0.0; }

// beta is the KL strength: finite and > 0 (IPO divides by it).
constexpr bool valid_beta(double v) { return is_finite(v) && v > 0.0; }

// A double as a user wrote it: shortest round-trip form, "nan"/"inf" spelled out.
inline std::string format_value(double v) {
  if (v != v) return "nan";
  if (!is_finite(v)) return v > 0 ? "inf" : "-inf";
  std::ostringstream out;
  out.precision(std::numeric_limits<double>::max_digits10);
  out << v;
  double back = 0;
  for (int digits = 1; digits <= std::numeric_limits<double>::max_digits10; ++digits) {
    std::ostringstream shorter;
    shorter.precision(digits);
    shorter << v;
    std::istringstream(shorter.str()) >> back;
    if (back == v) return shorter.str();
  }
  return out.str();
}

// Problems of a per-epoch weight list (alpha or beta), one message per bad entry; empty when valid.
template <class Predicate>
std::vector<std::string> weight_list_problems(std::string_view field, const std::vector<double>& values,
                                              Predicate valid, std::string_view rule) {
  std::vector<std::string> problems;
  if (values.empty()) problems.push_back(std::string(field) + ": the list is empty; give one value or one per epoch");
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!valid(values[i])) {
      const std::string name = values.size() == 1 ? std::string(field) : std::string(field) + "[" + std::to_string(i) + "]";
      problems.push_back(name + " = " + format_value(values[i]) + ": must be " + std::string(rule));
    }
  }
  return problems;
}

inline std::vector<std::string> alpha_problems(const std::vector<double>& alphas) {
  return weight_list_problems("alpha", alphas, valid_alpha, "finite and >= 0");
}

inline std::vector<std::string> beta_problems(const std::vector<double>& betas) {
  return weight_list_problems("beta", betas, valid_beta, "finite and > 0");
}

}  // namespace xpo
