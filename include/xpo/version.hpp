// xpo/version.hpp — the library version; CMakeLists.txt reads project(VERSION) from here (one source).
#pragma once

#define XPO_VERSION_MAJOR 0
#define XPO_VERSION_MINOR 1
#define XPO_VERSION_PATCH 0

namespace xpo {
inline constexpr const char* version = "0.1.0";
}  // namespace xpo
