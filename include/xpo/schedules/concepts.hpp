// xpo/schedules/concepts.hpp — the Schedule slot of xpo::Trainer: see xpo::WeightSchedule in core/concepts.hpp.
#pragma once

#include "xpo/core/concepts.hpp"

namespace xpo::schedules {
using xpo::WeightSchedule;
}  // namespace xpo::schedules
