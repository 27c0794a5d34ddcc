// Constrained templates shaped like the Trainer's four slots: using a type here fails exactly as
// xpo::Trainer<Model, Scorer, Loss, Schedule> will, with the concept's name in the first error line.
#pragma once

#include <xpo/xpo.hpp>

namespace xpo_compile_fail {
template <xpo::CausalLanguageModel M> struct ModelSlot {};
template <xpo::PreferenceScorer S> struct ScorerSlot {};
template <xpo::PreferenceLoss L> struct LossSlot {};
template <xpo::WeightSchedule S> struct ScheduleSlot {};
}  // namespace xpo_compile_fail
