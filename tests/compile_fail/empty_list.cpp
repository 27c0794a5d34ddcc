// An empty per-epoch alpha list does not compile; the error names the rule.
#include <xpo/xpo.hpp>

#include <limits>

using namespace xpo::schedules;

#ifdef XPO_EXPECT_FAIL
[[maybe_unused]] constexpr PerEpoch s{alphas(), betas(0.1)};
#else
[[maybe_unused]] constexpr PerEpoch s{alphas(0.0), betas(0.1)};
#endif
