#!/usr/bin/env bash
# The README's first command: install what is needed, build, and run xpo's main job on its embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build --target xpo-train xpo-chat
./build/examples/xpo-train "$@"
