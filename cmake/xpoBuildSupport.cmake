# Build support for xpo's own programs (never applied to consumers of the package).

# ccache: PCH-aware settings so a cached precompiled header is reused instead of missed.
if(XPO_USE_CCACHE)
  find_program(XPO_CCACHE ccache)
  if(XPO_CCACHE)
    set(CMAKE_CXX_COMPILER_LAUNCHER "${CMAKE_COMMAND};-E;env;CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime;${XPO_CCACHE}")
  endif()
endif()

# The warnings xpo's own code must be clean under (LibTorch's headers are system headers and exempt).
add_library(xpo_warnings INTERFACE)
target_compile_options(xpo_warnings INTERFACE -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor)

# <torch/torch.h> takes ~10 s to parse; every in-tree target reuses this one precompiled copy.
add_library(xpo_pch OBJECT "${PROJECT_SOURCE_DIR}/cmake/pch.cpp")
target_link_libraries(xpo_pch PUBLIC xpo::xpo xpo_warnings)
target_precompile_headers(xpo_pch PUBLIC
  <torch/torch.h>
  <nlohmann/json.hpp>
  <algorithm> <cstdint> <filesystem> <map> <optional> <string> <vector>)

# xpo_add_program(target SOURCES...): an executable of xpo's with the shared PCH and warnings.
function(xpo_add_program target)
  add_executable(${target} ${ARGN})
  target_link_libraries(${target} PRIVATE xpo::xpo xpo_warnings)
  target_precompile_headers(${target} REUSE_FROM xpo_pch)
endfunction()
