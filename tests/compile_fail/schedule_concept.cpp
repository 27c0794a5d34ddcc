// A schedule with alpha but no beta is not a WeightSchedule.
#include "slots.hpp"

struct AlphaOnlySchedule {
  double alpha(double) const { return 0.0; }
};

#ifdef XPO_EXPECT_FAIL
template struct xpo_compile_fail::ScheduleSlot<AlphaOnlySchedule>;
#else
template struct xpo_compile_fail::ScheduleSlot<xpo::schedules::Constant>;
#endif
