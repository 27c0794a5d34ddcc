// xpo/core/compat.hpp — the ONE place where LibTorch 1.13 and 2.x differ for xpo. Everything else in xpo is
// written against the API both versions share; when a difference is needed, it gets a name here.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

#define XPO_TORCH_VERSION_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace xpo::compat {

inline constexpr int torch_major = TORCH_VERSION_MAJOR;
inline constexpr int torch_minor = TORCH_VERSION_MINOR;

// Returns "major.minor.patch" of the LibTorch xpo was compiled against (logged in trainer state / benchmarks).
inline std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

}  // namespace xpo::compat
