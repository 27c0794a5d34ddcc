#!/usr/bin/env bash
# Installs what xpo needs to build, test and run on Debian bookworm (as root, or through sudo). Installs only
# the packages that are missing, so a prepared machine does not touch the network.
set -euo pipefail
packages=(
  build-essential cmake ninja-build ccache git   # toolchain
  libtorch-dev libopenblas0-pthread              # LibTorch 1.13 (CPU) + a fast BLAS for it (~40x the reference one)
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
[ ${#missing[@]} -eq 0 ] && { echo "install-deps: all packages present"; exit 0; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
