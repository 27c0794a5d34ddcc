#!/usr/bin/env bash
# Installs what xpo needs to build, test and run on Debian bookworm (as root, or through sudo). Installs only
# the packages that are missing, so a prepared machine does not touch the network.
set -euo pipefail
packages=(
  build-essential cmake ninja-build ccache git   # toolchain
  libtorch-dev libopenblas0-openmp               # LibTorch 1.13 (CPU) + a fast BLAS for it (~40x the reference one),
                                                 # OpenMP build: one thread pool with LibTorch (core/threads.hpp)
  libgloo-dev                                    # Gloo headers: c10d's ProcessGroupGloo (multi-process training)
  libeigen3-dev nlohmann-json3-dev               # small dense math, JSON
  pkg-config libpcre2-dev libutf8proc-dev        # tokenizer: Unicode regexes (PCRE2 JIT), normalization
  libgtest-dev libgmock-dev libbenchmark-dev     # tests and benchmarks
  clang libclang-rt-14-dev python3               # fuzz targets (libFuzzer, sanitizers); seeding their corpora
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# LibTorch loads whichever OpenBLAS build the alternatives system points at; the pthreads build (priority 100)
# wins over the OpenMP one (95) when both are installed. Select the OpenMP build explicitly.
use_openblas_openmp() {
  local arch dir link
  arch="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)"
  dir="/usr/lib/$arch/openblas-openmp"
  for link in libblas.so.3 liblapack.so.3 libopenblas.so.0; do
    [ -e "$dir/$link" ] || continue
    if [ "$(readlink -f "/usr/lib/$arch/$link")" != "$(readlink -f "$dir/$link")" ]; then
      echo "install-deps: selecting OpenBLAS's OpenMP build for $link"
      $sudo update-alternatives --quiet --set "$link-$arch" "$dir/$link"
    fi
  done
}

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  use_openblas_openmp
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
use_openblas_openmp
