#!/usr/bin/env bash
# BM_XPOStep of this tree against an earlier commit, measured in one run (issue 23):
#   benchmarks/compare-step.sh [BASE_COMMIT] [ROUNDS]      (defaults: c091777, issue 23's starting commit; 3)
# Builds benchmarks/compare/step_compare.cpp twice, against the headers of BASE_COMMIT and of this working tree
# (each installed into build/compare/<name>/prefix), then runs the two alternately, one process per variant and
# round (float32 full, float32 LoRA, --bf16), and prints the medians and their ratios to the base's float32 step.
# The base runs on the BLAS its own install script chose (OpenBLAS with pthreads: BASE_BLAS_DIR, empty = the
# system's); this tree runs on the system's (scripts/install-deps.sh). Builds take the shared build lock.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
base_commit="${1:-c091777}"
rounds="${2:-3}"
base_blas="${BASE_BLAS_DIR-/usr/lib/x86_64-linux-gnu/openblas-pthread}"
work="$root/build/compare"
lock=/tmp/xpo-build.lock
mkdir -p "$work/results"

# install NAME SOURCE_DIR: the headers (and xpoConfig.cmake) of SOURCE_DIR into $work/NAME/prefix
install_xpo() {
  local name=$1 src=$2
  cmake -S "$src" -B "$work/$name/config" -G Ninja -DXPO_BUILD_TESTS=OFF -DXPO_BUILD_EXAMPLES=OFF \
    -DXPO_BUILD_BENCHMARKS=OFF -DCMAKE_INSTALL_PREFIX="$work/$name/prefix" >/dev/null
  rm -rf "$work/$name/prefix"
  cmake --install "$work/$name/config" >/dev/null
  cmake -S "$root/benchmarks/compare" -B "$work/$name/bench" -G Ninja -DCMAKE_PREFIX_PATH="$work/$name/prefix" >/dev/null
  flock "$lock" cmake --build "$work/$name/bench"
}

rm -rf "$work/base/src"
mkdir -p "$work/base/src"
git -C "$root" archive "$base_commit" | tar -x -C "$work/base/src"
install_xpo base "$work/base/src"
install_xpo head "$root"

run() {  # run NAME VARIANT ROUND
  local name=$1 variant=$2 round=$3 env=()
  [ "$name" = base ] && [ -n "$base_blas" ] && [ -d "$base_blas" ] && env=(env "LD_LIBRARY_PATH=$base_blas")
  # this tree's programs run with sleeping idle OpenMP threads (xpo::use_passive_openmp_wait, as xpo-train does)
  [ "$name" = head ] && env=(env "OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}")
  flock "$lock" "${env[@]}" "$work/$name/bench/xpo_step_compare" --benchmark_filter="BM_XPOStep/variant:$variant/" \
    --benchmark_format=json --benchmark_out="$work/results/$name-$variant-$round.json" >/dev/null
}
rm -f "$work"/results/*.json
for round in $(seq 1 "$rounds"); do
  for variant in 0 1 2; do
    if [ $((round % 2)) -eq 1 ]; then order="base head"; else order="head base"; fi
    for name in $order; do
      echo "compare-step: round $round, variant $variant, $name" >&2
      run "$name" "$variant" "$round"
    done
  done
done

python3 - "$work/results" "$base_commit" <<'PY'
import json, pathlib, statistics, sys
results, base_commit = pathlib.Path(sys.argv[1]), sys.argv[2]
names = {0: "float32 full", 1: "float32 LoRA", 2: "--bf16 full"}
rows = {}
for f in sorted(results.glob("*.json")):
    name, variant, _ = f.stem.split("-")
    b = json.loads(f.read_text())["benchmarks"][0]
    rows.setdefault((name, int(variant)), []).append(b)
def median(name, variant, key):
    return statistics.median(x[key] for x in rows[(name, variant)])
ref = median("base", 0, "real_time")
print(f"XPO step (median of {len(rows[('base', 0)])} rounds), this tree vs {base_commit}; ratios to the base's float32 full step")
print(f"{'variant':14} {'base s':>8} {'head s':>8} {'head/base':>10} {'head/base f32':>14}   head split: generation / fwd-bwd / optimizer s")
summary = []
for v, label in names.items():
    b, h = median("base", v, "real_time"), median("head", v, "real_time")
    split = " / ".join(f"{median('head', v, k):.2f}" for k in ("generation_s", "forward_backward_s", "optimizer_s"))
    print(f"{label:14} {b:8.2f} {h:8.2f} {h / b:10.2f} {h / ref:14.2f}   {split}")
    summary.append({"variant": label, "base_s": b, "head_s": h, "head_over_base": h / b, "head_over_base_float32": h / ref})
(results / "summary.json").write_text(json.dumps(summary, indent=1))
PY
