// A negative alpha literal does not compile; the error names the rule.
#include <xpo/xpo.hpp>

#include <limits>

using namespace xpo::schedules;

#ifdef XPO_EXPECT_FAIL
[[maybe_unused]] constexpr Constant s{-0.5, 0.1};
#else
[[maybe_unused]] constexpr Constant s{0.5, 0.1};
#endif
