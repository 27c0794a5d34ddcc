// xpo/schedules/constant.hpp — the same alpha and beta for every epoch (TRL's float form of XPOConfig.alpha/beta).
#pragma once

#include "xpo/core/concepts.hpp"
#include "xpo/core/errors.hpp"
#include "xpo/core/validation.hpp"
#include "xpo/schedules/checked.hpp"

namespace xpo::schedules {

class Constant {
 public:
  // Literal form: `constexpr Constant s{1e-5, 0.1};` (alpha, beta) — an invalid literal does not compile.
  constexpr Constant(Alpha alpha, Beta beta) : alpha_(alpha.value), beta_(beta.value) {}

  // Run-time form for values read from a file or the command line: throws xpo::ConfigError naming the field.
  static Constant checked(double alpha, double beta) {
    auto problems = alpha_problems({alpha});
    for (auto& p : beta_problems({beta})) problems.push_back(std::move(p));
    if (!problems.empty()) throw ConfigError(std::move(problems));
    return Constant(alpha, beta, Unchecked{});
  }

  [[nodiscard]] constexpr double alpha(double /*epoch*/) const { return alpha_; }
  [[nodiscard]] constexpr double beta(double /*epoch*/) const { return beta_; }

 private:
  struct Unchecked {};
  constexpr Constant(double alpha, double beta, Unchecked) : alpha_(alpha), beta_(beta) {}
  double alpha_;
  double beta_;
};

static_assert(WeightSchedule<Constant>);
static_assert(Constant{1e-5, 0.1}.alpha(3.7) == 1e-5 && Constant{1e-5, 0.1}.beta(0.0) == 0.1);

}  // namespace xpo::schedules
