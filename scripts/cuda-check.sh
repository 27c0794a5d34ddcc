#!/usr/bin/env bash
# Issue 22, part 2: everything CUDA in one command, on a GPU machine with no package registry (one NVIDIA GPU,
# CUDA with nvcc, CMake, ninja, Python with a PyTorch 2.x wheel whose LibTorch xpo builds against, and
# transformers). Before the call, on a Debian bookworm machine: scripts/cuda-debs.sh (the .deb build dependencies
# and the fixtures, into the ignored third_party/debs and third_party/fixtures, which the call must carry).
#
#   scripts/cuda-check.sh OUTDIR            on the GPU machine (about 10 minutes at most: see --budget)
#   scripts/cuda-check.sh OUTDIR --dry-run  here, on the CPU: Debian's LibTorch 1.13, build-cuda-dry/
#
# Stages, each under `timeout` so that what finished lands in OUTDIR even when a later one runs out of time:
#  1. unpack third_party/debs with dpkg-deb -x into BUILD/sysroot (never into /) and point CMake at it
#     (Eigen3_DIR, nlohmann_json_DIR, GTest_DIR, benchmark_DIR, pkg-config with PKG_CONFIG_SYSROOT_DIR for PCRE2
#     and utf8proc); its shared libraries (libpcre2-8, libutf8proc, libbenchmark) are found at run time through
#     the build tree's RPATH;
#  2. configure against LibTorch: the GPU machine's PyTorch (torch.utils.cmake_prefix_path) with the NCCL headers
#     of its nvidia-nccl wheel, or here Debian's 1.13; build xpo_cuda_tests, xpo_cuda_benchmarks and xpo-train
#     with all cores (here: under the shared build lock, niced);
#  3. the tests labelled cuda (ctest -L cuda; here they skip, saying why; --cpu-stand-in also runs them once with
#     XPO_CUDA_TESTS_ON_CPU=1, the CPU in the GPU's place, to check the tests' own code);
#  4. the CUDA benchmarks (benchmarks/cuda_bench.cpp: the GPU's bf16 matmul rate and copy bandwidth, decoding at
#     B = 1/8/64 and one XPO step at Qwen2.5-0.5B's shape; here only the smoke/ ones run, on the CPU);
#  5. the same work with transformers (benchmarks/cuda/hf_reference.py; here at a tiny size on the CPU when a
#     python3 with torch is found, and only compiled when transformers is missing);
#  6. xpo-train end to end on the device (the embedded default, a few steps, --bf16 on CUDA);
#  7. OUTDIR/summary.md: what ran, the tests, and the xpo / transformers table with the fractions of the GPU's
#     measured limits (benchmarks/cuda/summary.py), also printed at the end.
# OUTDIR gets at most 8 files (the GPU tool returns no more): summary.md, env.txt, build.log, tests.log,
# bench-xpo.json, bench-hf.json, bench.log.
set -uo pipefail

usage() { echo "usage: scripts/cuda-check.sh OUTDIR [--dry-run] [--cpu-stand-in] [--budget SECONDS]" >&2; exit 2; }
[ $# -ge 1 ] || usage
out=$1
shift
dry=0
stand_in=0
budget=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --cpu-stand-in) stand_in=1 ;;
    --budget) budget=${2:?}; shift ;;
    *) usage ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
repo=$(pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ "$dry" = 1 ]; then
  build=$repo/build-cuda-dry
  budget=${budget:-14400}   # 2 shared cores: no time limit worth the name
  lock=(flock /tmp/xpo-build.lock nice -n 10)
else
  build=$repo/build-cuda
  budget=${budget:-560}     # the GPU tool's 10 minutes per command, less a margin for the transfers back
  lock=()
fi
sysroot=$build/sysroot
mkdir -p "$build"
stages=$build/stages.tsv
: > "$stages"
start=$(date +%s)
deadline=$((start + budget))
jobs=$(nproc)

log() { echo "cuda-check [$(( $(date +%s) - start )) s]: $*"; }

# stage NAME CAP RESERVE LOGFILE CMD...: runs CMD with at most CAP seconds, and never into the last RESERVE seconds
# of the budget (kept for the stages after it); appends its output to LOGFILE and a line to stages.tsv.
stage() {
  local name=$1 cap=$2 reserve=$3 logfile=$4
  shift 4
  [ "$dry" = 1 ] && cap=$((cap * 20))  # the caps are the GPU machine's; 2 shared cores are far slower
  local left=$((deadline - $(date +%s) - reserve))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 5 ]; then
    log "$name: not run (no time left in the ${budget} s budget)"
    printf '%s\tnot run\t0\tno time left in the %s s budget\n' "$name" "$budget" >> "$stages"
    return 99
  fi
  log "$name (at most ${limit} s)"
  local t0 rc
  t0=$(date +%s)
  { echo "==== $name: $*"; } >> "$logfile"
  timeout --kill-after=10 "$limit" "$@" >> "$logfile" 2>&1
  rc=$?
  local took=$(( $(date +%s) - t0 ))
  local state=ok
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then state="timed out"; elif [ "$rc" != 0 ]; then state="failed (exit $rc)"; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$state" "$took" "$limit" >> "$stages"
  log "$name: $state after ${took} s"
  return "$rc"
}

# ---- what this machine is ------------------------------------------------------------------------------------
envfile=$out/env.txt
: > "$envfile"
for f in build.log tests.log bench.log; do : > "$out/$f"; done
{
  echo "mode: $([ "$dry" = 1 ] && echo 'dry run (CPU)' || echo 'GPU')"
  echo "date: $(date -u +%FT%TZ)"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l) changed paths"
  echo "cores: $jobs"
  echo "uname: $(uname -srm)"
  echo "compiler: $(c++ --version 2>/dev/null | head -1)"
  echo "cmake: $(cmake --version 2>/dev/null | head -1)"
  echo "ninja: $(ninja --version 2>/dev/null)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
  command -v nvcc >/dev/null && nvcc --version 2>&1 | tail -2
} >> "$envfile" 2>&1

# A python3 with torch (the GPU machine's plain python3; here Debian's python3-torch, if installed).
python=""
for candidate in python3 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import torch' >/dev/null 2>&1; then python=$candidate; break; fi
done
if [ -n "$python" ]; then
  "$python" - >> "$envfile" 2>&1 <<'PY'
import sys, torch
print("python:", sys.executable, sys.version.split()[0])
print("torch:", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu:", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).multi_processor_count, "SMs")
try:
    import transformers
    print("transformers:", transformers.__version__)
except Exception as e:
    print("transformers: not importable:", type(e).__name__, e)
PY
else
  echo "python: no python3 with torch" >> "$envfile"
fi

# ---- 1. the .deb dependencies, unpacked into the tree ------------------------------------------------------
unpack() {
  rm -rf "$sysroot"
  mkdir -p "$sysroot"
  local n=0
  for deb in "$repo"/third_party/debs/*.deb; do
    [ -e "$deb" ] || { echo "no .deb files in third_party/debs: run scripts/cuda-debs.sh first (and carry the folder)"; return 1; }
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$sysroot" || return 1
    else  # a .deb is an ar archive whose data.tar.* holds the files
      local tmp
      tmp=$(mktemp -d)
      (cd "$tmp" && ar x "$deb" && tar -xf data.tar.* -C "$sysroot") || return 1
      rm -rf "$tmp"
    fi
    n=$((n + 1))
  done
  # pkg-config: the carried pkgconf, its library beside it, reading only the sysroot's .pc files; the sysroot is
  # prefixed to their -I/-L paths, and no path is dropped as a "system" one.
  cat > "$sysroot/pkg-config" <<EOF
#!/bin/sh
export PKG_CONFIG_LIBDIR="$sysroot/usr/lib/x86_64-linux-gnu/pkgconfig:$sysroot/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$sysroot"
export PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1
LD_LIBRARY_PATH="$sysroot/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$sysroot/usr/bin/pkgconf" "\$@"
EOF
  chmod +x "$sysroot/pkg-config"
  echo "unpacked $n packages into $sysroot"
  "$sysroot/pkg-config" --modversion libpcre2-8 libutf8proc && "$sysroot/pkg-config" --cflags --libs libpcre2-8 libutf8proc
}
stage "unpack the .deb dependencies" 60 400 "$out/build.log" bash -c "$(declare -f unpack); sysroot='$sysroot' repo='$repo' unpack"
unpacked=$?

# The fixtures: carried in third_party/fixtures (../shared does not travel), else $XPO_FIXTURES_DIR or ../shared.
if [ -d "$repo/third_party/fixtures/models" ]; then
  export XPO_FIXTURES_DIR=$repo/third_party/fixtures
else
  export XPO_FIXTURES_DIR=${XPO_FIXTURES_DIR:-$repo/../shared/fixtures}
fi
echo "fixtures: $XPO_FIXTURES_DIR" >> "$envfile"

# ---- 2. configure and build ------------------------------------------------------------------------------------
cxx_flags="-isystem $sysroot/usr/include"
cmake_args=(-S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
            -DXPO_BUILD_TESTS=ON -DXPO_BUILD_EXAMPLES=ON -DXPO_BUILD_BENCHMARKS=ON
            -DEigen3_DIR="$sysroot/usr/share/eigen3/cmake"
            -Dnlohmann_json_DIR="$sysroot/usr/share/cmake/nlohmann_json"
            -DGTest_DIR="$sysroot/usr/lib/x86_64-linux-gnu/cmake/GTest"
            -Dbenchmark_DIR="$sysroot/usr/lib/x86_64-linux-gnu/cmake/benchmark"
            -DPKG_CONFIG_EXECUTABLE="$sysroot/pkg-config"
            -DCMAKE_POLICY_VERSION_MINIMUM=3.5)
prefix_path="$sysroot/usr"
if [ "$dry" = 0 ]; then
  [ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
  command -v nvcc >/dev/null && export CUDACXX=${CUDACXX:-$(command -v nvcc)}
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  cmake_args+=(-DCMAKE_CUDA_ARCHITECTURES=90 -DXPO_USE_CCACHE=OFF)
  torch_cmake=$(${python:-python3} -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>>"$envfile")
  echo "torch cmake prefix: ${torch_cmake:-not found}" >> "$envfile"
  prefix_path="$torch_cmake;$prefix_path"
  # NCCL: the headers and library of the nvidia-nccl wheel beside torch (libtorch_cuda links that library).
  nccl_root=$(${python:-python3} - 2>/dev/null <<'PY'
import importlib, os
try:
    m = importlib.import_module("nvidia.nccl")
    for p in list(getattr(m, "__path__", [])):
        if os.path.exists(os.path.join(p, "include", "nccl.h")):
            print(p)
            break
except Exception:
    pass
PY
)
  if [ -z "$nccl_root" ]; then
    header=$(find /usr/include /usr/local/cuda/include /usr/local/include -maxdepth 2 -name nccl.h 2>/dev/null | head -1)
    [ -n "$header" ] && nccl_root=$(dirname "$(dirname "$header")")
  fi
  echo "nccl: ${nccl_root:-no nccl.h found (the NCCL test will fail, saying so)}" >> "$envfile"
  if [ -n "$nccl_root" ]; then
    cxx_flags="$cxx_flags -isystem $nccl_root/include -DUSE_C10D_NCCL"
    for lib in "$nccl_root"/lib/libnccl.so.2 "$nccl_root"/lib/libnccl.so; do
      if [ -e "$lib" ]; then
        cmake_args+=(-DCMAKE_CXX_STANDARD_LIBRARIES="$lib" -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath,$(dirname "$lib")")
        break
      fi
    done
  fi
fi
cmake_args+=(-DCMAKE_PREFIX_PATH="$prefix_path" -DCMAKE_CXX_FLAGS="$cxx_flags")
built=1
if [ "$unpacked" = 0 ]; then
  stage "configure" 150 300 "$out/build.log" cmake "${cmake_args[@]}" && \
  stage "build xpo_cuda_tests xpo_cuda_benchmarks xpo-train" 400 200 "$out/build.log" \
        "${lock[@]}" cmake --build "$build" --target xpo_cuda_tests xpo_cuda_benchmarks xpo-train -j "$jobs"
  built=$?
fi
grep -E "^(Torch_DIR|Torch_VERSION|GTest_DIR|benchmark_DIR|Eigen3_DIR|nlohmann_json_DIR|PKG_CONFIG_EXECUTABLE|pkgcfg_lib_XPO_PCRE2_pcre2-8|pkgcfg_lib_XPO_UTF8PROC_utf8proc|CMAKE_CXX_COMPILER):" \
  "$build/CMakeCache.txt" >> "$envfile" 2>/dev/null

# ---- 3. the tests labelled cuda --------------------------------------------------------------------------------
if [ "$built" = 0 ]; then
  stage "ctest -L cuda" 150 150 "$out/tests.log" ctest --test-dir "$build" -L cuda --timeout 240 --output-on-failure -V
  if [ "$stand_in" = 1 ]; then
    stage "cuda tests with the CPU in the GPU's place" 3600 120 "$out/tests.log" \
          env XPO_CUDA_TESTS_ON_CPU=1 "${lock[@]}" "$build/tests/xpo_cuda_tests"
  fi
fi

# ---- 4. the CUDA benchmarks (xpo) ----------------------------------------------------------------------------
if [ "$built" = 0 ]; then
  stage "xpo CUDA benchmarks" 120 90 "$out/bench.log" "${lock[@]}" "$build/benchmarks/xpo_cuda_benchmarks" \
        --benchmark_out="$out/bench-xpo.json" --benchmark_out_format=json --benchmark_counters_tabular=true
fi

# ---- 5. the same with transformers -------------------------------------------------------------------------------
if [ -n "$python" ]; then
  if [ "$dry" = 1 ]; then
    stage "transformers reference (tiny, CPU)" 600 20 "$out/bench.log" "${lock[@]}" env PYTHONUNBUFFERED=1 \
          "$python" "$repo/benchmarks/cuda/hf_reference.py" --tiny --device cpu --out "$out/bench-hf.json"
  else
    stage "transformers reference" 150 30 "$out/bench.log" env PYTHONUNBUFFERED=1 \
          "$python" "$repo/benchmarks/cuda/hf_reference.py" --device cuda --out "$out/bench-hf.json"
  fi
else
  stage "transformers reference: compile only (no python3 with torch)" 30 10 "$out/bench.log" \
        python3 -m py_compile "$repo/benchmarks/cuda/hf_reference.py" "$repo/benchmarks/cuda/summary.py"
fi

# ---- 6. xpo-train end to end on the device -------------------------------------------------------------------
if [ "$built" = 0 ]; then
  rm -rf "$build/quickstart"
  if [ "$dry" = 1 ]; then
    stage "xpo-train (embedded default, 2 steps, CPU)" 300 5 "$out/tests.log" "${lock[@]}" "$build/examples/xpo-train" \
          --device cpu --max_steps 2 --logging_steps 1 --output_dir "$build/quickstart"
  else
    stage "xpo-train (embedded default, 20 steps, cuda --bf16)" 60 5 "$out/tests.log" "$build/examples/xpo-train" \
          --device cuda --bf16 --max_steps 20 --logging_steps 5 --output_dir "$build/quickstart"
  fi
fi

# ---- 7. the summary ----------------------------------------------------------------------------------------------
summary_python=${python:-python3}
"$summary_python" "$repo/benchmarks/cuda/summary.py" --out "$out" --stages "$stages" \
  --mode "$([ "$dry" = 1 ] && echo dry-run || echo gpu)" > "$out/summary.md" 2>> "$out/bench.log"
cat "$out/summary.md"
log "done in $(( $(date +%s) - start )) s; files in $out: $(ls "$out" | tr '\n' ' ')"
# The exit status: 0 when every stage ran and succeeded.
! grep -q -P '\t(failed|timed out|not run)' "$stages"
