// xpo/xpo.hpp — everything a user of xpo needs. See docs/ARCHITECTURE.md for how the pieces fit:
// xpo::Trainer<Model, Scorer, Loss, Schedule> composes four policies whose concepts are in core/concepts.hpp.
#pragma once

#include "xpo/core/compat.hpp"
#include "xpo/core/concepts.hpp"
#include "xpo/core/config.hpp"
#include "xpo/core/errors.hpp"
#include "xpo/core/tensor_ops.hpp"
#include "xpo/core/types.hpp"
#include "xpo/core/validation.hpp"
#include "xpo/losses/concepts.hpp"
#include "xpo/losses/dpo.hpp"
#include "xpo/losses/metrics.hpp"
#include "xpo/losses/xpo.hpp"
#include "xpo/models/concepts.hpp"
#include "xpo/schedules/checked.hpp"
#include "xpo/schedules/concepts.hpp"
#include "xpo/schedules/constant.hpp"
#include "xpo/schedules/per_epoch.hpp"
#include "xpo/scoring/concepts.hpp"
#include "xpo/scoring/preference.hpp"
#include "xpo/version.hpp"
