// xpo/models/concepts.hpp — the Model slot of xpo::Trainer: see xpo::CausalLanguageModel in core/concepts.hpp.
#pragma once

#include "xpo/core/concepts.hpp"

namespace xpo::models {
using xpo::CausalLanguageModel;
}  // namespace xpo::models
