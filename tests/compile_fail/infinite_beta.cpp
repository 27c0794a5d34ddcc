// An infinite beta literal does not compile; the error names the rule.
#include <xpo/xpo.hpp>

#include <limits>

using namespace xpo::schedules;

#ifdef XPO_EXPECT_FAIL
[[maybe_unused]] constexpr Constant s{1e-5, std::numeric_limits<double>::infinity()};
#else
[[maybe_unused]] constexpr Constant s{1e-5, 1e3};
#endif
