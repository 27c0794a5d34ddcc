// xpo/schedules/checked.hpp — alpha and beta values checked when they are written as literals. The consteval
// constructors make `Constant{-1.0, 0.1}` a compile error whose message names the broken rule; values that
// arrive at run time go through the `checked(...)` factories of the schedules and throw xpo::ConfigError.
#pragma once

#include <array>
#include <concepts>
#include <cstddef>

#include "xpo/core/validation.hpp"

namespace xpo::schedules {

namespace detail {
// Never constexpr: reaching one of these while evaluating a literal stops compilation, and the compiler's
// message quotes the function's name, which states the rule.
inline void alpha_must_be_finite_and_non_negative() {}
inline void beta_must_be_finite_and_positive() {}
}  // namespace detail

// One alpha value, checked at compile time.
struct Alpha {
  double value;
  consteval Alpha(double v) : value(v) {  // NOLINT(google-explicit-constructor): literals convert implicitly
    if (!valid_alpha(v)) detail::alpha_must_be_finite_and_non_negative();
  }
};

// One beta value, checked at compile time.
struct Beta {
  double value;
  consteval Beta(double v) : value(v) {  // NOLINT(google-explicit-constructor)
    if (!valid_beta(v)) detail::beta_must_be_finite_and_positive();
  }
};

// A non-empty per-epoch list of alphas or betas, built by alphas(...) / betas(...).
template <class Value, std::size_t N>
struct WeightList {
  static_assert(N > 0, "xpo::schedules: a per-epoch weight list must not be empty");
  std::array<double, N> values;
};

// alphas(1e-5, 1e-6): the per-epoch alpha list of a PerEpoch schedule, each value checked at compile time.
template <std::convertible_to<double>... V>
consteval WeightList<Alpha, sizeof...(V)> alphas(V... v) {
  static_assert(sizeof...(V) > 0, "xpo::schedules::alphas(): the per-epoch alpha list must not be empty");
  return {{Alpha(static_cast<double>(v)).value...}};
}

// betas(0.1, 0.05): the per-epoch beta list of a PerEpoch schedule, each value checked at compile time.
template <std::convertible_to<double>... V>
consteval WeightList<Beta, sizeof...(V)> betas(V... v) {
  static_assert(sizeof...(V) > 0, "xpo::schedules::betas(): the per-epoch beta list must not be empty");
  return {{Beta(static_cast<double>(v)).value...}};
}

}  // namespace xpo::schedules
