#!/usr/bin/env bash
# The whole suite (or a subset) on LibTorch 2.x: builds xpo inside a Debian trixie root (trixie's libtorch-dev, 2.6)
# and runs CTest there. Needs root (debootstrap, mount, chroot) and apt access to this machine's Debian mirror.
#
#   scripts/torch2-test.sh [options] [-- ctest arguments...]
#     --root DIR        the trixie root (default: $XPO_TRIXIE_ROOT, else /var/cache/xpo-trixie; outside the tree,
#                       so a fresh checkout reuses it and `rm -rf build` never meets the bind mounts)
#     --rebuild-root    debootstrap the root again even when its stamp matches
#     --rev REV         build a commit (git archive REV, copied into the root) instead of the working tree, e.g.
#                       HEAD: what a clean clone would build, untouched by uncommitted edits
#     --targets "A B"   build only these targets (default: everything CTest needs)
#     --no-test         build only
#     --parity          only the model, generation, trainer and CLI tests: their two programs (plus xpo-train and
#                       xpo-chat) and CTest's labels models and training
#     -L/-R/-E/-LE ARG  passed to ctest (e.g. -L 'models|training'); anything after `--` is passed to ctest too
#
# The root is reused between runs: $ROOT/.xpo-stamp records the package list it was made with (scripts/install-
# deps.sh's); when that list changes, the missing packages are apt-installed into it (or, with --rebuild-root, it is
# made again), and those no longer listed are purged.
# The source tree and the fixtures are bind-mounted read-only at their own paths, so XPO_FIXTURES_DIR (default
# ../shared/fixtures) means the same inside and out (with --rev, the commit's files are copied to /xpo-src). The
# build folders (/xpo-build/tree, /xpo-build/rev) and ccache's cache (/var/cache/xpo-ccache) live inside the root
# and persist, so a warm run recompiles nothing that did not change.
# The mirror is the one this machine's apt is configured with (scripts/lib/debian-mirror.sh).
# Run it under `nice` on a shared machine: everything it starts inherits the niceness.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${XPO_TRIXIE_ROOT:-/var/cache/xpo-trixie}
rebuild=0
rev=""
targets=()
run_tests=1
ctest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$2; shift 2 ;;
    --rebuild-root) rebuild=1; shift ;;
    --rev) rev=$2; shift 2 ;;
    --targets) read -r -a targets <<< "$2"; shift 2 ;;
    --no-test) run_tests=0; shift ;;
    --parity) targets=(xpo_model_tests xpo_training_tests); ctest_args+=(-L 'models|training'); shift ;;
    -L|-R|-E|-LE) ctest_args+=("$1" "$2"); shift 2 ;;
    --) shift; ctest_args+=("$@"); break ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "torch2-test: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "torch2-test: needs root (debootstrap, mount, chroot); run it with sudo" >&2; exit 1; }
root=$(realpath -m "$root")
case "$root/" in
  /) echo "torch2-test: --root must not be /" >&2; exit 2 ;;
  "$here/build/"?*) ;;
  "$here/"*) echo "torch2-test: --root must be outside the source tree (or under its build/)" >&2; exit 2 ;;
esac
fixtures=$(realpath -m "${XPO_FIXTURES_DIR:-$here/../shared/fixtures}")
[ -d "$fixtures" ] || { echo "torch2-test: fixtures folder $fixtures not found (set XPO_FIXTURES_DIR)" >&2; exit 1; }

# scripts/install-deps.sh's package list (one list for both), less the fuzzing toolchain (clang and its bookworm-
# versioned runtime: scripts/fuzz.sh runs on the host). Its names are also trixie's.
mapfile -t packages < <(sed -n '/^packages=(/,/^)/p' "$here/scripts/install-deps.sh" \
  | sed 's/#.*//; s/packages=(//; s/)//' | tr ' ' '\n' | grep -vE '^$|^clang$|^libclang-rt-')
printf '%s\n' "${packages[@]}" | grep -qx libtorch-dev \
  || { echo "torch2-test: no package list (with libtorch-dev) found in scripts/install-deps.sh" >&2; exit 1; }
stamp="$root/.xpo-stamp"
wanted=$(printf '%s\n' "${packages[@]}" | sort -u)

mounted() { awk -v r="$root" '$2 == r || index($2, r "/") == 1 { found = 1 } END { exit !found }' /proc/mounts; }
mounts=()
cleanup() {
  local i
  for (( i = ${#mounts[@]} - 1; i >= 0; i-- )); do umount "${mounts[$i]}" 2>/dev/null || umount -l "${mounts[$i]}" || true; done
}
trap cleanup EXIT
bind() {  # bind SOURCE TARGET [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"; mounts+=("$2")
  [ "${3:-}" != ro ] || mount -o remount,bind,ro "$2"
}
in_root_cmd=(chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin)
in_root() { "${in_root_cmd[@]}" "$@"; }
apt_in_root() { in_root DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0 "$@"; }

mounted && { echo "torch2-test: something is still mounted under $root (another run?); unmount it first" >&2; exit 1; }
t0=$(date +%s)
if [ "$rebuild" -eq 1 ] || [ ! -f "$stamp" ]; then
  command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }
  mirror=$(bash "$here/scripts/lib/debian-mirror.sh")
  echo "torch2-test: debootstrap trixie into $root from $mirror"
  rm -rf --one-file-system "$root"
  mkdir -p "$(dirname "$root")"
  debootstrap --variant=minbase trixie "$root" "$mirror"
  # The root fetches the way this machine's apt does (e.g. a snapshot mirror's Valid-Until), with no services.
  grep -hE '^[[:space:]]*Acquire::' /etc/apt/apt.conf /etc/apt/apt.conf.d/* 2>/dev/null > "$root/etc/apt/apt.conf.d/90xpo-host-acquire" || true
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
  : > "$stamp"  # the base system is there; the packages follow (a failed install resumes from here)
fi
have=""
[ ! -f "$stamp" ] || have=$(cat "$stamp")
missing=$(comm -23 <(echo "$wanted") <(echo "$have" | sort -u) | grep -v '^$' || true)
dropped=$(comm -13 <(echo "$wanted") <(echo "$have" | sort -u) | grep -v '^$' || true)
if [ -n "$missing" ] || [ -n "$dropped" ]; then
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  bind /proc "$root/proc"; bind /dev "$root/dev"
  echo "torch2-test: installing into the root: $(echo "$missing" | tr '\n' ' ')"
  apt_in_root update
  # shellcheck disable=SC2086
  apt_in_root install --no-install-recommends $wanted
  if [ -n "$dropped" ]; then  # e.g. one BLAS build replaced by another: the old one must not stay selected
    echo "torch2-test: removing from the root: $(echo "$dropped" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    apt_in_root purge $dropped
    # shellcheck disable=SC2086
    apt_in_root install --no-install-recommends $wanted  # back, if the purge took any of them along
  fi
  apt_in_root clean
  cleanup; mounts=()
  echo "$wanted" > "$stamp"
  echo "torch2-test: root ready in $(( $(date +%s) - t0 )) s"
fi

# Build and test inside the root: the tree and the fixtures read-only at their own paths.
bind /proc "$root/proc"; bind /dev "$root/dev"
if [ -n "$rev" ]; then
  commit=$(git -C "$here" rev-parse --verify "$rev^{commit}")
  echo "torch2-test: building $rev ($commit)"
  rm -rf --one-file-system "$root/xpo-src"; mkdir -p "$root/xpo-src"
  git -C "$here" archive --format=tar "$commit" | tar -x -C "$root/xpo-src"
  src=/xpo-src build=/xpo-build/rev
else
  bind "$here" "$root$here" ro
  src=$here build=/xpo-build/tree
fi
bind "$fixtures" "$root$fixtures" ro
t1=$(date +%s)
jobs=$(nproc)
build_cmd=(cmake --build "$build" -j "$jobs")
[ ${#targets[@]} -eq 0 ] || build_cmd+=(--target "${targets[@]}")
# Wall time and the CPU seconds of everything a phase ran (on a shared machine the wall time says little).
timed() { local label=$1; shift; /usr/bin/time -f "torch2-test: $label: %e s wall, %U s user + %S s system CPU" "$@"; }
timed build "${in_root_cmd[@]}" CCACHE_DIR=/var/cache/xpo-ccache CCACHE_MAXSIZE=5G XPO_FIXTURES_DIR="$fixtures" bash -c '
  set -euo pipefail
  echo "torch2-test: $(grep -h "define TORCH_VERSION_M" /usr/include/torch/csrc/api/include/torch/version.h | tr "\n" " ")"
  ccache -z > /dev/null 2>&1 || true
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
  shift 2; n=$1; shift
  "${@:1:$n}"
  ccache --show-stats 2>/dev/null | grep -iE "hits|misses" | head -n 3 || true
' _ "$src" "$build" "${#build_cmd[@]}" "${build_cmd[@]}"
t2=$(date +%s)
echo "torch2-test: build in $(( t2 - t1 )) s"
if [ "$run_tests" -eq 1 ]; then
  status=0
  timed ctest "${in_root_cmd[@]}" XPO_FIXTURES_DIR="$fixtures" ctest --test-dir "$build" --output-on-failure -j "$jobs" "${ctest_args[@]}" || status=$?
  echo "torch2-test: ctest in $(( $(date +%s) - t2 )) s (exit $status); total $(( $(date +%s) - t0 )) s"
  exit "$status"
fi
echo "torch2-test: total $(( $(date +%s) - t0 )) s"
