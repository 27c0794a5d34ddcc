// xpo/core/padding.hpp — which side of a batch row padding goes on. Torch-free, shared by the tokenizer's batch
// encoding and the tensor helpers.
#pragma once

namespace xpo {

// Left padding for prompts that are continued by generation (every row ends at the same column); right padding
// for completions and training sequences.
enum class PaddingSide { left, right };

}  // namespace xpo
