// xpo/schedules/per_epoch.hpp — one alpha and beta per epoch (TRL's list form of XPOConfig.alpha/beta).
// value = list[min(floor(epoch), len - 1)] with `epoch` the fractional epoch after the last optimizer step
// (ALGORITHM.md §2; TRL indexes the list with the float epoch and crashes on the second step).
//
//   constexpr PerEpoch s{alphas(1e-5, 1e-6), betas(0.1)};          // sizes fixed at compile time
//   auto s = PerEpoch<>::checked(config.alpha, config.beta);       // lists from a file, checked at run time
#pragma once

#include <array>
#include <cstddef>
#include <span>
#include <utility>
#include <vector>

#include "xpo/core/concepts.hpp"
#include "xpo/core/errors.hpp"
#include "xpo/core/validation.hpp"
#include "xpo/schedules/checked.hpp"

namespace xpo::schedules {

// list[min(floor(epoch), len - 1)]; a negative or NaN epoch reads entry 0. `values` must not be empty.
constexpr double value_at_epoch(std::span<const double> values, double epoch) {
  const std::size_t last = values.size() - 1;
  if (!(epoch >= 1.0)) return values[0];
  if (epoch >= static_cast<double>(last)) return values[last];
  return values[static_cast<std::size_t>(epoch)];  // truncation == floor for epoch >= 0
}

template <std::size_t NA = std::dynamic_extent, std::size_t NB = NA>
class PerEpoch {
 public:
  // Literal form; each value was checked by alphas()/betas() at compile time.
  constexpr PerEpoch(WeightList<Alpha, NA> alphas, WeightList<Beta, NB> betas)
      : alphas_(alphas.values), betas_(betas.values) {}

  [[nodiscard]] constexpr double alpha(double epoch) const { return value_at_epoch(alphas_, epoch); }
  [[nodiscard]] constexpr double beta(double epoch) const { return value_at_epoch(betas_, epoch); }

 private:
  std::array<double, NA> alphas_;
  std::array<double, NB> betas_;
};

template <std::size_t NA, std::size_t NB>
PerEpoch(WeightList<Alpha, NA>, WeightList<Beta, NB>) -> PerEpoch<NA, NB>;

// Run-time lists (a config file, the command line): sizes known only at run time.
template <>
class PerEpoch<std::dynamic_extent, std::dynamic_extent> {
 public:
  // Throws xpo::ConfigError with one line per bad entry ("beta[1] = 0: must be finite and > 0").
  static PerEpoch checked(std::vector<double> alphas, std::vector<double> betas) {
    auto problems = alpha_problems(alphas);
    for (auto& p : beta_problems(betas)) problems.push_back(std::move(p));
    if (!problems.empty()) throw ConfigError(std::move(problems));
    return PerEpoch(std::move(alphas), std::move(betas));
  }

  [[nodiscard]] double alpha(double epoch) const { return value_at_epoch(alphas_, epoch); }
  [[nodiscard]] double beta(double epoch) const { return value_at_epoch(betas_, epoch); }
  [[nodiscard]] const std::vector<double>& alphas() const { return alphas_; }
  [[nodiscard]] const std::vector<double>& betas() const { return betas_; }

 private:
  PerEpoch(std::vector<double> alphas, std::vector<double> betas)
      : alphas_(std::move(alphas)), betas_(std::move(betas)) {}
  std::vector<double> alphas_;
  std::vector<double> betas_;
};

static_assert(WeightSchedule<PerEpoch<2, 3>>);
static_assert(WeightSchedule<PerEpoch<>>);
// The lookup rule at compile time: floor of the fractional epoch, the last value repeats.
static_assert(PerEpoch{alphas(1e-5, 0.0), betas(0.1, 0.2, 0.3)}.beta(1.99) == 0.2);
static_assert(PerEpoch{alphas(1e-5, 0.0), betas(0.1, 0.2, 0.3)}.alpha(7.0) == 0.0);

}  // namespace xpo::schedules
