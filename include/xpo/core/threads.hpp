// How many threads LibTorch's own operations use, set once per process by xpo's programs (xpo-train, xpo-chat, the
// benchmarks); a library user calls it from main() the same way, or sets nothing and keeps LibTorch's default.
//
// Why it is not left to LibTorch: on a CPU, a step's matrix products run in the BLAS (OpenBLAS on Debian) while
// element-wise ops, softmax, attention and oneDNN's bfloat16 matmuls run in ATen's OpenMP pool. Debian's LibTorch
// starts that pool with one thread here, and OpenBLAS's pthreads build keeps its own pool of one thread per core:
// giving ATen more threads then makes two pools spin against each other on the same cores (issue 23 measured a
// step 2x slower at 2 + 2 threads on 2 cores). With OpenBLAS's OpenMP build (libopenblas0-openmp, which
// scripts/install-deps.sh selects), the BLAS runs in the same libgomp pool as ATen, so every kernel can use every
// core. PyTorch's own tuning guide gives the same advice (one OpenMP runtime, threads = physical cores).
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>

#include "xpo/core/errors.hpp"

#if defined(__linux__)
#include <dlfcn.h>
#include <sched.h>
#include <unistd.h>
#endif

namespace xpo {

/// What configure_threads did, for a program's start-up log.
struct ThreadSetup {
  int threads = 1;            // ATen's intra-op threads after the call
  int cores = 1;              // CPUs this process may run on (its affinity mask)
  std::string blas;           // "OpenBLAS (OpenMP)", "OpenBLAS (pthreads)", "OpenBLAS (serial)" or "other BLAS"
  bool shared_pool = false;   // the BLAS runs in ATen's OpenMP pool
  std::string source;         // where the count came from: "argument", "OMP_NUM_THREADS" or "cores"
  std::string note;           // set when the pools cannot be shared (what to install), else empty

  /// One line for a log: "threads: 2 of 2 cores (cores), OpenBLAS (OpenMP), one shared pool, OMP_WAIT_POLICY=PASSIVE".
  [[nodiscard]] std::string describe() const {
    const char* wait = std::getenv("OMP_WAIT_POLICY");
    std::string s = "threads: " + std::to_string(threads) + " of " + std::to_string(cores) + " cores (" + source +
                    "), " + blas + (shared_pool ? ", one shared pool" : ", separate pools") +
                    ", OMP_WAIT_POLICY=" + (wait != nullptr ? wait : "unset (idle threads spin)");
    return note.empty() ? s : s + "; " + note;
  }
};

namespace detail {

// CPUs in this process's affinity mask (what a container or `taskset` allows), else the hardware's count.
inline int available_cores() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

// OpenBLAS's threading model, asked of the loaded library itself (0 serial, 1 pthreads, 2 OpenMP), or -1 when the
// process's BLAS is not OpenBLAS. Looked up at run time: xpo does not link OpenBLAS, LibTorch does.
inline int openblas_parallel_model() {
#if defined(__linux__)
  using Query = int (*)();
  if (auto* f = reinterpret_cast<Query>(dlsym(RTLD_DEFAULT, "openblas_get_parallel"))) return f();
#endif
  return -1;
}

inline void openblas_set_threads(int n) {
#if defined(__linux__)
  using Set = void (*)(int);
  if (auto* f = reinterpret_cast<Set>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(n);
#else
  (void)n;
#endif
}

}  // namespace detail

/// Sets ATen's intra-op thread count for this process (torch::set_num_threads) so that the BLAS and ATen's own
/// kernels share one pool of all available cores.
///  - `threads`: the count to use; when absent, OMP_NUM_THREADS if the user set it (the OpenMP standard's
///    variable, which LibTorch and OpenBLAS also read), else the cores in the process's affinity mask divided by
///    `processes` (the data-parallel ranks sharing this machine, torchrun's LOCAL_WORLD_SIZE), at least 1.
///  - With OpenBLAS's OpenMP (or serial) build or another BLAS: ATen gets that count and the BLAS shares its pool.
///  - With OpenBLAS's pthreads build the pools cannot be shared: unless a count was asked for, ATen keeps one
///    thread and OpenBLAS keeps its own (the faster of the two bad choices on a loaded machine), and `note` says to
///    install libopenblas0-openmp. An asked-for count is given to both.
/// Throws ConfigError when OMP_NUM_THREADS or `threads` is not a positive integer. Call it before any parallel
/// work (start of main): LibTorch fixes the pool at its first parallel region on some versions.
inline ThreadSetup configure_threads(std::optional<int> threads = std::nullopt, int processes = 1) {
  ThreadSetup s;
  s.cores = detail::available_cores();
  if (threads) {
    if (*threads < 1) throw ConfigError("threads: must be at least 1, got " + std::to_string(*threads));
    s.threads = *threads;
    s.source = "argument";
  } else if (const char* env = std::getenv("OMP_NUM_THREADS"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (*end != '\0' || n < 1) throw ConfigError("OMP_NUM_THREADS: expected a positive integer, got \"" + std::string(env) + "\"");
    s.threads = static_cast<int>(n);
    s.source = "OMP_NUM_THREADS";
  } else {
    s.threads = std::max(1, s.cores / std::max(1, processes));
    s.source = processes > 1 ? "cores / " + std::to_string(processes) + " processes" : "cores";
  }
  const int model = detail::openblas_parallel_model();
  s.blas = model == 2 ? "OpenBLAS (OpenMP)" : model == 1 ? "OpenBLAS (pthreads)" : model == 0 ? "OpenBLAS (serial)" : "other BLAS";
  if (model == 1) {
    if (s.source.rfind("cores", 0) == 0) {
      s.threads = 1;
      s.note = "OpenBLAS runs its own pthreads pool, so LibTorch's own kernels use 1 thread; install "
               "libopenblas0-openmp (scripts/install-deps.sh) to let them share all " + std::to_string(s.cores) + " cores";
    } else {
      detail::openblas_set_threads(s.threads);
    }
  } else {
    s.shared_pool = model == 2;
  }
  torch::set_num_threads(s.threads);
  return s;
}

/// Makes OpenMP's idle threads sleep instead of spin (OMP_WAIT_POLICY=passive) for the rest of the program, unless
/// the user set OMP_WAIT_POLICY: call it first thing in main(argc, argv). libgomp reads the variable once, when it
/// is loaded, so the program re-executes itself (/proc/self/exe, same arguments) with it set; when that fails it
/// returns and the program runs as it is. Why: a spinning team on a machine with any other load (a build, a data
/// loader, another rank) stalls every parallel region; measured on issue 23's step with 2 threads on 2 loaded
/// cores, spinning made the step 3.2x slower than one thread, sleeping 0.90x of it. Linux only (elsewhere a no-op).
inline void use_passive_openmp_wait(int argc, char** argv) {
#if defined(__linux__)
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || argc < 1) return;
  ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  ::execv("/proc/self/exe", argv);
  ::unsetenv("OMP_WAIT_POLICY");  // exec failed: carry on as started
#else
  (void)argc;
  (void)argv;
#endif
}

}  // namespace xpo
