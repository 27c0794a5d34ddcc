# Dependencies of the xpo::xpo target. Kept in step with cmake/xpoConfig.cmake.in, which re-finds them for users
# of the installed package.
find_package(Torch REQUIRED)
find_package(Eigen3 3.3 REQUIRED NO_MODULE)
find_package(nlohmann_json 3.10 REQUIRED)
# Text: PCRE2 (Unicode regexes of pre-tokenizers, JIT) and utf8proc (normalization). Debian ships no CMake
# packages for them, so they are found through pkg-config.
find_package(PkgConfig REQUIRED)
pkg_check_modules(XPO_PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(XPO_UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
