#!/usr/bin/env bash
# Prepares, on this (Debian bookworm) machine, what scripts/cuda-check.sh needs on a GPU machine that has no
# package registry and receives only the working tree plus the folders named in its call (64 MiB in all):
#   third_party/debs/      xpo's build dependencies as bookworm .deb files (the GPU machine unpacks them into a
#                          folder of the tree, never into /): nlohmann-json, Eigen, PCRE2, utf8proc, GoogleTest,
#                          Google Benchmark, and pkgconf (CMake finds PCRE2 and utf8proc through pkg-config).
#                          LibTorch comes from the GPU machine's own PyTorch wheel; Gloo and NCCL headers from
#                          that wheel's environment (distributed/world.hpp uses a backend only when they are there).
#   third_party/fixtures/  the fixtures the CUDA tests and benchmarks read (models/, new-models/, tokenizers/qwen)
#                          copied from $XPO_FIXTURES_DIR (default ../shared/fixtures), which does not travel.
# Both folders are ignored by git. Checks that they stay far below the 64 MiB limit (under 40 MiB together).
# Usage: scripts/cuda-debs.sh        (re-running refreshes both folders)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
fixtures=${XPO_FIXTURES_DIR:-$repo/../shared/fixtures}
packages=(nlohmann-json3-dev libeigen3-dev libpcre2-dev libpcre2-8-0 libutf8proc-dev libutf8proc2
          libgtest-dev libbenchmark-dev libbenchmark1debian pkgconf pkgconf-bin libpkgconf3)
limit_mib=40

mkdir -p third_party
rm -rf third_party/debs.new
mkdir third_party/debs.new
# apt-get download needs the package lists; one update when they are missing.
if ! apt-cache show "${packages[0]}" >/dev/null 2>&1; then apt-get update -qq; fi
# The _apt sandbox user cannot write into the tree: download into a world-writable scratch folder, then move.
scratch=$(mktemp -d)
chmod 777 "$scratch"
(cd "$scratch" && apt-get download -qq "${packages[@]}")
mv "$scratch"/*.deb third_party/debs.new/
rmdir "$scratch"
rm -rf third_party/debs
mv third_party/debs.new third_party/debs

[ -d "$fixtures/models" ] || { echo "cuda-debs: no fixtures at $fixtures (set XPO_FIXTURES_DIR)" >&2; exit 1; }
rm -rf third_party/fixtures
mkdir -p third_party/fixtures/tokenizers
cp -r "$fixtures/models" "$fixtures/new-models" third_party/fixtures/
cp -r "$fixtures/tokenizers/qwen" third_party/fixtures/tokenizers/

debs_kib=$(du -sk third_party/debs | cut -f1)
fixtures_kib=$(du -sk third_party/fixtures | cut -f1)
total_kib=$((debs_kib + fixtures_kib))
echo "cuda-debs: third_party/debs $((debs_kib / 1024)) MiB ($(ls third_party/debs | wc -l) packages)," \
     "third_party/fixtures $((fixtures_kib / 1024)) MiB, together $((total_kib / 1024)) MiB"
if [ "$total_kib" -gt $((limit_mib * 1024)) ]; then
  echo "cuda-debs: more than $limit_mib MiB: too close to the GPU machine's 64 MiB limit (tree included)" >&2
  exit 1
fi
