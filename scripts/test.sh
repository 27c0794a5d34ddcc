#!/usr/bin/env bash
# The README's second command: install what is needed, build everything, run every test (CTest).
# Fixtures are read from $XPO_FIXTURES_DIR (default: ../shared/fixtures next to this repository).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build
ctest --test-dir build --output-on-failure -j "$(nproc)"
