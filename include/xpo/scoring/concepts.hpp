// xpo/scoring/concepts.hpp — the Scorer slot of xpo::Trainer: a scalar reward (xpo::RewardScorer) or a pairwise
// judge (xpo::PairwiseJudge), both defined in core/concepts.hpp.
#pragma once

#include "xpo/core/concepts.hpp"

namespace xpo::scoring {
using xpo::PairwiseJudge;
using xpo::PreferenceScorer;
using xpo::RewardScorer;
}  // namespace xpo::scoring
