// xpo/schedules: lookups at compile time, the same rules at run time with clear errors.
#include <gtest/gtest.h>

#include <xpo/schedules/constant.hpp>
#include <xpo/schedules/per_epoch.hpp>

#include <limits>

namespace {

using xpo::schedules::alphas;
using xpo::schedules::betas;
using xpo::schedules::Constant;
using xpo::schedules::PerEpoch;

// The lookups are constant expressions: a schedule literal is checked and evaluated by the compiler.
constexpr Constant kConstant{1e-5, 0.1};
constexpr PerEpoch kPerEpoch{alphas(1e-5, 1e-6, 0.0), betas(0.1, 0.05)};
static_assert(kConstant.alpha(0.0) == 1e-5 && kConstant.beta(12.5) == 0.1);
static_assert(kPerEpoch.alpha(0.0) == 1e-5);   // first step: epoch 0
static_assert(kPerEpoch.alpha(0.999) == 1e-5); // floor(epoch), not rounding
static_assert(kPerEpoch.alpha(1.0) == 1e-6);
static_assert(kPerEpoch.alpha(2.5) == 0.0);
static_assert(kPerEpoch.beta(2.5) == 0.05);    // the last value repeats
static_assert(kPerEpoch.beta(1e300) == 0.05);
static_assert(xpo::WeightSchedule<decltype(kPerEpoch)>);
static_assert(std::is_same_v<decltype(kPerEpoch), const PerEpoch<3, 2>>);

TEST(Schedules, RuntimeListsFollowTheSameRule) {
  const auto s = PerEpoch<>::checked({1e-5, 1e-6, 0.0}, {0.1, 0.05});
  for (double epoch : {0.0, 0.3, 0.999, 1.0, 1.7, 2.0, 2.5, 40.0}) {
    EXPECT_EQ(s.alpha(epoch), kPerEpoch.alpha(epoch)) << "epoch " << epoch;
    EXPECT_EQ(s.beta(epoch), kPerEpoch.beta(epoch)) << "epoch " << epoch;
  }
  // A negative or NaN epoch (never produced by the trainer) reads the first entry rather than out of bounds.
  EXPECT_EQ(s.alpha(-1.0), 1e-5);
  EXPECT_EQ(s.alpha(std::numeric_limits<double>::quiet_NaN()), 1e-5);
}

TEST(Schedules, RuntimeValuesAreCheckedWithClearMessages) {
  try {
    (void)PerEpoch<>::checked({1e-5, -2.0}, {});
    FAIL() << "must throw";
  } catch (const xpo::ConfigError& e) {
    ASSERT_EQ(e.problems().size(), 2u);
    EXPECT_EQ(e.problems()[0], "alpha[1] = -2: must be finite and >= 0");
    EXPECT_EQ(e.problems()[1], "beta: the list is empty; give one value or one per epoch");
  }
  EXPECT_THROW((void)Constant::checked(0.0, 0.0), xpo::ConfigError);
  EXPECT_THROW((void)Constant::checked(std::numeric_limits<double>::quiet_NaN(), 0.1), xpo::ConfigError);
  EXPECT_THROW((void)Constant::checked(1e-5, std::numeric_limits<double>::infinity()), xpo::ConfigError);
  const auto ok = Constant::checked(0.0, 0.5);  // alpha = 0 is online DPO
  EXPECT_EQ(ok.alpha(3.0), 0.0);
  EXPECT_EQ(ok.beta(3.0), 0.5);
}

}  // namespace
