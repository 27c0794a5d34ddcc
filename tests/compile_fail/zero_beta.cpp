// A zero beta in a per-epoch list does not compile; the error names the rule.
#include <xpo/xpo.hpp>

#include <limits>

using namespace xpo::schedules;

#ifdef XPO_EXPECT_FAIL
[[maybe_unused]] constexpr PerEpoch s{alphas(1e-5), betas(0.1, 0.0)};
#else
[[maybe_unused]] constexpr PerEpoch s{alphas(1e-5), betas(0.1, 0.05)};
#endif
