#!/usr/bin/env bash
# Every public header compiles on its own against the LibTorch headers under INCLUDE_ROOT: one generated
# translation unit per header (`#include <xpo/...>` and nothing else), checked with -fsyntax-only -Werror.
# Extra .cpp files (tests, examples, benchmarks) are syntax-checked too, which instantiates the templates they
# use against the same LibTorch.
#   .ci/header-check.sh CXX INCLUDE_ROOT WORK_DIR [SOURCE.cpp ...]
# INCLUDE_ROOT holds torch/, ATen/, c10/ (/usr/include for Debian's libtorch-dev, or the include folder of an
# extracted LibTorch 2.x package). Exits non-zero if anything fails; each failure is printed.
set -euo pipefail
cxx=${1:?compiler}; root=${2:?include root}; work=${3:?work dir}; shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$root/torch/csrc/api/include/torch/torch.h" ] || { echo "header-check: no LibTorch headers under $root" >&2; exit 1; }
mkdir -p "$work"
version=$(awk '/#define TORCH_VERSION_(MAJOR|MINOR|PATCH) /{v = v (v ? "." : "") $3} END {print v}' \
          "$root/torch/csrc/api/include/torch/version.h" 2>/dev/null || true)

# /usr/include is already a system directory; naming it again with -isystem reorders it before libstdc++'s own
# directories and breaks their #include_next.
flags="-isystem $root/torch/csrc/api/include"
[ "$(realpath "$root")" = /usr/include ] || flags="-isystem $root $flags"
flags="$flags -isystem /usr/include/eigen3 -I$repo/include -I$repo/tests -I$repo/benchmarks"
flags="$flags -DUSE_C10D_GLOO -DXPO_DEFAULT_FIXTURES_DIR=\"\" -DXPO_TRAIN_EXE=\"\" -DXPO_CHAT_EXE=\"\" -std=c++20 -fsyntax-only -Wall -Wextra -Wpedantic -Wshadow -Werror"

list="$work/units.txt"
: > "$list"
for header in $(cd "$repo/include" && find xpo -name '*.hpp' | sort); do
  tu="$work/$(echo "$header" | tr '/.' '__').cpp"
  printf '#include <%s>\n' "$header" > "$tu"
  echo "$tu" >> "$list"
done
for source in "$@"; do realpath "$source" >> "$list"; done
echo "header-check: $(wc -l < "$list") translation units against LibTorch ${version:-?} in $root"

check_one() {
  local out
  if ! out=$($cxx $flags "$1" 2>&1); then
    printf 'FAIL %s\n%s\n' "$1" "$out" | head -n 40
    return 1
  fi
  echo "ok   ${1#"$work/"}"
}
export -f check_one
export cxx flags work
xargs -P "$(nproc)" -I{} bash -c 'check_one "$1"' _ {} < "$list"
